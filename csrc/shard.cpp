#include "shard.hpp"

#include <algorithm>
#include <stdexcept>

#include "parallel.hpp"
#include "rng.hpp"

namespace scan_fast {

namespace {

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
// Without -mpopcnt GCC calls a table-based libgcc routine; pick the instruction at load time.
#define SCAN_FAST_POPCNT_CLONES __attribute__((target_clones("popcnt", "default")))
#else
#define SCAN_FAST_POPCNT_CLONES
#endif

inline unsigned popcount64(uint64_t x) { return static_cast<unsigned>(__builtin_popcountll(x)); }

unsigned bit_length(uint64_t x) { return x == 0 ? 0 : 64 - static_cast<unsigned>(__builtin_clzll(x)); }

}  // namespace

// ---------------------------------------------------------------- keyed permutation

KeyedPermutation::KeyedPermutation(uint64_t size, uint64_t seed, uint64_t stream) : size_(size) {
  if (size == 0) throw std::invalid_argument("KeyedPermutation needs size >= 1");
  half_bits_ = std::max(1u, (bit_length(size - 1) + 1) / 2);
  half_mask_ = (uint64_t{1} << half_bits_) - 1;
  const CounterRng rng(seed, stream, RngPurpose::kShardOrder);
  for (int r = 0; r < kRounds; ++r) keys_[r] = rng(static_cast<uint64_t>(r));
}

// One pass of the network over [0, 2^(2h)): (L, R) -> (R, L ^ F_r(R)) per round.
uint64_t KeyedPermutation::network(uint64_t x) const {
  uint64_t left = x >> half_bits_, right = x & half_mask_;
  for (int r = 0; r < kRounds; ++r) {
    const uint64_t mixed = left ^ (mix64(right ^ keys_[r]) & half_mask_);
    left = right;
    right = mixed;
  }
  return (left << half_bits_) | right;
}

uint64_t KeyedPermutation::operator()(uint64_t position) const {
  uint64_t x = network(position);
  while (x >= size_) x = network(x);  // cycle-walking: stays a bijection of [0, size)
  return x;
}

// ---------------------------------------------------------------- rank / select

namespace {

SCAN_FAST_POPCNT_CLONES
void count_blocks(const uint64_t* words, size_t num_words, uint64_t tail, bool members, size_t first_block,
                  size_t last_block, uint64_t* counts) {
  for (size_t b = first_block; b < last_block; ++b) {
    const size_t end = std::min(num_words, (b + 1) * RankSelect::kWordsPerBlock);
    uint64_t total = 0;
    for (size_t w = b * RankSelect::kWordsPerBlock; w < end; ++w) {
      uint64_t word = members ? words[w] : ~words[w];
      if (w + 1 == num_words) word &= tail;
      total += popcount64(word);
    }
    counts[b + 1] = total;
  }
}

uint64_t tail_bits(uint64_t num_samples) {
  const unsigned used = static_cast<unsigned>(num_samples % 64);
  return used == 0 ? ~uint64_t{0} : (uint64_t{1} << used) - 1;
}

}  // namespace

RankSelect::RankSelect(const SampleSet& set, bool members)
    : words_(set.words()), num_words_(set.num_words()), tail_(tail_bits(set.num_samples())), members_(members) {
  const size_t blocks = (num_words_ + kWordsPerBlock - 1) / kWordsPerBlock;
  before_.assign(blocks + 1, 0);
  run_parts(blocks, parts_for(blocks, kWordsPerThread / kWordsPerBlock), [&](size_t b, size_t e, size_t) {
    count_blocks(words_, num_words_, tail_, members, b, e, before_.data());
  });
  for (size_t b = 0; b < blocks; ++b) before_[b + 1] += before_[b];
}

// ---------------------------------------------------------------- shards

namespace {

// Positions per bucket: a bucket's directory entries and bitset words (about 2^17 bytes
// of bitset at full density) stay in cache while its positions are answered.
constexpr unsigned kBucketBits = 20;
// Entries sorted into buckets at a time: bounds the scratch to 16 bytes x 2^22 = 64 MiB.
constexpr uint64_t kChunk = uint64_t{1} << 22;

struct Entry {
  uint64_t position;  // in the kept order
  uint64_t index;     // in the shard
};

SCAN_FAST_POPCNT_CLONES
void select_buckets(const RankSelect& kept, const uint64_t* bucket_start, const Entry* entries, unsigned shift,
                    size_t first, size_t last, int64_t* out) {
  const uint64_t size = kept.size();
  for (size_t bucket = first; bucket < last; ++bucket) {
    if (bucket_start[bucket] == bucket_start[bucket + 1]) continue;
    const uint64_t low = uint64_t{bucket} << shift;
    const uint64_t high = std::min(size - 1, low + (uint64_t{1} << shift) - 1);
    const size_t lo = kept.block_of(low), hi = kept.block_of(high) + 1;
    for (uint64_t i = bucket_start[bucket]; i < bucket_start[bucket + 1]; ++i) {
      const uint64_t q = entries[i].position;
      out[entries[i].index] = static_cast<int64_t>(kept.select_in_block(q, kept.block_of(q, lo, hi)));
    }
  }
}

}  // namespace

void shard_ids(const RankSelect& kept, bool shuffle, uint64_t seed, uint64_t stream, uint64_t start,
               uint64_t step, uint64_t count, int64_t* out) {
  if (count == 0) return;
  const uint64_t size = kept.size();
  if (size == 0) throw std::invalid_argument("shard_ids: the kept set is empty");
  const KeyedPermutation permute(size, seed, stream);

  // 1. The kept position of every shard entry, written where its id will go. A rank's
  //    positions wrap at most once (start < K, count * step <= K + step), so one
  //    subtraction replaces the 128-bit modulo of the general case.
  const bool wraps_once = start < size && step <= size &&
                          (count - 1) <= (2 * size - 1 - start) / step;
  run_parts(count, parts_for(count, 1 << 16), [&](size_t b, size_t e, size_t) {
    for (size_t j = b; j < e; ++j) {
      uint64_t p;
      if (wraps_once) {
        p = start + j * step;
        p = p >= size ? p - size : p;
      } else {
        p = static_cast<uint64_t>((static_cast<__uint128_t>(j) * step + start) % size);
      }
      out[j] = static_cast<int64_t>(shuffle ? permute(p) : p);
    }
  });

  const unsigned shift = std::max(kBucketBits, bit_length(size - 1)) - kBucketBits;
  const size_t buckets = static_cast<size_t>(((size - 1) >> shift) + 1);
  std::vector<uint64_t> bucket_start(buckets + 1);
  std::vector<uint64_t> next(buckets);
  std::vector<Entry> entries(std::min(count, kChunk));
  for (uint64_t chunk = 0; chunk < count; chunk += kChunk) {
    const uint64_t part_size = std::min(kChunk, count - chunk);
    // 2. The chunk's entries grouped by bucket of nearby positions (a counting sort).
    std::fill(bucket_start.begin(), bucket_start.end(), 0);
    for (uint64_t j = chunk; j < chunk + part_size; ++j) ++bucket_start[(static_cast<uint64_t>(out[j]) >> shift) + 1];
    for (size_t b = 0; b < buckets; ++b) bucket_start[b + 1] += bucket_start[b];
    std::copy(bucket_start.begin(), bucket_start.end() - 1, next.begin());
    for (uint64_t j = chunk; j < chunk + part_size; ++j) {
      const uint64_t position = static_cast<uint64_t>(out[j]);
      entries[next[position >> shift]++] = Entry{position, j};
    }
    // 3. Position -> id, bucket by bucket; each entry is written by exactly one thread.
    run_parts(buckets, parts_for(buckets, 1), [&](size_t b, size_t e, size_t) {
      select_buckets(kept, bucket_start.data(), entries.data(), shift, b, e, out);
    });
  }
}

}  // namespace scan_fast
