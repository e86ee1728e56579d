// Counter-based random numbers for the index engine.
//
// Every random value is a pure function of (seed, stream, purpose, counter):
//
//     key         = mix64(mix64(mix64(seed ^ kSeedSalt) + stream) + purpose)
//     value(c)    = mix64(key + c * kGolden)            (c = 0, 1, 2, ...)
//
// where mix64 is the splitmix64 finaliser (Stafford's "variant 13", a bijection on
// 64-bit words). value(c) is exactly splitmix64's c-th output from state `key`, so
// within one key the stream has splitmix64's statistical quality (it passes BigCrush),
// and any element can be computed without the ones before it. That is what makes the
// parallel loops deterministic: a result depends on which counters are read, never
// on which thread reads them or in what order.
#pragma once

#include <cstdint>

namespace scan_fast {

inline uint64_t mix64(uint64_t z) {
  z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ULL;
  z = (z ^ (z >> 27)) * 0x94d049bb133111ebULL;
  return z ^ (z >> 31);
}

// Distinct purposes give unrelated streams for the same (seed, stream).
enum class RngPurpose : uint64_t {
  kTopUpIll = 1,
  kTopUpRed = 2,
  kSampleBernoulli = 3,
  kSampleFixUp = 4,
  kShuffleBucket = 5,
  kShuffleWithin = 6,
  kShardOrder = 7,
};

class CounterRng {
 public:
  static constexpr uint64_t kGolden = 0x9e3779b97f4a7c15ULL;
  static constexpr uint64_t kSeedSalt = 0x5ca11de5eed5eedULL;

  CounterRng(uint64_t seed, uint64_t stream, RngPurpose purpose)
      : key_(mix64(mix64(mix64(seed ^ kSeedSalt) + stream) + static_cast<uint64_t>(purpose))) {}

  uint64_t operator()(uint64_t counter) const { return mix64(key_ + counter * kGolden); }

  // The two 32-bit halves of value(c): half h of counter c is draw 2c + h.
  uint32_t half(uint64_t draw) const { return static_cast<uint32_t>((*this)(draw >> 1) >> (32 * (draw & 1))); }

  // Uniform integer in [0, range), range >= 1, without modulo bias (Lemire's
  // multiply-and-reject). Consumes counters from `counter` onwards.
  uint64_t bounded(uint64_t range, uint64_t& counter) const {
    __uint128_t m = static_cast<__uint128_t>((*this)(counter++)) * range;
    uint64_t low = static_cast<uint64_t>(m);
    if (low < range) {
      const uint64_t reject_below = (0 - range) % range;
      while (low < reject_below) {
        m = static_cast<__uint128_t>((*this)(counter++)) * range;
        low = static_cast<uint64_t>(m);
      }
    }
    return static_cast<uint64_t>(m >> 64);
  }

  // Same method for range < 2**32 on 32-bit draws (half a hash each); `draw` counts halves.
  uint32_t bounded32(uint32_t range, uint64_t& draw) const {
    uint64_t m = static_cast<uint64_t>(half(draw++)) * range;
    uint32_t low = static_cast<uint32_t>(m);
    if (low < range) {
      const uint32_t reject_below = (0u - range) % range;
      while (low < reject_below) {
        m = static_cast<uint64_t>(half(draw++)) * range;
        low = static_cast<uint32_t>(m);
      }
    }
    return static_cast<uint32_t>(m >> 32);
  }

 private:
  uint64_t key_;
};

}  // namespace scan_fast
