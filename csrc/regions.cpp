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
