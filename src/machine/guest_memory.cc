#include "src/machine/guest_memory.h"

#include <sys/mman.h>

#include <bit>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig {

absl::StatusOr<GuestMemory> GuestMemory::Create(uint64_t size) {
  if (size == 0 || size % kPageSize != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("guest memory size %d is not a positive multiple of 4 KiB", size));
  }
  constexpr size_t kHugePage = 2 << 20;
  ASSIGN_OR_RETURN(Mapping m, Mapping::CreateAnonymousAligned(size, kHugePage,
                                                              PROT_READ | PROT_WRITE,
                                                              MAP_PRIVATE | MAP_NORESERVE));
  ::madvise(m.data(), size, MADV_HUGEPAGE);
  const x86::RamLayout layout = x86::RamLayoutFor(size);
  std::vector<MemorySlot> slots = {{0, 0, layout.low_size, 0}};
  if (layout.high_size > 0) {
    slots.push_back({1, x86::k4GiB, layout.high_size, layout.low_size});
  }
  return GuestMemory(std::move(m), layout, std::move(slots));
}

absl::StatusOr<std::span<uint8_t>> GuestMemory::GpaSpan(uint64_t gpa, uint64_t len) const {
  for (const MemorySlot& s : slots_) {
    if (gpa >= s.gpa && gpa + len <= s.gpa + s.size) {
      return std::span<uint8_t>(base() + s.ram_offset + (gpa - s.gpa), len);
    }
  }
  return absl::OutOfRangeError(
      absl::StrFormat("guest range [0x%x, 0x%x) is not RAM", gpa, gpa + len));
}

void PageBitmap::SetAll() {
  std::fill(bits_.begin(), bits_.end(), ~0ull);
  if (n_ % 64 != 0 && !bits_.empty()) {
    bits_.back() = (1ull << (n_ % 64)) - 1;
  }
}

void PageBitmap::OrWords(uint64_t first, const uint64_t* words, uint64_t n) {
  if (first % 64 == 0) {
    for (uint64_t w = 0; w < (n + 63) / 64; ++w) {
      bits_[first / 64 + w] |= words[w];
    }
    return;
  }
  for (uint64_t i = 0; i < n; ++i) {
    if ((words[i / 64] >> (i % 64)) & 1) {
      Set(first + i);
    }
  }
}

uint64_t PageBitmap::Count() const {
  uint64_t c = 0;
  for (uint64_t w : bits_) {
    c += std::popcount(w);
  }
  return c;
}

std::vector<RamRange> CoalesceRuns(const PageBitmap& bits, uint64_t max_run) {
  std::vector<RamRange> runs;
  const uint64_t max_pages = std::max<uint64_t>(1, max_run / kPageSize);
  const auto& words = bits.words();
  uint64_t start = 0, len = 0;
  auto flush = [&] {
    if (len > 0) {
      runs.push_back({start * kPageSize, len * kPageSize});
      len = 0;
    }
  };
  for (uint64_t w = 0; w < words.size(); ++w) {
    uint64_t word = words[w];
    if (word == 0) {
      flush();
      continue;
    }
    for (uint64_t b = 0; b < 64; ++b) {
      const uint64_t page = w * 64 + b;
      if ((word >> b) & 1) {
        if (len > 0 && start + len == page && len < max_pages) {
          ++len;
        } else {
          flush();
          start = page;
          len = 1;
        }
      }
    }
  }
  flush();
  return runs;
}

}  // namespace lmig
