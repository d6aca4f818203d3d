// Pre-copy convergence policy: a pure function of what the rounds so far measured, so it is
// unit-tested without a VM.
//
// The pause it predicts is the dirty data left at the measured rate plus the fixed part of the
// pause, measured while pre-copy runs (FixedCosts: a dry-run stop and state save of the
// running guest, the state blob at the link's rate, a control round trip and the
// destination's dry-run restore, the pause's control messages at what an END_ROUND cost, the
// state blob's seal and checksum on both sides). It
// stops and copies when pages + fixed fit the downtime
// target, or at the round cap. A guest that keeps dirtying faster than the link drains it is
// throttled (auto-converge, as QEMU does): from round 3 on, if a round did not shrink the dirty
// set below half of what the previous round sent, vCPU throttling starts at 20% and rises by 20
// points per such round, up to 99%. When the fixed part alone exceeds the target, no amount of
// pre-copy can meet it: the policy says so and stops once the pages are a small share of the
// target (kUnreachablePagesShare).
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

// When the target is out of reach, pre-copy goes on until the pages' share of the pause is at
// most this fraction of the target (then stopping later gains little against the fixed part).
inline constexpr double kUnreachablePagesShare = 0.1;
// END_ROUND sends the control-message cost is taken from (the latest rounds: the link's state
// near the pause).
inline constexpr size_t kControlSamples = 5;

// The parts of the pause that do not depend on the dirty pages, measured during pre-copy.
struct FixedCosts {
  int dry_runs = 0;
  double stop_ms = 0;          // vCPUs kicked and parked: the longest dry run
  double save_ms = 0;          // state saved: the longest dry run
  double spread_ms = 0;        // longest minus shortest (stop + save) over the dry runs
  double lowest_ms = 0;        // the shortest dry run (stop + save)
  uint64_t state_bytes = 0;    // the state blob's size (the largest seen)
  // Sealing (with a key) and checksumming the state blob once, measured on a dry run's blob:
  // the source pays it sending DEVICE_STATE, the destination again opening it (the longest).
  double state_seal_ms = 0;
  double round_trip_ms = -1;   // one control round trip (< 0: not measured)
  double dst_restore_ms = -1;  // the destination's dry-run restore (< 0: not measured)
  // What one control message costs the sender: the median send of the last pre-copy rounds'
  // END_ROUNDs (< 0: not measured), and their spread. The pause sends three before it waits
  // (END_ROUND, DEVICE_STATE, COMPLETE).
  double control_send_ms = -1;
  double control_spread_ms = 0;
  std::vector<double> control_sends;  // the last kControlSamples, oldest first
  // What a round costs beyond its bytes at the measured rate (the hand-off to the streams,
  // their flushes and STREAM_ENDs, the first WRITE's latency): the median excess of the last
  // kControlSamples pre-copy rounds (never below 0), and their spread. The final round pays it
  // once; the pages' rate, measured on big rounds, does not hold it.
  double round_overhead_ms = 0;
  double round_overhead_spread_ms = 0;
  std::vector<double> round_overheads;  // the last kControlSamples, oldest first

  // Records one dry run.
  void AddDryRun(double stop, double save, uint64_t bytes);
  // Records one pre-copy END_ROUND send.
  void AddControlSend(double ms);
  // Records one pre-copy round: it took ROUND_MS for what the measured rate says takes
  // PAGES_MS.
  void AddRoundOverhead(double round_ms, double pages_ms);
  // The fixed part of the pause when the link moves RATE bytes/s (0: the state blob's
  // transfer is not counted).
  double Ms(double rate) const;
  // What the measurements themselves say about their error: the dry runs' spread, the control
  // sends' spread (three of them), the rounds' overhead spread and the round trip, measured
  // once, counted again.
  double ErrorMs() const;
};

struct PolicyDecision {
  bool stop_and_copy = false;
  int throttle_pct = 0;
  double expected_downtime_ms = 0;  // pages_ms + fixed_ms
  double pages_ms = 0;
  double fixed_ms = 0;
  double error_ms = 0;  // the estimate's error: FixedCosts::ErrorMs and the rate's spread
  bool target_met = false;  // in the policy's own model (stop_and_copy only)
  std::string reason;
};

// HISTORY: rounds sent so far (round 1 first). PENDING_BYTES: dirty data collected now.
// CURRENT_THROTTLE: the throttle in force. FIXED: the fixed costs measured so far.
PolicyDecision DecideNextRound(const PolicyConfig& cfg, const std::vector<RoundSample>& history,
                               uint64_t pending_bytes, int current_throttle,
                               const FixedCosts& fixed = {});

// Bytes per second the link has shown across HISTORY (0 when nothing measured yet).
double MeasuredRate(const std::vector<RoundSample>& history);

}  // namespace lmig
