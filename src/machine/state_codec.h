// Tag-length-value records: the machine state blob sent at the end of a migration.
// Layout per record: u32 tag, u32 vcpu (or kVmWide), u32 length, then LENGTH bytes; little endian.
//
// Two layers: the framing (StateWriter, ParseState) and the destination's check of a whole blob
// before any of it reaches KVM (ValidateState): every record a resumable machine needs, present
// exactly once, each of exactly the size the KVM ioctl that takes it reads, with the values KVM
// would refuse or misuse rejected. Both are pure (no kernel calls); what the destination's KVM
// accepts comes in as StateLimits (Machine::state_limits()).
#pragma once

#include <linux/kvm.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/devices/uart.h"

namespace lmig {

// What a record holds: one KVM get/set pair (or the UART's registers). CPUID .. DEBUGREGS are
// per vCPU; IRQCHIP .. UART are VM-wide (vcpu == kVmWide).
enum class StateTag : uint32_t {
  kInvalid = 0,
  kCpuid = 1,
  kMpState,
  kRegs,
  kSregs,
  kXsave,
  kXcrs,
  kLapic,
  kMsrs,
  kVcpuEvents,
  kDebugRegs,
  kIrqchip,
  kPit2,
  kClock,
  kUart,
};

// The largest tag value a blob may carry.
inline constexpr StateTag kLastStateTag = StateTag::kUart;

// The vcpu field of a VM-wide record.
inline constexpr uint32_t kVmWide = 0xffffffff;

// The printable name of TAG for error messages ("REGS", "XSAVE", ...; "tag 99" when unknown).
std::string StateTagName(StateTag tag);

// True for the records that belong to one vCPU (CPUID .. DEBUGREGS).
inline bool IsPerVcpuTag(StateTag tag) {
  return tag >= StateTag::kCpuid && tag <= StateTag::kDebugRegs;
}

// One record of a parsed blob; DATA points into the blob.
struct StateRecord {
  StateTag tag;
  uint32_t vcpu;
  std::span<const uint8_t> data;
};

// Builds a blob record by record (the sender's side, and tests).
class StateWriter {
 public:
  // Appends a record of LEN bytes at DATA.
  void Add(StateTag tag, uint32_t vcpu, const void* data, size_t len);
  // Appends a record holding the bytes of V.
  template <typename T>
  void AddPod(StateTag tag, uint32_t vcpu, const T& v) {
    Add(tag, vcpu, &v, sizeof(T));
  }
  // The blob; the writer is empty afterwards.
  std::vector<uint8_t> Finish() { return std::move(buf_); }

 private:
  std::vector<uint8_t> buf_;
};

// Splits BLOB into records, in blob order. DataLoss on a truncated header or record,
// InvalidArgument on an unknown tag; nothing about which records are there (ValidateState).
absl::StatusOr<std::vector<StateRecord>> ParseState(std::span<const uint8_t> blob);

// Copies REC into a POD of exactly its size; error names the tag on a size mismatch.
template <typename T>
absl::StatusOr<T> RecordAs(const StateRecord& rec) {
  if (rec.data.size() != sizeof(T)) {
    return absl::InvalidArgumentError("state: " + StateTagName(rec.tag) + " record has " +
                                      std::to_string(rec.data.size()) + " bytes, want " +
                                      std::to_string(sizeof(T)));
  }
  T v;
  std::memcpy(&v, rec.data.data(), sizeof(T));
  return v;
}

// KVM_MAX_CPUID_ENTRIES (arch/x86/include/asm/kvm_host.h): KVM_SET_CPUID2 refuses more.
inline constexpr size_t kKvmMaxCpuidEntries = 256;
// MAX_IO_MSRS (arch/x86/kvm/x86.c): KVM_SET_MSRS refuses nmsrs >= 256 with E2BIG.
inline constexpr size_t kKvmMaxIoMsrs = 256;

// What the destination's KVM will read and accept, found once when the machine is created.
struct StateLimits {
  // vCPUs of the destination machine (the count the handshake announced).
  uint32_t num_vcpus = 0;
  // Bytes KVM_SET_XSAVE reads: KVM_CHECK_EXTENSION(KVM_CAP_XSAVE2) on the VM, or 4096 (the
  // size of struct kvm_xsave) when the capability is absent (api.rst, KVM_GET_XSAVE2).
  size_t xsave_size = 4096;
  // The MSRs this host saves and restores: KVM_GET_MSR_INDEX_LIST, less those KVM_GET_MSRS
  // cannot read on this machine (Machine::SavableMsrs). An MSRS record may hold only these.
  std::vector<uint32_t> msr_indices;
  // Largest CPUID table KVM_SET_CPUID2 takes.
  size_t max_cpuid_entries = kKvmMaxCpuidEntries;
};

// One vCPU's state, each field of exactly the size its KVM_SET_* ioctl reads.
struct VcpuState {
  std::vector<kvm_cpuid_entry2> cpuid;  // 1 .. max_cpuid_entries entries
  kvm_mp_state mp_state{};
  kvm_regs regs{};
  kvm_sregs sregs{};
  std::vector<uint8_t> xsave;  // exactly StateLimits::xsave_size bytes
  kvm_xcrs xcrs{};
  kvm_lapic_state lapic{};
  std::vector<kvm_msr_entry> msrs;  // distinct indices, all in StateLimits::msr_indices
  kvm_vcpu_events events{};
  kvm_debugregs debugregs{};
};

// A blob that passed ValidateState: everything RestoreState applies, typed and copied out of
// the blob.
struct ValidatedState {
  std::vector<VcpuState> vcpus;  // index = vCPU id, StateLimits::num_vcpus of them
  // Indexed by chip id: KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC.
  std::array<kvm_irqchip, 3> irqchips{};
  kvm_pit_state2 pit{};
  kvm_clock_data clock{};
  UartState uart;
};

// Parses and checks BLOB against LIMITS. Requires, per vCPU 0 .. num_vcpus-1, exactly one each
// of CPUID, MP_STATE, REGS, SREGS, XSAVE, XCRS, LAPIC, MSRS, VCPU_EVENTS, DEBUGREGS, and, VM-wide
// (vcpu == kVmWide), one IRQCHIP per chip (PIC master, PIC slave, IOAPIC), one PIT2, one CLOCK
// and one UART. Errors (InvalidArgument, DataLoss for truncation) are one line naming the record
// and the problem: "state: vcpu 1 XSAVE record has 576 bytes, KVM reads 4096",
// "state: vcpu 0 has no REGS record", "state: duplicate CLOCK record".
absl::StatusOr<ValidatedState> ValidateState(std::span<const uint8_t> blob,
                                             const StateLimits& limits);

}  // namespace lmig
