#include "src/migration/pause_phases.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"

namespace lmig {

Phase MakePhase(std::string name, std::string side, double ms) {
  Phase p;
  p.name = std::move(name);
  p.side = std::move(side);
  p.ms = ms;
  return p;
}

// Per-vCPU and VM-wide parts, and the call groups, of a state save or restore.
void AddStateParts(Phase& p, const StateTiming& t) {
  for (size_t i = 0; i < t.vcpu_ms.size(); ++i) {
    p.parts.push_back(MakePhase(absl::StrCat("vcpu", i), p.side, t.vcpu_ms[i]));
  }
  p.parts.push_back(MakePhase("vm", p.side, t.vm_ms));
  for (int c = 0; c < kNumStateCalls; ++c) {
    if (t.call_ms[c] > 0) {
      p.calls.push_back(MakePhase(StateCallName(static_cast<StateCall>(c)), p.side, t.call_ms[c]));
    }
  }
}

void AddDestinationPhases(MigrationStats& stats, const std::vector<proto::PhaseTiming>& dst,
                          int num_cpus, double ack_wait_ms, double complete_send_ms) {
  auto missing = [&](const std::string& why) {
    stats.phases.push_back(MakePhase("ack_wait", "source", ack_wait_ms));
    stats.phases_note = why;
  };
  if (absl::Status s = proto::CheckPhaseTimings(dst, static_cast<uint32_t>(num_cpus));
      !s.ok()) {
    missing(absl::StrCat("the destination's phases were refused (", s.message(),
                         "): its part of the pause is missing"));
    return;
  }
  if (dst.empty()) {
    missing("the destination reported no phases: its part of the pause is missing");
    return;
  }
  DestinationPhases d = PhasesFromTable(dst, num_cpus);
  const double dst_ms = d.in_pause_ms;
  // The destination's steps happen between the moment the COMPLETE went out (its Send may
  // still be returning here when the destination starts on it) and the ACK: a table that
  // claims more than that (beyond clock-rate noise) is not believed.
  const double window_ms = complete_send_ms + ack_wait_ms;
  if (dst_ms > window_ms * 1.01 + 0.05) {
    missing(absl::StrFormat("the destination's phases were refused: they add up to %.2f ms, "
                            "more than the %.2f ms from COMPLETE to the ACK",
                            dst_ms, window_ms));
    return;
  }
  if (dst_ms > ack_wait_ms) {
    // The destination began before the COMPLETE's Send returned here: that much of the
    // source's complete_sent overlaps the destination's steps and is counted once, there.
    Phase& sent = stats.phases.back();
    sent.ms = std::max(0.0, sent.ms - (dst_ms - ack_wait_ms));
  }
  for (Phase& q : d.in_pause) {
    stats.phases.push_back(std::move(q));
  }
  stats.phases.push_back(MakePhase("ack_round_trip", "wire", std::max(0.0, ack_wait_ms - dst_ms)));
  for (Phase& q : d.concurrent) {
    stats.phases.push_back(std::move(q));
  }
}


}  // namespace lmig
