#include "jpeg_check.hpp"

#include <turbojpeg.h>

#include <vector>

namespace scan_fast {
namespace {

// One TurboJPEG handle a thread (a handle is not thread-safe), made anew after a failed decode: a handle
// reused after an error refused the next, intact file ("Invalid argument") and once wrote past its
// buffer (valgrind), so a failure's handle is never used again.
class Decompressor {
 public:
  ~Decompressor() { close(); }
  tjhandle get() {
    if (handle_ == nullptr) handle_ = tjInitDecompress();
    return handle_;
  }
  std::string fail() {
    std::string message = tjGetErrorStr2(handle_);
    close();
    return message;
  }

 private:
  void close() {
    if (handle_ != nullptr) tjDestroy(handle_);
    handle_ = nullptr;
  }
  tjhandle handle_ = nullptr;
};

}  // namespace

std::string jpeg_decode_error(const uint8_t* data, size_t size) {
  thread_local Decompressor decompressor;
  tjhandle handle = decompressor.get();
  if (handle == nullptr) return "TurboJPEG could not start a decompressor";
  int width = 0, height = 0, subsampling = 0, colorspace = 0;
  if (tjDecompressHeader3(handle, data, static_cast<unsigned long>(size), &width, &height, &subsampling,
                          &colorspace) != 0)
    return decompressor.fail();
  const tjscalingfactor eighth{1, 8};
  const int scaled_width = TJSCALED(width, eighth), scaled_height = TJSCALED(height, eighth);
  thread_local std::vector<unsigned char> pixels;  // grows to the largest 1/8-scale image the thread checks
  pixels.resize(static_cast<size_t>(scaled_width) * static_cast<size_t>(scaled_height) * 3);
  if (tjDecompress2(handle, data, static_cast<unsigned long>(size), pixels.data(), scaled_width, 0, scaled_height,
                    TJPF_RGB, TJFLAG_FASTDCT | TJFLAG_STOPONWARNING) != 0)
    return decompressor.fail();
  return "";
}

}  // namespace scan_fast
