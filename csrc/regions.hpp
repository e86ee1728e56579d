// Gathered reads: many (file, offset, size) regions copied into one buffer with pread, the way a
// batch's stored values are staged (scan_fast/data/staging.py). Only the bytes asked for are read;
// no file is mapped, so a random row costs its own bytes, not the page-cache folio around it.
#pragma once

#include <cstddef>
#include <cstdint>

namespace scan_fast {

// Region k is (fds[k], offsets[k], sizes[k]), copied to out[out_offsets[k], out_offsets[k] + sizes[k]).
// Returns -1 when every region was read whole, else the index of the first region the file did not
// hold whole (a file cut short after it was opened). Throws std::invalid_argument for a destination
// outside `out`, std::system_error when the operating system refuses a read (a closed descriptor, an
// I/O error).
int64_t read_regions(const int32_t* fds, const uint64_t* offsets, const uint64_t* sizes, size_t count,
                     uint8_t* out, size_t out_size, const uint64_t* out_offsets);

}  // namespace scan_fast
