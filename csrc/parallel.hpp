// The engine's one way to split a loop over threads (sample_set.cpp, shard.cpp).
//
// Work is cut into contiguous slices whose bounds depend on the item count and the
// thread count only; callers keep results independent of the thread count by making
// each item's result a pure function of its inputs.
#pragma once

#include <algorithm>
#include <cstddef>
#include <thread>
#include <vector>

#include "sample_set.hpp"

namespace scan_fast {

// Below this many words per thread, spawning costs more than it saves.
constexpr size_t kWordsPerThread = size_t{1} << 16;

inline size_t parts_for(size_t items, size_t min_items_per_part) {
  const size_t by_size = std::max<size_t>(1, items / min_items_per_part);
  return std::min<size_t>(static_cast<size_t>(get_num_threads()), by_size);
}

// Runs body(begin, end, part) over `parts` contiguous slices of [0, items); part 0 runs
// on the calling thread. Bodies must not throw.
template <class Body>
void run_parts(size_t items, size_t parts, Body&& body) {
  if (parts <= 1) {
    body(size_t{0}, items, size_t{0});
    return;
  }
  std::vector<std::thread> workers;
  workers.reserve(parts - 1);
  for (size_t p = 1; p < parts; ++p) {
    workers.emplace_back([&body, items, parts, p] { body(items * p / parts, items * (p + 1) / parts, p); });
  }
  body(size_t{0}, items / parts, size_t{0});
  for (auto& w : workers) w.join();
}

}  // namespace scan_fast
