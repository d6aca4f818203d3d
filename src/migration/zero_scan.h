// Round 1's zero-page scan, one chunk at a time: which pages of guest memory hold anything
// but zeros, as runs ready to send. The source runs it inside round 1, chunk by chunk on the
// thread that sends the chunk (the migration thread for stream 0, each stream's reactor for
// its own chunks), so the scan overlaps the sending instead of delaying the first byte.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "include/lmig/ram_range.h"

namespace lmig {

// Whether the 4 KiB page at P is all zeros.
bool PageIsZero(const uint8_t* p);

// The non-zero pages of guest memory [OFFSET, OFFSET + LENGTH) (page-aligned) at BASE, as
// runs of at most MAX_RUN bytes appended to RUNS. RESIDENT (one byte per page of guest
// memory, mincore's answer taken before the scan; empty: every page resident) skips pages
// never touched, which read as zero. Returns the number of zero pages found.
uint64_t ScanChunk(const uint8_t* base, uint64_t offset, uint64_t length,
                   std::span<const unsigned char> resident, uint64_t max_run,
                   std::vector<RamRange>& runs);

}  // namespace lmig
