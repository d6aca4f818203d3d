#include "src/arch/x86_64/cpu.h"

#include <cstring>

#include "src/arch/x86_64/layout.h"

namespace lmig::x86 {
namespace {

constexpr uint32_t kMsrIa32MiscEnable = 0x1a0;
constexpr uint64_t kMiscEnableFastString = 1;
constexpr uint64_t kCr0Pe = 1ull << 0;
constexpr uint64_t kCr0Et = 1ull << 4;
constexpr uint64_t kCr0Pg = 1ull << 31;
constexpr uint64_t kCr4Pae = 1ull << 5;
constexpr uint64_t kEferLme = 1ull << 8;
constexpr uint64_t kEferLma = 1ull << 10;
constexpr uint64_t kPtePresentRw = 0x3;
constexpr uint64_t kPtePs = 0x80;

void Put64(std::span<uint8_t> mem, uint64_t at, uint64_t v) { std::memcpy(&mem[at], &v, 8); }

kvm_segment Segment(uint16_t selector, uint8_t type, bool long_code) {
  kvm_segment s{};
  s.base = 0;
  s.limit = 0xffffffff;
  s.selector = selector;
  s.type = type;
  s.present = 1;
  s.dpl = 0;
  s.db = long_code ? 0 : 1;
  s.s = 1;
  s.l = long_code ? 1 : 0;
  s.g = 1;
  return s;
}

}  // namespace

std::vector<kvm_cpuid_entry2> FilterCpuid(std::vector<kvm_cpuid_entry2> entries, int cpu_index,
                                          int num_cpus, bool tsc_deadline) {
  const uint32_t apic_id = static_cast<uint32_t>(cpu_index);
  for (kvm_cpuid_entry2& e : entries) {
    switch (e.function) {
      case 1:
        e.ebx = (e.ebx & 0x0000ffff) | (apic_id << 24) |
                (static_cast<uint32_t>(num_cpus) << 16);
        e.ecx |= 1u << 31;  // hypervisor present
        if (tsc_deadline) {
          e.ecx |= 1u << 24;
        }
        if (num_cpus > 1) {
          e.edx |= 1u << 28;  // HTT: the logical CPU count field is valid
        }
        break;
      case 0xb:
      case 0x1f:
        e.edx = apic_id;
        break;
      case 0xd:
        if (e.index == 0) {
          e.ebx = e.ecx;  // size for all of XCR0's supported features
        }
        break;
      case 0x8000001e:
        e.eax = apic_id;
        break;
      default:
        break;
    }
  }
  return entries;
}

std::vector<kvm_msr_entry> BootMsrs() {
  kvm_msr_entry misc{};
  misc.index = kMsrIa32MiscEnable;
  misc.data = kMiscEnableFastString;
  return {misc};
}

void WriteBootPageTables(std::span<uint8_t> mem) {
  Put64(mem, kPml4Start, kPdptStart | kPtePresentRw);
  for (uint64_t gib = 0; gib < 4; ++gib) {
    const uint64_t pd = kPdStart + gib * kPageSize;
    Put64(mem, kPdptStart + gib * 8, pd | kPtePresentRw);
    for (uint64_t i = 0; i < 512; ++i) {
      Put64(mem, pd + i * 8, (gib << 30) + (i << 21) + (kPtePresentRw | kPtePs));
    }
  }
}

void WriteBootGdt(std::span<uint8_t> mem, bool long_mode) {
  const uint64_t code = long_mode ? 0x00af9b000000ffffull : 0x00cf9b000000ffffull;
  const uint64_t gdt[4] = {0, 0, code, 0x00cf93000000ffffull};
  std::memcpy(&mem[kGdtStart], gdt, sizeof(gdt));
  std::memset(&mem[kIdtStart], 0, 8);
}

kvm_sregs BootSregs(const kvm_sregs& current, bool long_mode) {
  kvm_sregs s = current;
  s.gdt.base = kGdtStart;
  s.gdt.limit = 4 * 8 - 1;
  s.idt.base = kIdtStart;
  s.idt.limit = 7;
  s.cs = Segment(kBootCs, 0xb, long_mode);
  const kvm_segment data = Segment(kBootDs, 0x3, false);
  s.ds = s.es = s.fs = s.gs = s.ss = data;
  s.cr0 = (s.cr0 | kCr0Pe | kCr0Et);
  if (long_mode) {
    s.cr3 = kPml4Start;
    s.cr4 |= kCr4Pae;
    s.cr0 |= kCr0Pg;
    s.efer |= kEferLme | kEferLma;
  } else {
    s.cr0 &= ~kCr0Pg;
    s.efer &= ~(kEferLme | kEferLma);
  }
  return s;
}

kvm_regs BootRegs(uint64_t rip) {
  kvm_regs r{};
  r.rflags = 0x2;
  r.rip = rip;
  r.rsi = kBootParamsStart;
  r.rsp = kBootStackPointer;
  r.rbp = kBootStackPointer;
  return r;
}

void SetupLapicLint(kvm_lapic_state& lapic) {
  constexpr size_t kLvt0 = 0x350;
  constexpr size_t kLvt1 = 0x360;
  constexpr uint32_t kDeliveryModeMask = 0x700;
  constexpr uint32_t kExtInt = 0x700;
  constexpr uint32_t kNmi = 0x400;
  auto edit = [&](size_t off, uint32_t mode) {
    uint32_t v;
    std::memcpy(&v, &lapic.regs[off], 4);
    v = (v & ~kDeliveryModeMask & ~(1u << 16)) | mode;  // unmasked, new delivery mode
    std::memcpy(&lapic.regs[off], &v, 4);
  };
  edit(kLvt0, kExtInt);
  edit(kLvt1, kNmi);
}

}  // namespace lmig::x86
