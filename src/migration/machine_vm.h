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
  absl::StatusOr<double> Prepare() override {
    ASSIGN_OR_RETURN(std::vector<uint8_t> own, Annotate(m_->SaveState(), "dry-run state save"));
    // The first restore pays one-time costs (KVM's lazily built structures, this process's
    // first touches); the second is what the pause will see.
    RETURN_IF_ERROR(Annotate(m_->RestoreState(own), "dry-run restore of the fresh VM"));
    ASSIGN_OR_RETURN(StateTiming t,
                     Annotate(m_->RestoreStateTimed(own), "dry-run restore of the fresh VM"));
    // The threads exist before the switchover; RESUME's Machine::Start then only wakes them.
    RETURN_IF_ERROR(Annotate(m_->StartPaused(), "creating the vCPU threads"));
    return t.total_ms;
  }
  absl::StatusOr<RestoreTimings> RestoreAndResume(std::span<const uint8_t> blob) override {
    RestoreTimings t;
    ASSIGN_OR_RETURN(t.restore, Annotate(m_->RestoreStateTimed(blob), "restoring device state"));
    const MonoClock::time_point start = MonoClock::now();
    m_->HoldStart();  // the vCPUs run at Release, once the ACK is out
    RETURN_IF_ERROR(resume_(m_));
    t.resume_ms = MsBetween(start, MonoClock::now());
    return t;
  }
  void Release() override { m_->ReleaseStart(); }

 private:
  Machine* m_;
  ResumeFn resume_;
};

}  // namespace lmig
