#include "src/migration/stats.h"

#include <sys/resource.h>

#include <algorithm>
#include <cmath>
#include <fstream>
#include <string_view>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "nlohmann/json.hpp"
#include "src/machine/state_timing.h"

namespace lmig {

bool PhaseCheck::Within(double fraction, double total_ms) const {
  return std::abs(unaccounted_ms) <= fraction * total_ms;
}

namespace {

void CollectMissing(const Phase& p, const std::string& prefix, std::vector<std::string>& out) {
  const std::string name = prefix.empty() ? p.name : prefix + "/" + p.name;
  if (p.missing) {
    out.push_back(name);
  }
  for (const Phase& part : p.parts) {
    CollectMissing(part, name, out);
  }
}

nlohmann::json PhaseJson(const Phase& p) {
  nlohmann::json j{{"name", p.name}, {"side", p.side}};
  if (p.missing) {
    j["ms"] = nullptr;
    j["missing"] = true;
  } else {
    j["ms"] = p.ms;
  }
  if (p.concurrent) {
    j["concurrent"] = true;
  }
  if (!p.parts.empty()) {
    j["parts"] = nlohmann::json::array();
    for (const Phase& part : p.parts) {
      j["parts"].push_back(PhaseJson(part));
    }
  }
  if (!p.calls.empty()) {
    j["calls"] = nlohmann::json::object();
    for (const Phase& c : p.calls) {
      j["calls"][c.name] = c.ms;
    }
  }
  return j;
}

std::string PhaseMs(const Phase& p) {
  return p.missing ? std::string("missing") : absl::StrFormat("%.2f ms", p.ms);
}

void AppendPhase(std::string& s, const Phase& p) {
  const std::string indent(4, ' ');
  const std::string label = p.side == "destination" && p.name.rfind("dst.", 0) != 0
                                ? "dst." + p.name
                                : p.name;
  absl::StrAppendFormat(&s, "%s%-28s %12s%s\n", indent, label, PhaseMs(p),
                        p.concurrent ? "  (concurrent, not summed)" : "");
  // Parts and calls of a phase: wrapped lines of "name 0.12 ms," items.
  for (const std::vector<Phase>* list : {&p.parts, &p.calls}) {
    if (list->empty()) {
      continue;
    }
    const std::string lead = indent + (list == &p.calls ? "  calls: " : "  ");
    std::string line = lead;
    for (size_t i = 0; i < list->size(); ++i) {
      const Phase& part = (*list)[i];
      const std::string item = absl::StrFormat("%s %s%s", part.name, PhaseMs(part),
                                               i + 1 < list->size() ? "," : "");
      if (line.size() > lead.size() && line.size() + item.size() > 100) {
        s += line + "\n";
        line = std::string(lead.size(), ' ');
      }
      line += item + " ";
    }
    s += line + "\n";
  }
}

}  // namespace

PhaseCheck CheckPhases(const std::vector<Phase>& phases, double total_ms) {
  PhaseCheck c;
  for (const Phase& p : phases) {
    if (!p.missing && !p.concurrent) {
      c.sum_ms += p.ms;
    }
    CollectMissing(p, "", c.missing);
  }
  c.unaccounted_ms = total_ms - c.sum_ms;
  return c;
}

void AddMissingPhases(std::vector<Phase>& phases, std::span<const char* const> expected) {
  std::vector<Phase> out;
  size_t next = 0;  // PHASES are in EXPECTED's order, possibly with gaps and extras
  for (const char* name : expected) {
    size_t found = phases.size();
    for (size_t i = next; i < phases.size(); ++i) {
      if (phases[i].name == name) {
        found = i;
        break;
      }
    }
    if (found == phases.size()) {
      Phase m;
      m.name = name;
      m.side = std::string_view(name).rfind("dst.", 0) == 0 ? "destination" : "source";
      m.missing = true;
      out.push_back(std::move(m));
      continue;
    }
    for (; next <= found; ++next) {
      out.push_back(std::move(phases[next]));
    }
  }
  for (; next < phases.size(); ++next) {
    out.push_back(std::move(phases[next]));
  }
  phases = std::move(out);
}

DestinationPhases PhasesFromTable(std::span<const proto::PhaseTiming> table, int num_cpus) {
  auto make = [](const char* name, double ms, bool missing) {
    Phase p;
    p.name = absl::StrCat("dst.", name);
    p.side = "destination";
    p.ms = ms;
    p.missing = missing;
    return p;
  };
  // The steps from COMPLETE to the ACK, in their order on the destination.
  Phase checked = make("complete_checked", 0, true);
  Phase revoked = make("remote_access_revoked", 0, true);
  Phase restored = make("state_restored", 0, true);
  Phase resumed = make("vcpus_resumed", 0, true);
  DestinationPhases d;
  std::vector<double> vcpu_ms(static_cast<size_t>(std::max(num_cpus, 0)), -1);
  double vm_ms = -1, validate_ms = -1;
  for (const proto::PhaseTiming& e : table) {
    const auto p = static_cast<proto::DstPhase>(e.phase);
    const double ms = e.ns / 1e6;
    switch (p) {
      case proto::DstPhase::kStateReceived:
      case proto::DstPhase::kStateValidated: {
        Phase c = make(proto::DstPhaseName(p), ms, false);
        c.concurrent = true;
        d.concurrent.push_back(std::move(c));
        break;
      }
      case proto::DstPhase::kCompleteChecked:
        checked = make(proto::DstPhaseName(p), ms, false);
        break;
      case proto::DstPhase::kRemoteAccessRevoked:
        revoked = make(proto::DstPhaseName(p), ms, false);
        break;
      case proto::DstPhase::kRestoreVcpu:
        if (e.vcpu < vcpu_ms.size()) {
          vcpu_ms[e.vcpu] = ms;
          restored.missing = false;
        }
        break;
      case proto::DstPhase::kRestoreVm:
        vm_ms = ms;
        restored.missing = false;
        break;
      case proto::DstPhase::kResumed:
        resumed = make(proto::DstPhaseName(p), ms, false);
        break;
      default: {
        // A KVM call group of the restore (validate among them: a part of its own).
        const int group = e.phase - static_cast<int>(proto::DstPhase::kRestoreGroupFirst);
        if (group == static_cast<int>(StateCall::kValidate)) {
          validate_ms = ms;
          restored.missing = false;
        }
        Phase c;
        c.name = proto::DstPhaseName(p);
        c.side = "destination";
        c.ms = ms;
        restored.calls.push_back(std::move(c));
        break;
      }
    }
  }
  // The restore's parts: validation, each vCPU, VM-wide; what the table lacks is missing.
  auto part = [&](std::string name, double ms) {
    Phase q;
    q.name = std::move(name);
    q.side = "destination";
    q.missing = ms < 0;
    q.ms = q.missing ? 0 : ms;
    restored.ms += q.ms;
    restored.parts.push_back(std::move(q));
  };
  if (!restored.missing) {
    part("validate", validate_ms);
    for (size_t i = 0; i < vcpu_ms.size(); ++i) {
      part(absl::StrCat("vcpu", i), vcpu_ms[i]);
    }
    part("vm", vm_ms);
  }
  for (Phase* q : {&checked, &revoked, &restored, &resumed}) {
    d.in_pause_ms += q->missing ? 0 : q->ms;
    d.in_pause.push_back(std::move(*q));
  }
  return d;
}

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
  j["streams"] = nlohmann::json::array();
  for (const StreamStats& st : streams) {
    nlohmann::json e{{"stream", st.index}, {"bytes", st.bytes}, {"busy_ms", st.busy_ms},
                     {"rate_mbps", st.rate_mbps()}};
    if (st.cpu >= 0) {
      e["cpu"] = st.cpu;
    }
    if (st.cpu_ms >= 0) {
      e["cpu_ms"] = st.cpu_ms;
    }
    j["streams"].push_back(std::move(e));
  }
  if (!phases.empty()) {
    nlohmann::json p{{"phases", nlohmann::json::array()}};
    if (role != "destination") {
      const PhaseCheck c = CheckPhases(phases, downtime_ms);
      p["sum_ms"] = c.sum_ms;
      p["unaccounted_ms"] = c.unaccounted_ms;
      p["missing"] = c.missing;
    }
    if (!phases_note.empty()) {
      p["note"] = phases_note;
    }
    for (const Phase& ph : phases) {
      p["phases"].push_back(PhaseJson(ph));
    }
    j["downtime_phases"] = std::move(p);
  }
  if (estimate.valid) {
    j["downtime_estimate"] = {{"total_ms", estimate.total_ms}, {"pages_ms", estimate.pages_ms},
                              {"fixed_ms", estimate.fixed_ms}, {"error_ms", estimate.error_ms},
                              {"target_met", estimate.target_met},
                              {"fixed_parts",
                               {{"stop_ms", estimate.stop_ms},
                                {"save_ms", estimate.save_ms},
                                {"state_ms", estimate.state_ms},
                                {"round_trip_ms", estimate.round_trip_ms},
                                {"dst_restore_ms", estimate.dst_restore_ms},
                                {"control_ms", estimate.control_ms},
                                {"round_overhead_ms", estimate.round_overhead_ms}}},
                              {"reason", estimate.reason}};
  }
  return j.dump(2);
}

std::string MigrationStats::PhaseReport() const {
  if (phases.empty()) {
    return "";
  }
  std::string s;
  for (const Phase& p : phases) {
    AppendPhase(s, p);
  }
  if (role != "destination") {
    const PhaseCheck c = CheckPhases(phases, downtime_ms);
    absl::StrAppendFormat(&s, "    phases sum %.2f ms of %.2f ms (unaccounted %.2f ms)%s\n",
                          c.sum_ms, downtime_ms, c.unaccounted_ms,
                          c.missing.empty()
                              ? ""
                              : absl::StrCat("; missing: ", absl::StrJoin(c.missing, ", ")));
  }
  if (!phases_note.empty()) {
    s += "    " + phases_note + "\n";
  }
  return s;
}

std::string MigrationStats::EstimateText() const {
  if (!estimate.valid) {
    return "";
  }
  return absl::StrFormat(
      "   (estimated %.1f +- %.1f ms: pages %.1f + fixed %.1f = stop %.1f, save %.1f, state "
      "%.1f, control %.1f, round overhead %.1f, round trip %.1f, dst restore %.1f%s)",
      estimate.total_ms, estimate.error_ms, estimate.pages_ms, estimate.fixed_ms,
      estimate.stop_ms, estimate.save_ms, estimate.state_ms, estimate.control_ms,
      estimate.round_overhead_ms, estimate.round_trip_ms, estimate.dst_restore_ms,
      estimate.target_met ? "" : "; target not reachable");
}

std::string MigrationStats::StreamReport() const {
  std::string s;
  if (streams.size() < 2) {
    return s;
  }
  for (const StreamStats& st : streams) {
    absl::StrAppendFormat(&s, "    stream %2d %9.1f MiB %9.1f ms busy %8.1f Mbit/s", st.index,
                          st.bytes / 1048576.0, st.busy_ms, st.rate_mbps());
    if (st.cpu_ms >= 0) {
      absl::StrAppendFormat(&s, "  cpu %.1f ms", st.cpu_ms);
    } else if (role != "destination") {
      s += "  (migration thread)";
    }
    if (st.cpu >= 0) {
      absl::StrAppendFormat(&s, " on CPU %d", st.cpu);
    }
    s += "\n";
  }
  return s;
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
    if (!phases.empty()) {
      s += "  stop-and-copy steps here:\n" + PhaseReport();
    }
    s += StreamReport();
    if (!error.empty()) {
      s += "  error: " + error + "\n";
    }
    return s;
  }
  std::string s = absl::StrFormat(
      "migration %s over %s (%s dirty tracking)\n"
      "  total time      %10.1f ms   (setup %.1f ms, of which memory registration %.1f ms)\n"
      "  downtime        %10.1f ms%s\n"
      "  transferred     %10.1f MiB  (%d pages sent, %d zero pages skipped, state %d bytes)\n"
      "  throughput      %10.1f Mbit/s\n"
      "  rounds          %10d      (max vCPU throttle %d%%)\n"
      "  cpu time        %10.1f ms   (migration thread%s; %.1f ms in user space)\n",
      status, transport, dirty_tracking, total_time_ms, setup_time_ms, registration_ms,
      downtime_ms, EstimateText(), transferred_bytes / 1048576.0, pages_sent, zero_pages_skipped, state_bytes,
      total_time_ms > 0 ? transferred_bytes * 8 / (total_time_ms * 1000.0) : 0.0, rounds,
      max_throttle_pct, src_cpu_ms,
      streams.size() > 1 ? absl::StrFormat(" and %d stream reactors", streams.size() - 1) : "",
      src_cpu_user_ms);
  if (!phases.empty()) {
    s += "  pause phases:\n" + PhaseReport();
  }
  for (const RoundStats& r : per_round) {
    s += absl::StrFormat("    round %2d%s %8d pages %9.1f MiB %8.1f ms %8.1f Mbit/s%s\n", r.round,
                         r.final_round ? "*" : " ", r.dirty_pages, r.bytes / 1048576.0, r.ms,
                         r.rate_mbps,
                         r.throttle_pct ? absl::StrFormat("  throttle %d%%", r.throttle_pct)
                                        : "");
  }
  s += StreamReport();
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
