// Unit tests of the index engine, run by ctest (`make ctest`). Each check compares the
// engine with a plain std::set / sort based oracle; any failure makes the exit code 1.
#include <algorithm>
#include <cmath>
#include <memory>
#include <cstdint>
#include <cstdio>
#include <cstring>
#include <functional>
#include <limits>
#include <numeric>
#include <random>
#include <set>
#include <stdexcept>
#include <string>
#include <vector>

#include "../sample_set.hpp"
#include "../rng.hpp"
#include "../radix_select.hpp"
#include "../shard.hpp"

using scan_fast::CandidateRule;
using scan_fast::SampleSet;

static int g_failures = 0;

#define CHECK(cond)                                                        \
  do {                                                                     \
    if (!(cond)) {                                                         \
      std::fprintf(stderr, "%s:%d: CHECK failed: %s\n", __FILE__, __LINE__, #cond); \
      ++g_failures;                                                        \
    }                                                                      \
  } while (0)

// Passes when `expr` throws std::invalid_argument whose message contains `fragment`.
#define CHECK_THROWS(expr, fragment)                                                      \
  do {                                                                                    \
    bool thrown_ = false;                                                                 \
    try {                                                                                 \
      expr;                                                                               \
    } catch (const std::invalid_argument& e_) {                                           \
      thrown_ = std::string(e_.what()).find(fragment) != std::string::npos;               \
      if (!thrown_) std::fprintf(stderr, "  message was: %s\n", e_.what());               \
    }                                                                                     \
    if (!thrown_) {                                                                       \
      std::fprintf(stderr, "%s:%d: expected invalid_argument with '%s' from %s\n", __FILE__, __LINE__, \
                   fragment, #expr);                                                      \
      ++g_failures;                                                                       \
    }                                                                                     \
  } while (0)

static std::vector<int64_t> members_of(const SampleSet& s) {
  std::vector<int64_t> out(s.count());
  s.to_array(out.data());
  return out;
}

static std::vector<int64_t> random_ids(std::mt19937_64& gen, uint64_t n, size_t count) {
  std::uniform_int_distribution<uint64_t> pick(0, n - 1);
  std::vector<int64_t> ids(count);
  for (auto& id : ids) id = static_cast<int64_t>(pick(gen));
  return ids;
}

static void test_set_ops_against_std_set() {
  std::mt19937_64 gen(1);
  for (uint64_t n : {1ull, 63ull, 64ull, 65ull, 1000ull, 4099ull}) {
    for (int round = 0; round < 5; ++round) {
      auto ids_a = random_ids(gen, n, static_cast<size_t>(n / 2 + 1));
      auto ids_b = random_ids(gen, n, static_cast<size_t>(n / 3 + 1));
      auto ids_x = random_ids(gen, n, static_cast<size_t>(n / 5 + 1));
      SampleSet a(n), b(n);
      a.add(ids_a.data(), ids_a.size());
      b.add(ids_b.data(), ids_b.size());
      a.discard(ids_x.data(), ids_x.size());
      std::set<int64_t> ra(ids_a.begin(), ids_a.end()), rb(ids_b.begin(), ids_b.end());
      for (int64_t x : ids_x) ra.erase(x);
      CHECK(members_of(a) == std::vector<int64_t>(ra.begin(), ra.end()));
      CHECK(a.count() == ra.size());

      std::vector<int64_t> expect;
      SampleSet u(a);
      u.update(b);
      std::set_union(ra.begin(), ra.end(), rb.begin(), rb.end(), std::back_inserter(expect));
      CHECK(members_of(u) == expect);
      expect.clear();
      SampleSet i(a);
      i.intersection_update(b);
      std::set_intersection(ra.begin(), ra.end(), rb.begin(), rb.end(), std::back_inserter(expect));
      CHECK(members_of(i) == expect);
      expect.clear();
      SampleSet d(a);
      d.difference_update(b);
      std::set_difference(ra.begin(), ra.end(), rb.begin(), rb.end(), std::back_inserter(expect));
      CHECK(members_of(d) == expect);

      std::vector<uint32_t> comp(n - a.count());
      a.complement(comp.data());
      std::vector<uint32_t> expect_comp;
      for (uint64_t id = 0; id < n; ++id) {
        if (!ra.count(static_cast<int64_t>(id))) expect_comp.push_back(static_cast<uint32_t>(id));
      }
      CHECK(comp == expect_comp);

      std::vector<int64_t> probe = random_ids(gen, n, 50);
      bool got[50];
      a.contains(probe.data(), probe.size(), got);
      for (size_t k = 0; k < probe.size(); ++k) CHECK(got[k] == (ra.count(probe[k]) == 1));
      CHECK(SampleSet(a) == a);
      CHECK(!(a == SampleSet(n)) || ra.empty());
      a.clear();
      CHECK(a.count() == 0 && a == SampleSet(n));
    }
  }
}

static void test_bounds_leave_state_unchanged() {
  SampleSet s(100);
  const int64_t good[] = {1, 2, 3};
  s.add(good, 3);
  const SampleSet before(s);
  const int64_t negative[] = {5, -1, 7};
  CHECK_THROWS(s.add(negative, 3), "ids[1] = -1");
  const uint32_t too_big[] = {5, 6, 100};
  CHECK_THROWS(s.add(too_big, 3), "ids[2] = 100");
  CHECK_THROWS(s.discard(too_big, 3), "num_samples=100");
  const uint64_t huge[] = {uint64_t{1} << 63};
  CHECK_THROWS(s.add(huge, 1), "ids[0] = 9223372036854775808");
  bool out[3];
  CHECK_THROWS(s.contains(too_big, 3, out), "ids[2] = 100");
  CHECK(s == before);  // the 5 of the failed adds was not set
  CHECK_THROWS(SampleSet(0), "num_samples");
  CHECK_THROWS(SampleSet(SampleSet::kMaxSamples + 1), "num_samples");
  SampleSet other(101);
  CHECK_THROWS(s.update(other), "num_samples=101");
  CHECK_THROWS(s.sample(4, 0, 0), "k=4");
}

static void test_sample_exact_and_thread_independent() {
  std::mt19937_64 gen(2);
  // Large enough that the parallel loops really split (several slices per thread).
  const uint64_t n = 3'000'017;
  SampleSet s(n);
  auto ids = random_ids(gen, n, 2'000'000);
  s.add(ids.data(), ids.size());
  const uint64_t members = s.count();
  for (uint64_t k : {uint64_t{0}, uint64_t{1}, uint64_t{1000}, members / 4, members / 2, members * 3 / 4,
                     members - 1, members}) {
    scan_fast::set_num_threads(1);
    const SampleSet one = s.sample(k, 7, 3);
    scan_fast::set_num_threads(4);
    const SampleSet four = s.sample(k, 7, 3);
    CHECK(one == four);
    CHECK(one.count() == k);
    SampleSet outside(one);
    outside.difference_update(s);
    CHECK(outside.count() == 0);  // a subset of the members
    if (k > 0 && k < members) CHECK(!(s.sample(k, 7, 4) == one));  // another stream, another draw
  }
  scan_fast::set_num_threads(2);

  // Uniformity on a tiny set: every member's inclusion frequency near k/n.
  SampleSet small(40);
  const int64_t some[] = {0, 3, 5, 8, 13, 21, 34, 39};
  small.add(some, 8);
  std::vector<int> hits(40, 0);
  const int draws = 4000;
  for (int t = 0; t < draws; ++t) {
    for (int64_t m : members_of(small.sample(3, 11, static_cast<uint64_t>(t)))) ++hits[m];
  }
  for (int64_t m : some) CHECK(std::abs(hits[m] - draws * 3 / 8) < 150);  // sd ~ 31
  CHECK(hits[1] == 0 && hits[38] == 0);
}

static void test_shuffled_complement() {
  const uint64_t n = 9'000'001;  // several buckets and slices
  SampleSet s(n);
  std::mt19937_64 gen(3);
  auto ids = random_ids(gen, n, 3'000'000);
  s.add(ids.data(), ids.size());
  std::vector<uint32_t> sorted(n - s.count()), one(sorted.size()), two(sorted.size());
  s.complement(sorted.data());
  scan_fast::set_num_threads(1);
  s.shuffled_complement(one.data(), 5, 0);
  scan_fast::set_num_threads(3);
  s.shuffled_complement(two.data(), 5, 0);
  scan_fast::set_num_threads(2);
  CHECK(one == two);
  CHECK(one != sorted);
  std::sort(two.begin(), two.end());
  CHECK(two == sorted);
}

static void test_bytes_round_trip_and_corruption() {
  for (uint64_t n : {1ull, 64ull, 130ull, 100'003ull}) {
    SampleSet s(n);
    std::mt19937_64 gen(n);
    auto ids = random_ids(gen, n, static_cast<size_t>(n / 3 + 1));
    s.add(ids.data(), ids.size());
    std::vector<char> bytes(s.serialized_size());
    s.serialize(bytes.data());
    CHECK(SampleSet::deserialize(bytes.data(), bytes.size()) == s);
    CHECK_THROWS(SampleSet::deserialize(bytes.data(), bytes.size() - 1), "truncated");
    CHECK_THROWS(SampleSet::deserialize(bytes.data(), 10), "truncated");
    auto flipped = bytes;
    flipped[SampleSet::kHeaderBytes + (bytes.size() - SampleSet::kHeaderBytes) / 2] ^= 0x10;
    CHECK_THROWS(SampleSet::deserialize(flipped.data(), flipped.size()), "checksum");
    auto magic = bytes;
    magic[0] = 'X';
    CHECK_THROWS(SampleSet::deserialize(magic.data(), magic.size()), "magic");
    auto version = bytes;
    version[8] = 9;
    CHECK_THROWS(SampleSet::deserialize(version.data(), version.size()), "version 9");
    auto longer = bytes;
    longer.push_back(0);
    CHECK_THROWS(SampleSet::deserialize(longer.data(), longer.size()), "trailing");
  }
  // A bit past num_samples with a matching checksum is still rejected.
  SampleSet s(70);
  std::vector<char> bytes(s.serialized_size());
  s.serialize(bytes.data());
  uint64_t words[2] = {0, uint64_t{1} << 10};
  std::memcpy(bytes.data() + SampleSet::kHeaderBytes, words, sizeof(words));
  const uint64_t sum = scan_fast::checksum_words(words, 2);
  std::memcpy(bytes.data() + 24, &sum, 8);
  CHECK_THROWS(SampleSet::deserialize(bytes.data(), bytes.size()), "beyond num_samples");
}

static void test_words_round_trip() {
  for (uint64_t n : {1ull, 64ull, 130ull, 100'003ull}) {
    SampleSet s(n);
    std::mt19937_64 gen(n + 1);
    auto ids = random_ids(gen, n, static_cast<size_t>(n / 3 + 1));
    s.add(ids.data(), ids.size());
    const char* words = reinterpret_cast<const char*>(s.words());
    CHECK(SampleSet::from_words(n, words, s.num_words() * 8) == s);
    CHECK_THROWS(SampleSet::from_words(n, words, s.num_words() * 8 - 1), "expected");
  }
  uint64_t words[2] = {0, uint64_t{1} << 10};  // id 74 of 70
  CHECK_THROWS(SampleSet::from_words(70, reinterpret_cast<const char*>(words), sizeof(words)), "beyond num_samples");
}

static void test_large_sparse_ids() {
  const uint64_t n = (uint64_t{1} << 33) + 5;  // 1 GiB of bits, touched only where used
  SampleSet s(n);
  CHECK(!s.ids_fit_uint32());
  const int64_t ids[] = {0, (int64_t{1} << 32) + 1, int64_t(n - 1)};
  s.add(ids, 3);
  CHECK(s.count() == 3);
  CHECK(members_of(s) == std::vector<int64_t>(ids, ids + 3));
  CHECK(s.contains(n - 1) && !s.contains(n) && !s.contains(5));
  const int64_t out_of_range[] = {int64_t(n)};
  CHECK_THROWS(s.add(out_of_range, 1), "ids[0] = 8589934597");
  CHECK(s.sample(2, 1, 1).count() == 2);
  CHECK(SampleSet(uint64_t{1} << 32).ids_fit_uint32() == false);
  CHECK(SampleSet((uint64_t{1} << 32) - 1).ids_fit_uint32());
}

// Oracle of one direction's k-rule: positions of the k most extreme losses, ties to the
// lower position.
static std::vector<bool> extreme_oracle(const std::vector<float>& loss, size_t k, bool highest) {
  std::vector<size_t> order(loss.size());
  std::iota(order.begin(), order.end(), 0);
  std::stable_sort(order.begin(), order.end(), [&](size_t x, size_t y) {
    return highest ? loss[x] > loss[y] : loss[x] < loss[y];
  });
  std::vector<bool> mask(loss.size(), false);
  for (size_t i = 0; i < k; ++i) mask[order[i]] = true;
  return mask;
}

static void test_batch_candidates() {
  std::mt19937_64 gen(4);
  for (size_t batch : {1ul, 7ul, 64ul, 333ul, 4096ul}) {
    for (int round = 0; round < 4; ++round) {
      std::vector<float> a(batch), b(batch);
      // Few distinct values, so ties are common.
      std::uniform_int_distribution<int> level(0, round < 2 ? 5 : 1000000);
      for (auto& x : a) x = static_cast<float>(level(gen)) / 7.0f;
      for (auto& x : b) x = static_cast<float>(level(gen)) / 7.0f;
      const size_t k_ill = batch * 35 / 100, k_red = batch * 30 / 100;
      CandidateRule ill{false, k_ill, 0.0}, red{false, k_red, 0.0};
      std::unique_ptr<bool[]> ill_out(new bool[batch]), red_out(new bool[batch]);
      // Same losses in both directions: no top-up, the result is exactly the oracle.
      scan_fast::batch_candidates(a.data(), a.data(), batch, ill, red, 1, 2, ill_out.get(), red_out.get());
      const auto ill_oracle = extreme_oracle(a, k_ill, true), red_oracle = extreme_oracle(a, k_red, false);
      for (size_t i = 0; i < batch; ++i) CHECK(ill_out[i] == ill_oracle[i] && red_out[i] == red_oracle[i]);

      // Different directions: the common part is kept, the top-up comes from the rest.
      scan_fast::batch_candidates(a.data(), b.data(), batch, ill, red, 1, 2, ill_out.get(), red_out.get());
      const auto ill_b = extreme_oracle(b, k_ill, true);
      size_t chosen = 0, common = 0;
      for (size_t i = 0; i < batch; ++i) {
        chosen += ill_out[i];
        const bool both = ill_oracle[i] && ill_b[i];
        common += both;
        if (both) CHECK(ill_out[i]);
        if (ill_out[i]) CHECK(ill_oracle[i] || ill_b[i]);
      }
      CHECK(chosen == (common * 10 < 9 * k_ill ? k_ill : common));
      // The top-up is exactly the pool positions with the smallest keyed hashes.
      const scan_fast::CounterRng rng(1, 2, scan_fast::RngPurpose::kTopUpIll);
      uint64_t largest_added = 0, smallest_left = UINT64_MAX;
      for (size_t i = 0; i < batch; ++i) {
        if (ill_oracle[i] == ill_b[i]) continue;  // not in (X_a | X_b) - C
        if (ill_out[i]) largest_added = std::max(largest_added, rng(i));
        else smallest_left = std::min(smallest_left, rng(i));
      }
      if (chosen > common) CHECK(largest_added < smallest_left);
      std::unique_ptr<bool[]> again(new bool[batch]), again_red(new bool[batch]);
      scan_fast::batch_candidates(a.data(), b.data(), batch, ill, red, 1, 2, again.get(), again_red.get());
      CHECK(std::equal(again.get(), again.get() + batch, ill_out.get()));
    }
  }
  const float bad[] = {1.0f, NAN, 2.0f, INFINITY};
  bool o1[4], o2[4];
  CandidateRule one{false, 1, 0.0};
  CHECK_THROWS(scan_fast::batch_candidates(bad, bad, 4, one, one, 0, 0, o1, o2), "2 non-finite values");
  CHECK_THROWS(scan_fast::batch_candidates(bad, bad, 4, one, one, 0, 0, o1, o2), "positions 1, 3");
  const double fine[] = {0.5, 1.5, 2.5};
  bool p1[3], p2[3];
  CandidateRule over{true, 0, 1.0}, under{true, 0, 1.0};
  scan_fast::batch_candidates(fine, fine, 3, over, under, 0, 0, p1, p2);
  CHECK(!p1[0] && p1[1] && p1[2] && p2[0] && !p2[1] && !p2[2]);
  CandidateRule too_many{false, 4, 0.0};
  CHECK_THROWS(scan_fast::batch_candidates(fine, fine, 3, too_many, one, 0, 0, p1, p2), "k=4");
}

// Order statistics from the radix selector equal those of a full sort, whatever the
// value distribution (the bins only decide speed).
template <class T>
static void check_selector_on(std::vector<T> values, std::mt19937_64& gen) {
  scan_fast::RadixSelector<T> selector;
  std::vector<T> sorted = values;
  std::sort(sorted.begin(), sorted.end());
  std::uniform_int_distribution<size_t> pick(0, values.size() - 1);
  for (int t = 0; t < 6; ++t) {
    const size_t ra = t == 0 ? 0 : pick(gen), rb = t == 0 ? values.size() - 1 : pick(gen);
    scan_fast::SortKey<T> ka, kb;
    selector.select2(values.data(), values.size(), ra, rb, &ka, &kb);
    CHECK(scan_fast::from_sort_key<T>(ka) == sorted[ra]);
    CHECK(scan_fast::from_sort_key<T>(kb) == sorted[rb]);
  }
}

template <class T>
static void test_selector() {
  std::mt19937_64 gen(5);
  std::normal_distribution<double> normal;
  std::uniform_int_distribution<int> small(0, 3);
  for (size_t n : {1ul, 2ul, 47ul, 49ul, 500ul, 4096ul, 70000ul}) {
    std::vector<std::function<T(size_t)>> shapes = {
        [&](size_t) { return static_cast<T>(normal(gen)); },
        [&](size_t) { return static_cast<T>(std::exp(normal(gen) * 20)); },                  // huge spread
        [&](size_t) { return static_cast<T>(small(gen)) * T(0.5) - T(1); },                  // heavy ties
        [&](size_t i) { return i % 2 ? T(0) : -T(0); },                                      // signed zeros
        [&](size_t i) { return i == 7 ? std::numeric_limits<T>::max() : T(1) + T(i % 97) * std::numeric_limits<T>::epsilon(); },
        [&](size_t i) { return i % 3 ? std::numeric_limits<T>::denorm_min() * T(i % 5) : -std::numeric_limits<T>::max(); },
        [&](size_t i) { return static_cast<T>(std::ldexp(1.0, static_cast<int>(i % 120) - 60)); },  // powers of two
        [&](size_t i) { return static_cast<T>(i); },                                         // sorted
    };
    for (auto& shape : shapes) {
      std::vector<T> values(n);
      for (size_t i = 0; i < n; ++i) values[i] = shape(i);
      check_selector_on(values, gen);
    }
  }
}

// The hash selector's order statistics equal a full sort's for any keys: evenly spread
// hashes (its use), keys crowded into one top-bits bin, and repeated keys.
static void test_hash_selector() {
  std::mt19937_64 gen(6);
  scan_fast::HashSelector selector;
  const scan_fast::CounterRng rng(3, 4, scan_fast::RngPurpose::kTopUpRed);
  for (size_t n : {1ul, 2ul, 3ul, 100ul, 1866ul, 5000ul}) {
    std::vector<std::function<uint64_t(size_t)>> shapes = {
        [&](size_t i) { return rng(i); },
        [&](size_t) { return gen() >> 40; },                    // all in the lowest bin
        [&](size_t i) { return UINT64_MAX - (i % 7); },         // top bin, heavy ties
        [&](size_t i) { return i % 2 ? gen() : uint64_t{0}; },  // half zeros
    };
    for (auto& shape : shapes) {
      std::vector<uint64_t> keys(n);
      for (size_t i = 0; i < n; ++i) keys[i] = shape(i);
      std::vector<uint64_t> sorted = keys;
      std::sort(sorted.begin(), sorted.end());
      const std::vector<uint64_t> before = keys;
      std::uniform_int_distribution<size_t> pick(0, n - 1);
      for (size_t rank : {size_t{0}, n - 1, pick(gen), pick(gen), pick(gen)}) {
        CHECK(selector.select(keys.data(), n, rank) == sorted[rank]);
      }
      CHECK(keys == before);  // read, never reordered
    }
  }
}

static void test_keyed_permutation_is_a_bijection() {
  for (uint64_t size : {uint64_t{1}, uint64_t{2}, uint64_t{3}, uint64_t{5}, uint64_t{64}, uint64_t{65},
                        uint64_t{1000}, uint64_t{4097}}) {
    const scan_fast::KeyedPermutation permute(size, 3, 9);
    std::vector<char> seen(size, 0);
    for (uint64_t p = 0; p < size; ++p) {
      const uint64_t q = permute(p);
      CHECK(q < size);
      if (q < size) seen[q] += 1;
    }
    CHECK(std::all_of(seen.begin(), seen.end(), [](char c) { return c == 1; }));
  }
  const scan_fast::KeyedPermutation a(1000, 3, 9), b(1000, 3, 10), c(1000, 4, 9);
  int same_b = 0, same_c = 0;
  for (uint64_t p = 0; p < 1000; ++p) {
    same_b += a(p) == b(p);
    same_c += a(p) == c(p);
  }
  CHECK(same_b < 20 && same_c < 20);  // another stream or seed, another order (about 1 fixed point)
  CHECK_THROWS(scan_fast::KeyedPermutation(0, 0, 0), "size >= 1");
}

// Rank/select and shards against the sorted kept list, for members and non-members.
static void test_rank_select_and_shards() {
  std::mt19937_64 gen(5);
  for (uint64_t n : {uint64_t{1}, uint64_t{70}, uint64_t{513}, uint64_t{3'000'017}}) {
    SampleSet s(n);
    auto ids = random_ids(gen, n, static_cast<size_t>(n / 3 + 1));
    s.add(ids.data(), ids.size());
    for (bool members : {true, false}) {
      std::vector<int64_t> kept;
      if (members) {
        kept = members_of(s);
      } else {
        kept.resize(n - s.count());
        s.complement(kept.data());
      }
      const scan_fast::RankSelect select(s, members);
      CHECK(select.size() == kept.size());
      const size_t probes = std::min<size_t>(kept.size(), 2000);
      for (size_t i = 0; i < probes; ++i) {
        const uint64_t q = kept.size() <= 2000 ? i : gen() % kept.size();
        CHECK(select.select(q) == static_cast<uint64_t>(kept[q]));
      }
      if (kept.empty()) continue;
      // Shards: W ranks, each floor(K / W) ids, disjoint, from the kept list, in keyed order.
      const uint64_t k = kept.size();
      for (uint64_t world : {uint64_t{1}, uint64_t{3}, uint64_t{64}}) {
        if (k < world) continue;
        const uint64_t count = k / world;
        std::vector<int64_t> all;
        for (uint64_t rank = 0; rank < world; ++rank) {
          std::vector<int64_t> one(count), four(count), sorted(count);
          scan_fast::set_num_threads(1);
          scan_fast::shard_ids(select, true, 7, 2, rank, world, count, one.data());
          scan_fast::set_num_threads(4);
          scan_fast::shard_ids(select, true, 7, 2, rank, world, count, four.data());
          scan_fast::set_num_threads(2);
          CHECK(one == four);
          scan_fast::shard_ids(select, false, 7, 2, rank, world, count, sorted.data());
          for (uint64_t j = 0; j < count; ++j) CHECK(sorted[j] == kept[rank + j * world]);
          const scan_fast::KeyedPermutation permute(k, 7, 2);
          for (uint64_t j = 0; j < std::min<uint64_t>(count, 500); ++j) {
            CHECK(one[j] == kept[permute(rank + j * world)]);
          }
          all.insert(all.end(), one.begin(), one.end());
        }
        std::sort(all.begin(), all.end());
        CHECK(std::adjacent_find(all.begin(), all.end()) == all.end());
        CHECK(all.size() == count * world);
      }
    }
  }
  // More entries than one bucket-sort chunk (2^22): still a permutation of the kept ids.
  const uint64_t big = (uint64_t{1} << 22) * 2 + 4099;
  const SampleSet nothing(big);
  const scan_fast::RankSelect everything(nothing, false);
  std::vector<int64_t> order(big);
  scan_fast::shard_ids(everything, true, 1, 1, 0, 1, big, order.data());
  CHECK(order[0] != 0 || order[1] != 1);
  std::sort(order.begin(), order.end());
  bool identity = true;
  for (uint64_t i = 0; i < big; ++i) identity &= order[i] == static_cast<int64_t>(i);
  CHECK(identity);
  // Positions that wrap many times (start and step beyond K) take the general modulo path.
  {
    const scan_fast::RankSelect small(nothing, false);
    const uint64_t k = small.size(), start = 5 * k + 3, step = 3 * k + 1;
    std::vector<int64_t> wrapped(10);
    scan_fast::shard_ids(small, false, 0, 0, start, step, 10, wrapped.data());
    for (uint64_t j = 0; j < 10; ++j) {
      CHECK(wrapped[j] == static_cast<int64_t>((start + j * step) % k));
    }
  }
  const scan_fast::RankSelect none(SampleSet(100), true);
  int64_t out[1];
  CHECK_THROWS(scan_fast::shard_ids(none, true, 0, 0, 0, 1, 1, out), "empty");
}

int main() {
  scan_fast::set_num_threads(2);
  test_set_ops_against_std_set();
  test_bounds_leave_state_unchanged();
  test_sample_exact_and_thread_independent();
  test_shuffled_complement();
  test_bytes_round_trip_and_corruption();
  test_words_round_trip();
  test_large_sparse_ids();
  test_batch_candidates();
  test_selector<float>();
  test_selector<double>();
  test_hash_selector();
  test_keyed_permutation_is_a_bijection();
  test_rank_select_and_shards();
  if (g_failures) {
    std::fprintf(stderr, "%d check(s) failed\n", g_failures);
    return 1;
  }
  std::printf("all sample_set checks passed\n");
  return 0;
}
