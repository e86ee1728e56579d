#include "regions.hpp"

#include <unistd.h>

#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>

namespace scan_fast {

int64_t read_regions(const int32_t* fds, const uint64_t* offsets, const uint64_t* sizes, size_t count,
                     uint8_t* out, size_t out_size, const uint64_t* out_offsets) {
  for (size_t k = 0; k < count; ++k) {
    if (out_offsets[k] > out_size || sizes[k] > out_size - out_offsets[k]) {
      throw std::invalid_argument("region " + std::to_string(k) + " does not fit the destination buffer");
    }
  }
  for (size_t k = 0; k < count; ++k) {
    uint8_t* dst = out + out_offsets[k];
    uint64_t done = 0;
    while (done < sizes[k]) {  // pread may return less than asked (signals, pipes): go on until EOF
      const ssize_t got = ::pread(fds[k], dst + done, sizes[k] - done, static_cast<off_t>(offsets[k] + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw std::system_error(errno, std::generic_category(),
                                "pread of region " + std::to_string(k) + " (fd " + std::to_string(fds[k]) + ")");
      }
      if (got == 0) return static_cast<int64_t>(k);  // end of file inside the region
      done += static_cast<uint64_t>(got);
    }
  }
  return -1;
}

}  // namespace scan_fast

namespace scan_fast {
namespace {

struct TableRecord {
  uint64_t sample_id, ptr, size;
};

TableRecord read_record(int32_t fd, uint64_t table_offset, uint64_t index) {
  TableRecord record{};
  auto* dst = reinterpret_cast<uint8_t*>(&record);
  const uint64_t want = sizeof(TableRecord);
  uint64_t done = 0;
  while (done < want) {
    const ssize_t got = ::pread(fd, dst + done, want - done,
                                static_cast<off_t>(table_offset + index * sizeof(TableRecord) + done));
    if (got < 0) {
      if (errno == EINTR) continue;
      throw std::system_error(errno, std::generic_category(), "pread of allocation table record " + std::to_string(index));
    }
    if (got == 0) {
      throw std::system_error(EIO, std::generic_category(),
                              "the allocation table ends before record " + std::to_string(index));
    }
    done += static_cast<uint64_t>(got);
  }
  return record;
}

}  // namespace

void find_sorted_pointers(int32_t fd, uint64_t table_offset, uint64_t count, const uint64_t* queries, size_t num_queries,
                          int64_t* found, uint64_t* sizes) {
  if (count == 0) {
    for (size_t q = 0; q < num_queries; ++q) found[q] = -1, sizes[q] = 0;
    return;
  }
  const TableRecord first_record = read_record(fd, table_offset, 0);
  const TableRecord last_record = read_record(fd, table_offset, count - 1);
  for (size_t q = 0; q < num_queries; ++q) {
    const uint64_t value = queries[q];
    found[q] = -1;
    sizes[q] = 0;
    uint64_t lo = 0, hi = count;  // the record, if any, is in [lo, hi)
    TableRecord lo_record = first_record, hi_record = last_record;  // records lo and hi - 1
    for (unsigned step = 0; lo < hi; ++step) {
      if (value < lo_record.ptr || value > hi_record.ptr) break;
      uint64_t mid;
      if (step % 2 == 0 && hi_record.ptr > lo_record.ptr) {
        const double share = static_cast<double>(value - lo_record.ptr) / static_cast<double>(hi_record.ptr - lo_record.ptr);
        mid = lo + static_cast<uint64_t>(share * static_cast<double>(hi - 1 - lo));
        if (mid >= hi) mid = hi - 1;
      } else {
        mid = lo + (hi - lo) / 2;
      }
      const TableRecord probe = (mid == lo) ? lo_record : (mid == hi - 1) ? hi_record : read_record(fd, table_offset, mid);
      if (probe.ptr == value) {
        found[q] = static_cast<int64_t>(mid);
        sizes[q] = probe.size;
        break;
      }
      if (probe.ptr < value) {
        lo = mid + 1;
        if (lo < hi) lo_record = (lo == hi - 1) ? hi_record : read_record(fd, table_offset, lo);
      } else {
        hi = mid;
        if (lo < hi) hi_record = (hi - 1 == lo) ? lo_record : read_record(fd, table_offset, hi - 1);
      }
    }
  }
}

}  // namespace scan_fast
