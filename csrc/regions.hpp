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
// I/O error). A descriptor opened with O_DIRECT is read in whole blocks of the device (512 bytes, or 4096
// when 512 is refused) through an aligned buffer of the thread: only those blocks come from storage.
int64_t read_regions(const int32_t* fds, const uint64_t* offsets, const uint64_t* sizes, size_t count,
                     uint8_t* out, size_t out_size, const uint64_t* out_offsets);

}  // namespace scan_fast

namespace scan_fast {

// A .beton's allocation table sorted by pointer: `count` records of (sample_id, ptr, size), three uint64
// each, from byte `table_offset` of file `fd`. For each query pointer, the index of the record holding
// it (-1 when none does) and that record's size, reading only the blocks of about 4 KiB that hold the
// records probed, with pread, each block once per call: steps of interpolation (pointers grow almost
// linearly along a written table, so one to three probes usually find a value, mostly in one block)
// alternate with halvings (never more than twice log2(count)). Throws
// std::system_error when a read fails or the table is cut short.
void find_sorted_pointers(int32_t fd, uint64_t table_offset, uint64_t count, const uint64_t* queries, size_t num_queries,
                          int64_t* found, uint64_t* sizes);

}  // namespace scan_fast
