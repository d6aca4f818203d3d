// Minimal ACPI: just enough for the guest to power itself off (`poweroff`, ACPI S5).
//
//   RSDP -> XSDT -> FADT -> DSDT
//               -> MADT
//
// The FADT describes fixed hardware with only the PM1a event and control blocks (ports in
// layout.h; no PM timer, no GPEs, no SMI command port, so the guest finds itself in ACPI mode);
// the DSDT holds one object, \_S5 (sleep type 5). The guest powers off by writing
// SLP_TYP=5 | SLP_EN to PM1a control (AcpiPm in src/devices). A guest that finds ACPI takes
// its CPUs and interrupt routing from the MADT (the MP tables say the same, for guests booted
// with acpi=off). Pure: returns bytes to copy into guest memory at kAcpiTablesStart.
#pragma once

#include <cstdint>
#include <vector>

namespace lmig::x86 {

// The tables for NUM_CPUS vCPUs (1..kMaxVcpus), laid out from guest-physical address BASE
// (RSDP at BASE).
std::vector<uint8_t> BuildAcpiTables(uint64_t base, int num_cpus);

// PM1 control register bits (ACPI 6.x, 4.8.3.2.1).
inline constexpr uint16_t kPm1SciEnable = 1 << 0;
inline constexpr uint16_t kPm1SleepEnable = 1 << 13;
inline constexpr int kPm1SleepTypeShift = 10;
inline constexpr uint16_t kAcpiS5SleepType = 5;

}  // namespace lmig::x86
