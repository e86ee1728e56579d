// Branch-light selection of order statistics for batch_candidates.
//
// std::nth_element on a fresh 4096-loss batch mispredicts about every other compare;
// the schedule calls the candidate rule once per batch, so the selection runs on
// histograms instead. Level one maps every loss to one of 1024 bins by a monotone
// linear map (range from a small sample, clamped at both ends; SSE2 where available),
// counts the bins, and keeps only the bins holding the wanted ranks. Later levels work
// on those few values as order-preserving unsigned keys, 10 bits below their common
// prefix at a time. Any monotone map gives the exact answer: the map only decides how
// evenly the values spread, i.e. the speed.
#pragma once

#include <algorithm>
#include <cstdint>
#include <cstring>
#include <limits>
#include <type_traits>
#include <vector>

#if defined(__SSE2__)
#include <emmintrin.h>
#endif

namespace scan_fast {

template <class T>
using SortKey = std::conditional_t<sizeof(T) == 4, uint32_t, uint64_t>;

// Unsigned key with key(x) < key(y) iff x < y, for non-NaN x, y (-0 and +0 share a key).
template <class T>
inline SortKey<T> to_sort_key(T value) {
  using K = SortKey<T>;
  constexpr unsigned kBits = sizeof(K) * 8;
  value += T(0);  // -0 -> +0, so equal values have equal keys
  K bits;
  std::memcpy(&bits, &value, sizeof(K));
  const K negative = bits >> (kBits - 1);
  return bits ^ ((K{0} - negative) | (K{1} << (kBits - 1)));
}

template <class T>
inline T from_sort_key(SortKey<T> key) {
  using K = SortKey<T>;
  constexpr unsigned kBits = sizeof(K) * 8;
  const K was_positive = key >> (kBits - 1);
  const K bits = was_positive ? (key ^ (K{1} << (kBits - 1))) : ~key;
  T value;
  std::memcpy(&value, &bits, sizeof(K));
  return value;
}

// Linear bins for level one: bin(x) = clamp(trunc((x - lo) * scale), 0, bins - 1),
// monotone in x because IEEE subtraction, multiplication and rounding are.
inline void linear_bins(const float* x, size_t count, float lo, float scale, float top, uint16_t* bins) {
  size_t i = 0;
#if defined(__SSE2__)
  const __m128 vlo = _mm_set1_ps(lo), vscale = _mm_set1_ps(scale), vzero = _mm_setzero_ps(), vtop = _mm_set1_ps(top);
  for (; i + 8 <= count; i += 8) {
    const __m128 a = _mm_min_ps(_mm_max_ps(_mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i), vlo), vscale), vzero), vtop);
    const __m128 b = _mm_min_ps(_mm_max_ps(_mm_mul_ps(_mm_sub_ps(_mm_loadu_ps(x + i + 4), vlo), vscale), vzero), vtop);
    const __m128i packed = _mm_packs_epi32(_mm_cvttps_epi32(a), _mm_cvttps_epi32(b));  // bins < 2**15
    _mm_storeu_si128(reinterpret_cast<__m128i*>(bins + i), packed);
  }
#endif
  for (; i < count; ++i) {
    const float v = (x[i] - lo) * scale;
    bins[i] = static_cast<uint16_t>(v < 0.0f ? 0.0f : (v > top ? top : v));
  }
}

inline void linear_bins(const double* x, size_t count, double lo, double scale, double top, uint16_t* bins) {
  size_t i = 0;
#if defined(__SSE2__)
  const __m128d vlo = _mm_set1_pd(lo), vscale = _mm_set1_pd(scale), vzero = _mm_setzero_pd(), vtop = _mm_set1_pd(top);
  for (; i + 2 <= count; i += 2) {
    const __m128d a = _mm_min_pd(_mm_max_pd(_mm_mul_pd(_mm_sub_pd(_mm_loadu_pd(x + i), vlo), vscale), vzero), vtop);
    const __m128i as_int = _mm_cvttpd_epi32(a);
    bins[i] = static_cast<uint16_t>(_mm_cvtsi128_si32(as_int));
    bins[i + 1] = static_cast<uint16_t>(_mm_cvtsi128_si32(_mm_srli_si128(as_int, 4)));
  }
#endif
  for (; i < count; ++i) {
    const double v = (x[i] - lo) * scale;
    bins[i] = static_cast<uint16_t>(v < 0.0 ? 0.0 : (v > top ? top : v));
  }
}

template <class T>
class RadixSelector {
 public:
  using K = SortKey<T>;
  static constexpr unsigned kDigitBits = 10;
  static constexpr int64_t kBins = int64_t{1} << kDigitBits;
  static constexpr size_t kSmall = 48;  // below this, nth_element is cheaper than a level
  static constexpr size_t kSample = 64;

  // Values at ascending ranks rank_a and rank_b (both < count) of the finite
  // values[0..count), returned as sort keys.
  void select2(const T* values, size_t count, size_t rank_a, size_t rank_b, K* key_a, K* key_b) {
    if (count > kSmall) {
      T lo = values[0], hi = values[0];
      for (size_t j = 0; j < kSample; ++j) {
        const T v = values[j * count / kSample];
        lo = std::min(lo, v);
        hi = std::max(hi, v);
      }
      const double scale = static_cast<double>(kBins) / (static_cast<double>(hi) - static_cast<double>(lo));
      if (scale > 0 && scale < 1e300 && static_cast<T>(scale) < std::numeric_limits<T>::infinity()) {
        bins_.resize(count);
        linear_bins(values, count, lo, static_cast<T>(scale), static_cast<T>(kBins - 1), bins_.data());
        histogram(bins_.data(), count);
        size_t before_a, before_b;
        const int64_t bin_a = locate(rank_a, &before_a), bin_b = locate(rank_b, &before_b);
        // A sample that missed the bulk leaves one huge bin: fall through to full keys.
        if (counts_[bin_a] + counts_[bin_b] < count) {
          bucket_a_.resize(counts_[bin_a]);
          bucket_b_.resize(counts_[bin_b]);
          K* out_a = bucket_a_.data();
          K* out_b = bucket_b_.data();
          const uint16_t* bins = bins_.data();
          size_t na = 0, nb = 0;
          for (size_t i = 0; i < count; ++i) {  // buckets are small: well-predicted branches
            if (bins[i] == bin_a) out_a[na++] = to_sort_key(values[i]);
            if (bins[i] == bin_b) out_b[nb++] = to_sort_key(values[i]);
          }
          *key_a = select_in_place(out_a, na, rank_a - before_a);
          *key_b = select_in_place(out_b, nb, rank_b - before_b);
          return;
        }
      }
    }
    bucket_a_.resize(count);
    for (size_t i = 0; i < count; ++i) bucket_a_[i] = to_sort_key(values[i]);
    bucket_b_ = bucket_a_;
    *key_a = select_in_place(bucket_a_.data(), count, rank_a);
    *key_b = select_in_place(bucket_b_.data(), count, rank_b);
  }

 private:
  // Monotone key -> bin: the kDigitBits below the common prefix of [lo, hi], clamped.
  struct Digits {
    unsigned shift;
    int64_t base;
    Digits(K lo, K hi) {
      const K diff = lo ^ hi;  // non-zero
      const unsigned width = sizeof(K) * 8 - static_cast<unsigned>(sizeof(K) == 4 ? __builtin_clz(static_cast<uint32_t>(diff))
                                                                                    : __builtin_clzll(static_cast<uint64_t>(diff)));
      shift = width > kDigitBits ? width - kDigitBits : 0;
      base = static_cast<int64_t>(lo >> shift);
    }
    int64_t bin(K key) const {
      const int64_t d = static_cast<int64_t>(key >> shift) - base;
      return std::min(std::max(d, int64_t{0}), kBins - 1);
    }
  };

  static K nth(K* keys, size_t count, size_t rank) {
    std::nth_element(keys, keys + rank, keys + count);
    return keys[rank];
  }

  static void min_max(const K* keys, size_t count, K* lo, K* hi) {
    K low = keys[0], high = keys[0];
    for (size_t i = 0; i < count; ++i) {
      low = std::min(low, keys[i]);
      high = std::max(high, keys[i]);
    }
    *lo = low;
    *hi = high;
  }

  // Four interleaved sub-histograms: runs of equal bins do not serialise on one counter.
  template <class BinOf>
  void histogram_by(size_t count, BinOf bin_of) {
    std::memset(sub_, 0, sizeof(sub_));
    size_t i = 0;
    for (; i + 4 <= count; i += 4) {
      ++sub_[0][bin_of(i)];
      ++sub_[1][bin_of(i + 1)];
      ++sub_[2][bin_of(i + 2)];
      ++sub_[3][bin_of(i + 3)];
    }
    for (; i < count; ++i) ++sub_[0][bin_of(i)];
    uint32_t running = 0;
    for (int64_t b = 0; b < kBins; ++b) {
      counts_[b] = sub_[0][b] + sub_[1][b] + sub_[2][b] + sub_[3][b];
      running += counts_[b];
      ends_[b] = running;
    }
  }

  void histogram(const uint16_t* bins, size_t count) {
    histogram_by(count, [bins](size_t i) { return bins[i]; });
  }

  void histogram(const K* keys, size_t count, const Digits& digits) {
    histogram_by(count, [keys, &digits](size_t i) { return digits.bin(keys[i]); });
  }

  // The bin holding the rank-th key, and how many keys lie in lower bins.
  int64_t locate(size_t rank, size_t* before) const {
    const int64_t bin = std::upper_bound(ends_, ends_ + kBins, static_cast<uint32_t>(rank)) - ends_;
    *before = ends_[bin] - counts_[bin];
    return bin;
  }

  // Later levels use the exact range of the remaining keys, so each level fixes at
  // least kDigitBits more bits (or all keys are equal) and the loop ends.
  K select_in_place(K* keys, size_t count, size_t rank) {
    while (count > kSmall) {
      K lo, hi;
      min_max(keys, count, &lo, &hi);
      if (lo == hi) return lo;
      const Digits digits(lo, hi);
      histogram(keys, count, digits);
      size_t before;
      const int64_t bin = locate(rank, &before);
      size_t kept = 0;
      for (size_t i = 0; i < count; ++i) {
        const K key = keys[i];
        keys[kept] = key;  // kept <= i: in-place compaction never overtakes the reader
        kept += digits.bin(key) == bin;
      }
      count = kept;
      rank -= before;
    }
    return nth(keys, count, rank);
  }

  uint32_t sub_[4][kBins];
  uint32_t counts_[kBins];
  uint32_t ends_[kBins];  // inclusive prefix sums of counts_
  std::vector<K> bucket_a_, bucket_b_;
  std::vector<uint16_t> bins_;
};

// The rank-th smallest of `count` 64-bit keys spread evenly over [0, 2**64), such as the
// keyed hashes of the candidate top-up: one histogram of the top bits (about one key a
// bin) finds the bin holding the rank, nth_element finishes inside it. Exact for any
// keys; only the speed relies on the spread. The keys are read, never reordered.
class HashSelector {
 public:
  static constexpr unsigned kMaxBits = 12;

  uint64_t select(const uint64_t* keys, size_t count, size_t rank) {
    unsigned bits = 1;
    while (bits < kMaxBits && (size_t{1} << bits) < count) ++bits;
    const unsigned shift = 64 - bits;
    std::fill(counts_, counts_ + (size_t{1} << bits), 0u);
    for (size_t i = 0; i < count; ++i) ++counts_[keys[i] >> shift];
    size_t before = 0;
    uint64_t bin = 0;
    while (before + counts_[bin] <= rank) before += counts_[bin++];
    bucket_.resize(counts_[bin]);
    size_t kept = 0;
    for (size_t i = 0; i < count; ++i) {  // about one key in `count` matches: a well-predicted branch
      if ((keys[i] >> shift) == bin) bucket_[kept++] = keys[i];
    }
    std::nth_element(bucket_.begin(), bucket_.begin() + (rank - before), bucket_.begin() + kept);
    return bucket_[rank - before];
  }

 private:
  uint32_t counts_[size_t{1} << kMaxBits];
  std::vector<uint64_t> bucket_;
};

}  // namespace scan_fast
