// The destination's check of a machine state blob (ValidateState) and RestoreState's use of it:
// blobs built with StateWriter and tampered with record by record, and real blobs from a tiny
// guest's SaveState.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <algorithm>
#include <cstring>
#include <string>
#include <vector>

#include "src/machine/machine.h"
#include "src/machine/state_codec.h"
#include "tests/unit/tiny_guest.h"

namespace lmig {
namespace {

using ::testing::HasSubstr;
using ::testing::StartsWith;

struct Rec {
  StateTag tag;
  uint32_t vcpu;
  std::vector<uint8_t> data;
};

template <typename T>
std::vector<uint8_t> Bytes(const T& v) {
  std::vector<uint8_t> b(sizeof(T));
  std::memcpy(b.data(), &v, sizeof(T));
  return b;
}

template <typename T>
T& As(Rec& r) {
  return *reinterpret_cast<T*>(r.data.data());
}

constexpr uint32_t kEfer = 0xc0000080, kStar = 0xc0000081, kTsc = 0x10;

StateLimits TwoVcpuLimits() {
  StateLimits l;
  l.num_vcpus = 2;
  l.xsave_size = 4096;
  l.msr_indices = {kTsc, 0x174, kEfer, kStar};
  return l;
}

// A valid state for LIMITS, in SaveState's order; vCPU i's RIP is 0x1000 + i.
std::vector<Rec> ValidRecords(const StateLimits& limits) {
  std::vector<Rec> out;
  for (uint32_t id = 0; id < limits.num_vcpus; ++id) {
    std::vector<kvm_cpuid_entry2> cpuid(3);
    cpuid[1].function = 1;
    out.push_back({StateTag::kCpuid, id, std::vector<uint8_t>(
        reinterpret_cast<uint8_t*>(cpuid.data()),
        reinterpret_cast<uint8_t*>(cpuid.data() + cpuid.size()))});
    kvm_mp_state mp{};
    mp.mp_state = id == 0 ? KVM_MP_STATE_RUNNABLE : KVM_MP_STATE_HALTED;
    out.push_back({StateTag::kMpState, id, Bytes(mp)});
    kvm_regs regs{};
    regs.rip = 0x1000 + id;
    regs.rflags = 2;
    out.push_back({StateTag::kRegs, id, Bytes(regs)});
    out.push_back({StateTag::kSregs, id, Bytes(kvm_sregs{})});
    out.push_back({StateTag::kXsave, id, std::vector<uint8_t>(limits.xsave_size, 0)});
    kvm_xcrs xcrs{};
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].value = 1;
    out.push_back({StateTag::kXcrs, id, Bytes(xcrs)});
    out.push_back({StateTag::kLapic, id, Bytes(kvm_lapic_state{})});
    std::vector<kvm_msr_entry> msrs;
    for (uint32_t idx : limits.msr_indices) {
      kvm_msr_entry e{};
      e.index = idx;
      e.data = idx + 1;
      msrs.push_back(e);
    }
    out.push_back({StateTag::kMsrs, id, std::vector<uint8_t>(
        reinterpret_cast<uint8_t*>(msrs.data()),
        reinterpret_cast<uint8_t*>(msrs.data() + msrs.size()))});
    kvm_vcpu_events ev{};
    ev.flags = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SHADOW;
    out.push_back({StateTag::kVcpuEvents, id, Bytes(ev)});
    kvm_debugregs dr{};
    dr.dr6 = 0xffff0ff0;
    dr.dr7 = 0x400;
    out.push_back({StateTag::kDebugRegs, id, Bytes(dr)});
  }
  for (uint32_t chip : {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC}) {
    kvm_irqchip c{};
    c.chip_id = chip;
    out.push_back({StateTag::kIrqchip, kVmWide, Bytes(c)});
  }
  kvm_pit_state2 pit{};
  pit.channels[0].count = 0x10000;
  pit.channels[1].mode = 0xff;  // what KVM's reset leaves in an unprogrammed channel
  out.push_back({StateTag::kPit2, kVmWide, Bytes(pit)});
  kvm_clock_data clock{};
  clock.clock = 123456789;
  out.push_back({StateTag::kClock, kVmWide, Bytes(clock)});
  UartState uart;
  uart.scr = 0x5a;
  uart.rx = {'o', 'k'};
  out.push_back({StateTag::kUart, kVmWide, uart.Serialize()});
  return out;
}

std::vector<uint8_t> Write(const std::vector<Rec>& recs) {
  StateWriter w;
  for (const Rec& r : recs) {
    w.Add(r.tag, r.vcpu, r.data.data(), r.data.size());
  }
  return w.Finish();
}

// The one-line error ValidateState gives for RECS (empty when it accepts them).
std::string Error(const std::vector<Rec>& recs, const StateLimits& limits = TwoVcpuLimits()) {
  auto st = ValidateState(Write(recs), limits);
  if (st.ok()) {
    return "";
  }
  const std::string msg(st.status().message());
  EXPECT_THAT(msg, StartsWith("state: "));
  EXPECT_EQ(msg.find('\n'), std::string::npos) << msg;
  return msg;
}

Rec* Find(std::vector<Rec>& recs, StateTag tag, uint32_t vcpu) {
  for (Rec& r : recs) {
    if (r.tag == tag && r.vcpu == vcpu) {
      return &r;
    }
  }
  return nullptr;
}

TEST(StateTagName, EveryTagHasAPrintableName) {
  EXPECT_EQ(StateTagName(StateTag::kCpuid), "CPUID");
  EXPECT_EQ(StateTagName(StateTag::kMpState), "MP_STATE");
  EXPECT_EQ(StateTagName(StateTag::kRegs), "REGS");
  EXPECT_EQ(StateTagName(StateTag::kSregs), "SREGS");
  EXPECT_EQ(StateTagName(StateTag::kXsave), "XSAVE");
  EXPECT_EQ(StateTagName(StateTag::kXcrs), "XCRS");
  EXPECT_EQ(StateTagName(StateTag::kLapic), "LAPIC");
  EXPECT_EQ(StateTagName(StateTag::kMsrs), "MSRS");
  EXPECT_EQ(StateTagName(StateTag::kVcpuEvents), "VCPU_EVENTS");
  EXPECT_EQ(StateTagName(StateTag::kDebugRegs), "DEBUGREGS");
  EXPECT_EQ(StateTagName(StateTag::kIrqchip), "IRQCHIP");
  EXPECT_EQ(StateTagName(StateTag::kPit2), "PIT2");
  EXPECT_EQ(StateTagName(StateTag::kClock), "CLOCK");
  EXPECT_EQ(StateTagName(StateTag::kUart), "UART");
  EXPECT_EQ(StateTagName(static_cast<StateTag>(99)), "tag 99");
}

TEST(ValidateState, AcceptsACompleteStateAndCopiesItOut) {
  const StateLimits limits = TwoVcpuLimits();
  auto st = ValidateState(Write(ValidRecords(limits)), limits);
  ASSERT_TRUE(st.ok()) << st.status();
  ASSERT_EQ(st->vcpus.size(), 2u);
  EXPECT_EQ(st->vcpus[1].regs.rip, 0x1001u);
  EXPECT_EQ(st->vcpus[1].mp_state.mp_state, uint32_t{KVM_MP_STATE_HALTED});
  EXPECT_EQ(st->vcpus[0].cpuid.size(), 3u);
  EXPECT_EQ(st->vcpus[0].xsave.size(), 4096u);
  ASSERT_EQ(st->vcpus[0].msrs.size(), 4u);
  EXPECT_EQ(st->vcpus[0].msrs[2].index, kEfer);
  EXPECT_EQ(st->vcpus[0].msrs[2].data, kEfer + 1);
  for (uint32_t chip = 0; chip < 3; ++chip) {
    EXPECT_EQ(st->irqchips[chip].chip_id, chip);
  }
  EXPECT_EQ(st->clock.clock, 123456789u);
  EXPECT_EQ(st->uart.scr, 0x5a);
  EXPECT_EQ(st->uart.rx, (std::vector<uint8_t>{'o', 'k'}));
}

TEST(ValidateState, RecordOrderDoesNotMatter) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  std::reverse(recs.begin(), recs.end());
  EXPECT_EQ(Error(recs), "");
}

TEST(ValidateState, XsaveOfTheHostsXsave2SizePasses) {
  StateLimits limits = TwoVcpuLimits();
  limits.xsave_size = 11008;  // an AMX host's KVM_CAP_XSAVE2
  EXPECT_EQ(Error(ValidRecords(limits), limits), "");
}

// Regression: REGS and SREGS replaced by copies of another record still resumed (the check
// counted ten records per vCPU), then KVM failed on the garbage registers.
TEST(ValidateState, RegsAndSregsReplacedByCopiesOfAnotherRecordAreRefused) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  *Find(recs, StateTag::kRegs, 0) = *Find(recs, StateTag::kMpState, 0);
  *Find(recs, StateTag::kSregs, 0) = *Find(recs, StateTag::kMpState, 0);
  EXPECT_EQ(Error(recs), "state: duplicate vcpu 0 MP_STATE record");

  // The same with the tags kept and another record's bytes inside.
  recs = ValidRecords(TwoVcpuLimits());
  Find(recs, StateTag::kRegs, 1)->data = Find(recs, StateTag::kLapic, 1)->data;
  EXPECT_EQ(Error(recs), "state: vcpu 1 REGS record has 1024 bytes, KVM reads 144");
  recs = ValidRecords(TwoVcpuLimits());
  Find(recs, StateTag::kSregs, 1)->data = Find(recs, StateTag::kRegs, 1)->data;
  EXPECT_EQ(Error(recs), "state: vcpu 1 SREGS record has 144 bytes, KVM reads 312");

  // Or another vCPU's copy: vCPU 1 gets two sets, vCPU 0 none.
  recs = ValidRecords(TwoVcpuLimits());
  Find(recs, StateTag::kRegs, 0)->vcpu = 1;
  EXPECT_EQ(Error(recs), "state: duplicate vcpu 1 REGS record");
}

// Regression: a blob without the PIT record resumed, with the PIT left at its reset state.
TEST(ValidateState, MissingPitIsRefused) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  std::erase_if(recs, [](const Rec& r) { return r.tag == StateTag::kPit2; });
  EXPECT_EQ(Error(recs), "state: no PIT2 record");
}

// Regression: a duplicated CLOCK record resumed (the last one won).
TEST(ValidateState, DuplicateClockIsRefused) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  recs.push_back(*Find(recs, StateTag::kClock, kVmWide));
  EXPECT_EQ(Error(recs), "state: duplicate CLOCK record");
}

// Regression: an empty CPUID record resumed a vCPU with no CPUID at all.
TEST(ValidateState, EmptyCpuidIsRefused) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  Find(recs, StateTag::kCpuid, 1)->data.clear();
  EXPECT_EQ(Error(recs), "state: vcpu 1 CPUID record is empty");
}

// Regression: a 576-byte XSAVE record went to KVM_SET_XSAVE, which read 4 KiB: the heap bytes
// after the record became the guest's AVX state.
TEST(ValidateState, ShortXsaveIsRefused) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  Find(recs, StateTag::kXsave, 1)->data.resize(576);
  EXPECT_EQ(Error(recs), "state: vcpu 1 XSAVE record has 576 bytes, KVM reads 4096");

  StateLimits amx = TwoVcpuLimits();
  amx.xsave_size = 11008;
  recs = ValidRecords(amx);
  Find(recs, StateTag::kXsave, 0)->data.resize(4096);
  EXPECT_EQ(Error(recs, amx), "state: vcpu 0 XSAVE record has 4096 bytes, KVM reads 11008");
  Find(recs, StateTag::kXsave, 0)->data.resize(11009);
  EXPECT_EQ(Error(recs, amx), "state: vcpu 0 XSAVE record has 11009 bytes, KVM reads 11008");
}

std::string MissingMessage(const Rec& r) {
  if (r.tag == StateTag::kIrqchip) {
    static const char* const kChips[] = {"the PIC master (chip 0)", "the PIC slave (chip 1)",
                                         "the IOAPIC (chip 2)"};
    kvm_irqchip c;
    std::memcpy(&c, r.data.data(), sizeof(c));
    return std::string("state: no IRQCHIP record for ") + kChips[c.chip_id];
  }
  if (r.vcpu == kVmWide) {
    return "state: no " + StateTagName(r.tag) + " record";
  }
  return "state: vcpu " + std::to_string(r.vcpu) + " has no " + StateTagName(r.tag) + " record";
}

TEST(ValidateState, EachRequiredRecordMissingIsNamed) {
  const std::vector<Rec> valid = ValidRecords(TwoVcpuLimits());
  ASSERT_EQ(valid.size(), 2 * 10 + 6u);
  for (size_t i = 0; i < valid.size(); ++i) {
    std::vector<Rec> recs = valid;
    recs.erase(recs.begin() + i);
    EXPECT_EQ(Error(recs), MissingMessage(valid[i])) << "without record " << i;
  }
  EXPECT_EQ(Error({}), "state: vcpu 0 has no CPUID record");
}

TEST(ValidateState, EachRecordDuplicatedIsNamed) {
  const std::vector<Rec> valid = ValidRecords(TwoVcpuLimits());
  for (size_t i = 0; i < valid.size(); ++i) {
    std::vector<Rec> recs = valid;
    recs.push_back(valid[i]);
    const Rec& r = valid[i];
    std::string want;
    if (r.tag == StateTag::kIrqchip) {
      want = "state: duplicate IRQCHIP record for the ";
    } else if (r.vcpu == kVmWide) {
      want = "state: duplicate " + StateTagName(r.tag) + " record";
    } else {
      want = "state: duplicate vcpu " + std::to_string(r.vcpu) + " " + StateTagName(r.tag) +
             " record";
    }
    EXPECT_THAT(Error(recs), StartsWith(want)) << "record " << i << " twice";
  }
}

TEST(ValidateState, EveryFixedSizeRecordMustBeExactlyWhatKvmReads) {
  const std::vector<Rec> valid = ValidRecords(TwoVcpuLimits());
  for (size_t i = 0; i < valid.size(); ++i) {
    const Rec& r = valid[i];
    if (r.tag == StateTag::kCpuid || r.tag == StateTag::kMsrs || r.tag == StateTag::kUart) {
      continue;  // variable length: below
    }
    for (int delta : {-1, 1}) {
      std::vector<Rec> recs = valid;
      recs[i].data.resize(r.data.size() + delta);
      const std::string who =
          r.vcpu == kVmWide ? StateTagName(r.tag)
                            : "vcpu " + std::to_string(r.vcpu) + " " + StateTagName(r.tag);
      EXPECT_EQ(Error(recs), "state: " + who + " record has " +
                                 std::to_string(r.data.size() + delta) + " bytes, KVM reads " +
                                 std::to_string(r.data.size()))
          << "record " << i;
    }
  }
  std::vector<Rec> recs = valid;
  Find(recs, StateTag::kLapic, 0)->data.resize(576);
  EXPECT_EQ(Error(recs), "state: vcpu 0 LAPIC record has 576 bytes, KVM reads 1024");
}

TEST(ValidateState, CpuidMustBeWholeEntriesWithinKvmsLimit) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  Find(recs, StateTag::kCpuid, 0)->data.resize(41);
  EXPECT_EQ(Error(recs),
            "state: vcpu 0 CPUID record has 41 bytes, not a whole number of 40-byte "
            "kvm_cpuid_entry2");
  Find(recs, StateTag::kCpuid, 0)->data.assign(40 * 256, 0);
  EXPECT_EQ(Error(recs), "");
  Find(recs, StateTag::kCpuid, 0)->data.assign(40 * 257, 0);
  EXPECT_EQ(Error(recs),
            "state: vcpu 0 CPUID record has 257 entries, KVM_SET_CPUID2 takes at most 256");
}

TEST(ValidateState, MsrsMustBeWholeDistinctEntriesThisHostRestores) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  Rec& msrs = *Find(recs, StateTag::kMsrs, 1);
  const std::vector<uint8_t> good = msrs.data;

  msrs.data.resize(good.size() + 1);
  EXPECT_EQ(Error(recs),
            "state: vcpu 1 MSRS record has 65 bytes, not a whole number of 16-byte "
            "kvm_msr_entry");
  msrs.data.clear();
  EXPECT_EQ(Error(recs), "state: vcpu 1 MSRS record is empty");

  // A subset is fine: the source's host may restore fewer MSRs than this one.
  msrs.data.assign(good.begin(), good.begin() + 16);
  EXPECT_EQ(Error(recs), "");

  msrs.data = good;
  As<kvm_msr_entry>(msrs).index = 0x12345678;
  EXPECT_EQ(Error(recs),
            "state: vcpu 1 MSRS record has MSR 0x12345678, which this host's KVM does not "
            "restore");

  msrs.data = good;
  reinterpret_cast<kvm_msr_entry*>(msrs.data.data())[3].index = kTsc;
  EXPECT_EQ(Error(recs), "state: vcpu 1 MSRS record has MSR 0x10 twice");

  msrs.data = good;
  msrs.data.insert(msrs.data.end(), good.begin(), good.begin() + 16);
  EXPECT_EQ(Error(recs), "state: vcpu 1 MSRS record has 5 entries, this host's KVM takes at most 4");
}

TEST(ValidateState, VcpuIdsMustBeWithinTheAnnouncedCount) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  recs.push_back(*Find(recs, StateTag::kRegs, 1));
  recs.back().vcpu = 2;
  EXPECT_EQ(Error(recs), "state: vcpu 2 REGS record names a vcpu this machine lacks (it has 2)");

  // A blob for two vCPUs on a one-vCPU destination.
  StateLimits one = TwoVcpuLimits();
  one.num_vcpus = 1;
  EXPECT_EQ(Error(ValidRecords(TwoVcpuLimits()), one),
            "state: vcpu 1 CPUID record names a vcpu this machine lacks (it has 1)");
  // And for one vCPU on a two-vCPU destination.
  EXPECT_EQ(Error(ValidRecords(one)), "state: vcpu 1 has no CPUID record");
}

TEST(ValidateState, RecordsAreVmWideExactlyWhenTheyShouldBe) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  Find(recs, StateTag::kClock, kVmWide)->vcpu = 0;
  EXPECT_EQ(Error(recs), "state: vcpu 0 CLOCK record names a vcpu, but CLOCK is VM-wide");
  recs = ValidRecords(TwoVcpuLimits());
  for (StateTag t : {StateTag::kIrqchip, StateTag::kPit2, StateTag::kUart}) {
    std::vector<Rec> r2 = recs;
    Find(r2, t, kVmWide)->vcpu = 1;
    EXPECT_EQ(Error(r2), "state: vcpu 1 " + StateTagName(t) + " record names a vcpu, but " +
                             StateTagName(t) + " is VM-wide");
  }
  Find(recs, StateTag::kRegs, 0)->vcpu = kVmWide;
  EXPECT_EQ(Error(recs), "state: REGS record is VM-wide, but REGS belongs to a vcpu");
}

TEST(ValidateState, IrqchipsAreOneOfEachChip) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  std::vector<Rec*> chips;
  for (Rec& r : recs) {
    if (r.tag == StateTag::kIrqchip) {
      chips.push_back(&r);
    }
  }
  ASSERT_EQ(chips.size(), 3u);
  As<kvm_irqchip>(*chips[2]).chip_id = KVM_IRQCHIP_PIC_SLAVE;  // two slaves, no IOAPIC
  EXPECT_EQ(Error(recs), "state: duplicate IRQCHIP record for the PIC slave (chip 1)");
  As<kvm_irqchip>(*chips[2]).chip_id = 3;
  EXPECT_EQ(Error(recs), "state: IRQCHIP record has chip_id 3, not a PIC (0, 1) or the IOAPIC (2)");
}

TEST(ValidateState, TruncatedBlobsAreRefusedAtEveryLength) {
  const std::vector<uint8_t> blob = Write(ValidRecords(TwoVcpuLimits()));
  for (size_t n = 0; n < blob.size(); n += (n < 64 || blob.size() - n < 64) ? 1 : 7) {
    auto st = ValidateState(std::span(blob.data(), n), TwoVcpuLimits());
    EXPECT_FALSE(st.ok()) << "accepted the first " << n << " bytes";
  }
  // The first record cut short names itself.
  auto st = ValidateState(std::span(blob.data(), 20), TwoVcpuLimits());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_EQ(st.status().message(), "state: vcpu 0 CPUID record of 120 bytes truncated (8 bytes left)");
  st = ValidateState(std::span(blob.data(), 5), TwoVcpuLimits());
  EXPECT_EQ(st.status().message(), "state: truncated record header at byte 0 (5 bytes left)");
  // A length field pointing far past the end.
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  std::vector<uint8_t> lying = Write(recs);
  const uint32_t huge = 0xfffffff0;
  std::memcpy(lying.data() + 8, &huge, 4);
  st = ValidateState(lying, TwoVcpuLimits());
  EXPECT_EQ(st.status().code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(st.status().message(), HasSubstr("vcpu 0 CPUID record of 4294967280 bytes truncated"));
}

TEST(ValidateState, UnknownTagsAreRefused) {
  std::vector<uint8_t> blob = Write(ValidRecords(TwoVcpuLimits()));
  std::vector<uint8_t> bad = blob;
  const uint32_t tag = 99;
  std::memcpy(bad.data(), &tag, 4);
  EXPECT_EQ(ValidateState(bad, TwoVcpuLimits()).status().message(),
            "state: unknown record tag 99 at byte 0");
  const uint32_t zero = 0;
  std::memcpy(bad.data(), &zero, 4);
  EXPECT_EQ(ValidateState(bad, TwoVcpuLimits()).status().message(),
            "state: unknown record tag 0 at byte 0");
}

TEST(ValidateState, ValuesKvmWouldRefuseOrMisuseAreRefused) {
  const StateLimits limits = TwoVcpuLimits();
  auto with = [&](StateTag tag, uint32_t vcpu, auto edit) {
    std::vector<Rec> recs = ValidRecords(limits);
    edit(*Find(recs, tag, vcpu));
    return Error(recs);
  };
  EXPECT_EQ(with(StateTag::kMpState, 0, [](Rec& r) { As<kvm_mp_state>(r).mp_state = 7; }),
            "state: vcpu 0 MP_STATE record has mp_state 7, not an x86 vCPU state");
  EXPECT_EQ(with(StateTag::kXcrs, 1, [](Rec& r) { As<kvm_xcrs>(r).nr_xcrs = 17; }),
            "state: vcpu 1 XCRS record has nr_xcrs 17, KVM_MAX_XCRS is 16");
  EXPECT_EQ(with(StateTag::kXcrs, 1, [](Rec& r) { As<kvm_xcrs>(r).nr_xcrs = 16; }), "");
  EXPECT_EQ(with(StateTag::kXcrs, 1, [](Rec& r) { As<kvm_xcrs>(r).flags = 1; }),
            "state: vcpu 1 XCRS record has flags 0x1, KVM takes none");
  EXPECT_EQ(with(StateTag::kVcpuEvents, 0,
                 [](Rec& r) { As<kvm_vcpu_events>(r).flags |= 0x100; }),
            "state: vcpu 0 VCPU_EVENTS record has unknown flags 0x100");
  EXPECT_EQ(with(StateTag::kVcpuEvents, 0,
                 [](Rec& r) {
                   As<kvm_vcpu_events>(r).exception.pending = 1;
                   As<kvm_vcpu_events>(r).exception.nr = 40;
                 }),
            "state: vcpu 0 VCPU_EVENTS record has exception vector 40, not an exception");
  EXPECT_EQ(with(StateTag::kVcpuEvents, 0,
                 [](Rec& r) {
                   As<kvm_vcpu_events>(r).exception.pending = 1;
                   As<kvm_vcpu_events>(r).exception.nr = 14;
                 }),
            "");
  EXPECT_EQ(with(StateTag::kDebugRegs, 1, [](Rec& r) { As<kvm_debugregs>(r).flags = 2; }),
            "state: vcpu 1 DEBUGREGS record has flags 0x2, KVM takes none");
  EXPECT_EQ(with(StateTag::kDebugRegs, 1,
                 [](Rec& r) { As<kvm_debugregs>(r).dr7 = 1ull << 40; }),
            "state: vcpu 1 DEBUGREGS record has dr6 0xffff0ff0 dr7 0x10000000000, bits 63:32 "
            "must be 0");
  EXPECT_EQ(with(StateTag::kPit2, kVmWide,
                 [](Rec& r) { As<kvm_pit_state2>(r).channels[2].count = 0x10001; }),
            "state: PIT2 record channel 2 has count 65537, an 8254 counts at most 65536");
}

TEST(ValidateState, UartRecordMustDecode) {
  std::vector<Rec> recs = ValidRecords(TwoVcpuLimits());
  Rec& uart = *Find(recs, StateTag::kUart, kVmWide);
  uart.data.resize(10);
  EXPECT_EQ(Error(recs), "state: UART record does not decode: UART state: bad length 10");
  uart.data.clear();
  EXPECT_EQ(Error(recs), "state: UART record does not decode: UART state: bad length 0");
  uart.data.assign(11 + Uart::kRxCapacity, 0);
  EXPECT_EQ(Error(recs), "");
  uart.data.push_back(0);
  EXPECT_EQ(Error(recs), "state: UART record does not decode: UART state: bad length 4108");
}

// ---------------------------------------------------------------------------------------------
// With KVM: real blobs, and RestoreState touching nothing when the blob is refused.

struct Vm {
  std::unique_ptr<ConsoleBuffer> console;
  std::unique_ptr<Machine> machine;
};

Vm MakeVm(int cpus = 1) {
  Vm vm;
  vm.console = *ConsoleBuffer::Create();
  MachineConfig c;
  c.mem_size = 16ull << 20;
  c.num_cpus = cpus;
  auto m = Machine::Create(c, vm.console.get());
  EXPECT_TRUE(m.ok()) << m.status();
  vm.machine = std::move(*m);
  return vm;
}

TEST(StateWithKvm, ARealSavedStatePassesAndRestores) {
  Vm a = MakeVm(2);
  ASSERT_TRUE(testing_guest::LoadRealMode(*a.machine, testing_guest::kCounter).ok());
  auto blob = a.machine->SaveState();
  ASSERT_TRUE(blob.ok()) << blob.status();
  const StateLimits limits = a.machine->state_limits();
  EXPECT_EQ(limits.num_vcpus, 2u);
  EXPECT_GE(limits.xsave_size, 4096u);
  EXPECT_FALSE(limits.msr_indices.empty());
  auto st = ValidateState(*blob, limits);
  ASSERT_TRUE(st.ok()) << st.status();
  EXPECT_EQ(st->vcpus[0].regs.rip, testing_guest::kCodeAddr);
  EXPECT_EQ(st->vcpus[0].msrs.size(), limits.msr_indices.size());

  Vm b = MakeVm(2);
  ASSERT_TRUE(b.machine->RestoreState(*blob).ok());
  EXPECT_EQ(b.machine->vcpu(0).GetRegs()->rip, testing_guest::kCodeAddr);
}

// Regression: a short XSAVE record reached KVM_SET_XSAVE (an out-of-bounds read of the heap),
// and every record before a bad one was already applied.
TEST(StateWithKvm, ARefusedBlobLeavesTheMachineUntouched) {
  Vm a = MakeVm();
  ASSERT_TRUE(testing_guest::LoadRealMode(*a.machine, testing_guest::kCounter).ok());
  auto blob = a.machine->SaveState();
  ASSERT_TRUE(blob.ok()) << blob.status();
  auto recs = ParseState(*blob);
  ASSERT_TRUE(recs.ok());
  StateWriter w;
  for (const StateRecord& r : *recs) {
    // XSAVE comes after CPUID, MP_STATE, REGS and SREGS: the old restore applied those first.
    const size_t n = r.tag == StateTag::kXsave ? 576 : r.data.size();
    w.Add(r.tag, r.vcpu, r.data.data(), n);
  }
  const std::vector<uint8_t> bad = w.Finish();

  Vm b = MakeVm();
  const uint64_t rip_before = b.machine->vcpu(0).GetRegs()->rip;
  ASSERT_NE(rip_before, testing_guest::kCodeAddr);
  absl::Status s = b.machine->RestoreState(bad);
  EXPECT_EQ(s.message(), "state: vcpu 0 XSAVE record has 576 bytes, KVM reads " +
                             std::to_string(b.machine->state_limits().xsave_size));
  EXPECT_EQ(b.machine->vcpu(0).GetRegs()->rip, rip_before) << "REGS was applied";

  // Missing a VM-wide record at the very end: still nothing applied.
  StateWriter w2;
  for (const StateRecord& r : *recs) {
    if (r.tag != StateTag::kUart) {
      w2.Add(r.tag, r.vcpu, r.data.data(), r.data.size());
    }
  }
  s = b.machine->RestoreState(w2.Finish());
  EXPECT_EQ(s.message(), "state: no UART record");
  EXPECT_EQ(b.machine->vcpu(0).GetRegs()->rip, rip_before) << "REGS was applied";
}

TEST(StateWithKvm, SetXsaveAndSetMsrsRefuseWrongSizesThemselves) {
  Vm vm = MakeVm();
  VcpuFd& v = vm.machine->vcpu(0);
  const size_t size = vm.machine->state_limits().xsave_size;
  auto x = v.GetXsave(size);
  ASSERT_TRUE(x.ok()) << x.status();
  ASSERT_EQ(x->size(), size);
  EXPECT_TRUE(v.SetXsave(*x, size).ok());
  std::vector<uint8_t> shorter(x->begin(), x->begin() + 576);
  absl::Status s = v.SetXsave(shorter, size);
  EXPECT_EQ(s.code(), absl::StatusCode::kInvalidArgument);
  EXPECT_EQ(s.message(), "KVM_SET_XSAVE vcpu=0: buffer of 576 bytes, KVM reads " +
                             std::to_string(size));
  EXPECT_FALSE(v.SetXsave(shorter, 576).ok()) << "below sizeof(struct kvm_xsave)";

  std::vector<kvm_msr_entry> many(256);
  s = v.SetMsrs(many);
  EXPECT_EQ(s.message(), "KVM_SET_MSRS vcpu=0: 256 MSRs, KVM takes fewer than 256");
  kvm_msr_entry bogus{};
  bogus.index = 0x12345678;  // no such MSR: KVM sets none
  s = v.SetMsrs({bogus});
  EXPECT_THAT(s.message(), HasSubstr("KVM refused MSR 0x12345678 (set 0 of 1)"));
}

}  // namespace
}  // namespace lmig
