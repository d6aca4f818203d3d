#include "src/migration/stats.h"

#include <sys/resource.h>

#include <fstream>

#include "absl/strings/str_format.h"
#include "nlohmann/json.hpp"

namespace lmig {

std::string MigrationStats::ToJson() const {
  nlohmann::json j;
  j["role"] = role;
  j["status"] = status;
  if (!error.empty()) {
    j["error"] = error;
  }
  j["transport"] = transport;
  j["dirty_tracking"] = dirty_tracking;
  j["total_time_ms"] = total_time_ms;
  j["setup_time_ms"] = setup_time_ms;
  j["registration_ms"] = registration_ms;
  j["downtime_ms"] = downtime_ms;
  j["transferred_bytes"] = transferred_bytes;
  j["pages_sent"] = pages_sent;
  j["zero_pages_skipped"] = zero_pages_skipped;
  j["mem_bytes"] = mem_bytes;
  j["rounds"] = rounds;
  j["max_throttle_pct"] = max_throttle_pct;
  j["zero_copy"] = zero_copy;
  j["tls"] = security;  // empty: no TLS
  j["state_bytes"] = state_bytes;
  j["cpu_ms"] = src_cpu_ms;
  j["cpu_user_ms"] = src_cpu_user_ms;
  j["per_round"] = nlohmann::json::array();
  for (const RoundStats& r : per_round) {
    j["per_round"].push_back({{"round", r.round},
                              {"dirty_pages", r.dirty_pages},
                              {"bytes", r.bytes},
                              {"ms", r.ms},
                              {"rate_mbps", r.rate_mbps},
                              {"throttle_pct", r.throttle_pct},
                              {"final", r.final_round}});
  }
  return j.dump(2);
}

std::string MigrationStats::HumanReport() const {
  if (status != "completed" && rounds == 0 && transferred_bytes == 0) {
    // Failed before any memory moved (no connection, refused handshake): nothing to measure.
    return absl::StrFormat("migration %s before any memory was sent: %s\n", status, error);
  }
  if (role == "destination") {
    // The destination measures what arrived; downtime and throttling are the source's numbers.
    std::string s = absl::StrFormat(
        "migration %s over %s: %.1f MiB in %d rounds (%d pages, state %d bytes), "
        "%.1f ms from connection to resume, memory registration %.1f ms\n",
        status, transport, transferred_bytes / 1048576.0, rounds, pages_sent, state_bytes,
        total_time_ms, registration_ms);
    if (!security.empty()) {
      s += "  encryption: " + security + "\n";
    }
    if (!error.empty()) {
      s += "  error: " + error + "\n";
    }
    return s;
  }
  std::string s = absl::StrFormat(
      "migration %s over %s (%s dirty tracking)\n"
      "  total time      %10.1f ms   (setup %.1f ms, of which memory registration %.1f ms)\n"
      "  downtime        %10.1f ms\n"
      "  transferred     %10.1f MiB  (%d pages sent, %d zero pages skipped, state %d bytes)\n"
      "  throughput      %10.1f Mbit/s\n"
      "  rounds          %10d      (max vCPU throttle %d%%)\n"
      "  cpu time        %10.1f ms   (migration thread; %.1f ms in user space)\n",
      status, transport, dirty_tracking, total_time_ms, setup_time_ms, registration_ms,
      downtime_ms, transferred_bytes / 1048576.0, pages_sent, zero_pages_skipped, state_bytes,
      total_time_ms > 0 ? transferred_bytes * 8 / (total_time_ms * 1000.0) : 0.0, rounds,
      max_throttle_pct, src_cpu_ms, src_cpu_user_ms);
  for (const RoundStats& r : per_round) {
    s += absl::StrFormat("    round %2d%s %8d pages %9.1f MiB %8.1f ms %8.1f Mbit/s%s\n", r.round,
                         r.final_round ? "*" : " ", r.dirty_pages, r.bytes / 1048576.0, r.ms,
                         r.rate_mbps,
                         r.throttle_pct ? absl::StrFormat("  throttle %d%%", r.throttle_pct)
                                        : "");
  }
  if (!security.empty()) {
    s += "  encryption: " + security + "\n";
  }
  if (!error.empty()) {
    s += "  error: " + error + "\n";
  }
  return s;
}

absl::Status WriteStatsJson(const MigrationStats& s, const std::string& path) {
  std::ofstream f(path);
  if (!f) {
    return absl::PermissionDeniedError(absl::StrFormat("cannot write --stats-json %s", path));
  }
  f << s.ToJson() << "\n";
  return f.good() ? absl::OkStatus()
                  : absl::DataLossError(absl::StrFormat("writing --stats-json %s failed", path));
}

CpuTime ThreadCpu() {
  rusage ru{};
  ::getrusage(RUSAGE_THREAD, &ru);
  return {ru.ru_utime.tv_sec * 1000.0 + ru.ru_utime.tv_usec / 1000.0,
          ru.ru_stime.tv_sec * 1000.0 + ru.ru_stime.tv_usec / 1000.0};
}

}  // namespace lmig
