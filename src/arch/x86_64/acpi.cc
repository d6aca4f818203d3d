#include "src/arch/x86_64/acpi.h"

#include <algorithm>
#include <cstddef>

#include "src/arch/x86_64/layout.h"
#include "src/arch/x86_64/table_writer.h"

namespace lmig::x86 {
namespace {

constexpr uint64_t kRsdpOffset = 0;
constexpr uint64_t kXsdtOffset = 0x40;
constexpr uint64_t kFadtOffset = 0x80;
constexpr uint64_t kDsdtOffset = 0x200;
constexpr uint64_t kMadtOffset = 0x280;
constexpr uint32_t kFadtLength = 276;  // ACPI 6.x
constexpr uint8_t kFadtRevision = 6;
constexpr uint32_t kFadtFlagWbinvd = 1 << 0;
constexpr uint32_t kFadtFlagNoPowerButton = 1 << 4;
constexpr uint32_t kFadtFlagNoSleepButton = 1 << 5;
constexpr uint16_t kBootArchLegacyDevices = 1 << 0;
constexpr uint16_t kBootArchNoVga = 1 << 2;

// The common 36-byte header of a system description table; length and checksum are set by
// Finish.
void Header(TableWriter& w, const char* signature, uint8_t revision) {
  w.Str(signature, 4);
  w.U32(0);  // length
  w.U8(revision);
  w.U8(0);  // checksum
  w.Str("LMIG", 6);
  w.Str("LMIGRDMA", 8);
  w.U32(1);  // OEM revision
  w.Str("LMIG", 4);
  w.U32(1);  // creator revision
}

std::vector<uint8_t> Finish(TableWriter& w) {
  std::vector<uint8_t> t = std::move(w.bytes());
  for (int i = 0; i < 4; ++i) t[4 + i] = static_cast<uint8_t>(t.size() >> (8 * i));
  SetChecksum(t, 9);
  return t;
}

std::vector<uint8_t> Rsdp(uint64_t xsdt) {
  TableWriter w;
  w.Str("RSD PTR ", 8);
  w.U8(0);  // checksum of the first 20 bytes
  w.Str("LMIG", 6);
  w.U8(2);   // revision: ACPI 2.0+, XSDT
  w.U32(0);  // RSDT: none
  w.U32(36);
  w.U64(xsdt);
  w.U8(0);  // extended checksum
  w.U8(0), w.U8(0), w.U8(0);
  std::vector<uint8_t> r = std::move(w.bytes());
  SetChecksum(r, 8, 0, 20);
  SetChecksum(r, 32);
  return r;
}

std::vector<uint8_t> Xsdt(uint64_t fadt, uint64_t madt) {
  TableWriter w;
  Header(w, "XSDT", 1);
  w.U64(fadt);
  w.U64(madt);
  return Finish(w);
}

// With ACPI present the guest takes its CPUs and interrupt routing from here, not from the
// MP tables: the same CPUs (APIC ids 0..n-1), IOAPIC (id n, GSI 0..23) and ISA routing.
std::vector<uint8_t> Madt(int num_cpus) {
  constexpr uint8_t kLocalApic = 0, kIoApic = 1, kSourceOverride = 2, kLocalApicNmi = 4;
  constexpr uint32_t kPcatCompat = 1;  // dual 8259s present
  constexpr uint16_t kLevelActiveHigh = 0x000d;
  TableWriter w;
  Header(w, "APIC", 4);
  w.U32(static_cast<uint32_t>(kLapicAddress));
  w.U32(kPcatCompat);
  for (int i = 0; i < num_cpus; ++i) {
    w.U8(kLocalApic), w.U8(8), w.U8(static_cast<uint8_t>(i)), w.U8(static_cast<uint8_t>(i));
    w.U32(1);  // enabled
  }
  w.U8(kIoApic), w.U8(12), w.U8(static_cast<uint8_t>(num_cpus)), w.U8(0);
  w.U32(static_cast<uint32_t>(kIoapicAddress));
  w.U32(0);  // GSI base
  // ISA IRQ 0 (PIT) arrives on IOAPIC pin 2, as KVM routes it; the SCI is level triggered.
  w.U8(kSourceOverride), w.U8(10), w.U8(0), w.U8(0), w.U32(2), w.U16(0);
  w.U8(kSourceOverride), w.U8(10), w.U8(0), w.U8(kAcpiSciIrq), w.U32(kAcpiSciIrq);
  w.U16(kLevelActiveHigh);
  w.U8(kLocalApicNmi), w.U8(6), w.U8(0xff), w.U16(0), w.U8(1);  // NMI on LINT1, all CPUs
  return Finish(w);
}

std::vector<uint8_t> Fadt(uint64_t dsdt) {
  TableWriter w;
  Header(w, "FACP", kFadtRevision);
  w.U32(0);                                    // FIRMWARE_CTRL: no FACS
  w.U32(static_cast<uint32_t>(dsdt));          // DSDT
  w.U8(0);                                     // reserved
  w.U8(0);                                     // preferred PM profile: unspecified
  w.U16(kAcpiSciIrq);                          // SCI_INT
  w.U32(0);                                    // SMI_CMD: none, always in ACPI mode
  w.U8(0), w.U8(0), w.U8(0), w.U8(0);          // ACPI_ENABLE/DISABLE, S4BIOS_REQ, PSTATE_CNT
  w.U32(kAcpiPm1EventPort);                    // PM1a_EVT_BLK
  w.U32(0);                                    // PM1b_EVT_BLK
  w.U32(kAcpiPm1ControlPort);                  // PM1a_CNT_BLK
  w.U32(0), w.U32(0), w.U32(0);                // PM1b_CNT, PM2_CNT, PM_TMR: none
  w.U32(0), w.U32(0);                          // GPE0/GPE1 blocks: none
  w.U8(4), w.U8(2), w.U8(0), w.U8(0);          // PM1_EVT_LEN, PM1_CNT_LEN, PM2, PM_TMR
  w.U8(0), w.U8(0), w.U8(0), w.U8(0);          // GPE0/1 lengths, GPE1 base, CST_CNT
  w.U16(101), w.U16(1001);                     // P_LVL2/3 latency: C2/C3 not supported
  w.U16(0), w.U16(0);                          // flush size, stride
  w.U8(0), w.U8(0), w.U8(0), w.U8(0), w.U8(0); // duty offset/width, alarms, century
  // No 8042 flag: the i8042 model only pulses reset (reboot=k writes port 0x64 whatever the
  // FADT says), so Linux must not probe it: a probe polls its status port 10000 times (half a
  // second and 10000 exits) before it gives up.
  w.U16(kBootArchLegacyDevices | kBootArchNoVga);
  w.U8(0);                                     // reserved
  w.U32(kFadtFlagWbinvd | kFadtFlagNoPowerButton | kFadtFlagNoSleepButton);
  for (int i = 0; i < 12; ++i) w.U8(0);        // RESET_REG: none (reboot goes via the i8042)
  w.U8(0);                                     // RESET_VALUE
  w.U16(0);                                    // ARM boot flags
  w.U8(0);                                     // minor version
  w.U64(0);                                    // X_FIRMWARE_CTRL
  w.U64(dsdt);                                 // X_DSDT
  // X_PM1a_EVT .. X_GPE1 and the sleep control/status registers: zero, so the guest derives
  // the generic addresses from the 32-bit blocks above.
  while (w.size() < kFadtLength - 8) w.U8(0);
  w.Str("LMIGRDMA", 8);                        // hypervisor vendor identity
  return Finish(w);
}

std::vector<uint8_t> Dsdt() {
  TableWriter w;
  Header(w, "DSDT", 2);
  // AML: Name (_S5, Package (4) { 5, 0, 0, 0 })
  const uint8_t kNameOp = 0x08, kPackageOp = 0x12, kBytePrefix = 0x0a, kZeroOp = 0x00;
  w.U8(kNameOp);
  w.Str("_S5_", 4);
  w.U8(kPackageOp);
  w.U8(7);  // PkgLength: itself, NumElements and the 5 bytes of elements
  w.U8(4);  // NumElements
  w.U8(kBytePrefix), w.U8(kAcpiS5SleepType);
  w.U8(kZeroOp), w.U8(kZeroOp), w.U8(kZeroOp);
  return Finish(w);
}

void Place(std::vector<uint8_t>& out, uint64_t offset, const std::vector<uint8_t>& table) {
  if (out.size() < offset + table.size()) out.resize(offset + table.size());
  std::copy(table.begin(), table.end(), out.begin() + static_cast<ptrdiff_t>(offset));
}

}  // namespace

std::vector<uint8_t> BuildAcpiTables(uint64_t base, int num_cpus) {
  std::vector<uint8_t> out;
  Place(out, kRsdpOffset, Rsdp(base + kXsdtOffset));
  Place(out, kXsdtOffset, Xsdt(base + kFadtOffset, base + kMadtOffset));
  Place(out, kFadtOffset, Fadt(base + kDsdtOffset));
  Place(out, kDsdtOffset, Dsdt());
  Place(out, kMadtOffset, Madt(num_cpus));
  return out;
}

}  // namespace lmig::x86
