// The SCAN index engine: a bitset of sample ids and the per-batch candidate rule.
//
// Plain C++17; Python sees it through bindings.cpp only. All randomness comes from
// CounterRng (rng.hpp), so every result depends on its inputs and (seed, stream) only,
// never on the number of threads.
#pragma once

#include <cstddef>
#include <cstdint>
#include <memory>
#include <utility>
#include <vector>

#include "rng.hpp"

namespace scan_fast {

// Threads used by the bulk loops (popcount, set algebra, to_array, sample, ...).
// Defaults to std::thread::hardware_concurrency().
void set_num_threads(int num_threads);
int get_num_threads();

// Frees SampleSet words: munmap for mapped blocks, free otherwise.
struct WordsDeleter {
  size_t bytes = 0;
  void operator()(uint64_t* p) const noexcept;
};

// Sample ids in [0, num_samples) stored as one bit each: N/8 bytes, whatever the count.
// Invariant: the bits at positions >= num_samples in the last word are zero.
class SampleSet {
 public:
  static constexpr uint64_t kMaxSamples = uint64_t{1} << 40;
  // Serialised layout (little-endian): magic[8], format version u32, reserved u32,
  // num_samples u64, payload checksum u64, then the ceil(N/64) words of the bitset.
  static constexpr char kMagic[8] = {'S', 'C', 'A', 'N', 'I', 'D', 'X', '\0'};
  static constexpr uint32_t kFormatVersion = 1;
  static constexpr size_t kHeaderBytes = 32;

  // Throws std::invalid_argument unless 1 <= num_samples <= kMaxSamples.
  explicit SampleSet(uint64_t num_samples);
  SampleSet(const SampleSet& other);
  SampleSet& operator=(const SampleSet& other);
  SampleSet(SampleSet&&) noexcept = default;
  SampleSet& operator=(SampleSet&&) noexcept = default;

  uint64_t num_samples() const { return num_samples_; }
  size_t num_words() const { return num_words_; }
  // Output id arrays are uint32 when every id fits, int64 otherwise.
  bool ids_fit_uint32() const { return num_samples_ < (uint64_t{1} << 32); }

  // Bulk membership. Every id is bounds-checked before anything changes; the first bad
  // one throws std::invalid_argument naming its position and value.
  template <class Id> void add(const Id* ids, size_t count);
  template <class Id> void discard(const Id* ids, size_t count);
  template <class Id> void contains(const Id* ids, size_t count, bool* out) const;
  bool contains(uint64_t id) const;

  uint64_t count() const;  // popcount
  void clear();
  bool operator==(const SampleSet& other) const;

  // In-place algebra; throws std::invalid_argument when num_samples differ.
  void update(const SampleSet& other);               // |=
  void intersection_update(const SampleSet& other);  // &=
  void difference_update(const SampleSet& other);    // -=

  // Exactly k members, uniform over all k-subsets. Throws std::invalid_argument
  // unless 0 <= k <= count().
  SampleSet sample(uint64_t k, uint64_t seed, uint64_t stream) const;

  // Sorted members (count() entries) / sorted non-members (num_samples - count()).
  template <class Out> void to_array(Out* out) const;
  template <class Out> void complement(Out* out) const;
  // A uniformly random permutation of complement(), fixed by (seed, stream).
  template <class Out> void shuffled_complement(Out* out, uint64_t seed, uint64_t stream) const;

  size_t serialized_size() const { return kHeaderBytes + num_words_ * 8; }
  void serialize(char* out) const;  // writes serialized_size() bytes
  // Throws std::invalid_argument saying what is wrong (size, magic, version, N, checksum).
  static SampleSet deserialize(const char* data, size_t size);
  // The set whose words are `bits` (num_words() * 8 bytes, no header): the inverse of words(). Throws
  // std::invalid_argument for another size or a bit set at or beyond num_samples.
  static SampleSet from_words(uint64_t num_samples, const char* bits, size_t size);

  const uint64_t* words() const { return words_.get(); }

 private:
  using Words = std::unique_ptr<uint64_t[], WordsDeleter>;
  static Words allocate_zeroed_words(size_t count);
  template <class Id> void check_ids(const Id* ids, size_t count) const;
  void check_same_size(const SampleSet& other) const;
  template <class Out, bool kMembers> void write_ids(Out* out) const;

  uint64_t num_samples_;
  size_t num_words_;
  // Zero pages come lazily from the kernel, so a large, sparsely used set costs only the
  // pages it touches; large sets ask for huge pages (random ids hit a new 4 KiB page
  // almost every time, and a TLB miss costs as much as the cache miss).
  Words words_;
};

// 64-bit payload checksum of the serialised format (exposed for tests).
uint64_t checksum_words(const uint64_t* words, size_t count);

// One kind's rule: the k most extreme losses, or those beyond a threshold.
struct CandidateRule {
  bool by_threshold = false;
  uint64_t k = 0;          // used when !by_threshold, 0 <= k <= batch size
  double threshold = 0.0;  // used when by_threshold
};

// The per-batch SCAN candidate rule (scan_fast/schedule/candidates.py defines it and holds
// the oracle): X_d = top-k (ILL, highest loss) or bottom-k (RED, lowest loss) of direction d,
// ties to the lower position, or loss > / < threshold; C_X = X_a & X_b, and when
// 10 |C_X| < 9 |X_a| the |X_a| - |C_X| positions of (X_a | X_b) - C_X with the smallest
// CounterRng(seed, stream, kTopUpIll / kTopUpRed)(position) are added. Losses must be finite
// (std::invalid_argument otherwise, with the count and first positions).
template <class T>
void batch_candidates(const T* loss_a, const T* loss_b, size_t batch, const CandidateRule& ill,
                      const CandidateRule& red, uint64_t seed, uint64_t stream, bool* ill_out,
                      bool* red_out);

}  // namespace scan_fast
