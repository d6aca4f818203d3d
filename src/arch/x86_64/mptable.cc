#include "src/arch/x86_64/mptable.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "src/arch/x86_64/layout.h"
#include "src/arch/x86_64/table_writer.h"

namespace lmig::x86 {
namespace {

constexpr uint8_t kSpecRev = 4;  // MP spec 1.4
constexpr uint8_t kEntryProcessor = 0;
constexpr uint8_t kEntryBus = 1;
constexpr uint8_t kEntryIoapic = 2;
constexpr uint8_t kEntryIoInterrupt = 3;
constexpr uint8_t kEntryLocalInterrupt = 4;
constexpr uint8_t kIntTypeInt = 0;
constexpr uint8_t kIntTypeNmi = 1;
constexpr uint8_t kIntTypeExtInt = 3;
constexpr uint8_t kLapicVersion = 0x14;
constexpr uint8_t kIoapicVersion = 0x11;

}  // namespace

uint8_t MpChecksum(const std::vector<uint8_t>& bytes) { return ByteSum(bytes); }

absl::StatusOr<MpTables> BuildMpTables(int num_cpus) {
  if (num_cpus < 1 || static_cast<uint32_t>(num_cpus) > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("MP table: %d CPUs, must be 1..%d", num_cpus, kMaxVcpus));
  }
  const uint8_t ioapic_id = static_cast<uint8_t>(num_cpus);
  TableWriter w;
  // Header (44 bytes); length, count and checksum are patched below.
  w.Str("PCMP", 4);
  w.U16(0);  // base table length
  w.U8(kSpecRev);
  w.U8(0);  // checksum
  w.Str("LMIGRDMA", 8);
  w.Str("LMIG-VMM", 12);
  w.U32(0);  // OEM table pointer
  w.U16(0);  // OEM table size
  w.U16(0);  // entry count
  w.U32(static_cast<uint32_t>(kLapicAddress));
  w.U16(0);  // extended table length
  w.U8(0);   // extended table checksum
  w.U8(0);
  uint16_t entries = 0;
  for (int cpu = 0; cpu < num_cpus; ++cpu, ++entries) {
    w.U8(kEntryProcessor);
    w.U8(static_cast<uint8_t>(cpu));  // local APIC id
    w.U8(kLapicVersion);
    w.U8(cpu == 0 ? 0x3 : 0x1);  // enabled | boot processor
    w.U32(0x600);                // CPU signature: family 6
    w.U32(0x201);                // features: FPU, APIC
    w.U32(0);
    w.U32(0);
  }
  w.U8(kEntryBus);
  w.U8(0);
  w.Str("ISA", 6);
  ++entries;
  w.U8(kEntryIoapic);
  w.U8(ioapic_id);
  w.U8(kIoapicVersion);
  w.U8(1);  // enabled
  w.U32(static_cast<uint32_t>(kIoapicAddress));
  ++entries;
  for (uint8_t irq = 0; irq < 16; ++irq) {
    if (irq == 2) {
      continue;  // cascade
    }
    w.U8(kEntryIoInterrupt);
    w.U8(kIntTypeInt);
    w.U16(0);  // polarity/trigger: conforms to the bus (ISA: edge, active high)
    w.U8(0);   // source bus
    w.U8(irq);
    w.U8(ioapic_id);
    w.U8(irq == 0 ? 2 : irq);  // KVM routes GSI 0 to IOAPIC pin 2
    ++entries;
  }
  for (auto [type, lint] : {std::pair<uint8_t, uint8_t>{kIntTypeExtInt, 0}, {kIntTypeNmi, 1}}) {
    w.U8(kEntryLocalInterrupt);
    w.U8(type);
    w.U16(0);
    w.U8(0);
    w.U8(0);
    w.U8(0xff);  // all local APICs
    w.U8(lint);
    ++entries;
  }
  std::vector<uint8_t> table = std::move(w.bytes());
  table[4] = static_cast<uint8_t>(table.size() & 0xff);
  table[5] = static_cast<uint8_t>(table.size() >> 8);
  table[34] = static_cast<uint8_t>(entries & 0xff);
  table[35] = static_cast<uint8_t>(entries >> 8);
  SetChecksum(table, 7);

  TableWriter f;
  f.Str("_MP_", 4);
  f.U32(static_cast<uint32_t>(kMpConfigStart));
  f.U8(1);  // length in 16-byte units
  f.U8(kSpecRev);
  f.U8(0);  // checksum
  for (int i = 0; i < 5; ++i) {
    f.U8(0);  // feature bytes: 0 = a configuration table is present
  }
  std::vector<uint8_t> fp = std::move(f.bytes());
  SetChecksum(fp, 10);
  return MpTables{std::move(fp), std::move(table)};
}

}  // namespace lmig::x86
