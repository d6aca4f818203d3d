// Intel MultiProcessor Specification 1.4 tables: how a guest without ACPI learns its CPUs,
// its IOAPIC and the ISA interrupt routing. Pure: returns bytes to copy into guest memory.
#pragma once

#include <cstdint>
#include <vector>

#include "absl/status/statusor.h"

namespace lmig::x86 {

struct MpTables {
  std::vector<uint8_t> floating_pointer;  // goes at kEbdaStart
  std::vector<uint8_t> config_table;      // goes at kMpConfigStart
};

// Builds the tables for NUM_CPUS vCPUs (APIC ids 0..n-1, CPU 0 the boot processor), one ISA
// bus, one IOAPIC (id n) and ISA IRQs 0-15 routed as KVM's default GSI routing does (IRQ 0 to
// pin 2). Error if NUM_CPUS is outside 1..kMaxVcpus.
absl::StatusOr<MpTables> BuildMpTables(int num_cpus);

// Sum of BYTES modulo 256 (0 for a valid MP structure).
uint8_t MpChecksum(const std::vector<uint8_t>& bytes);

}  // namespace lmig::x86
