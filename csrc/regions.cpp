#include "regions.hpp"

#include <fcntl.h>
#include <unistd.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <new>
#include <cerrno>
#include <stdexcept>
#include <string>
#include <system_error>
#include <unordered_map>
#include <vector>

namespace scan_fast {

namespace {

// Blocks of a descriptor opened with O_DIRECT: reads must start and end on the device's logical block
// (512 bytes on most disks; 4096 tried when 512 is refused) and land in an aligned buffer.
constexpr uint64_t kDirectBlock = 512, kDirectFallbackBlock = 4096, kBufferAlign = 4096;

struct AlignedBuffer {
  uint8_t* data = nullptr;
  size_t size = 0;
  ~AlignedBuffer() { std::free(data); }
  uint8_t* at_least(size_t want) {
    if (want > size) {
      std::free(data);
      data = nullptr;
      size = 0;
      void* p = nullptr;
      const size_t rounded = (want + kBufferAlign - 1) / kBufferAlign * kBufferAlign;
      if (posix_memalign(&p, kBufferAlign, rounded) != 0) throw std::bad_alloc();
      data = static_cast<uint8_t*>(p);
      size = rounded;
    }
    return data;
  }
};

bool is_direct(int32_t fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0) throw std::system_error(errno, std::generic_category(), "fcntl of fd " + std::to_string(fd));
  return (flags & O_DIRECT) != 0;
}

// Reads [offset, offset + size) of a direct descriptor through whole blocks into dst; false when the
// file ends before offset + size.
bool read_direct(int32_t fd, uint64_t offset, uint64_t size, uint8_t* dst, size_t k) {
  thread_local AlignedBuffer buffer;
  for (uint64_t block = kDirectBlock;; block = kDirectFallbackBlock) {
    const uint64_t start = offset / block * block;
    const uint64_t end = (offset + size + block - 1) / block * block;
    uint8_t* buf = buffer.at_least(end - start);
    uint64_t done = 0;
    bool refused = false;
    while (done < end - start) {
      const ssize_t got = ::pread(fd, buf + done, end - start - done, static_cast<off_t>(start + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        if (errno == EINVAL && done == 0 && block == kDirectBlock) {
          refused = true;  // the device's blocks are larger: once more with 4096
          break;
        }
        throw std::system_error(errno, std::generic_category(),
                                "direct pread of region " + std::to_string(k) + " (fd " + std::to_string(fd) + ")");
      }
      done += static_cast<uint64_t>(got);
      if (got == 0 || done % block != 0) break;  // the end of the file (direct reads stop only there)
    }
    if (refused) continue;
    if (done < offset + size - start) return false;
    std::memcpy(dst, buf + (offset - start), size);
    return true;
  }
}

}  // namespace

int64_t read_regions(const int32_t* fds, const uint64_t* offsets, const uint64_t* sizes, size_t count,
                     uint8_t* out, size_t out_size, const uint64_t* out_offsets) {
  for (size_t k = 0; k < count; ++k) {
    if (out_offsets[k] > out_size || sizes[k] > out_size - out_offsets[k]) {
      throw std::invalid_argument("region " + std::to_string(k) + " does not fit the destination buffer");
    }
  }
  std::unordered_map<int32_t, bool> direct;  // per descriptor of this call: opened with O_DIRECT?
  for (size_t k = 0; k < count; ++k) {
    uint8_t* dst = out + out_offsets[k];
    auto known = direct.find(fds[k]);
    if (known == direct.end()) known = direct.emplace(fds[k], is_direct(fds[k])).first;
    if (known->second) {
      if (sizes[k] > 0 && !read_direct(fds[k], offsets[k], sizes[k], dst, k)) return static_cast<int64_t>(k);
      continue;
    }
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

// The table's records in blocks of about 4 KiB, each read once per call: a query's probes (the
// interpolated guess and the bounds around it) and nearby queries' probes mostly fall in one block, so
// a query costs about one pread instead of four. Blocks live for one call only (bounded by its queries).
class TableReader {
 public:
  TableReader(int32_t fd, uint64_t table_offset, uint64_t count) : fd_(fd), table_offset_(table_offset), count_(count) {}

  TableRecord get(uint64_t index) {
    const uint64_t block = index / kPerBlock;
    auto it = blocks_.find(block);
    if (it == blocks_.end()) it = blocks_.emplace(block, read_block(block)).first;
    return it->second[index - block * kPerBlock];
  }

 private:
  static constexpr uint64_t kPerBlock = 4096 / sizeof(TableRecord);

  std::vector<TableRecord> read_block(uint64_t block) const {
    const uint64_t first = block * kPerBlock;
    const uint64_t n = std::min(kPerBlock, count_ - first);
    std::vector<TableRecord> records(n);
    auto* dst = reinterpret_cast<uint8_t*>(records.data());
    const uint64_t want = n * sizeof(TableRecord);
    uint64_t done = 0;
    while (done < want) {
      const ssize_t got = ::pread(fd_, dst + done, want - done,
                                  static_cast<off_t>(table_offset_ + first * sizeof(TableRecord) + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw std::system_error(errno, std::generic_category(),
                                "pread of allocation table records from " + std::to_string(first));
      }
      if (got == 0) {
        throw std::system_error(EIO, std::generic_category(),
                                "the allocation table ends before record " + std::to_string(first + done / sizeof(TableRecord)));
      }
      done += static_cast<uint64_t>(got);
    }
    return records;
  }

  int32_t fd_;
  uint64_t table_offset_, count_;
  std::unordered_map<uint64_t, std::vector<TableRecord>> blocks_;
};

}  // namespace

void find_sorted_pointers(int32_t fd, uint64_t table_offset, uint64_t count, const uint64_t* queries, size_t num_queries,
                          int64_t* found, uint64_t* sizes) {
  if (count == 0) {
    for (size_t q = 0; q < num_queries; ++q) found[q] = -1, sizes[q] = 0;
    return;
  }
  TableReader table(fd, table_offset, count);
  const TableRecord first_record = table.get(0);
  const TableRecord last_record = table.get(count - 1);
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
      const TableRecord probe = (mid == lo) ? lo_record : (mid == hi - 1) ? hi_record : table.get(mid);
      if (probe.ptr == value) {
        found[q] = static_cast<int64_t>(mid);
        sizes[q] = probe.size;
        break;
      }
      if (probe.ptr < value) {
        lo = mid + 1;
        if (lo < hi) lo_record = (lo == hi - 1) ? hi_record : table.get(lo);
      } else {
        hi = mid;
        if (lo < hi) hi_record = (hi - 1 == lo) ? lo_record : table.get(hi - 1);
      }
    }
  }
}

}  // namespace scan_fast
