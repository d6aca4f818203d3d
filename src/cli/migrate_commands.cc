// `src` and `dst`: a VM session plus the migration engine. The engine runs on its own thread
// (with its transport's own io_uring) and reports back to the session's reactor with Post.
#include <arpa/inet.h>
#include <unistd.h>

#include <cstdio>
#include <functional>
#include <optional>
#include <thread>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "include/lmig/transport.h"
#include "src/cli/commands.h"
#include "src/cli/options.h"
#include "src/base/thread_model.h"
#include "src/cli/vm_setup.h"
#include "src/crypto/psk.h"
#include "src/migration/machine_vm.h"
#include "src/migration/receiver.h"
#include "src/migration/sender.h"
#include "transport/tcp/tls.h"

namespace lmig {
namespace {

constexpr int kExitMigrationFailed = 3;

proto::TransportKind KindOf(const std::string& t) {
  return t == "tcp" ? proto::TransportKind::kTcp : proto::TransportKind::kRdma;
}

// TLS for a TCP migration: certificates if given, else the pre-shared key, unless --no-tls.
absl::StatusOr<std::shared_ptr<const TlsConfig>> TlsOf(const TransportFlags& f,
                                                       const crypto::Psk* psk) {
  const bool tcp = f.transport == "tcp";
  const int cert_flags = !f.tls_cert.empty() + !f.tls_key.empty() + !f.tls_ca.empty();
  if ((cert_flags > 0 || f.no_tls) && !tcp) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s: TLS is for --transport tcp (over RDMA --psk-file seals the control channel; "
        "README, \"Security\")",
        f.no_tls ? "--no-tls" : "--tls-cert/--tls-key/--tls-ca"));
  }
  if (cert_flags > 0 && f.no_tls) {
    return absl::InvalidArgumentError("--no-tls and --tls-cert/--tls-key/--tls-ca: pick one");
  }
  if (cert_flags > 0 && cert_flags < 3) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "%s missing: mutual TLS needs --tls-cert, --tls-key and --tls-ca together",
        f.tls_cert.empty() ? "--tls-cert" : f.tls_key.empty() ? "--tls-key" : "--tls-ca"));
  }
  if (cert_flags == 3) {
    return TlsConfig::WithCertificates(f.tls_cert, f.tls_key, f.tls_ca);
  }
  if (tcp && psk != nullptr && !f.no_tls) {
    return TlsConfig::WithPsk(psk->bytes());
  }
  return std::shared_ptr<const TlsConfig>();
}

// How the connection is protected, for the first line each side prints.
std::string ProtectionOf(const TransportFlags& f, const crypto::Psk* psk,
                         const TlsConfig* tls) {
  std::string s;
  if (psk != nullptr) {
    s = ", authenticated (--psk-file)";
  }
  if (tls != nullptr) {
    absl::StrAppend(&s, psk != nullptr || !tls->certificates() ? "" : ", authenticated",
                    ", TLS 1.3 (", tls->keyed_by(), ")");
  } else if (psk != nullptr && f.transport == "tcp") {
    s += "; --no-tls: page data in clear";
  } else if (psk != nullptr) {
    s += ", control channel encrypted; page data by RDMA WRITE in clear (README, \"Security\")";
  }
  return s;
}

absl::StatusOr<TransportOptions> OptionsOf(const TransportFlags& f, const crypto::Psk* psk) {
  TransportOptions o;
  ASSIGN_OR_RETURN(o.tls, TlsOf(f, psk));
  o.rdma_device = f.rdma_device;
  o.timeout = absl::Seconds(f.timeout_s);
  o.busy_poll = f.rdma_busy_poll;
  ASSIGN_OR_RETURN(o.max_write_bytes, ParseSize("--rdma-write-size", f.rdma_write_size));
  if (o.max_write_bytes < 4096 || o.max_write_bytes > (16u << 20) ||
      o.max_write_bytes % 4096 != 0) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--rdma-write-size %s: must be a multiple of 4K from 4K to 16M", f.rdma_write_size));
  }
  if (f.timeout_s < 1) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--timeout %d: must be at least 1 second", f.timeout_s));
  }
  return o;
}

void Report(const char* role, const MigrationStats& stats, const std::string& json_path) {
  std::fprintf(stderr, "lmig-rdma %s: %s", role, stats.HumanReport().c_str());
  if (!json_path.empty()) {
    absl::Status s = WriteStatsJson(stats, json_path);
    if (!s.ok()) {
      std::fprintf(stderr, "lmig-rdma %s: %s\n", role, std::string(s.message()).c_str());
    }
  }
}

}  // namespace

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

absl::StatusOr<int> SourceCommand(const VmFlags& vm, const SourceFlags& flags) {
  ASSIGN_OR_RETURN(MachineConfig config, MachineConfigFromFlags(vm));
  ASSIGN_OR_RETURN(auto rt, VmRuntime::Create(config));
  OutgoingMigration out(rt.get(), flags, "src");
  RETURN_IF_ERROR(out.Prepare());
  RETURN_IF_ERROR(rt->machine->LoadLinux({vm.kernel, vm.initrd, vm.cmdline}));
  out.ArmWatcher();
  RETURN_IF_ERROR(rt->session->Start());
  RETURN_IF_ERROR(rt->machine->Start());
  out.ArmTimer();
  ASSIGN_OR_RETURN(ExitInfo e, rt->session->Run());
  return out.Finish(e);
}

namespace {

// Whether HOST names a loopback address (127.0.0.0/8, "localhost").
bool IsLoopback(const std::string& host) {
  if (host == "localhost") {
    return true;
  }
  in_addr a{};
  return ::inet_pton(AF_INET, host.c_str(), &a) == 1 && (ntohl(a.s_addr) >> 24) == 127;
}

absl::StatusOr<uint64_t> MaxMemOf(const std::string& flag) {
  if (!flag.empty()) {
    return ParseSize("--max-mem", flag);
  }
  const long pages = ::sysconf(_SC_PHYS_PAGES), page = ::sysconf(_SC_PAGESIZE);
  if (pages <= 0 || page <= 0) {
    return ErrnoStatus("sysconf(_SC_PHYS_PAGES)");
  }
  return static_cast<uint64_t>(pages) * static_cast<uint64_t>(page);
}

}  // namespace

absl::StatusOr<int> DestCommand(const DestFlags& flags) {
  ASSIGN_OR_RETURN(HostPort where, ParseHostPort("--listen", flags.listen));
  if (!flags.outgoing.peer.empty()) {
    RETURN_IF_ERROR(ParseHostPort("--peer", flags.outgoing.peer).status());
    RETURN_IF_ERROR(ParseRate("--max-bandwidth", flags.outgoing.max_bandwidth).status());
  }
  if (flags.max_time_s < 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--max-time %d: must be positive (or 0: derived)", flags.max_time_s));
  }
  const proto::TransportKind kind = KindOf(flags.transport.transport);
  ReceiverOptions ropts;
  std::optional<crypto::Psk> psk;
  if (!flags.transport.psk_file.empty()) {
    ASSIGN_OR_RETURN(psk, crypto::LoadPskFile(flags.transport.psk_file));
    ropts.psk = &*psk;
  }
  ASSIGN_OR_RETURN(TransportOptions topts, OptionsOf(flags.transport, ropts.psk));
  // Mutual TLS with certificates authenticates the source as well as a key does.
  const bool authenticated = psk || (topts.tls && topts.tls->certificates());
  if (!authenticated && !IsLoopback(where.host) && !flags.insecure) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "dst --listen %s: without --psk-file a destination listens only on a loopback address "
        "(anyone who reaches it could push a guest here); give --psk-file, or --insecure",
        flags.listen));
  }
  ASSIGN_OR_RETURN(ropts.max_mem, MaxMemOf(flags.max_mem));
  ropts.phase_timeout = topts.timeout;
  ropts.hello_timeout = std::min(topts.timeout, absl::Seconds(10));
  ropts.max_time = absl::Seconds(flags.max_time_s);
  ASSIGN_OR_RETURN(auto listener, ListenTransport(kind, where.host, where.port, topts));
  const std::string protection =
      authenticated ? ProtectionOf(flags.transport, ropts.psk, topts.tls.get())
      : flags.insecure
          ? "; --insecure: no authentication, no encryption, anyone who can reach this address "
            "can migrate a guest here"
          : "; no --psk-file: no authentication, no encryption (loopback only)";
  std::fprintf(stderr, "lmig-rdma dst: listening on %s (%s)%s\n", flags.listen.c_str(),
               flags.transport.transport.c_str(), protection.c_str());
  std::unique_ptr<VmRuntime> rt;
  std::unique_ptr<MachineVm> vm;
  std::unique_ptr<OutgoingMigration> onward;
  SourceFlags out_flags = flags.outgoing;
  // Onward migration uses the same transport settings; only the stats file is its own.
  const std::string onward_stats = out_flags.transport.stats_json;
  out_flags.transport = flags.transport;
  out_flags.transport.stats_json = onward_stats;
  auto create = [&](const proto::Hello& h) -> absl::StatusOr<IncomingVm*> {
    MachineConfig c;
    c.mem_size = h.mem_size;
    c.num_cpus = static_cast<int>(h.num_cpus);
    c.dirty_mode = h.dirty_mode;
    c.kvm_path = flags.kvm_path;
    ASSIGN_OR_RETURN(rt, VmRuntime::Create(c));
    vm = std::make_unique<MachineVm>(rt->machine.get(), [&](Machine* m) -> absl::Status {
      if (!out_flags.peer.empty()) {
        onward = std::make_unique<OutgoingMigration>(rt.get(), out_flags, "dst");
        RETURN_IF_ERROR(onward->Prepare());
        onward->ArmWatcher();
      }
      RETURN_IF_ERROR(rt->session->Start());
      return m->Start();
    });
    return vm.get();
  };
  auto progress = [](const std::string& line) {
    std::fprintf(stderr, "lmig-rdma dst: %s\n", line.c_str());
  };
  // Strangers do not end a waiting destination: a connection that fails the handshake is
  // dropped and the destination listens on, until --timeout passes without a valid source.
  MigrationStats stats;
  std::unique_ptr<Transport> transport;
  std::unique_ptr<MigrationReceiver> receiver;
  absl::Time give_up = absl::InfiniteFuture();
  absl::Status last_refusal;
  // A dropped connection: said in one line, remembered, and the --timeout clock started.
  auto refuse = [&](const absl::Status& why, const std::string& line) {
    progress(line);
    last_refusal = why;
    if (give_up == absl::InfiniteFuture()) {
      give_up = absl::Now() + topts.timeout;
    }
  };
  for (;;) {
    // Past GIVE_UP this still takes a connection that is already waiting (the real source
    // queued behind a stranger that held the handshake).
    // (An RDMA stranger that never completes the CM exchange is a DeadlineExceeded too, before
    // GIVE_UP: one more refusal.)
    auto t = listener->Accept(give_up);
    if (!t.ok() && absl::IsDeadlineExceeded(t.status()) && !last_refusal.ok() &&
        absl::Now() >= give_up) {
      Report("dst", stats, flags.transport.stats_json);
      return Annotate(last_refusal,
                      absl::StrFormat("dst: no valid source within %d s of the last refused "
                                      "connection, no guest resumed; last refusal",
                                      flags.transport.timeout_s));
    }
    if (!t.ok()) {
      // A connection that failed to establish (an RDMA peer that never completes the CM
      // exchange, say) is one more stranger; the deadline above ends the wait.
      refuse(t.status(),
             absl::StrFormat("a connection failed: %s; listening on", t.status().message()));
      absl::SleepFor(absl::Milliseconds(100));  // no busy loop on a listener that keeps failing
      continue;
    }
    stats = MigrationStats();
    auto r = std::make_unique<MigrationReceiver>(t->get(), ropts, create, progress);
    // One migration at a time: from a valid HELLO on, connection attempts are refused at once.
    r->set_on_accepted([&listener] { listener.reset(); });
    absl::Status hs = r->Handshake(stats);
    if (hs.ok()) {
      transport = std::move(*t);
      receiver = std::move(r);
      break;
    }
    refuse(hs, absl::StrFormat("refused a connection from %s: %s; listening on", (*t)->peer(),
                               hs.message()));
    vm.reset();
    rt.reset();
    if (listener == nullptr) {
      // The HELLO was valid but this host could not take the guest (memory, KVM).
      Report("dst", stats, flags.transport.stats_json);
      return Annotate(hs, "dst: migration failed, no guest resumed");
    }
  }
  absl::Status s = receiver->Run(stats);
  stats.security = transport->stats().security;
  receiver.reset();
  transport.reset();
  Report("dst", stats, flags.transport.stats_json);
  if (!s.ok()) {
    return Annotate(s, "dst: migration failed, no guest resumed");
  }
  std::fprintf(stderr, "lmig-rdma dst: guest resumed\n");
  if (onward == nullptr) {
    return rt->RunToEnd("dst");
  }
  onward->ArmTimer();
  ASSIGN_OR_RETURN(ExitInfo e, rt->session->Run());
  return onward->Finish(e);
}

}  // namespace lmig
