// One rank's share of an epoch without the global kept list: a keyed bijection of the
// kept positions [0, K) and a rank/select directory that turns a position into an id.
//
// The epoch's kept ids (the members of an SampleSet, or its non-members) are put in a
// keyed pseudo-random order, positions 0..K-1; a shard is the ids at positions
// (start + j * step) mod K for j < count. Rank r of W reads start = r, step = W,
// count = floor(K / W). Every id depends on (set, seed, stream, position) only, never on
// the thread count. Memory: the directory is 8 bytes per 512 samples, the output 8 bytes
// per id of the shard, and at most 64 MiB of scratch (2^22 entries sorted by bucket).
#pragma once

#include <cstddef>
#include <cstdint>
#include <vector>

#include "sample_set.hpp"

namespace scan_fast {

// A bijection of [0, size) keyed by (seed, stream): a balanced Feistel network on the
// smallest even bit count 2h >= bits(size - 1) (h >= 1), with cycle-walking: values
// outside [0, size) are permuted again until they land inside (on average fewer than 4
// rounds of the network, since 2^(2h) < 4 size).
class KeyedPermutation {
 public:
  static constexpr int kRounds = 6;

  // Throws std::invalid_argument unless size >= 1.
  KeyedPermutation(uint64_t size, uint64_t seed, uint64_t stream);

  uint64_t size() const { return size_; }
  uint64_t operator()(uint64_t position) const;  // position < size()

 private:
  uint64_t network(uint64_t x) const;

  uint64_t size_;
  unsigned half_bits_;
  uint64_t half_mask_;
  uint64_t keys_[kRounds];
};

// Position of the k-th (0-based) set bit of x, k < popcount(x): halve the window 6 times.
inline unsigned nth_set_bit(uint64_t x, unsigned k) {
  unsigned pos = 0;
  for (unsigned width = 32; width != 0; width >>= 1) {
    const uint64_t low = x & ((uint64_t{1} << width) - 1);
    const unsigned c = static_cast<unsigned>(__builtin_popcountll(low));
    if (k >= c) {
      k -= c;
      x >>= width;
      pos += width;
    } else {
      x = low;
    }
  }
  return pos;
}

// Position -> id over the members (or the non-members) of an SampleSet: the kept count
// before every block of 8 words, select by binary search over the blocks and a scan of
// one block. Holds a pointer to the set, which must outlive it and stay unchanged.
// The lookups are inline so that shard.cpp's popcnt build of its loop inlines them.
class RankSelect {
 public:
  static constexpr size_t kWordsPerBlock = 8;

  RankSelect(const SampleSet& set, bool members);

  uint64_t size() const { return before_.back(); }  // kept ids
  size_t num_blocks() const { return before_.size() - 1; }
  size_t directory_bytes() const { return before_.size() * sizeof(uint64_t); }

  // The block holding kept position q (q < size()), searched in blocks [lo, hi): the last
  // block b there with before_[b] <= q.
  size_t block_of(uint64_t q, size_t lo, size_t hi) const {
    const uint64_t* before = before_.data();
    size_t count = hi - lo;
    while (count > 1) {  // branch-free lower half / upper half steps
      const size_t half = count / 2;
      lo = before[lo + half] <= q ? lo + half : lo;
      count -= half;
    }
    return lo;
  }
  size_t block_of(uint64_t q) const { return block_of(q, 0, num_blocks()); }

  // The id at kept position q, found in block `block` (block == block_of(q)).
  uint64_t select_in_block(uint64_t q, size_t block) const {
    uint64_t rest = q - before_[block];
    size_t w = block * kWordsPerBlock;
    for (;; ++w) {  // the block holds position q, so the loop ends inside it
      const uint64_t word = kept_word(w);
      const unsigned c = static_cast<unsigned>(__builtin_popcountll(word));
      if (rest < c) return w * 64 + nth_set_bit(word, static_cast<unsigned>(rest));
      rest -= c;
    }
  }
  uint64_t select(uint64_t q) const { return select_in_block(q, block_of(q)); }

 private:
  uint64_t kept_word(size_t w) const {
    const uint64_t word = members_ ? words_[w] : ~words_[w];
    return w + 1 == num_words_ ? word & tail_ : word;
  }

  const uint64_t* words_;
  size_t num_words_;
  uint64_t tail_;  // the valid bits of the last word
  bool members_;
  std::vector<uint64_t> before_;  // before_[b] = kept ids in blocks < b; num_blocks + 1 entries
};

// Writes the shard's `count` ids to out[0..count): the ids at positions
// (start + j * step) mod K of the kept ids in the keyed order of (seed, stream)
// (sorted order when !shuffle). Throws std::invalid_argument when K == 0 and count > 0.
// Positions are answered in buckets of nearby positions, so each bucket's part of the
// directory and bitset stays in cache; buckets are spread over the engine's threads.
void shard_ids(const RankSelect& kept, bool shuffle, uint64_t seed, uint64_t stream, uint64_t start,
               uint64_t step, uint64_t count, int64_t* out);

}  // namespace scan_fast
