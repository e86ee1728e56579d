#include "tar_headers.hpp"

#include <unistd.h>

#include <algorithm>
#include <cctype>
#include <climits>
#include <cerrno>
#include <cstring>
#include <map>
#include <optional>
#include <system_error>

namespace scan_fast {
namespace {

constexpr uint64_t kBlock = 512;

uint64_t padded(uint64_t size) { return (size + kBlock - 1) / kBlock * kBlock; }

// Reads through a window: a shard of small members (captions, JSON, thumbnails) costs one pread a
// window instead of three a member, and a large member's data is still skipped, not read.
class WindowReader {
 public:
  explicit WindowReader(int32_t fd) : fd_(fd) {}

  // Up to `want` bytes at `offset` (fewer only at the end of the file).
  std::string read_at(uint64_t offset, uint64_t want) {
    if (offset < start_ || offset + want > start_ + window_.size()) fill(offset, std::max(want, kWindow));
    const uint64_t from = offset - start_;
    return window_.substr(from, std::min<uint64_t>(want, window_.size() - from));
  }

 private:
  static constexpr uint64_t kWindow = 64 * 1024;

  void fill(uint64_t offset, uint64_t want) {
    window_.assign(want, '\0');
    start_ = offset;
    uint64_t done = 0;
    while (done < want) {
      const ssize_t got = ::pread(fd_, window_.data() + done, want - done, static_cast<off_t>(offset + done));
      if (got < 0) {
        if (errno == EINTR) continue;
        throw std::system_error(errno, std::generic_category(), "pread of a tar header");
      }
      if (got == 0) break;
      done += static_cast<uint64_t>(got);
    }
    window_.resize(done);
  }

  int32_t fd_;
  uint64_t start_ = 0;
  std::string window_;
};

// A NUL-terminated field (tarfile's nts).
std::string field(const std::string& block, size_t start, size_t length) {
  const char* begin = block.data() + start;
  const void* nul = std::memchr(begin, '\0', length);
  return std::string(begin, nul ? static_cast<const char*>(nul) - begin : length);
}

// A numeric field (tarfile's nti): base-256 when its first byte is 0x80 or 0xff, else octal text.
std::optional<uint64_t> number(const std::string& block, size_t start, size_t length) {
  const auto first = static_cast<unsigned char>(block[start]);
  if (first == 0x80 || first == 0xff) {
    if (first == 0xff) return std::nullopt;  // negative: no size or checksum is
    uint64_t value = 0;
    for (size_t i = 1; i < length; ++i) {
      if (value >> 56) return std::nullopt;
      value = (value << 8) | static_cast<unsigned char>(block[start + i]);
    }
    return value;
  }
  std::string text = field(block, start, length);
  const auto not_space = [](unsigned char c) { return !std::isspace(c); };
  text.erase(text.begin(), std::find_if(text.begin(), text.end(), not_space));
  text.erase(std::find_if(text.rbegin(), text.rend(), not_space).base(), text.end());
  uint64_t value = 0;
  for (const char c : text) {
    if (c < '0' || c > '7' || (value >> 60)) return std::nullopt;
    value = value * 8 + static_cast<uint64_t>(c - '0');
  }
  return value;
}

enum class Header { ok, empty, truncated, zeros, invalid };

struct Block {
  Header kind = Header::ok;
  std::string name;
  uint64_t size = 0;
  char type = '0';
};

// One header block at `offset`, checked as tarfile's TarInfo.frombuf checks it.
Block read_header(WindowReader& reader, uint64_t offset) {
  Block b;
  const std::string block = reader.read_at(offset, kBlock);
  if (block.empty()) return b.kind = Header::empty, b;
  if (block.size() < kBlock) return b.kind = Header::truncated, b;
  if (std::all_of(block.begin(), block.end(), [](char c) { return c == '\0'; })) return b.kind = Header::zeros, b;
  const auto checksum = number(block, 148, 8);
  int64_t unsigned_sum = 256, signed_sum = 256;  // the checksum field counts as eight spaces
  for (size_t i = 0; i < kBlock; ++i) {
    if (i >= 148 && i < 156) continue;
    unsigned_sum += static_cast<unsigned char>(block[i]);
    signed_sum += static_cast<signed char>(block[i]);
  }
  const auto size = number(block, 124, 12);
  if (!checksum || !size) return b.kind = Header::invalid, b;
  if (static_cast<int64_t>(*checksum) != unsigned_sum && static_cast<int64_t>(*checksum) != signed_sum) {
    return b.kind = Header::invalid, b;
  }
  b.size = *size;
  b.type = block[156];
  b.name = field(block, 0, 100);
  if (b.type == '\0' && !b.name.empty() && b.name.back() == '/') b.type = '5';  // an old-style directory
  const std::string prefix = field(block, 345, 155);
  if (!prefix.empty() && b.type != 'L' && b.type != 'K' && b.type != 'S') b.name = prefix + "/" + b.name;
  return b;
}

// The "path" and "size" records of a pax header's data ("<length> <key>=<value>\n" each).
bool parse_pax(const std::string& data, std::map<std::string, std::string>& records) {
  size_t pos = 0;
  while (pos < data.size() && data[pos] != '\0') {
    const size_t space = data.find(' ', pos);
    if (space == std::string::npos) return false;
    uint64_t length = 0;
    for (size_t i = pos; i < space; ++i) {
      if (data[i] < '0' || data[i] > '9') return false;
      length = length * 10 + static_cast<uint64_t>(data[i] - '0');
    }
    if (length == 0 || pos + length > data.size()) return false;
    const std::string record = data.substr(space + 1, pos + length - space - 1);
    const size_t equals = record.find('=');
    if (equals == std::string::npos) return false;
    std::string value = record.substr(equals + 1);
    if (!value.empty() && value.back() == '\n') value.pop_back();
    records[record.substr(0, equals)] = value;
    pos += length;
  }
  return true;
}

bool is_regular(char type) { return type == '0' || type == '\0' || type == '7'; }
// tarfile's SUPPORTED_TYPES; the data of any other type is skipped like a file's.
bool is_supported(char type) { return type == '\0' || std::memchr("01234567LKS", type, 11) != nullptr; }

}  // namespace

TarListing list_tar(int32_t fd, uint64_t file_size) {
  TarListing out;
  WindowReader reader(fd);
  std::map<std::string, std::string> global;  // pax records of 'g' headers: apply to every later member
  uint64_t offset = 0;
  for (;;) {
    if (offset > file_size) {  // the previous member's padding is missing
      out.end = offset, out.stop = "error", out.detail = "unexpected end of data";
      return out;
    }
    const uint64_t header_offset = offset;
    Block b = read_header(reader, offset);
    if (b.kind != Header::ok) {
      out.end = header_offset;
      if (header_offset == 0 && b.kind != Header::zeros) {
        out.stop = "not_tar";
        out.detail = b.kind == Header::empty ? "empty file" : b.kind == Header::truncated ? "truncated header"
                                                                                          : "invalid header";
      } else {
        out.stop = "end";
      }
      return out;
    }
    offset += kBlock;
    std::map<std::string, std::string> local = global;
    std::optional<std::string> long_name;
    // Extension headers ('L' long name, 'x'/'X' pax, 'g' global pax) describe the header after them.
    while (b.type == 'L' || b.type == 'K' || b.type == 'x' || b.type == 'X' || b.type == 'g') {
      const std::string data = reader.read_at(offset, b.size);
      if (data.size() < b.size) {  // tarfile refuses a first member like this at open
        out.end = header_offset, out.stop = header_offset == 0 ? "not_tar" : "error";
        out.detail = "unexpected end of data";
        return out;
      }
      if (b.type == 'L') {
        long_name = data.substr(0, std::min(data.find('\0'), data.size()));
      } else if (b.type == 'x' || b.type == 'X' || b.type == 'g') {
        if (!parse_pax(data, b.type == 'g' ? global : local)) {  // tarfile stops here quietly
          out.end = header_offset, out.stop = header_offset == 0 ? "not_tar" : "end", out.detail = "invalid header";
          return out;
        }
        if (b.type == 'g') local = global;
      }
      offset += padded(b.size);
      b = read_header(reader, offset);
      if (b.kind != Header::ok) {
        out.end = header_offset, out.stop = header_offset == 0 ? "not_tar" : "error";
        out.detail = "missing or bad subsequent header";
        return out;
      }
      offset += kBlock;
    }
    if (long_name) b.name = *long_name;
    if (auto path = local.find("path"); path != local.end()) b.name = path->second;
    if (auto size = local.find("size"); size != local.end()) {
      uint64_t value = 0;  // tarfile reads a size that is not a number as 0
      for (const char c : size->second) {
        if (c < '0' || c > '9' || value > (UINT64_MAX - 9) / 10) {
          value = 0;
          break;
        }
        value = value * 10 + static_cast<uint64_t>(c - '0');
      }
      b.size = size->second.empty() ? 0 : value;
    }
    if (b.type == '5' && !b.name.empty()) {
      while (!b.name.empty() && b.name.back() == '/') b.name.pop_back();
    }
    const uint64_t data_offset = offset;
    const bool skips_data = is_regular(b.type) || !is_supported(b.type);
    if (data_offset + b.size > file_size) {
      out.end = header_offset, out.stop = "error";
      out.detail = "member " + b.name + " ends at byte " + std::to_string(data_offset + b.size) + ", the file has " +
                   std::to_string(file_size);
      return out;
    }
    if (is_regular(b.type)) {
      out.names.push_back(std::move(b.name));
      out.offsets.push_back(data_offset);
      out.sizes.push_back(b.size);
    }
    if (skips_data) offset += padded(b.size);
  }
}

}  // namespace scan_fast
