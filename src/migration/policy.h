// Pre-copy convergence policy: a pure function of what the rounds so far measured, so it is
// unit-tested without a VM.
//
// Stop and copy when the dirty data left can be sent within the downtime target at the
// measured rate, or at the round cap. A guest that keeps dirtying faster than the link drains
// it is throttled (auto-converge, as QEMU does): from round 3 on, if a round did not shrink the
// dirty set below half of what the previous round sent, vCPU throttling starts at 20% and rises
// by 20 points per such round, up to 99%.
#pragma once

#include <cstdint>
#include <string>
#include <vector>

namespace lmig {

struct PolicyConfig {
  uint64_t downtime_target_ms = 50;
  int max_rounds = 30;
  bool allow_throttle = true;
};

struct RoundSample {
  uint64_t bytes = 0;   // sent in the round
  double seconds = 0;   // how long sending took
};

struct PolicyDecision {
  bool stop_and_copy = false;
  int throttle_pct = 0;
  double expected_downtime_ms = 0;
  std::string reason;
};

// HISTORY: rounds sent so far (round 1 first). PENDING_BYTES: dirty data collected now.
// CURRENT_THROTTLE: the throttle in force.
PolicyDecision DecideNextRound(const PolicyConfig& cfg, const std::vector<RoundSample>& history,
                               uint64_t pending_bytes, int current_throttle);

// Bytes per second the link has shown across HISTORY (0 when nothing measured yet).
double MeasuredRate(const std::vector<RoundSample>& history);

}  // namespace lmig
