#include "src/machine/state_codec.h"

#include <algorithm>
#include <cstring>
#include <string>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig {

std::string StateTagName(StateTag tag) {
  switch (tag) {
    case StateTag::kCpuid: return "CPUID";
    case StateTag::kMpState: return "MP_STATE";
    case StateTag::kRegs: return "REGS";
    case StateTag::kSregs: return "SREGS";
    case StateTag::kXsave: return "XSAVE";
    case StateTag::kXcrs: return "XCRS";
    case StateTag::kLapic: return "LAPIC";
    case StateTag::kMsrs: return "MSRS";
    case StateTag::kVcpuEvents: return "VCPU_EVENTS";
    case StateTag::kDebugRegs: return "DEBUGREGS";
    case StateTag::kIrqchip: return "IRQCHIP";
    case StateTag::kPit2: return "PIT2";
    case StateTag::kClock: return "CLOCK";
    case StateTag::kUart: return "UART";
    case StateTag::kInvalid: break;
  }
  return absl::StrCat("tag ", static_cast<uint32_t>(tag));
}

void StateWriter::Add(StateTag tag, uint32_t vcpu, const void* data, size_t len) {
  const uint32_t hdr[3] = {static_cast<uint32_t>(tag), vcpu, static_cast<uint32_t>(len)};
  const auto* h = reinterpret_cast<const uint8_t*>(hdr);
  buf_.insert(buf_.end(), h, h + sizeof(hdr));
  const auto* d = static_cast<const uint8_t*>(data);
  buf_.insert(buf_.end(), d, d + len);
}

absl::StatusOr<std::vector<StateRecord>> ParseState(std::span<const uint8_t> blob) {
  std::vector<StateRecord> out;
  size_t pos = 0;
  while (pos < blob.size()) {
    uint32_t hdr[3];
    if (blob.size() - pos < sizeof(hdr)) {
      return absl::DataLossError(absl::StrFormat(
          "state: truncated record header at byte %d (%d bytes left)", pos, blob.size() - pos));
    }
    std::memcpy(hdr, blob.data() + pos, sizeof(hdr));
    const StateTag tag = static_cast<StateTag>(hdr[0]);
    if (hdr[0] == 0 || hdr[0] > static_cast<uint32_t>(kLastStateTag)) {
      return absl::InvalidArgumentError(
          absl::StrFormat("state: unknown record tag %d at byte %d", hdr[0], pos));
    }
    pos += sizeof(hdr);
    if (blob.size() - pos < hdr[2]) {
      const std::string who =
          hdr[1] == kVmWide ? std::string() : absl::StrFormat("vcpu %d ", hdr[1]);
      return absl::DataLossError(
          absl::StrFormat("state: %s%s record of %d bytes truncated (%d bytes left)", who,
                          StateTagName(tag), hdr[2], blob.size() - pos));
    }
    out.push_back({tag, hdr[1], blob.subspan(pos, hdr[2])});
    pos += hdr[2];
  }
  return out;
}

namespace {

constexpr size_t kPerVcpuTags = static_cast<size_t>(StateTag::kDebugRegs);

// "vcpu 1 XSAVE" or "CLOCK": how an error names the record.
std::string RecordName(const StateRecord& r) {
  if (r.vcpu == kVmWide) {
    return StateTagName(r.tag);
  }
  return absl::StrFormat("vcpu %d %s", r.vcpu, StateTagName(r.tag));
}

absl::Status Bad(const StateRecord& r, const std::string& problem) {
  return absl::InvalidArgumentError(
      absl::StrCat("state: ", RecordName(r), " record ", problem));
}

// Copies R into OUT when it has exactly sizeof(T) bytes: the size of the struct its ioctl reads.
template <typename T>
absl::Status CopyPod(const StateRecord& r, T* out) {
  if (r.data.size() != sizeof(T)) {
    return Bad(r, absl::StrFormat("has %d bytes, KVM reads %d", r.data.size(), sizeof(T)));
  }
  std::memcpy(out, r.data.data(), sizeof(T));
  return absl::OkStatus();
}

// Copies R into OUT as whole entries of type T (at least 1, at most MAX).
template <typename T>
absl::Status CopyEntries(const StateRecord& r, const char* entry, size_t max, const char* whose,
                         std::vector<T>* out) {
  if (r.data.empty()) {
    return Bad(r, "is empty");
  }
  if (r.data.size() % sizeof(T) != 0) {
    return Bad(r, absl::StrFormat("has %d bytes, not a whole number of %d-byte %s",
                                  r.data.size(), sizeof(T), entry));
  }
  const size_t n = r.data.size() / sizeof(T);
  if (n > max) {
    return Bad(r, absl::StrFormat("has %d entries, %s takes at most %d", n, whose, max));
  }
  out->resize(n);
  std::memcpy(out->data(), r.data.data(), r.data.size());
  return absl::OkStatus();
}

const char* ChipName(uint32_t chip) {
  switch (chip) {
    case KVM_IRQCHIP_PIC_MASTER: return "the PIC master (chip 0)";
    case KVM_IRQCHIP_PIC_SLAVE: return "the PIC slave (chip 1)";
    default: return "the IOAPIC (chip 2)";
  }
}

absl::Status CheckMpState(const StateRecord& r, const kvm_mp_state& m) {
  // KVM_SET_MP_STATE on x86 (api.rst 4.39): the states an x86 vCPU can be in; the others belong
  // to s390 or to SEV-ES guests this VMM never creates.
  switch (m.mp_state) {
    case KVM_MP_STATE_RUNNABLE:
    case KVM_MP_STATE_UNINITIALIZED:
    case KVM_MP_STATE_INIT_RECEIVED:
    case KVM_MP_STATE_HALTED:
    case KVM_MP_STATE_SIPI_RECEIVED:
      return absl::OkStatus();
    default:
      return Bad(r, absl::StrFormat("has mp_state %d, not an x86 vCPU state", m.mp_state));
  }
}

absl::Status CheckXcrs(const StateRecord& r, const kvm_xcrs& x) {
  // KVM_SET_XCRS indexes xcrs[] by nr_xcrs and refuses flags (arch/x86/kvm/x86.c).
  if (x.nr_xcrs > KVM_MAX_XCRS) {
    return Bad(r, absl::StrFormat("has nr_xcrs %d, KVM_MAX_XCRS is %d", x.nr_xcrs,
                                  KVM_MAX_XCRS));
  }
  if (x.flags != 0) {
    return Bad(r, absl::StrFormat("has flags 0x%x, KVM takes none", x.flags));
  }
  return absl::OkStatus();
}

absl::Status CheckMsrs(const StateRecord& r, const std::vector<kvm_msr_entry>& msrs,
                       const std::vector<uint32_t>& host_sorted) {
  std::vector<uint32_t> seen;
  seen.reserve(msrs.size());
  for (const kvm_msr_entry& e : msrs) {
    if (!std::binary_search(host_sorted.begin(), host_sorted.end(), e.index)) {
      return Bad(r, absl::StrFormat("has MSR 0x%x, which this host's KVM does not restore",
                                    e.index));
    }
    seen.push_back(e.index);
  }
  std::sort(seen.begin(), seen.end());
  auto dup = std::adjacent_find(seen.begin(), seen.end());
  if (dup != seen.end()) {
    return Bad(r, absl::StrFormat("has MSR 0x%x twice", *dup));
  }
  return absl::OkStatus();
}

absl::Status CheckEvents(const StateRecord& r, const kvm_vcpu_events& e) {
  // KVM_SET_VCPU_EVENTS (arch/x86/kvm/x86.c) refuses unknown flags and exception vectors
  // above 31 or NMI's.
  constexpr uint32_t kKnown = KVM_VCPUEVENT_VALID_NMI_PENDING | KVM_VCPUEVENT_VALID_SIPI_VECTOR |
                              KVM_VCPUEVENT_VALID_SHADOW | KVM_VCPUEVENT_VALID_SMM |
                              KVM_VCPUEVENT_VALID_PAYLOAD | KVM_VCPUEVENT_VALID_TRIPLE_FAULT;
  if ((e.flags & ~kKnown) != 0) {
    return Bad(r, absl::StrFormat("has unknown flags 0x%x", e.flags & ~kKnown));
  }
  constexpr uint8_t kNmiVector = 2;
  if ((e.exception.injected || e.exception.pending) &&
      (e.exception.nr > 31 || e.exception.nr == kNmiVector)) {
    return Bad(r, absl::StrFormat("has exception vector %d, not an exception", e.exception.nr));
  }
  return absl::OkStatus();
}

absl::Status CheckDebugRegs(const StateRecord& r, const kvm_debugregs& d) {
  // KVM_SET_DEBUGREGS refuses flags and DR6/DR7 bits above 31 (kvm_dr6_valid/kvm_dr7_valid).
  if (d.flags != 0) {
    return Bad(r, absl::StrFormat("has flags 0x%x, KVM takes none", d.flags));
  }
  if ((d.dr6 >> 32) != 0 || (d.dr7 >> 32) != 0) {
    return Bad(r, absl::StrFormat("has dr6 0x%x dr7 0x%x, bits 63:32 must be 0", d.dr6, d.dr7));
  }
  return absl::OkStatus();
}

absl::Status CheckPit(const StateRecord& r, const kvm_pit_state2& p) {
  // An 8254 count is 16 bits, 0 meaning 65536 (arch/x86/kvm/i8254.c pit_load_count). The mode
  // is not checked: KVM resets it to 0xff and treats unknown modes as no-ops.
  for (int i = 0; i < 3; ++i) {
    if (p.channels[i].count > 0x10000) {
      return Bad(r, absl::StrFormat("channel %d has count %d, an 8254 counts at most 65536", i,
                                    p.channels[i].count));
    }
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<ValidatedState> ValidateState(std::span<const uint8_t> blob,
                                             const StateLimits& limits) {
  if (limits.num_vcpus == 0) {
    return absl::InvalidArgumentError("state: the destination machine has no vcpus");
  }
  ASSIGN_OR_RETURN(std::vector<StateRecord> recs, ParseState(blob));

  std::vector<uint32_t> host_msrs = limits.msr_indices;
  std::sort(host_msrs.begin(), host_msrs.end());
  host_msrs.erase(std::unique(host_msrs.begin(), host_msrs.end()), host_msrs.end());
  const size_t max_msrs = std::min(host_msrs.size(), kKvmMaxIoMsrs - 1);

  ValidatedState st;
  st.vcpus.resize(limits.num_vcpus);
  std::vector<std::array<bool, kPerVcpuTags>> have(limits.num_vcpus);
  bool have_chip[3] = {false, false, false};
  bool have_pit = false, have_clock = false, have_uart = false;

  for (const StateRecord& r : recs) {
    const bool per_vcpu = IsPerVcpuTag(r.tag);
    if (per_vcpu && r.vcpu == kVmWide) {
      return Bad(r, absl::StrCat("is VM-wide, but ", StateTagName(r.tag),
                                 " belongs to a vcpu"));
    }
    if (per_vcpu && r.vcpu >= limits.num_vcpus) {
      return Bad(r, absl::StrFormat("names a vcpu this machine lacks (it has %d)",
                                    limits.num_vcpus));
    }
    if (!per_vcpu && r.vcpu != kVmWide) {
      return Bad(r, absl::StrCat("names a vcpu, but ", StateTagName(r.tag), " is VM-wide"));
    }
    if (per_vcpu) {
      bool& seen = have[r.vcpu][static_cast<size_t>(r.tag) - 1];
      if (seen) {
        return absl::InvalidArgumentError(absl::StrFormat(
            "state: duplicate vcpu %d %s record", r.vcpu, StateTagName(r.tag)));
      }
      seen = true;
    }
    switch (r.tag) {
      case StateTag::kCpuid: {
        VcpuState& v = st.vcpus[r.vcpu];
        RETURN_IF_ERROR(CopyEntries(r, "kvm_cpuid_entry2", limits.max_cpuid_entries,
                                    "KVM_SET_CPUID2", &v.cpuid));
        break;
      }
      case StateTag::kMpState: {
        VcpuState& v = st.vcpus[r.vcpu];
        RETURN_IF_ERROR(CopyPod(r, &v.mp_state));
        RETURN_IF_ERROR(CheckMpState(r, v.mp_state));
        break;
      }
      case StateTag::kRegs:
        RETURN_IF_ERROR(CopyPod(r, &st.vcpus[r.vcpu].regs));
        break;
      case StateTag::kSregs:
        RETURN_IF_ERROR(CopyPod(r, &st.vcpus[r.vcpu].sregs));
        break;
      case StateTag::kXsave: {
        // KVM_SET_XSAVE copies the vCPU's whole uABI XSAVE size from the buffer, whatever
        // the record's length (api.rst, KVM_GET_XSAVE2).
        if (r.data.size() != limits.xsave_size) {
          return Bad(r, absl::StrFormat("has %d bytes, KVM reads %d", r.data.size(),
                                        limits.xsave_size));
        }
        st.vcpus[r.vcpu].xsave.assign(r.data.begin(), r.data.end());
        break;
      }
      case StateTag::kXcrs: {
        VcpuState& v = st.vcpus[r.vcpu];
        RETURN_IF_ERROR(CopyPod(r, &v.xcrs));
        RETURN_IF_ERROR(CheckXcrs(r, v.xcrs));
        break;
      }
      case StateTag::kLapic:
        RETURN_IF_ERROR(CopyPod(r, &st.vcpus[r.vcpu].lapic));
        break;
      case StateTag::kMsrs: {
        VcpuState& v = st.vcpus[r.vcpu];
        RETURN_IF_ERROR(CopyEntries(r, "kvm_msr_entry", max_msrs, "this host's KVM", &v.msrs));
        RETURN_IF_ERROR(CheckMsrs(r, v.msrs, host_msrs));
        break;
      }
      case StateTag::kVcpuEvents: {
        VcpuState& v = st.vcpus[r.vcpu];
        RETURN_IF_ERROR(CopyPod(r, &v.events));
        RETURN_IF_ERROR(CheckEvents(r, v.events));
        break;
      }
      case StateTag::kDebugRegs: {
        VcpuState& v = st.vcpus[r.vcpu];
        RETURN_IF_ERROR(CopyPod(r, &v.debugregs));
        RETURN_IF_ERROR(CheckDebugRegs(r, v.debugregs));
        break;
      }
      case StateTag::kIrqchip: {
        kvm_irqchip c;
        RETURN_IF_ERROR(CopyPod(r, &c));
        if (c.chip_id > KVM_IRQCHIP_IOAPIC) {
          return Bad(r, absl::StrFormat("has chip_id %d, not a PIC (0, 1) or the IOAPIC (2)",
                                        c.chip_id));
        }
        if (have_chip[c.chip_id]) {
          return absl::InvalidArgumentError(
              absl::StrCat("state: duplicate IRQCHIP record for ", ChipName(c.chip_id)));
        }
        have_chip[c.chip_id] = true;
        st.irqchips[c.chip_id] = c;
        break;
      }
      case StateTag::kPit2:
        if (have_pit) {
          return absl::InvalidArgumentError("state: duplicate PIT2 record");
        }
        have_pit = true;
        RETURN_IF_ERROR(CopyPod(r, &st.pit));
        RETURN_IF_ERROR(CheckPit(r, st.pit));
        break;
      case StateTag::kClock:
        if (have_clock) {
          return absl::InvalidArgumentError("state: duplicate CLOCK record");
        }
        have_clock = true;
        RETURN_IF_ERROR(CopyPod(r, &st.clock));
        break;
      case StateTag::kUart: {
        if (have_uart) {
          return absl::InvalidArgumentError("state: duplicate UART record");
        }
        have_uart = true;
        absl::StatusOr<UartState> u = UartState::Deserialize(r.data);
        if (!u.ok()) {
          return Bad(r, absl::StrCat("does not decode: ", u.status().message()));
        }
        st.uart = std::move(*u);
        break;
      }
      case StateTag::kInvalid:
        return Bad(r, "has tag 0");  // ParseState refuses it; kept for -Wswitch
    }
  }

  for (uint32_t id = 0; id < limits.num_vcpus; ++id) {
    for (size_t t = 0; t < kPerVcpuTags; ++t) {
      if (!have[id][t]) {
        return absl::InvalidArgumentError(
            absl::StrFormat("state: vcpu %d has no %s record", id,
                            StateTagName(static_cast<StateTag>(t + 1))));
      }
    }
  }
  for (uint32_t chip : {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC}) {
    if (!have_chip[chip]) {
      return absl::InvalidArgumentError(
          absl::StrCat("state: no IRQCHIP record for ", ChipName(chip)));
    }
  }
  if (!have_pit) {
    return absl::InvalidArgumentError("state: no PIT2 record");
  }
  if (!have_clock) {
    return absl::InvalidArgumentError("state: no CLOCK record");
  }
  if (!have_uart) {
    return absl::InvalidArgumentError("state: no UART record");
  }
  return st;
}

}  // namespace lmig
