// What `src` and `dst` share: the transport options from the flags, the report, and the
// outgoing migration (`src`, and `dst --peer` for onward migration), which runs on its own
// thread and reports back to the session's reactor (src/base/thread_model.h).
#pragma once

#include <memory>
#include <optional>
#include <string>
#include <thread>

#include "absl/status/statusor.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "include/lmig/transport.h"
#include "src/base/thread_model.h"
#include "src/cli/commands.h"
#include "src/cli/options.h"
#include "src/cli/vm_setup.h"
#include "src/crypto/psk.h"
#include "src/migration/sender.h"
#include "src/migration/stats.h"
#include "transport/tcp/tls.h"

namespace lmig {

inline constexpr int kExitMigrationFailed = 3;

proto::TransportKind KindOf(const std::string& transport);
// How the connection is protected, for the first line each side prints.
std::string ProtectionOf(const TransportFlags& f, const crypto::Psk* psk, const TlsConfig* tls);
absl::StatusOr<TransportOptions> OptionsOf(const TransportFlags& f, const crypto::Psk* psk);
// The stream count for --streams FLAG (0: the default: the online CPUs, at most 8).
absl::StatusOr<int> StreamsOf(int flag);
// The human report on stderr, and the JSON file when asked for.
void Report(const char* role, const MigrationStats& stats, const std::string& json_path);

// Arms and runs an outgoing migration of RT's guest on a worker thread; results come back to
// the session's reactor. Used by `src`, and by `dst --peer` for onward migration.
class OutgoingMigration {
 public:
  OutgoingMigration(VmRuntime* rt, const SourceFlags& flags, std::string role)
      : rt_(rt), flags_(flags), role_(std::move(role)) {}

  absl::Status Prepare() {
    ASSIGN_OR_RETURN(peer_, ParseHostPort("--peer", flags_.peer));
    ASSIGN_OR_RETURN(opts_.max_bandwidth, ParseRate("--max-bandwidth", flags_.max_bandwidth));
    if (flags_.downtime_target_ms < 1 || flags_.max_rounds < 1) {
      return absl::InvalidArgumentError("--downtime-target and --max-rounds must be positive");
    }
    opts_.policy.downtime_target_ms = static_cast<uint64_t>(flags_.downtime_target_ms);
    opts_.policy.max_rounds = flags_.max_rounds;
    opts_.policy.allow_throttle = !flags_.no_throttle;
    opts_.verify_memory = flags_.verify_memory;
    if (flags_.retries < 0 || flags_.retry_delay_s < 0) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--migrate-retries %d / --retry-delay %g: must not be negative", flags_.retries,
          flags_.retry_delay_s));
    }
    if (flags_.max_rounds >= static_cast<int>(proto::kMaxRounds)) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--max-rounds %d: at most %d", flags_.max_rounds, proto::kMaxRounds - 1));
    }
    if (!flags_.transport.psk_file.empty()) {
      ASSIGN_OR_RETURN(psk_, crypto::LoadPskFile(flags_.transport.psk_file));
      opts_.psk = &*psk_;
    }
    kind_ = KindOf(flags_.transport.transport);
    ASSIGN_OR_RETURN(topts_, OptionsOf(flags_.transport, psk_ ? &*psk_ : nullptr));
    opts_.phase_timeout = topts_.timeout;
    opts_.max_run_bytes =
        kind_ == proto::TransportKind::kRdma ? topts_.max_write_bytes : (1 << 20);
    ASSIGN_OR_RETURN(opts_.streams, StreamsOf(flags_.streams));
    opts_.connect_stream = [this] {
      return ConnectTransport(kind_, peer_.host, peer_.port, topts_);
    };
    return absl::OkStatus();
  }

  // Call before the session starts: the console watcher for --migrate-on-output.
  void ArmWatcher() {
    if (flags_.migrate_on_output.empty()) {
      return;
    }
    auto tail = std::make_shared<std::string>();
    rt_->session->SetOutputWatcher([this, tail](std::string_view out) {
      tail->append(out);
      if (!started_ && tail->find(flags_.migrate_on_output) != std::string::npos) {
        Start();
      }
      if (tail->size() > flags_.migrate_on_output.size() * 2 + 4096) {
        tail->erase(0, tail->size() - flags_.migrate_on_output.size());
      }
    });
  }

  // Call once the guest runs: the timer for --migrate-after (or at once).
  void ArmTimer() {
    if (!flags_.migrate_on_output.empty()) {
      return;
    }
    const double after = std::max(0.0, flags_.migrate_after_s);
    rt_->reactor->Timeout(absl::Seconds(after), [this](int, uint32_t) { Start(); });
  }

  // After the session ended: the exit status.
  int Finish(const ExitInfo& e) {
    if (worker_.joinable()) {
      worker_.join();  // its transport's teardown is bounded
      if (!attempt_done_) {
        // The guest ended while migrating: the engine noticed or timed out.
        Report(role_.c_str(), stats_, flags_.transport.stats_json);
        migrated_ = stats_.status == "completed";
        failed_ = !migrated_;
      }
    }
    if (migrated_) {
      std::fprintf(stderr, "lmig-rdma %s: %s\n", role_.c_str(), e.message.c_str());
      return 0;
    }
    std::fprintf(stderr, "lmig-rdma %s: %s%s\n", role_.c_str(),
                 e.kind == ExitInfo::kError ? "guest failed: " : "", e.message.c_str());
    if (!started_) {
      std::fprintf(stderr, "lmig-rdma %s: the guest ended before the migration started\n",
                   role_.c_str());
      return kExitMigrationFailed;
    }
    return failed_ ? kExitMigrationFailed : ExitStatusFor(e);
  }

 private:
  void Progress(const std::string& line) const {
    std::fprintf(stderr, "lmig-rdma %s: %s\n", role_.c_str(), line.c_str());
  }

  void Start() {
    if (started_ || migrated_) {
      return;
    }
    if (worker_.joinable()) {
      worker_.join();  // the last attempt's thread, done but for its transport's teardown
    }
    started_ = true;
    attempt_done_ = false;
    ++attempts_;
    stats_ = MigrationStats();
    const bool authenticated = psk_ || (topts_.tls && topts_.tls->certificates());
    Progress(absl::StrFormat(
        "migrating to %s over %s%s", flags_.peer, flags_.transport.transport,
        authenticated ? ProtectionOf(flags_.transport, psk_ ? &*psk_ : nullptr, topts_.tls.get())
                      : "; no --psk-file: neither authenticated nor encrypted"));
    worker_ = std::thread([this] {
      NameThisThread("migration");
      absl::Status result;
      auto t = ConnectTransport(kind_, peer_.host, peer_.port, topts_);
      if (!t.ok()) {
        result = t.status();
        stats_.status = "failed";
        stats_.transport = flags_.transport.transport;
        stats_.error = std::string(result.message());
      } else {
        MigrationSender sender(rt_->machine.get(), t->get(), opts_,
                               [this](const std::string& l) { Progress(l); });
        result = sender.Run(stats_);
        stats_.security = (*t)->stats().security;
      }
      rt_->session->Post([this, result] { Done(result); });
    });
  }

  // On the session thread as soon as the engine returns; the worker may still be closing its
  // transport (bounded), which must not hold up the report or the guest's console.
  void Done(const absl::Status& result) {
    attempt_done_ = true;
    Report(role_.c_str(), stats_, flags_.transport.stats_json);
    if (result.ok()) {
      migrated_ = true;
      rt_->machine->RequestStop(
          {ExitInfo::kStopped, absl::StrFormat("guest migrated to %s", flags_.peer)});
    } else {
      failed_ = true;
      Progress(absl::StrFormat("migration failed: %s; the guest keeps running here",
                               result.message()));
      if (attempts_ <= flags_.retries) {
        rt_->reactor->Timeout(absl::Seconds(flags_.retry_delay_s), [this](int, uint32_t) {
          if (!migrated_ && attempt_done_) {
            Progress(absl::StrFormat("retrying the migration (attempt %d of %d)", attempts_ + 1,
                                     flags_.retries + 1));
            failed_ = false;
            started_ = false;
            Start();
          }
        });
      }
    }
  }

  VmRuntime* rt_;
  const SourceFlags& flags_;
  std::string role_;
  HostPort peer_;
  SenderOptions opts_;
  proto::TransportKind kind_ = proto::TransportKind::kRdma;
  TransportOptions topts_;
  std::thread worker_;
  std::optional<crypto::Psk> psk_;
  MigrationStats stats_;
  bool started_ = false, migrated_ = false, failed_ = false;
  int attempts_ = 0;
  bool attempt_done_ = false;  // Done ran for the current attempt
};

}  // namespace lmig
