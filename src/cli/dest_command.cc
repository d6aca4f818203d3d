// `dst`: listens, takes one authenticated source, receives its guest and runs it (or sends
// it onward with --peer). The incoming migration runs on a thread of its own while the main
// thread watches the stop signals: SIGINT, SIGTERM or SIGHUP end it at once, unless the guest
// has already been handed over (ACK sent), when the session takes the signal as for any
// running guest (src/base/thread_model.h).
#include <arpa/inet.h>
#include <poll.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <csignal>
#include <cstdio>
#include <cstring>
#include <functional>
#include <mutex>
#include <optional>
#include <thread>

#include "src/cli/outgoing_migration.h"
#include "src/migration/machine_vm.h"
#include "src/migration/receiver.h"
#include "src/reactor/cancellation.h"

namespace lmig {
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

// Whether the guest has been handed over (the ACK is going out), or the destination is being
// stopped: whichever comes first wins, under the mutex, so that a signal never strands a guest
// (an ACK sent, then the process gone) and a guest is never handed over after a signal.
struct HandOver {
  std::mutex mu;
  bool committed = false;
  bool stopped = false;
};

// Runs INCOMING on a thread of its own ("migration") while this thread watches SIGNALS (the
// signalfd of the blocked stop signals). SIGINT, SIGTERM or SIGHUP before the hand-over
// cancels every wait of the migration at once (CANCEL) and ends it: CancelledError naming the
// signal. After the hand-over a signal is left pending for the guest's session, which takes
// it as it does for any running guest. SIGQUIT is answered with a line and ignored.
absl::Status RunIncoming(const std::function<absl::Status()>& incoming, int signals,
                         Cancellation& cancel, HandOver& handover) {
  const int efd = ::eventfd(0, EFD_CLOEXEC);
  if (efd < 0) {
    return ErrnoStatus("eventfd");
  }
  UniqueFd done(efd);
  absl::Status result;
  std::thread worker([&] {
    NameThisThread("migration");
    result = incoming();
    const uint64_t one = 1;
    (void)!::write(done.get(), &one, sizeof(one));
  });
  bool watching = true;
  std::string stopped_by;
  for (;;) {
    pollfd p[2] = {{done.get(), POLLIN, 0}, {watching ? signals : -1, POLLIN, 0}};
    if (::poll(p, 2, -1) < 0) {
      continue;  // EINTR
    }
    if (p[0].revents != 0) {
      break;
    }
    if (p[1].revents == 0) {
      continue;
    }
    std::lock_guard<std::mutex> lock(handover.mu);
    if (handover.committed) {
      watching = false;  // the session's own signalfd takes it once the guest runs
      continue;
    }
    signalfd_siginfo si{};
    if (::read(signals, &si, sizeof(si)) != sizeof(si)) {
      continue;
    }
    if (si.ssi_signo == SIGQUIT) {
      std::fprintf(stderr, "lmig-rdma dst: SIGQUIT: a migration is coming in, no guest yet\n");
      continue;
    }
    handover.stopped = true;
    watching = false;
    stopped_by = sigabbrev_np(static_cast<int>(si.ssi_signo));
    std::fprintf(stderr, "lmig-rdma dst: SIG%s: ending the incoming migration\n",
                 stopped_by.c_str());
    cancel.Cancel(absl::StrFormat("stopped by SIG%s", stopped_by));
  }
  worker.join();
  if (!stopped_by.empty()) {
    return absl::CancelledError(absl::StrFormat(
        "dst: stopped by SIG%s during the incoming migration, no guest resumed (the source "
        "keeps its guest)",
        stopped_by));
  }
  return result;
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
  std::unique_ptr<Listener> listener;
  // A migration's further streams come to the same address (until all have joined).
  ropts.accept_stream = [&listener](absl::Time deadline)
      -> absl::StatusOr<std::unique_ptr<Transport>> {
    if (listener == nullptr) {
      return absl::FailedPreconditionError("no longer listening");
    }
    return listener->Accept(deadline);
  };
  // The stop signals go to a signalfd from here on (before any thread starts, so every thread
  // inherits the mask), and one cancels the incoming migration's every wait.
  ASSIGN_OR_RETURN(UniqueFd signals, BlockStopSignals());
  ASSIGN_OR_RETURN(std::shared_ptr<Cancellation> cancel, Cancellation::Create());
  topts.cancel = cancel;
  HandOver handover;
  ropts.commit = [&handover] {
    std::lock_guard<std::mutex> lock(handover.mu);
    handover.committed = !handover.stopped;
    return handover.committed;
  };
  ASSIGN_OR_RETURN(listener, ListenTransport(kind, where.host, where.port, topts));
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
  // The incoming migration, on its own thread: OK once the guest runs here.
  auto incoming = [&]() -> absl::Status {
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
      // (An RDMA stranger that never completes the CM exchange is a DeadlineExceeded too,
      // before GIVE_UP: one more refusal.)
      auto t = listener->Accept(give_up);
      RETURN_IF_ERROR(topts.cancel->status());
      if (!t.ok() && absl::IsDeadlineExceeded(t.status()) && !last_refusal.ok() &&
          absl::Now() >= give_up) {
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
        absl::SleepFor(absl::Milliseconds(100));  // no busy loop on a failing listener
        continue;
      }
      stats = MigrationStats();
      auto r = std::make_unique<MigrationReceiver>(t->get(), ropts, create, progress);
      // One migration at a time: from a valid HELLO on, connection attempts are refused (with
      // N streams, once the further streams have joined).
      bool accepted = false;
      r->set_on_accepted([&listener, &accepted](const proto::Hello& h) {
        accepted = true;
        if (h.streams == 1) {
          listener.reset();
        }
      });
      absl::Status hs = r->Handshake(stats);
      if (accepted) {
        listener.reset();
      }
      if (hs.ok()) {
        transport = std::move(*t);
        receiver = std::move(r);
        break;
      }
      const std::string peer = (*t)->peer();
      r.reset();
      t->reset();
      vm.reset();
      rt.reset();
      RETURN_IF_ERROR(topts.cancel->status());
      refuse(hs, absl::StrFormat("refused a connection from %s: %s; listening on", peer,
                                 hs.message()));
      if (listener == nullptr) {
        // The HELLO was valid but this host could not take the guest (memory, KVM).
        return Annotate(hs, "dst: migration failed, no guest resumed");
      }
    }
    absl::Status s = receiver->Run(stats);
    stats.security = transport->stats().security;
    receiver.reset();
    transport.reset();
    if (!s.ok()) {
      return Annotate(s, "dst: migration failed, no guest resumed");
    }
    return absl::OkStatus();
  };
  absl::Status result = RunIncoming(incoming, signals.get(), *cancel, handover);
  Report("dst", stats, flags.transport.stats_json);
  RETURN_IF_ERROR(result);
  std::fprintf(stderr, "lmig-rdma dst: guest resumed\n");
  if (onward == nullptr) {
    return rt->RunToEnd("dst");
  }
  onward->ArmTimer();
  ASSIGN_OR_RETURN(ExitInfo e, rt->session->Run());
  return onward->Finish(e);
}

}  // namespace lmig
