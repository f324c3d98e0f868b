// The usage journal's on-disk format. A segment file holds frames, one per usage record:
//
//   magic u32 | segment u64 | length u32 | checksum u32 (of segment, length, payload) | payload
//
// all little-endian; the payload is the record's fields in a fixed order. The magic says the
// version: "USG2" frames (written now) carry a CRC-32C, "USG1" frames (older builds) a CRC-32;
// both are read, so an upgrade folds the records it finds. Segment files are recycled
// (overwritten from offset 0 under a new segment number, so that an fdatasync writes data
// blocks and not the inode), which leaves frames of an older segment behind the newest one: a
// reader stops at the first frame that is torn, checksummed wrong or of another segment.
#pragma once
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "store/store.h"

namespace aicloud::journal {

// CRC-32 (IEEE 802.3, zlib's): of data, continuing from crc (the value for what came before).
uint32_t crc32(std::string_view data, uint32_t crc = 0);

// CRC-32C (Castagnoli, iSCSI's), the same way: by the CPU's crc32 instruction where it has one
// (SSE4.2), else by tables. crc32c_portable is always the tables (for tests, and other CPUs).
uint32_t crc32c(std::string_view data, uint32_t crc = 0);
uint32_t crc32c_portable(std::string_view data, uint32_t crc = 0);

// Appends one frame holding r, for segment `segment`, to out.
void encode(const UsageRecord& r, uint64_t segment, std::string& out);

// The records of every whole frame of `segment` from the start of data, in order.
std::vector<UsageRecord> decode(std::string_view data, uint64_t segment);

}  // namespace aicloud::journal
