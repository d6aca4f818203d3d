// The sizes and limits every layer shares, defined once: the page, the vCPU count and the
// guest memory a machine, the wire protocol and the destination's checks all bound.
#pragma once

#include <cstdint>

namespace lmig {

// x86's base page, and the unit in which guest memory is tracked, moved and checked.
inline constexpr uint64_t kPageSize = 4096;
// vCPUs per machine (--cpus, the MP and ACPI tables, HELLO's count, the state blob).
inline constexpr uint32_t kMaxVcpus = 64;
// Guest memory (--mem, and the default of a destination's --max-mem).
inline constexpr uint64_t kMaxGuestMemory = 1ull << 40;

}  // namespace lmig
