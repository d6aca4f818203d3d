#include "src/migration/policy.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace lmig {

namespace {
// As QEMU's cpu-throttle-max: a guest at 1% still runs (timers, console), just barely.
constexpr int kMaxThrottlePct = 99;
}  // namespace

double MeasuredRate(const std::vector<RoundSample>& history) {
  uint64_t bytes = 0;
  double secs = 0;
  for (const RoundSample& r : history) {
    bytes += r.bytes;
    secs += r.seconds;
  }
  return secs > 0 ? static_cast<double>(bytes) / secs : 0;
}

PolicyDecision DecideNextRound(const PolicyConfig& cfg, const std::vector<RoundSample>& history,
                               uint64_t pending_bytes, int current_throttle) {
  PolicyDecision d;
  d.throttle_pct = current_throttle;
  const double rate = MeasuredRate(history);
  d.expected_downtime_ms = rate > 0 ? pending_bytes / rate * 1000.0 : 1e12;
  if (pending_bytes == 0 || d.expected_downtime_ms <= static_cast<double>(cfg.downtime_target_ms)) {
    d.stop_and_copy = true;
    d.reason = absl::StrFormat("%.1f ms of data left, target %d ms", d.expected_downtime_ms,
                               cfg.downtime_target_ms);
    return d;
  }
  if (static_cast<int>(history.size()) >= cfg.max_rounds) {
    d.stop_and_copy = true;
    d.reason = absl::StrFormat("round cap %d reached", cfg.max_rounds);
    return d;
  }
  if (cfg.allow_throttle && history.size() >= 2 &&
      pending_bytes * 2 > history.back().bytes) {
    d.throttle_pct = current_throttle == 0 ? 20 : std::min(kMaxThrottlePct, current_throttle + 20);
    d.reason = absl::StrFormat("not converging (%d bytes dirty after a %d byte round): "
                               "throttling vCPUs to %d%%",
                               pending_bytes, history.back().bytes, d.throttle_pct);
  }
  return d;
}

}  // namespace lmig
