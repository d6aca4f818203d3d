// The RDMA write planner: which RDMA WRITEs, with which scatter-gather lists, move runs of guest
// RAM from the source's registered memory to the same offsets in the destination's. A pure
// function of its inputs: no verbs calls (ibv_sge is only the struct a plan is posted with), so
// host unit tests run it (tests/unit/write_planner_test.cc).
#pragma once

#include <infiniband/verbs.h>

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "include/lmig/transport.h"

namespace lmig::rdma {

// A registered run of guest memory: offsets [offset, offset + length) are at ADDR under KEY
// (the lkey of one of the source's MRs, or the rkey of one of the destination's regions).
struct MemoryRegion {
  uint64_t offset = 0;
  uint64_t length = 0;
  uint64_t addr = 0;
  uint32_t key = 0;
};

struct WriteLimits {
  size_t max_sge = 1;                    // scatter-gather entries per WRITE (max_send_sge)
  uint64_t max_write_bytes = 256 << 10;  // bytes per WRITE (TransportOptions::max_write_bytes)
};

// One RDMA WRITE: BYTES (the sum of the SGEs' lengths) to REMOTE_ADDR under RKEY.
struct PlannedWrite {
  uint64_t remote_addr = 0;
  uint32_t rkey = 0;
  uint64_t bytes = 0;
  std::vector<ibv_sge> sges;
};

// Plans RANGES, in their order, as WRITEs from LOCAL (the source's MRs) to REMOTE (the
// destination's regions), both sorted by offset and non-overlapping. Every byte of every range
// is in exactly one SGE, under the lkey of the MR that holds it, written to the remote address
// and rkey of the region that holds it. A WRITE goes on with the next bytes while they are
// remote-contiguous under the same rkey, it is under max_write_bytes and has an SGE to spare
// (or the bytes extend its last SGE: local-contiguous in the same MR), so contiguous ranges
// merge. Empty ranges are skipped. Errors, with nothing planned: OutOfRange for a range that
// is not wholly inside both LOCAL and REMOTE (naming the range and the first offset outside),
// InvalidArgument for zero limits or a max_write_bytes beyond an SGE's 32-bit length.
absl::StatusOr<std::vector<PlannedWrite>> PlanWrites(std::span<const RamRange> ranges,
                                                     std::span<const MemoryRegion> local,
                                                     std::span<const MemoryRegion> remote,
                                                     const WriteLimits& limits);

}  // namespace lmig::rdma
