#include "transport/rdma/write_planner.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace lmig::rdma {
namespace {

// The region of REGIONS (sorted by offset) that holds guest offset OFF, or null.
const MemoryRegion* RegionFor(std::span<const MemoryRegion> regions, uint64_t off) {
  auto it = std::upper_bound(regions.begin(), regions.end(), off,
                             [](uint64_t o, const MemoryRegion& r) { return o < r.offset; });
  if (it == regions.begin()) {
    return nullptr;
  }
  --it;
  return off - it->offset < it->length ? &*it : nullptr;
}

// Appends LEN bytes (local LADDR under LKEY, remote RADDR under RKEY) to the last WRITE while
// it continues it (remote-contiguous, same rkey, room for an SGE and under max_write_bytes),
// else starts another.
void AddPiece(std::vector<PlannedWrite>& wrs, uint64_t laddr, uint32_t lkey, uint64_t raddr,
              uint32_t rkey, uint64_t len, const WriteLimits& limits) {
  while (len > 0) {
    PlannedWrite* w = wrs.empty() ? nullptr : &wrs.back();
    const bool continues = w != nullptr && w->rkey == rkey &&
                           w->remote_addr + w->bytes == raddr &&
                           w->bytes < limits.max_write_bytes;
    ibv_sge* last = continues ? &w->sges.back() : nullptr;
    const uint64_t take = std::min(
        len, continues ? limits.max_write_bytes - w->bytes : limits.max_write_bytes);
    if (last != nullptr && last->lkey == lkey && last->addr + last->length == laddr) {
      last->length += static_cast<uint32_t>(take);  // same local MR, contiguous
    } else if (continues && w->sges.size() < limits.max_sge) {
      w->sges.push_back({laddr, static_cast<uint32_t>(take), lkey});
    } else {
      wrs.push_back({raddr, rkey, 0, {{laddr, static_cast<uint32_t>(take), lkey}}});
      w = &wrs.back();
    }
    w->bytes += take;
    raddr += take;
    laddr += take;
    len -= take;
  }
}

}  // namespace

absl::StatusOr<std::vector<PlannedWrite>> PlanWrites(std::span<const RamRange> ranges,
                                                     std::span<const MemoryRegion> local,
                                                     std::span<const MemoryRegion> remote,
                                                     const WriteLimits& limits) {
  if (limits.max_sge == 0 || limits.max_write_bytes == 0 ||
      limits.max_write_bytes > UINT32_MAX) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "RDMA write plan: %d SGEs and %d bytes per WRITE", limits.max_sge,
        limits.max_write_bytes));
  }
  std::vector<PlannedWrite> wrs;
  for (const RamRange& range : ranges) {
    if (range.offset + range.length < range.offset) {
      return absl::OutOfRangeError(absl::StrFormat(
          "RDMA write [0x%x, +0x%x) beyond guest memory: its end overflows", range.offset,
          range.length));
    }
    uint64_t off = range.offset;
    uint64_t left = range.length;
    while (left > 0) {
      const MemoryRegion* l = RegionFor(local, off);
      const MemoryRegion* r = RegionFor(remote, off);
      if (l == nullptr || r == nullptr) {
        return absl::OutOfRangeError(absl::StrFormat(
            "RDMA write [0x%x, +0x%x) beyond guest memory: 0x%x is in no %s", range.offset,
            range.length, off,
            l == nullptr ? "local memory region" : "region of the destination's memory"));
      }
      const uint64_t piece =
          std::min({left, l->offset + l->length - off, r->offset + r->length - off});
      AddPiece(wrs, l->addr + (off - l->offset), l->key, r->addr + (off - r->offset), r->key,
               piece, limits);
      off += piece;
      left -= piece;
    }
  }
  return wrs;
}

}  // namespace lmig::rdma
