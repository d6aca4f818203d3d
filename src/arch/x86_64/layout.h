// Every fixed guest-physical address of the VMM, in one place
// (the design's memory layout, ../shared/docs/memory-layout.md):
//
//   0x0000_0000  reserved page; GDT at 0x500, IDT at 0x520, BDA word 0x40e -> EBDA
//   0x0000_1000  zero page .. heap end (0x2000); boot stack top at 0x8ff0
//   0x0001_0000  boot parameters ("zero page", struct boot_params)      <- RSI
//   0x0002_0000  kernel command line
//   0x0003_0000  boot page tables: PML4, PDPT, 4 PDs (identity map of 4 GiB, 2 MiB pages)
//   0x0009_fc00  EBDA: MP floating pointer
//   0x000a_0000  VGA hole (not RAM)
//   0x000f_0000  MBBIOS (reserved): MP configuration table; ACPI tables at 0xf_8000
//   0x0010_0000  protected-mode kernel                                   <- RIP (+0x200 in 64-bit)
//   0x0f00_0000  initramfs (or as high as fits below initrd_addr_max)
//   0xc000_0000  MMIO hole up to 4 GiB (IOAPIC 0xfec00000, LAPIC 0xfee00000)
//   0x1_0000_0000  RAM above 3 GiB continues here
#pragma once

#include <cstdint>

#include "include/lmig/limits.h"

namespace lmig::x86 {

using lmig::kPageSize;

inline constexpr uint64_t kGdtStart = 0x500;
inline constexpr uint64_t kIdtStart = 0x520;
inline constexpr uint64_t kBdaEbdaPointer = 0x40e;
inline constexpr uint64_t kBootStackPointer = 0x8ff0;
inline constexpr uint64_t kBootParamsStart = 0x10000;
inline constexpr uint64_t kCmdlineStart = 0x20000;
inline constexpr uint64_t kCmdlineMax = 0x10000;  // up to the page tables
inline constexpr uint64_t kPml4Start = 0x30000;
inline constexpr uint64_t kPdptStart = 0x31000;
inline constexpr uint64_t kPdStart = 0x32000;  // 4 PDs: 0x32000..0x35fff
inline constexpr uint64_t kEbdaStart = 0x9fc00;
inline constexpr uint64_t kVgaStart = 0xa0000;
inline constexpr uint64_t kMbbiosStart = 0xf0000;
inline constexpr uint64_t kMpConfigStart = kMbbiosStart;
inline constexpr uint64_t kAcpiTablesStart = 0xf8000;  // RSDP first (the guest scans for it)
inline constexpr uint64_t kHighMemoryStart = 0x100000;  // 1 MiB
inline constexpr uint64_t kKernelStart = 0x100000;
inline constexpr uint64_t kKernel64EntryOffset = 0x200;  // boot.rst: startup_64 = load + 0x200
inline constexpr uint64_t kInitrdPreferred = 0x0f000000;
inline constexpr uint64_t kMmioHoleStart = 0xc0000000;  // 3 GiB
inline constexpr uint64_t k4GiB = 0x100000000;
// KVM_SET_TSS_ADDR: three pages KVM keeps for itself (real-mode emulation on Intel), in the
// MMIO hole above the LAPIC, where no RAM or device is.
inline constexpr uint64_t kTssAddress = 0xfffbd000;
inline constexpr uint64_t kIoapicAddress = 0xfec00000;
inline constexpr uint64_t kLapicAddress = 0xfee00000;

// Boot GDT selectors (Documentation/arch/x86/boot.rst: __BOOT_CS 0x10, __BOOT_DS 0x18).
inline constexpr uint16_t kBootCs = 0x10;
inline constexpr uint16_t kBootDs = 0x18;

// Legacy I/O ports.
inline constexpr uint16_t kCom1Port = 0x3f8;
inline constexpr uint32_t kCom1Irq = 4;
inline constexpr uint16_t kI8042DataPort = 0x60;
inline constexpr uint16_t kI8042CommandPort = 0x64;
inline constexpr uint16_t kCmosIndexPort = 0x70;
inline constexpr uint16_t kCmosDataPort = 0x71;
// ACPI fixed-hardware PM1a event (status + enable) and control blocks, as QEMU's PIIX4 places
// them; the SCI is ISA IRQ 9.
inline constexpr uint16_t kAcpiPm1EventPort = 0x600;
inline constexpr uint16_t kAcpiPm1ControlPort = 0x604;
inline constexpr uint8_t kAcpiSciIrq = 9;

using lmig::kMaxVcpus;

// Guest RAM split around the MMIO hole: [0, low) and, above 3 GiB of RAM, [4 GiB, 4 GiB + high).
struct RamLayout {
  uint64_t low_size;
  uint64_t high_size;
  uint64_t total() const { return low_size + high_size; }
  uint64_t low_end() const { return low_size; }
};
inline RamLayout RamLayoutFor(uint64_t mem_size) {
  if (mem_size <= kMmioHoleStart) {
    return {mem_size, 0};
  }
  return {kMmioHoleStart, mem_size - kMmioHoleStart};
}

}  // namespace lmig::x86
