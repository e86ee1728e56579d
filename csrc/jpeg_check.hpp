// Does a JPEG decode to its end? The check the writers run on every JPEG they store as it is: the
// loader decodes with libjpeg-turbo's TurboJPEG API and takes any error or warning (a file cut short,
// corrupt entropy-coded data) as a failed image, so the check asks the same library the same question.
// It decodes at 1/8 scale, libjpeg's smallest: every entropy-coded byte is still read, but the inverse
// DCT keeps only each block's DC term.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string>

namespace scan_fast {

// "" when data decodes without error or warning; TurboJPEG's message otherwise.
std::string jpeg_decode_error(const uint8_t* data, size_t size);

}  // namespace scan_fast
