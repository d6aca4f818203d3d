// The receiver's view (IncomingVm) of a real Machine: its RAM, the state validator for its
// KVM (ValidateState with the machine's limits), and restore + a caller's resume step.
#pragma once

#include <functional>
#include <span>

#include "include/lmig/status.h"
#include "src/machine/machine.h"
#include "src/machine/state_codec.h"
#include "src/migration/receiver.h"

namespace lmig {

class MachineVm : public IncomingVm {
 public:
  // RESUME starts the restored machine (console session, vCPU threads).
  using ResumeFn = std::function<absl::Status(Machine*)>;
  MachineVm(Machine* m, ResumeFn resume) : m_(m), resume_(std::move(resume)) {}

  std::span<uint8_t> memory() override { return {m_->memory().base(), m_->memory().size()}; }
  absl::Status CheckState(std::span<const uint8_t> blob) override {
    return ValidateState(blob, m_->state_limits()).status();
  }
  absl::StatusOr<RestoreTimings> RestoreAndResume(std::span<const uint8_t> blob) override {
    RestoreTimings t;
    ASSIGN_OR_RETURN(t.restore, Annotate(m_->RestoreStateTimed(blob), "restoring device state"));
    const MonoClock::time_point start = MonoClock::now();
    RETURN_IF_ERROR(resume_(m_));
    t.resume_ms = MsBetween(start, MonoClock::now());
    return t;
  }

 private:
  Machine* m_;
  ResumeFn resume_;
};

}  // namespace lmig
