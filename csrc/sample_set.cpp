#include "sample_set.hpp"
#include "parallel.hpp"

#include "radix_select.hpp"

#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdlib>
#include <cstring>
#include <limits>
#include <new>
#include <sstream>
#include <stdexcept>
#include <string>
#include <thread>
#include <type_traits>

#if defined(__linux__)
#include <sys/mman.h>
#endif

static_assert(__BYTE_ORDER__ == __ORDER_LITTLE_ENDIAN__, "the serialised format is little-endian");

namespace scan_fast {

// ---------------------------------------------------------------- threads

namespace {

int default_num_threads() {
  const unsigned hw = std::thread::hardware_concurrency();
  return hw == 0 ? 1 : static_cast<int>(hw);
}

std::atomic<int> g_num_threads{default_num_threads()};

}  // namespace

void set_num_threads(int num_threads) {
  if (num_threads < 1) {
    throw std::invalid_argument("num_threads must be >= 1, got " + std::to_string(num_threads));
  }
  g_num_threads.store(num_threads);
}

int get_num_threads() { return g_num_threads.load(); }

// ---------------------------------------------------------------- word helpers

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Without -mpopcnt GCC calls a table-based libgcc routine; pick the instruction at load time.
__attribute__((target_clones("popcnt", "default")))
#endif
uint64_t popcount_words(const uint64_t* words, size_t count) {
  uint64_t total = 0;
  for (size_t i = 0; i < count; ++i) total += static_cast<uint64_t>(__builtin_popcountll(words[i]));
  return total;
}

inline unsigned popcount64(uint64_t x) { return static_cast<unsigned>(__builtin_popcountll(x)); }

// Position of the rank-th (0-based) set bit of x; requires rank < popcount(x).
inline unsigned select_bit(uint64_t x, uint64_t rank) {
  for (uint64_t i = 0; i < rank; ++i) x &= x - 1;
  return static_cast<unsigned>(__builtin_ctzll(x));
}

inline uint64_t tail_mask(uint64_t num_samples) {
  const unsigned used = static_cast<unsigned>(num_samples % 64);
  return used == 0 ? ~uint64_t{0} : (uint64_t{1} << used) - 1;
}

template <class Id>
std::string id_to_string(Id v) {
  if constexpr (std::is_signed_v<Id>) return std::to_string(static_cast<long long>(v));
  else return std::to_string(static_cast<unsigned long long>(v));
}

}  // namespace

uint64_t checksum_words(const uint64_t* words, size_t count) {
  // FNV-1a over 64-bit words in four interleaved lanes (so the multiply chains overlap),
  // each step folded by a xorshift so high bits reach low ones; lanes joined by mix64.
  constexpr uint64_t kPrime = 0x100000001b3ULL;
  uint64_t lane[4] = {0xcbf29ce484222325ULL, 0xcbf29ce484222325ULL ^ 1, 0xcbf29ce484222325ULL ^ 2,
                      0xcbf29ce484222325ULL ^ 3};
  for (size_t i = 0; i < count; ++i) {
    uint64_t& h = lane[i & 3];
    h = (h ^ words[i]) * kPrime;
    h ^= h >> 32;
  }
  uint64_t out = mix64(count);
  for (uint64_t h : lane) out = mix64(out ^ h);
  return out;
}

// ---------------------------------------------------------------- SampleSet basics

namespace {
constexpr size_t kMapThresholdBytes = size_t{1} << 21;
}

void WordsDeleter::operator()(uint64_t* p) const noexcept {
#if defined(__linux__)
  if (bytes >= kMapThresholdBytes) {
    munmap(p, bytes);
    return;
  }
#endif
  std::free(p);
}

SampleSet::Words SampleSet::allocate_zeroed_words(size_t count) {
  const size_t bytes = count * sizeof(uint64_t);
#if defined(__linux__)
  if (bytes >= kMapThresholdBytes) {
    void* p = mmap(nullptr, bytes, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) throw std::bad_alloc();
    madvise(p, bytes, MADV_HUGEPAGE);  // advisory: ignored where THP is off
    return Words(static_cast<uint64_t*>(p), WordsDeleter{bytes});
  }
#endif
  auto* p = static_cast<uint64_t*>(std::calloc(count, sizeof(uint64_t)));
  if (p == nullptr) throw std::bad_alloc();
  return Words(p, WordsDeleter{bytes});
}

SampleSet::SampleSet(uint64_t num_samples) : num_samples_(num_samples), num_words_(0) {
  if (num_samples < 1 || num_samples > kMaxSamples) {
    throw std::invalid_argument("num_samples must be in [1, 2**40], got " + std::to_string(num_samples));
  }
  num_words_ = static_cast<size_t>((num_samples + 63) / 64);
  words_ = allocate_zeroed_words(num_words_);
}

SampleSet::SampleSet(const SampleSet& other) : num_samples_(other.num_samples_), num_words_(other.num_words_) {
  words_ = allocate_zeroed_words(num_words_);
  const uint64_t* src = other.words_.get();
  uint64_t* dst = words_.get();
  run_parts(num_words_, parts_for(num_words_, kWordsPerThread), [&](size_t b, size_t e, size_t) {
    std::memcpy(dst + b, src + b, (e - b) * sizeof(uint64_t));
  });
}

SampleSet& SampleSet::operator=(const SampleSet& other) {
  if (this != &other) *this = SampleSet(other);
  return *this;
}

void SampleSet::check_same_size(const SampleSet& other) const {
  if (other.num_samples_ != num_samples_) {
    throw std::invalid_argument("the other set has num_samples=" + std::to_string(other.num_samples_) +
                                ", this one has num_samples=" + std::to_string(num_samples_));
  }
}

// Ids are random positions in a set far larger than the caches: prefetching a few ahead
// overlaps the misses.
constexpr size_t kPrefetchAhead = 16;

template <class Id>
void SampleSet::check_ids(const Id* ids, size_t count) const {
  // Negative signed ids wrap to >= 2**63 > num_samples, so one unsigned compare suffices.
  bool any_bad = false;
  for (size_t i = 0; i < count; ++i) any_bad |= static_cast<uint64_t>(ids[i]) >= num_samples_;
  if (!any_bad) return;
  for (size_t i = 0; i < count; ++i) {
    if (static_cast<uint64_t>(ids[i]) >= num_samples_) {
      throw std::invalid_argument("ids[" + std::to_string(i) + "] = " + id_to_string(ids[i]) +
                                  " is out of range for num_samples=" + std::to_string(num_samples_) +
                                  " (valid ids are 0.." + std::to_string(num_samples_ - 1) + ")");
    }
  }
}

template <class Id>
void SampleSet::add(const Id* ids, size_t count) {
  check_ids(ids, count);
  uint64_t* w = words_.get();
  for (size_t i = 0; i < count; ++i) {
    if (i + kPrefetchAhead < count) __builtin_prefetch(w + (static_cast<uint64_t>(ids[i + kPrefetchAhead]) >> 6), 1);
    const uint64_t id = static_cast<uint64_t>(ids[i]);
    w[id >> 6] |= uint64_t{1} << (id & 63);
  }
}

template <class Id>
void SampleSet::discard(const Id* ids, size_t count) {
  check_ids(ids, count);
  uint64_t* w = words_.get();
  for (size_t i = 0; i < count; ++i) {
    if (i + kPrefetchAhead < count) __builtin_prefetch(w + (static_cast<uint64_t>(ids[i + kPrefetchAhead]) >> 6), 1);
    const uint64_t id = static_cast<uint64_t>(ids[i]);
    w[id >> 6] &= ~(uint64_t{1} << (id & 63));
  }
}

template <class Id>
void SampleSet::contains(const Id* ids, size_t count, bool* out) const {
  check_ids(ids, count);
  const uint64_t* w = words_.get();
  for (size_t i = 0; i < count; ++i) {
    if (i + kPrefetchAhead < count) __builtin_prefetch(w + (static_cast<uint64_t>(ids[i + kPrefetchAhead]) >> 6), 0);
    const uint64_t id = static_cast<uint64_t>(ids[i]);
    out[i] = (w[id >> 6] >> (id & 63)) & 1;
  }
}

bool SampleSet::contains(uint64_t id) const {
  return id < num_samples_ && ((words_[id >> 6] >> (id & 63)) & 1);
}

uint64_t SampleSet::count() const {
  const size_t parts = parts_for(num_words_, kWordsPerThread);
  std::vector<uint64_t> partial(parts, 0);
  const uint64_t* w = words_.get();
  run_parts(num_words_, parts, [&](size_t b, size_t e, size_t p) { partial[p] = popcount_words(w + b, e - b); });
  uint64_t total = 0;
  for (uint64_t c : partial) total += c;
  return total;
}

void SampleSet::clear() {
  uint64_t* w = words_.get();
  run_parts(num_words_, parts_for(num_words_, kWordsPerThread),
            [&](size_t b, size_t e, size_t) { std::memset(w + b, 0, (e - b) * sizeof(uint64_t)); });
}

bool SampleSet::operator==(const SampleSet& other) const {
  return num_samples_ == other.num_samples_ &&
         std::memcmp(words_.get(), other.words_.get(), num_words_ * sizeof(uint64_t)) == 0;
}

namespace {
template <class Op>
void combine_words(uint64_t* dst, const uint64_t* src, size_t n, Op op) {
  run_parts(n, parts_for(n, kWordsPerThread), [&](size_t b, size_t e, size_t) {
    for (size_t i = b; i < e; ++i) dst[i] = op(dst[i], src[i]);
  });
}
}  // namespace

void SampleSet::update(const SampleSet& other) {
  check_same_size(other);
  combine_words(words_.get(), other.words_.get(), num_words_, [](uint64_t a, uint64_t b) { return a | b; });
}

void SampleSet::intersection_update(const SampleSet& other) {
  check_same_size(other);
  combine_words(words_.get(), other.words_.get(), num_words_, [](uint64_t a, uint64_t b) { return a & b; });
}

void SampleSet::difference_update(const SampleSet& other) {
  check_same_size(other);
  combine_words(words_.get(), other.words_.get(), num_words_, [](uint64_t a, uint64_t b) { return a & ~b; });
}

// ---------------------------------------------------------------- id arrays

namespace {
// For each byte value: the positions of its set bits (padded) and how many there are.
struct ByteBitTable {
  uint8_t position[256][8];
  uint8_t count[256];
  constexpr ByteBitTable() : position(), count() {
    for (unsigned v = 0; v < 256; ++v) {
      unsigned n = 0;
      for (unsigned bit = 0; bit < 8; ++bit) {
        if (v >> bit & 1) position[v][n++] = static_cast<uint8_t>(bit);
      }
      count[v] = static_cast<uint8_t>(n);
    }
  }
};
constexpr ByteBitTable kByteBits{};
}  // namespace

template <class Out, bool kMembers>
void SampleSet::write_ids(Out* out) const {
  const uint64_t* words = words_.get();
  const size_t last = num_words_ - 1;
  const uint64_t last_mask = tail_mask(num_samples_);
  auto word_at = [&](size_t i) -> uint64_t {
    if constexpr (kMembers) return words[i];
    else return i == last ? (~words[i] & last_mask) : ~words[i];
  };
  // Pass 1 counts each slice, pass 2 writes it at its offset: no intermediate buffer.
  const size_t parts = parts_for(num_words_, kWordsPerThread);
  std::vector<uint64_t> offset(parts + 1, 0);
  run_parts(num_words_, parts, [&](size_t b, size_t e, size_t p) {
    const uint64_t members = popcount_words(words + b, e - b);
    if constexpr (kMembers) {
      offset[p + 1] = members;
    } else {
      const uint64_t bits = (e == num_words_) ? num_samples_ - uint64_t{b} * 64 : uint64_t{e - b} * 64;
      offset[p + 1] = bits - members;
    }
  });
  for (size_t p = 0; p < parts; ++p) offset[p + 1] += offset[p];
  run_parts(num_words_, parts, [&](size_t b, size_t e, size_t p) {
    Out* dst = out + offset[p];
    Out* const end = out + offset[p + 1];  // the next slice's first slot: never written here
    for (size_t i = b; i < e; ++i) {
      uint64_t x = word_at(i);
      const uint64_t base = uint64_t{i} * 64;
      if (x == ~uint64_t{0}) {  // full word: a run the compiler vectorises
        for (unsigned j = 0; j < 64; ++j) dst[j] = static_cast<Out>(base + j);
        dst += 64;
        continue;
      }
      // Dense word: per byte, write all 8 table positions and advance by the popcount
      // (no per-bit branch). The last byte may write 7 slots past its ids, so only
      // while a whole word's worth of room is left before `end`.
      if (popcount64(x) > 24 && end - dst >= 64 + 8) {
        for (unsigned byte = 0; byte < 8; ++byte) {
          const unsigned bits = static_cast<unsigned>(x >> (8 * byte)) & 0xff;
          const uint64_t at = base + 8 * byte;
          for (unsigned j = 0; j < 8; ++j) dst[j] = static_cast<Out>(at + kByteBits.position[bits][j]);
          dst += kByteBits.count[bits];
        }
        continue;
      }
      while (x) {
        *dst++ = static_cast<Out>(base + static_cast<unsigned>(__builtin_ctzll(x)));
        x &= x - 1;
      }
    }
  });
}

template <class Out>
void SampleSet::to_array(Out* out) const {
  write_ids<Out, true>(out);
}

template <class Out>
void SampleSet::complement(Out* out) const {
  write_ids<Out, false>(out);
}

template <class Out>
void SampleSet::shuffled_complement(Out* out, uint64_t seed, uint64_t stream) const {
  // Scatter shuffle: every id gets an independent uniform bucket from a hash of (seed,
  // stream, id), buckets are filled in id order, then each bucket is Fisher-Yates
  // shuffled with its own counters. Uniform random bucket sizes times uniform orders
  // within buckets is a uniform permutation; buckets of ~64K ids keep the shuffle in
  // cache and let threads work on separate buckets. Nothing depends on the thread count.
  const uint64_t total = num_samples_ - count();
  if (total == 0) return;
  constexpr uint64_t kBucketIds = uint64_t{1} << 16;
  const uint64_t num_buckets = (total + kBucketIds - 1) / kBucketIds;
  const CounterRng bucket_rng(seed, stream, RngPurpose::kShuffleBucket);
  const CounterRng within_rng(seed, stream, RngPurpose::kShuffleWithin);
  auto bucket_of = [&](uint64_t id) -> uint64_t {
    return static_cast<uint64_t>((static_cast<__uint128_t>(bucket_rng(id)) * num_buckets) >> 64);
  };
  const uint64_t* words = words_.get();
  const size_t last = num_words_ - 1;
  const uint64_t last_mask = tail_mask(num_samples_);
  auto for_each_id = [&](size_t b, size_t e, auto&& fn) {
    for (size_t i = b; i < e; ++i) {
      uint64_t x = i == last ? (~words[i] & last_mask) : ~words[i];
      const uint64_t base = uint64_t{i} * 64;
      while (x) {
        fn(base + static_cast<unsigned>(__builtin_ctzll(x)));
        x &= x - 1;
      }
    }
  };

  const size_t parts = parts_for(num_words_, kWordsPerThread);
  // counts[p][bucket]: how many of slice p's ids fall in bucket; turned into write cursors.
  std::vector<std::vector<uint64_t>> cursor(parts, std::vector<uint64_t>(num_buckets, 0));
  run_parts(num_words_, parts, [&](size_t b, size_t e, size_t p) {
    uint64_t* c = cursor[p].data();
    for_each_id(b, e, [&](uint64_t id) { ++c[bucket_of(id)]; });
  });
  std::vector<uint64_t> bucket_start(num_buckets + 1, 0);
  uint64_t running = 0;
  for (uint64_t k = 0; k < num_buckets; ++k) {
    bucket_start[k] = running;
    for (size_t p = 0; p < parts; ++p) {
      const uint64_t c = cursor[p][k];
      cursor[p][k] = running;
      running += c;
    }
  }
  bucket_start[num_buckets] = running;
  run_parts(num_words_, parts, [&](size_t b, size_t e, size_t p) {
    uint64_t* c = cursor[p].data();
    for_each_id(b, e, [&](uint64_t id) { out[c[bucket_of(id)]++] = static_cast<Out>(id); });
  });
  run_parts(num_buckets, parts_for(num_buckets, 1), [&](size_t b, size_t e, size_t) {
    for (size_t k = b; k < e; ++k) {
      Out* first = out + bucket_start[k];
      const uint64_t size = bucket_start[k + 1] - bucket_start[k];
      uint64_t draw = uint64_t{k} << 33;  // buckets use disjoint counter ranges
      for (uint64_t i = size; i > 1; --i) {
        const uint64_t j = i <= UINT32_MAX ? within_rng.bounded32(static_cast<uint32_t>(i), draw)
                                           : within_rng.bounded(i, draw);
        std::swap(first[i - 1], first[j]);
      }
    }
  });
}

// ---------------------------------------------------------------- sampling

namespace {

// d distinct values from [0, population), sorted, uniform over all d-subsets. Draws with
// replacement and keeps the distinct ones until there are d; which values come out
// depends only on the pattern of repeats, so every d-subset is equally likely. For
// d > population / 2 it picks the population - d values to leave out instead.
std::vector<uint64_t> distinct_sorted_ranks(uint64_t population, uint64_t d, const CounterRng& rng) {
  std::vector<uint64_t> ranks;
  if (d == 0) return ranks;
  if (2 * d > population) {
    const std::vector<uint64_t> excluded = distinct_sorted_ranks(population, population - d, rng);
    ranks.reserve(d);
    size_t next = 0;
    for (uint64_t r = 0; r < population; ++r) {
      if (next < excluded.size() && excluded[next] == r) ++next;
      else ranks.push_back(r);
    }
    return ranks;
  }
  ranks.reserve(d);
  uint64_t counter = 0;
  while (ranks.size() < d) {
    const uint64_t missing = d - ranks.size();
    for (uint64_t i = 0; i < missing; ++i) ranks.push_back(rng.bounded(population, counter));
    std::sort(ranks.begin(), ranks.end());
    ranks.erase(std::unique(ranks.begin(), ranks.end()), ranks.end());
  }
  return ranks;
}

// Calls apply(word, bit) for the set bits of word_at(0..num_words) whose ranks (0-based,
// in position order) are listed in sorted `ranks`. Skips whole blocks by popcount.
template <class WordAt, class BlockCount, class Apply>
void apply_at_ranks(size_t num_words, const std::vector<uint64_t>& ranks, WordAt word_at, BlockCount block_count,
                    Apply apply) {
  constexpr size_t kBlock = 1024;
  size_t r = 0;
  uint64_t seen = 0;
  for (size_t b = 0; b < num_words && r < ranks.size(); b += kBlock) {
    const size_t e = std::min(num_words, b + kBlock);
    const uint64_t in_block = block_count(b, e);
    if (ranks[r] >= seen + in_block) {
      seen += in_block;
      continue;
    }
    for (size_t i = b; i < e && r < ranks.size(); ++i) {
      const uint64_t x = word_at(i);
      const uint64_t c = popcount64(x);
      while (r < ranks.size() && ranks[r] < seen + c) {
        apply(i, select_bit(x, ranks[r] - seen));
        ++r;
      }
      seen += c;
    }
  }
}

// Each bit is 1 with probability numerator / 2**bits, independently: fold random words
// with | (binary digit 1) or & (digit 0) from the lowest set digit up.
inline uint64_t bernoulli_word(const CounterRng& rng, uint64_t word_index, uint64_t numerator, unsigned bits,
                               unsigned lowest_digit) {
  uint64_t mask = 0;
  const uint64_t base = word_index * 32;
  for (unsigned j = lowest_digit; j < bits; ++j) {
    const uint64_t r = rng(base + j);
    mask = ((numerator >> j) & 1) ? (mask | r) : (mask & r);
  }
  return mask;
}

unsigned bit_length(uint64_t x) { return x == 0 ? 0 : 64 - static_cast<unsigned>(__builtin_clzll(x)); }

}  // namespace

SampleSet SampleSet::sample(uint64_t k, uint64_t seed, uint64_t stream) const {
  // 1. Keep each member independently with probability p ~ k/n (p rounded to `bits`
  //    binary digits; any p works, a close one keeps step 2 short). Given how many were
  //    kept, the kept set is a uniform subset of that size.
  // 2. Remove (or add from the unkept members) a uniform random subset of the
  //    difference to reach exactly k. A uniform subset of a uniform subset is uniform,
  //    so the result is uniform over the k-subsets. Step 1 keys its random words by word
  //    index, step 2 runs on one thread: the result never depends on the thread count.
  const uint64_t n = count();
  if (k > n) {
    throw std::invalid_argument("k=" + std::to_string(k) + " exceeds the number of members (" +
                                std::to_string(n) + ")");
  }
  SampleSet result(num_samples_);
  if (k == 0) return result;
  if (k == n) return SampleSet(*this);

  // ~sqrt(n) quantisation error, same order as the binomial spread of step 1.
  const unsigned bits = std::min(32u, std::max(8u, (bit_length(n) + 1) / 2 + 2));
  const uint64_t numerator = static_cast<uint64_t>((static_cast<__uint128_t>(k) << bits) / n);
  const unsigned lowest_digit = numerator == 0 ? bits : static_cast<unsigned>(__builtin_ctzll(numerator));
  const CounterRng bernoulli(seed, stream, RngPurpose::kSampleBernoulli);
  const uint64_t* src = words_.get();
  uint64_t* dst = result.words_.get();
  const size_t parts = parts_for(num_words_, kWordsPerThread / 8);
  std::vector<uint64_t> kept_in_part(parts, 0);
  run_parts(num_words_, parts, [&](size_t b, size_t e, size_t p) {
    for (size_t i = b; i < e; ++i) {
      if (src[i] != 0) dst[i] = src[i] & bernoulli_word(bernoulli, i, numerator, bits, lowest_digit);
    }
    kept_in_part[p] = popcount_words(dst + b, e - b);
  });
  uint64_t kept = 0;
  for (uint64_t c : kept_in_part) kept += c;

  const CounterRng fix_up(seed, stream, RngPurpose::kSampleFixUp);
  if (kept > k) {
    const auto ranks = distinct_sorted_ranks(kept, kept - k, fix_up);
    apply_at_ranks(
        num_words_, ranks, [&](size_t i) { return dst[i]; },
        [&](size_t b, size_t e) { return popcount_words(dst + b, e - b); },
        [&](size_t i, unsigned bit) { dst[i] &= ~(uint64_t{1} << bit); });
  } else if (kept < k) {
    const auto ranks = distinct_sorted_ranks(n - kept, k - kept, fix_up);
    apply_at_ranks(
        num_words_, ranks, [&](size_t i) { return src[i] & ~dst[i]; },
        [&](size_t b, size_t e) { return popcount_words(src + b, e - b) - popcount_words(dst + b, e - b); },
        [&](size_t i, unsigned bit) { dst[i] |= uint64_t{1} << bit; });
  }
  return result;
}

// ---------------------------------------------------------------- bytes

void SampleSet::serialize(char* out) const {
  const uint32_t version = kFormatVersion;
  const uint32_t reserved = 0;
  const uint64_t checksum = checksum_words(words_.get(), num_words_);
  std::memcpy(out, kMagic, 8);
  std::memcpy(out + 8, &version, 4);
  std::memcpy(out + 12, &reserved, 4);
  std::memcpy(out + 16, &num_samples_, 8);
  std::memcpy(out + 24, &checksum, 8);
  std::memcpy(out + kHeaderBytes, words_.get(), num_words_ * sizeof(uint64_t));
}

SampleSet SampleSet::deserialize(const char* data, size_t size) {
  auto fail = [](const std::string& what) { throw std::invalid_argument("invalid SampleSet bytes: " + what); };
  if (size < kHeaderBytes) {
    fail("truncated: " + std::to_string(size) + " bytes, the header alone is " + std::to_string(kHeaderBytes));
  }
  if (std::memcmp(data, kMagic, 8) != 0) fail("bad magic (not written by SampleSet.to_bytes)");
  uint32_t version, reserved;
  uint64_t num_samples, checksum;
  std::memcpy(&version, data + 8, 4);
  std::memcpy(&reserved, data + 12, 4);
  std::memcpy(&num_samples, data + 16, 8);
  std::memcpy(&checksum, data + 24, 8);
  if (version != kFormatVersion) {
    fail("format version " + std::to_string(version) + ", this build reads version " +
         std::to_string(kFormatVersion));
  }
  if (reserved != 0) fail("reserved header field is " + std::to_string(reserved) + ", expected 0");
  if (num_samples < 1 || num_samples > kMaxSamples) {
    fail("header num_samples=" + std::to_string(num_samples) + " is outside [1, 2**40]");
  }
  const uint64_t words = (num_samples + 63) / 64;
  const uint64_t expected = kHeaderBytes + words * 8;
  if (size != expected) {
    fail(std::string(size < expected ? "truncated" : "trailing data") + ": " + std::to_string(size) +
         " bytes, expected " + std::to_string(expected) + " for num_samples=" + std::to_string(num_samples));
  }
  SampleSet set(num_samples);
  std::memcpy(set.words_.get(), data + kHeaderBytes, words * 8);
  const uint64_t actual = checksum_words(set.words_.get(), set.num_words_);
  if (actual != checksum) fail("payload checksum mismatch (corrupted data)");
  if ((set.words_[set.num_words_ - 1] & ~tail_mask(num_samples)) != 0) {
    fail("bits beyond num_samples are set (corrupted data)");
  }
  return set;
}

SampleSet SampleSet::from_words(uint64_t num_samples, const char* bits, size_t size) {
  SampleSet set(num_samples);
  if (size != set.num_words_ * 8) {
    throw std::invalid_argument("invalid packed bits: " + std::to_string(size) + " bytes, expected " +
                                std::to_string(set.num_words_ * 8) + " for num_samples=" +
                                std::to_string(num_samples));
  }
  std::memcpy(set.words_.get(), bits, size);
  if ((set.words_[set.num_words_ - 1] & ~tail_mask(num_samples)) != 0) {
    throw std::invalid_argument("invalid packed bits: bits beyond num_samples=" + std::to_string(num_samples) +
                                " are set");
  }
  return set;
}

// ---------------------------------------------------------------- batch candidates

namespace {

template <class T>
void check_finite(const T* loss, size_t batch, const char* name) {
  size_t bad = 0;
  // x - x is 0 for finite x and NaN for NaN/inf; this form vectorises, isfinite does not.
  for (size_t i = 0; i < batch; ++i) bad += !(loss[i] - loss[i] == T(0));
  if (bad == 0) return;
  std::ostringstream msg;
  msg << name << " has " << bad << " non-finite value" << (bad > 1 ? "s" : "") << " (NaN or inf), first at position";
  msg << (bad > 1 ? "s " : " ");
  size_t shown = 0;
  for (size_t i = 0; i < batch && shown < 5; ++i) {
    if (!std::isfinite(loss[i])) msg << (shown++ ? ", " : "") << i;
  }
  throw std::invalid_argument(msg.str());
}

// Marks the k highest (kHighest) or lowest losses, ties to the lower position. `bound`
// is the k-th most extreme value: everything strictly beyond it is in, and the first
// (k - #beyond) positions equal to it. Loops are branch-free so they vectorise; the
// usual case (no surplus ties) needs one counting and one marking pass.
template <class T, bool kHighest>
void mark_extremes(const T* loss, size_t batch, uint64_t k, T bound, uint8_t* mask) {
  uint32_t beyond = 0, equal = 0;
  for (size_t i = 0; i < batch; ++i) {
    beyond += kHighest ? (loss[i] > bound) : (loss[i] < bound);
    equal += loss[i] == bound;
  }
  if (beyond + uint64_t{equal} == k) {
    for (size_t i = 0; i < batch; ++i) mask[i] = kHighest ? (loss[i] >= bound) : (loss[i] <= bound);
    return;
  }
  for (size_t i = 0; i < batch; ++i) mask[i] = kHighest ? (loss[i] > bound) : (loss[i] < bound);
  uint64_t ties_wanted = k - beyond;
  for (size_t i = 0; i < batch && ties_wanted > 0; ++i) {
    if (loss[i] == bound) {
      mask[i] = 1;
      --ties_wanted;
    }
  }
}

// The T-valued bound equivalent to comparing double(x) with `threshold`: for every
// finite x of type T, x > above(t) <=> double(x) > t and x < below(t) <=> double(x) < t.
// Lets float32 losses be compared as floats (vectorised) with the reference's float64 rule.
template <class T>
T bound_above(double threshold) {
  T bound = static_cast<T>(threshold);
  if (static_cast<double>(bound) > threshold) bound = std::nextafter(bound, -std::numeric_limits<T>::infinity());
  return bound;
}

template <class T>
T bound_below(double threshold) {
  T bound = static_cast<T>(threshold);
  if (static_cast<double>(bound) < threshold) bound = std::nextafter(bound, std::numeric_limits<T>::infinity());
  return bound;
}

template <class T>
void mark_threshold(const T* loss, size_t batch, double threshold, bool highest, uint8_t* mask) {
  if (highest) {
    const T bound = bound_above<T>(threshold);
    for (size_t i = 0; i < batch; ++i) mask[i] = loss[i] > bound;
  } else {
    const T bound = bound_below<T>(threshold);
    for (size_t i = 0; i < batch; ++i) mask[i] = loss[i] < bound;
  }
}

// The top-up's pool (X_a | X_b) - C: its positions and their keyed hashes.
struct TopUpScratch {
  std::vector<uint32_t> positions;
  std::vector<uint64_t> hashes;
  HashSelector selector;
};

template <class T>
struct CandidateScratch {
  RadixSelector<T> selector;
  std::vector<uint8_t> masks;
  TopUpScratch top_up;
};

// ILL and RED masks of one direction; both k-rules' bounds come from one selection.
template <class T>
void direction_masks(const T* loss, size_t batch, const CandidateRule& ill, const CandidateRule& red,
                     CandidateScratch<T>& scratch, uint8_t* ill_mask, uint8_t* red_mask) {
  using K = SortKey<T>;
  const bool select_ill = !ill.by_threshold && ill.k > 0 && ill.k < batch;
  const bool select_red = !red.by_threshold && red.k > 0 && red.k < batch;
  const size_t ill_rank = batch - ill.k, red_rank = red.k - 1;  // ascending sorted positions
  K ill_key = 0, red_key = 0;
  if (select_ill || select_red) {
    scratch.selector.select2(loss, batch, select_ill ? ill_rank : red_rank, select_red ? red_rank : ill_rank,
                             &ill_key, &red_key);
  }
  if (ill.by_threshold) mark_threshold(loss, batch, ill.threshold, true, ill_mask);
  else if (select_ill) mark_extremes<T, true>(loss, batch, ill.k, from_sort_key<T>(ill_key), ill_mask);
  else std::fill(ill_mask, ill_mask + batch, static_cast<uint8_t>(ill.k == batch));
  if (red.by_threshold) mark_threshold(loss, batch, red.threshold, false, red_mask);
  else if (select_red) mark_extremes<T, false>(loss, batch, red.k, from_sort_key<T>(red_key), red_mask);
  else std::fill(red_mask, red_mask + batch, static_cast<uint8_t>(red.k == batch));
}

// C = X_a & X_b; when 10 |C| < 9 |X_a| (exact, in integers), add the |X_a| - |C| positions of
// (X_a | X_b) - C with the smallest keyed hash rng(position): a pure function of (seed, stream,
// position), so numpy and torch (scan_fast/schedule/candidates.py) pick the same positions.
// Only the pool is hashed; the bound (the need-th smallest hash) comes from a histogram
// select, and the pool is marked against it without branches.
void combine_directions(const uint8_t* x_a, const uint8_t* x_b, size_t batch, const CounterRng& rng,
                        TopUpScratch& scratch, bool* out) {
  uint64_t target = 0, have = 0;
  for (size_t i = 0; i < batch; ++i) {
    const uint8_t both = x_a[i] & x_b[i];
    target += x_a[i];
    have += both;
    out[i] = both;
  }
  if (!(have * 10 < target * 9)) return;
  scratch.positions.resize(batch);
  uint32_t* slot = scratch.positions.data();
  size_t size = 0;
  for (size_t i = 0; i < batch; ++i) {  // branch-free compaction of the pool
    slot[size] = static_cast<uint32_t>(i);
    size += (x_a[i] ^ x_b[i]) & 1;
  }
  scratch.hashes.resize(size);
  uint64_t* hashes = scratch.hashes.data();
  for (size_t j = 0; j < size; ++j) hashes[j] = rng(slot[j]);
  // need = |X_a - X_b| >= 1 here, and the pool holds X_a - X_b, so need <= size. Hashes are
  // distinct (rng is a bijection of the counter): exactly `need` of them are <= the bound.
  const size_t need = static_cast<size_t>(target - have);
  const uint64_t bound = scratch.selector.select(hashes, size, need - 1);
  for (size_t j = 0; j < size; ++j) out[slot[j]] = hashes[j] <= bound;  // pool positions are not in C
}

}  // namespace

template <class T>
void batch_candidates(const T* loss_a, const T* loss_b, size_t batch, const CandidateRule& ill,
                      const CandidateRule& red, uint64_t seed, uint64_t stream, bool* ill_out, bool* red_out) {
  if (batch >= (uint64_t{1} << 32)) throw std::invalid_argument("batch size must be below 2**32");
  for (const CandidateRule* rule : {&ill, &red}) {
    if (!rule->by_threshold && rule->k > batch) {
      throw std::invalid_argument("k=" + std::to_string(rule->k) + " exceeds the batch size " +
                                  std::to_string(batch));
    }
    if (rule->by_threshold && std::isnan(rule->threshold)) throw std::invalid_argument("threshold is NaN");
  }
  check_finite(loss_a, batch, "loss_a");
  check_finite(loss_b, batch, "loss_b");
  thread_local CandidateScratch<T> scratch;  // reused: the schedule calls this once per batch
  scratch.masks.resize(4 * batch);
  uint8_t* ill_a = scratch.masks.data();
  uint8_t* ill_b = ill_a + batch;
  uint8_t* red_a = ill_b + batch;
  uint8_t* red_b = red_a + batch;
  direction_masks(loss_a, batch, ill, red, scratch, ill_a, red_a);
  direction_masks(loss_b, batch, ill, red, scratch, ill_b, red_b);
  combine_directions(ill_a, ill_b, batch, CounterRng(seed, stream, RngPurpose::kTopUpIll), scratch.top_up, ill_out);
  combine_directions(red_a, red_b, batch, CounterRng(seed, stream, RngPurpose::kTopUpRed), scratch.top_up, red_out);
}

// ---------------------------------------------------------------- instantiations

#define SCAN_FAST_ID_OPS(Id)                                              \
  template void SampleSet::add<Id>(const Id*, size_t);                     \
  template void SampleSet::discard<Id>(const Id*, size_t);                 \
  template void SampleSet::contains<Id>(const Id*, size_t, bool*) const;
SCAN_FAST_ID_OPS(int32_t)
SCAN_FAST_ID_OPS(int64_t)
SCAN_FAST_ID_OPS(uint32_t)
SCAN_FAST_ID_OPS(uint64_t)
#undef SCAN_FAST_ID_OPS

#define SCAN_FAST_OUT_OPS(Out)                                                 \
  template void SampleSet::to_array<Out>(Out*) const;                           \
  template void SampleSet::complement<Out>(Out*) const;                         \
  template void SampleSet::shuffled_complement<Out>(Out*, uint64_t, uint64_t) const;
SCAN_FAST_OUT_OPS(uint32_t)
SCAN_FAST_OUT_OPS(int64_t)
#undef SCAN_FAST_OUT_OPS

template void batch_candidates<float>(const float*, const float*, size_t, const CandidateRule&,
                                      const CandidateRule&, uint64_t, uint64_t, bool*, bool*);
template void batch_candidates<double>(const double*, const double*, size_t, const CandidateRule&,
                                       const CandidateRule&, uint64_t, uint64_t, bool*, bool*);

}  // namespace scan_fast
