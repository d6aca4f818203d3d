// Migration statistics, printed as a human report and written as JSON (--stats-json).
#pragma once

#include <chrono>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "include/lmig/protocol.h"
#include "src/base/mono_clock.h"

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

// One stream of a migration (--streams): what it carried and what it cost.
struct StreamStats {
  int index = 0;
  int cpu = -1;          // the CPU its reactor (dst: reader) is pinned to (-1: not, stream 0)
  uint64_t bytes = 0;    // of pages
  double busy_ms = 0;    // in its transport's calls
  double cpu_ms = -1;    // its reactor's CPU time (-1: the migration thread's, stream 0)
  // Megabits per second while busy.
  double rate_mbps() const { return busy_ms > 0 ? bytes * 8 / busy_ms / 1e3 : 0; }
};

// One step of the stop-and-copy pause, measured with a monotonic clock. The top-level phases
// of MigrationStats::phases follow each other and add up to the downtime; PARTS break one down
// (per vCPU, per KVM call group), and a CONCURRENT phase overlaps others (the destination
// validating state while the source still sends) and is not part of any sum.
struct Phase {
  std::string name;    // e.g. "vcpus_stopped", "dst.restore"
  std::string side;    // "source", "destination" or "wire"
  double ms = 0;
  bool missing = false;     // not measured: the migration ended before it, or the peer did not
                            // report it (why: MigrationStats::phases_note)
  bool concurrent = false;  // overlaps other phases: reported, not summed
  std::vector<Phase> parts;
  // Another breakdown of the same time, per KVM call group summed over the vCPUs (state save
  // and restore); not added to the sum either.
  std::vector<Phase> calls;
};

// What the phases say about the pause they break down.
struct PhaseCheck {
  double sum_ms = 0;          // the non-concurrent, measured top-level phases
  double unaccounted_ms = 0;  // TOTAL_MS - sum_ms (negative: the phases claim more)
  std::vector<std::string> missing;  // names of the missing phases, parts included
  // |unaccounted| is within FRACTION of the total.
  bool Within(double fraction, double total_ms) const;
};
PhaseCheck CheckPhases(const std::vector<Phase>& phases, double total_ms);

// The source's stop-and-copy phases, in order: any of them not recorded in PHASES is added as
// missing (in its place), so a report always lists the whole pause.
// The destination's steps come from its ACK; ack_round_trip is the rest of the wait for the
// ACK (both messages' flight, sealing, and whatever the destination did not account for).
inline constexpr const char* kSourcePausePhases[] = {
    "vcpus_stopped",        "dirty_harvest",      "final_pages_sent",
    "final_pages_landed",   "state_saved",        "state_sent",
    "complete_sent",        "dst.complete_checked", "dst.remote_access_revoked",
    "dst.state_restored",   "dst.vcpus_resumed",  "ack_round_trip",
};
void AddMissingPhases(std::vector<Phase>& phases, std::span<const char* const> expected);

// Monotonic time for the phases: MonoClock and MsBetween (src/base/mono_clock.h).

// The destination's phase table from its ACK (already checked with proto::CheckPhaseTimings)
// as phases: IN_PAUSE, in order, from COMPLETE in hand to the ACK (complete_checked,
// remote_access_revoked, state_restored with its per-vCPU parts and call groups,
// vcpus_resumed; any the table lacks is missing), adding up to IN_PAUSE_MS; CONCURRENT, the
// steps that overlap the source's (state received, validated).
struct DestinationPhases {
  std::vector<Phase> in_pause;
  std::vector<Phase> concurrent;
  double in_pause_ms = 0;
};
DestinationPhases PhasesFromTable(std::span<const proto::PhaseTiming> table, int num_cpus);

// The pre-copy policy's estimate of the pause when it chose to stop (see policy.h).
struct PauseEstimate {
  bool valid = false;
  double total_ms = 0;
  double pages_ms = 0;   // the final round's dirty data at the measured rate
  double fixed_ms = 0;   // measured fixed costs (state save, pause, round trip, ...)
  double error_ms = 0;   // the estimate's stated error
  // The fixed part's terms (< 0: not measured): dry-run stop and save, the state blob at the
  // link's rate, the handshake's control round trip, the destination's dry-run restore.
  // control: the pause's control messages at what an END_ROUND cost in pre-copy; state: the
  // blob at the link's rate plus its seal and checksum on both sides.
  double stop_ms = 0, save_ms = 0, state_ms = 0, round_trip_ms = -1, dst_restore_ms = -1,
         control_ms = 0, round_overhead_ms = 0;
  std::string reason;    // why the policy stopped (or could not fit the target)
  bool target_met = true;  // false: the policy stopped knowing the estimate exceeds the target
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
  // CPU time of the migration thread and the stream reactors (user + system; vCPUs excluded)
  double src_cpu_ms = 0;
  double src_cpu_user_ms = 0;  // of which the migration thread's in user space
  std::vector<RoundStats> per_round;
  std::vector<StreamStats> streams;  // stream 0 first
  // Source: the pause, phase by phase (the destination's part from its ACK). Destination: its
  // own steps.
  std::vector<Phase> phases;
  std::string phases_note;  // why phases are missing, when they are
  PauseEstimate estimate;

  std::string ToJson() const;
  std::string HumanReport() const;
  // The phases, one line each with their parts, and what they add up to ("" without phases).
  std::string PhaseReport() const;
  // One line per stream ("" with one stream).
  std::string StreamReport() const;
  // " (estimated ...)" after the downtime, or "".
  std::string EstimateText() const;
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
