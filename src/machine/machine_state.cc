// Machine state save and restore (Documentation/virt/kvm/api.rst). A blob is validated whole
// into a ValidatedState (src/machine/state_codec.h) before any of it reaches KVM, and is then
// applied in one fixed order, whatever order its records came in. Per vCPU:
//   CPUID (KVM refuses it once the vCPU has run; it also sizes XSAVE), MP state, regs, sregs
//   (CR0/CR4/EFER before anything that depends on the mode), XSAVE, XCRs, LAPIC (before the
//   MSRs, so the TSC deadline MSR lands in an armed timer), MSRs, debug registers, and the
//   vCPU events last (pending exception, interrupt and NMI, on top of everything else);
// then VM-wide: the three irqchips (PIC master, PIC slave, IOAPIC), PIT, kvmclock, UART.
// Saving reads the same calls per vCPU, then the VM-wide ones.
#include <chrono>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/base/mono_clock.h"
#include "src/machine/machine.h"
#include "src/machine/state_codec.h"

namespace lmig {
const char* StateCallName(StateCall c) {
  switch (c) {
    case StateCall::kCpuid: return "cpuid";
    case StateCall::kMpState: return "mp_state";
    case StateCall::kRegs: return "regs";
    case StateCall::kSregs: return "sregs";
    case StateCall::kXsave: return "xsave";
    case StateCall::kXcrs: return "xcrs";
    case StateCall::kLapic: return "lapic";
    case StateCall::kMsrs: return "msrs";
    case StateCall::kDebugRegs: return "debugregs";
    case StateCall::kEvents: return "vcpu_events";
    case StateCall::kIrqchip: return "irqchips";
    case StateCall::kPit: return "pit2";
    case StateCall::kClock: return "clock";
    case StateCall::kUart: return "uart";
    case StateCall::kValidate: return "validate";
  }
  return "unknown";
}

namespace {

// Adds the time since the previous lap to one call group (and, through the caller, to the
// vCPU or VM-wide total).
class Laps {
 public:
  explicit Laps(StateTiming& t) : t_(t), last_(MonoClock::now()) {}
  void Lap(StateCall c) {
    const auto now = MonoClock::now();
    t_.call_ms[static_cast<int>(c)] += MsBetween(last_, now);
    last_ = now;
  }

 private:
  StateTiming& t_;
  MonoClock::time_point last_;
};

}  // namespace

absl::StatusOr<std::vector<uint8_t>> Machine::SaveState() {
  ASSIGN_OR_RETURN(SavedState s, SaveStateTimed());
  return std::move(s.blob);
}

absl::StatusOr<SavedState> Machine::SaveStateTimed() {
  const MonoClock::time_point start = MonoClock::now();
  SavedState out;
  StateTiming& t = out.timing;
  Laps laps(t);
  StateWriter w;
  for (auto& vp : vcpus_) {
    const MonoClock::time_point vcpu_start = MonoClock::now();
    VcpuFd& v = *vp;
    const uint32_t id = static_cast<uint32_t>(v.id());
    // KVM_GET_CPUID2 is not in every kernel's uapi; the VMM set the table, so it knows it.
    const std::vector<kvm_cpuid_entry2>& cpuid = cpuid_[id];
    w.Add(StateTag::kCpuid, id, cpuid.data(), cpuid.size() * sizeof(kvm_cpuid_entry2));
    laps.Lap(StateCall::kCpuid);
    ASSIGN_OR_RETURN(kvm_mp_state mp, v.GetMpState());
    w.AddPod(StateTag::kMpState, id, mp);
    laps.Lap(StateCall::kMpState);
    ASSIGN_OR_RETURN(kvm_regs regs, v.GetRegs());
    w.AddPod(StateTag::kRegs, id, regs);
    laps.Lap(StateCall::kRegs);
    ASSIGN_OR_RETURN(kvm_sregs sregs, v.GetSregs());
    w.AddPod(StateTag::kSregs, id, sregs);
    laps.Lap(StateCall::kSregs);
    ASSIGN_OR_RETURN(std::vector<uint8_t> xsave, v.GetXsave(xsave_size_));
    w.Add(StateTag::kXsave, id, xsave.data(), xsave.size());
    laps.Lap(StateCall::kXsave);
    ASSIGN_OR_RETURN(kvm_xcrs xcrs, v.GetXcrs());
    w.AddPod(StateTag::kXcrs, id, xcrs);
    laps.Lap(StateCall::kXcrs);
    ASSIGN_OR_RETURN(kvm_lapic_state lapic, v.GetLapic());
    w.AddPod(StateTag::kLapic, id, lapic);
    laps.Lap(StateCall::kLapic);
    ASSIGN_OR_RETURN(std::vector<kvm_msr_entry> msrs, v.GetMsrs(msr_indices_));
    if (msrs.size() != msr_indices_.size()) {
      return absl::InternalError(absl::StrFormat("KVM_GET_MSRS vcpu=%d: read %d of %d MSRs",
                                                 id, msrs.size(), msr_indices_.size()));
    }
    w.Add(StateTag::kMsrs, id, msrs.data(), msrs.size() * sizeof(kvm_msr_entry));
    laps.Lap(StateCall::kMsrs);
    ASSIGN_OR_RETURN(kvm_vcpu_events ev, v.GetVcpuEvents());
    w.AddPod(StateTag::kVcpuEvents, id, ev);
    laps.Lap(StateCall::kEvents);
    ASSIGN_OR_RETURN(kvm_debugregs dr, v.GetDebugRegs());
    w.AddPod(StateTag::kDebugRegs, id, dr);
    laps.Lap(StateCall::kDebugRegs);
    t.vcpu_ms.push_back(MsBetween(vcpu_start, MonoClock::now()));
  }
  const MonoClock::time_point vm_start = MonoClock::now();
  for (uint32_t chip : {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC}) {
    ASSIGN_OR_RETURN(kvm_irqchip c, vm_.GetIrqchip(chip));
    w.AddPod(StateTag::kIrqchip, kVmWide, c);
  }
  laps.Lap(StateCall::kIrqchip);
  ASSIGN_OR_RETURN(kvm_pit_state2 pit, vm_.GetPit2());
  w.AddPod(StateTag::kPit2, kVmWide, pit);
  laps.Lap(StateCall::kPit);
  ASSIGN_OR_RETURN(kvm_clock_data clock, vm_.GetClock());
  w.AddPod(StateTag::kClock, kVmWide, clock);
  laps.Lap(StateCall::kClock);
  const std::vector<uint8_t> uart = uart_->Save().Serialize();
  w.Add(StateTag::kUart, kVmWide, uart.data(), uart.size());
  out.blob = w.Finish();
  laps.Lap(StateCall::kUart);
  const MonoClock::time_point end = MonoClock::now();
  t.vm_ms = MsBetween(vm_start, end);
  t.total_ms = MsBetween(start, end);
  return out;
}

StateLimits Machine::state_limits() const {
  StateLimits l;
  l.num_vcpus = static_cast<uint32_t>(vcpus_.size());
  l.xsave_size = xsave_size_;
  l.msr_indices = msr_indices_;
  return l;
}

absl::Status Machine::RestoreState(std::span<const uint8_t> blob) {
  return RestoreStateTimed(blob).status();
}

absl::StatusOr<StateTiming> Machine::RestoreStateTimed(std::span<const uint8_t> blob) {
  const MonoClock::time_point start = MonoClock::now();
  StateTiming t;
  Laps laps(t);
  // Nothing reaches KVM before the whole blob is known to be complete and well-formed.
  ASSIGN_OR_RETURN(ValidatedState st, ValidateState(blob, state_limits()));
  laps.Lap(StateCall::kValidate);
  for (size_t id = 0; id < vcpus_.size(); ++id) {
    const MonoClock::time_point vcpu_start = MonoClock::now();
    VcpuFd& v = *vcpus_[id];
    const VcpuState& s = st.vcpus[id];
    RETURN_IF_ERROR(v.SetCpuid(s.cpuid));
    laps.Lap(StateCall::kCpuid);
    RETURN_IF_ERROR(v.SetMpState(s.mp_state));
    laps.Lap(StateCall::kMpState);
    RETURN_IF_ERROR(v.SetRegs(s.regs));
    laps.Lap(StateCall::kRegs);
    RETURN_IF_ERROR(v.SetSregs(s.sregs));
    laps.Lap(StateCall::kSregs);
    RETURN_IF_ERROR(v.SetXsave(s.xsave, xsave_size_));
    laps.Lap(StateCall::kXsave);
    RETURN_IF_ERROR(v.SetXcrs(s.xcrs));
    laps.Lap(StateCall::kXcrs);
    RETURN_IF_ERROR(v.SetLapic(s.lapic));
    laps.Lap(StateCall::kLapic);
    RETURN_IF_ERROR(v.SetMsrs(s.msrs));
    laps.Lap(StateCall::kMsrs);
    RETURN_IF_ERROR(v.SetDebugRegs(s.debugregs));
    laps.Lap(StateCall::kDebugRegs);
    RETURN_IF_ERROR(v.SetVcpuEvents(s.events));
    laps.Lap(StateCall::kEvents);
    cpuid_[id] = s.cpuid;
    t.vcpu_ms.push_back(MsBetween(vcpu_start, MonoClock::now()));
  }
  const MonoClock::time_point vm_start = MonoClock::now();
  for (const kvm_irqchip& c : st.irqchips) {
    RETURN_IF_ERROR(vm_.SetIrqchip(c));
  }
  laps.Lap(StateCall::kIrqchip);
  RETURN_IF_ERROR(vm_.SetPit2(st.pit));
  laps.Lap(StateCall::kPit);
  RETURN_IF_ERROR(vm_.SetClock(st.clock));
  laps.Lap(StateCall::kClock);
  uart_->Restore(st.uart);
  laps.Lap(StateCall::kUart);
  const MonoClock::time_point end = MonoClock::now();
  t.vm_ms = MsBetween(vm_start, end);
  t.total_ms = MsBetween(start, end);
  return t;
}

}  // namespace lmig
