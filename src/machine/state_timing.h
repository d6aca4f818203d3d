// How long a machine state save or restore took, per KVM call group, per vCPU and VM-wide:
// plain data (no KVM), so the migration receiver and its fuzzer use it without a machine.
#pragma once

#include <array>
#include <vector>

namespace lmig {

// The KVM call groups of a state save or restore, in restore order (vCPU groups, then VM-wide
// ones). StateCallName names each for reports.
enum class StateCall {
  kCpuid = 0, kMpState, kRegs, kSregs, kXsave, kXcrs, kLapic, kMsrs, kDebugRegs, kEvents,
  kIrqchip, kPit, kClock, kUart, kValidate,
};
inline constexpr int kNumStateCalls = static_cast<int>(StateCall::kValidate) + 1;
const char* StateCallName(StateCall c);

// How long a state save or restore took (monotonic clock): per vCPU (all of its calls),
// VM-wide (irqchips, PIT, clock, UART), and per call group summed over the vCPUs.
struct StateTiming {
  std::vector<double> vcpu_ms;
  double vm_ms = 0;
  double total_ms = 0;
  std::array<double, kNumStateCalls> call_ms{};
};

}  // namespace lmig
