// Migration statistics, printed as a human report and written as JSON (--stats-json).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/status.h"

namespace lmig {

struct RoundStats {
  int round = 0;
  uint64_t dirty_pages = 0;
  uint64_t bytes = 0;
  double ms = 0;
  double rate_mbps = 0;  // megabits per second
  int throttle_pct = 0;
  bool final_round = false;
};

struct MigrationStats {
  std::string role;  // "source" or "destination"
  std::string status = "failed";  // "completed" or "failed"
  std::string error;
  std::string transport;
  std::string dirty_tracking;
  double total_time_ms = 0;
  double setup_time_ms = 0;
  double registration_ms = 0;
  double downtime_ms = 0;
  uint64_t transferred_bytes = 0;
  uint64_t pages_sent = 0;
  uint64_t zero_pages_skipped = 0;
  uint64_t mem_bytes = 0;
  int rounds = 0;
  int max_throttle_pct = 0;
  bool zero_copy = false;
  std::string security;  // TCP: the TLS connection (empty: none)
  uint64_t state_bytes = 0;
  double src_cpu_ms = 0;  // CPU time of the migration thread (user + system; vCPUs excluded)
  double src_cpu_user_ms = 0;  // of which in user space
  std::vector<RoundStats> per_round;

  std::string ToJson() const;
  std::string HumanReport() const;
};

absl::Status WriteStatsJson(const MigrationStats& s, const std::string& path);

// CPU time (user + system) of this process so far, in milliseconds.
// CPU time the calling thread has used so far.
struct CpuTime {
  double user_ms = 0;
  double system_ms = 0;
  double total() const { return user_ms + system_ms; }
};
CpuTime ThreadCpu();

}  // namespace lmig
