// Guest RAM: one anonymous host mapping, exposed to KVM as one or two memory slots around the
// MMIO hole (layout.h). Pages are addressed by their "RAM offset" (offset into the mapping),
// which is what dirty tracking, the wire protocol and RDMA remote addresses use.
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "include/lmig/limits.h"
#include "include/lmig/ram_range.h"
#include "src/arch/x86_64/layout.h"
#include "src/base/unique_fd.h"

namespace lmig {

struct MemorySlot {
  uint32_t id;
  uint64_t gpa;
  uint64_t size;
  uint64_t ram_offset;  // where the slot starts in the host mapping
};

class GuestMemory {
 public:
  // Maps SIZE bytes (MAP_NORESERVE: untouched memory costs nothing and reads as zero).
  static absl::StatusOr<GuestMemory> Create(uint64_t size);

  uint8_t* base() const { return map_.data(); }
  uint64_t size() const { return map_.size(); }
  uint64_t num_pages() const { return size() / kPageSize; }
  const std::vector<MemorySlot>& slots() const { return slots_; }
  const x86::RamLayout& layout() const { return layout_; }

  // The host view of guest-physical [GPA, GPA+LEN); error if it is not all RAM.
  absl::StatusOr<std::span<uint8_t>> GpaSpan(uint64_t gpa, uint64_t len) const;
  // Guest memory below the MMIO hole, addressed by guest-physical address.
  std::span<uint8_t> low() const { return {base(), layout_.low_size}; }

 private:
  GuestMemory(Mapping m, x86::RamLayout layout, std::vector<MemorySlot> slots)
      : map_(std::move(m)), layout_(layout), slots_(std::move(slots)) {}
  Mapping map_;
  x86::RamLayout layout_;
  std::vector<MemorySlot> slots_;
};

// Dense set of RAM pages (bit i = page at RAM offset i * 4096).
class PageBitmap {
 public:
  explicit PageBitmap(uint64_t num_pages = 0) : bits_((num_pages + 63) / 64, 0), n_(num_pages) {}
  void Set(uint64_t page) { bits_[page / 64] |= 1ull << (page % 64); }
  bool Test(uint64_t page) const { return (bits_[page / 64] >> (page % 64)) & 1; }
  void Clear() { std::fill(bits_.begin(), bits_.end(), 0); }
  void SetAll();
  // OR in a KVM slot bitmap covering pages [FIRST, FIRST + N).
  void OrWords(uint64_t first, const uint64_t* words, uint64_t n);
  uint64_t Count() const;
  uint64_t size() const { return n_; }
  std::vector<uint64_t>& words() { return bits_; }
  const std::vector<uint64_t>& words() const { return bits_; }

 private:
  std::vector<uint64_t> bits_;
  uint64_t n_;
};

// Coalesces the set pages of BITS into runs (page aligned) no longer than MAX_RUN bytes.
std::vector<RamRange> CoalesceRuns(const PageBitmap& bits, uint64_t max_run);

}  // namespace lmig
