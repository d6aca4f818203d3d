#include "src/migration/policy.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace lmig {

namespace {
// END_ROUND, DEVICE_STATE and COMPLETE go out before the pause waits for the ACK.
constexpr double kPauseControlSends = 3;
// As QEMU's cpu-throttle-max: a guest at 1% still runs (timers, console), just barely.
constexpr int kMaxThrottlePct = 99;

// The slowest rate any round showed (0 when none did).
double SlowestRate(const std::vector<RoundSample>& history) {
  double slowest = 0;
  for (const RoundSample& r : history) {
    if (r.bytes > 0 && r.seconds > 0) {
      const double rate = r.bytes / r.seconds;
      slowest = slowest == 0 ? rate : std::min(slowest, rate);
    }
  }
  return slowest;
}

// Adds MS to WINDOW (the last kControlSamples, oldest first) and sets MEDIAN and SPREAD
// (largest minus smallest) from what it then holds.
void AddToWindow(std::vector<double>& window, double ms, double& median, double& spread) {
  window.push_back(ms);
  if (window.size() > kControlSamples) {
    window.erase(window.begin());
  }
  std::vector<double> sorted = window;
  std::sort(sorted.begin(), sorted.end());
  median = sorted[sorted.size() / 2];
  spread = sorted.back() - sorted.front();
}
}  // namespace

void FixedCosts::AddDryRun(double stop, double save, uint64_t bytes) {
  const double total = stop + save;
  if (dry_runs == 0 || total > stop_ms + save_ms) {
    stop_ms = stop;
    save_ms = save;
  }
  lowest_ms = dry_runs == 0 ? total : std::min(lowest_ms, total);
  spread_ms = stop_ms + save_ms - lowest_ms;
  state_bytes = std::max(state_bytes, bytes);
  ++dry_runs;
}

void FixedCosts::AddControlSend(double ms) {
  AddToWindow(control_sends, ms, control_send_ms, control_spread_ms);
}

void FixedCosts::AddRoundOverhead(double round_ms, double pages_ms) {
  AddToWindow(round_overheads, std::max(round_ms - pages_ms, 0.0), round_overhead_ms,
              round_overhead_spread_ms);
}

double FixedCosts::Ms(double rate) const {
  double ms = stop_ms + save_ms;
  if (rate > 0) {
    ms += state_bytes / rate * 1000.0;
  }
  ms += std::max(round_trip_ms, 0.0) + std::max(dst_restore_ms, 0.0);
  ms += kPauseControlSends * std::max(control_send_ms, 0.0);
  ms += 2 * state_seal_ms;  // sealed and hashed here, opened and hashed there
  ms += round_overhead_ms;
  return ms;
}

double FixedCosts::ErrorMs() const {
  return spread_ms + kPauseControlSends * control_spread_ms + round_overhead_spread_ms +
         std::max(round_trip_ms, 0.0);
}

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
                               uint64_t pending_bytes, int current_throttle,
                               const FixedCosts& fixed) {
  PolicyDecision d;
  d.throttle_pct = current_throttle;
  const double target = static_cast<double>(cfg.downtime_target_ms);
  const double rate = MeasuredRate(history);
  d.pages_ms = pending_bytes == 0 ? 0 : rate > 0 ? pending_bytes / rate * 1000.0 : 1e12;
  d.fixed_ms = fixed.Ms(rate);
  d.expected_downtime_ms = d.pages_ms + d.fixed_ms;
  const double slowest = SlowestRate(history);
  const double pages_error =
      slowest > 0 && rate > 0 ? pending_bytes / slowest * 1000.0 - d.pages_ms : 0;
  d.error_ms = fixed.ErrorMs() + std::max(pages_error, 0.0);
  const std::string estimate = absl::StrFormat(
      "pages %.1f ms + fixed %.1f ms = %.1f ms", d.pages_ms, d.fixed_ms, d.expected_downtime_ms);
  if (d.expected_downtime_ms <= target) {
    d.stop_and_copy = true;
    d.target_met = true;
    d.reason = absl::StrFormat("%s fits the target %d ms", estimate, cfg.downtime_target_ms);
    return d;
  }
  const bool unreachable = d.fixed_ms >= target;
  if (unreachable && d.pages_ms <= kUnreachablePagesShare * target) {
    d.stop_and_copy = true;
    d.reason = absl::StrFormat(
        "%s: cannot meet the target %d ms, the fixed part alone exceeds it", estimate,
        cfg.downtime_target_ms);
    return d;
  }
  if (static_cast<int>(history.size()) >= cfg.max_rounds) {
    d.stop_and_copy = true;
    d.reason = absl::StrFormat("round cap %d reached: %s, cannot meet the target %d ms",
                               cfg.max_rounds, estimate, cfg.downtime_target_ms);
    return d;
  }
  if (cfg.allow_throttle && history.size() >= 2 &&
      pending_bytes * 2 > history.back().bytes) {
    d.throttle_pct = current_throttle == 0 ? 20 : std::min(kMaxThrottlePct, current_throttle + 20);
    d.reason = absl::StrFormat("not converging (%d bytes dirty after a %d byte round; %s over "
                               "the target %d ms): throttling vCPUs to %d%%",
                               pending_bytes, history.back().bytes, estimate,
                               cfg.downtime_target_ms, d.throttle_pct);
  }
  return d;
}

}  // namespace lmig
