// x86 vCPU boot state: CPUID filtering, boot MSRs, page tables, GDT and registers for the
// 64-bit (protocol >= 2.12) and 32-bit boot entries. Pure: fills KVM structs and byte spans.
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <span>
#include <vector>

namespace lmig::x86 {

// Adjusts the host's KVM_GET_SUPPORTED_CPUID entries for vCPU CPU_INDEX of NUM_CPUS:
// APIC ids in leaves 1/0xB/0x1F/0x8000001E, logical CPU count, the hypervisor bit
// (CPUID.1:ECX[31], without which Linux ignores the KVM leaves and kvm-clock), the
// TSC-deadline timer when KVM emulates it (TSC_DEADLINE; without it Linux calibrates the LAPIC
// timer against the PIT, which fails under nested emulation and leaves the guest without ticks),
// and the XSAVE area size (leaf 0xD.0 EBX) for the full XCR0 Linux enables.
std::vector<kvm_cpuid_entry2> FilterCpuid(std::vector<kvm_cpuid_entry2> entries, int cpu_index,
                                          int num_cpus, bool tsc_deadline);

// MSRs set on every vCPU at boot (fast strings in MISC_ENABLE).
std::vector<kvm_msr_entry> BootMsrs();

// Writes the identity-mapped boot page tables (4 GiB, 2 MiB pages) into MEM (guest memory
// starting at guest-physical 0) at kPml4Start.
void WriteBootPageTables(std::span<uint8_t> mem);

// Writes the boot GDT (null, null, code at 0x10, data at 0x18) and an empty IDT.
// LONG_MODE selects a 64-bit code segment.
void WriteBootGdt(std::span<uint8_t> mem, bool long_mode);

// Special registers for the kernel's entry: long mode with paging (LONG_MODE) or flat 32-bit
// protected mode without paging. Starts from CURRENT (as read from the vCPU).
kvm_sregs BootSregs(const kvm_sregs& current, bool long_mode);

// General registers for the entry at RIP with RSI -> zero page.
kvm_regs BootRegs(uint64_t rip);

// LAPIC LVT0 = ExtINT, LVT1 = NMI (as a PC's BIOS leaves them), edited in place.
void SetupLapicLint(kvm_lapic_state& lapic);

}  // namespace lmig::x86
