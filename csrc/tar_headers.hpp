// The members of a tar file from its headers alone: each header block is read with pread and the
// members' data is skipped, so listing a shard costs one small read a member, not the shard's bytes.
// The rules are Python's tarfile's (ustar, GNU long names, pax path/size records, global pax headers),
// so the names, offsets and sizes are the ones tarfile gives (tests compare the two); only regular
// files are returned. Where tarfile stops quietly (an end-of-archive block, a header cut short or not
// a header, the end of the file) the listing stops too and says where; Python decides what that
// means (scan_fast/data/tar_listing.py).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace scan_fast {

struct TarListing {
  std::vector<std::string> names;  // bytes as stored (UTF-8 for pax paths)
  std::vector<uint64_t> offsets;   // of each member's data
  std::vector<uint64_t> sizes;
  uint64_t end = 0;                // offset of the block where the listing stopped
  // "end": stopped where tarfile stops quietly (the caller looks at the blocks at `end`);
  // "error": a member cannot be read as its headers say (detail says why);
  // "not_tar": the first header is not one (detail says why).
  std::string stop;
  std::string detail;
};

// Throws std::system_error when the operating system refuses a read.
TarListing list_tar(int32_t fd, uint64_t file_size);

}  // namespace scan_fast
