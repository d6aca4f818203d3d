// A contiguous run of guest RAM, by offset into RAM (not guest-physical address).
#pragma once

#include <cstdint>

namespace lmig {

// [offset, offset + length).
struct RamRange {
  uint64_t offset;
  uint64_t length;
  bool operator==(const RamRange&) const = default;
};

}  // namespace lmig
