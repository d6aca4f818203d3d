// `src` and `dst`: a VM session plus the migration engine. The engine runs on its own thread
// (with its transport's own io_uring) and reports back to the session's reactor with Post.
#include <cstdio>
#include <thread>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "include/lmig/transport.h"
#include "src/cli/commands.h"
#include "src/cli/options.h"
#include "src/cli/vm_setup.h"
#include "src/migration/receiver.h"
#include "src/migration/sender.h"

namespace lmig {
namespace {

constexpr int kExitMigrationFailed = 3;

proto::TransportKind KindOf(const std::string& t) {
  return t == "tcp" ? proto::TransportKind::kTcp : proto::TransportKind::kRdma;
}

TransportOptions OptionsOf(const TransportFlags& f) {
  TransportOptions o;
  o.rdma_device = f.rdma_device;
  o.timeout = absl::Seconds(f.timeout_s);
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

absl::StatusOr<int> SourceCommand(const VmFlags& vm, const SourceFlags& flags) {
  ASSIGN_OR_RETURN(MachineConfig config, MachineConfigFromFlags(vm));
  ASSIGN_OR_RETURN(HostPort peer, ParseHostPort("--peer", flags.peer));
  SenderOptions opts;
  ASSIGN_OR_RETURN(opts.max_bandwidth, ParseRate("--max-bandwidth", flags.max_bandwidth));
  if (flags.downtime_target_ms < 1 || flags.max_rounds < 1) {
    return absl::InvalidArgumentError("--downtime-target and --max-rounds must be positive");
  }
  opts.policy.downtime_target_ms = static_cast<uint64_t>(flags.downtime_target_ms);
  opts.policy.max_rounds = flags.max_rounds;
  opts.policy.allow_throttle = !flags.no_throttle;
  opts.verify_memory = flags.verify_memory;
  opts.key = flags.transport.key;
  const proto::TransportKind kind = KindOf(flags.transport.transport);
  opts.max_run_bytes = kind == proto::TransportKind::kRdma ? (256 << 10) : (1 << 20);
  const TransportOptions topts = OptionsOf(flags.transport);

  ASSIGN_OR_RETURN(auto rt, VmRuntime::Create(config));
  RETURN_IF_ERROR(rt->machine->LoadLinux({vm.kernel, vm.initrd, vm.cmdline}));

  bool started = false, migrated = false, failed = false;
  std::thread worker;
  MigrationStats stats;
  auto progress = [](const std::string& line) {
    std::fprintf(stderr, "lmig-rdma src: %s\n", line.c_str());
  };
  auto start_migration = [&] {
    if (started) {
      return;
    }
    started = true;
    progress(absl::StrFormat("migrating to %s over %s", flags.peer, flags.transport.transport));
    worker = std::thread([&, progress] {
      absl::Status result;
      auto t = ConnectTransport(kind, peer.host, peer.port, topts);
      if (!t.ok()) {
        result = t.status();
        stats.error = std::string(result.message());
      } else {
        MigrationSender sender(rt->machine.get(), t->get(), opts, progress);
        result = sender.Run(stats);
      }
      rt->session->Post([&, result] {
        worker.join();
        Report("src", stats, flags.transport.stats_json);
        if (result.ok()) {
          migrated = true;
          rt->machine->RequestStop(
              {ExitInfo::kStopped, absl::StrFormat("guest migrated to %s", flags.peer)});
        } else {
          failed = true;
          std::fprintf(stderr,
                       "lmig-rdma src: migration failed: %s; the guest keeps running here\n",
                       std::string(result.message()).c_str());
        }
      });
    });
  };

  if (!flags.migrate_on_output.empty()) {
    auto tail = std::make_shared<std::string>();
    rt->session->SetOutputWatcher([&, tail](std::string_view out) {
      tail->append(out);
      if (!started && tail->find(flags.migrate_on_output) != std::string::npos) {
        start_migration();
      }
      if (tail->size() > flags.migrate_on_output.size() * 2 + 4096) {
        tail->erase(0, tail->size() - flags.migrate_on_output.size());
      }
    });
  }
  RETURN_IF_ERROR(rt->session->Start());
  RETURN_IF_ERROR(rt->machine->Start());
  if (flags.migrate_on_output.empty()) {
    const double after = std::max(0.0, flags.migrate_after_s);
    rt->reactor->Timeout(absl::Seconds(after), [&](int, uint32_t) { start_migration(); });
  }
  ASSIGN_OR_RETURN(ExitInfo e, rt->session->Run());
  if (worker.joinable()) {
    // The guest ended while migrating: the engine notices (its vCPUs are gone) or times out.
    worker.join();
    Report("src", stats, flags.transport.stats_json);
    migrated = stats.status == "completed";
    failed = !migrated;
  }
  if (migrated) {
    std::fprintf(stderr, "lmig-rdma src: %s\n", e.message.c_str());
    return 0;
  }
  std::fprintf(stderr, "lmig-rdma src: %s%s\n", e.kind == ExitInfo::kError ? "guest failed: " : "",
               e.message.c_str());
  if (failed || !started) {
    if (!started) {
      std::fprintf(stderr, "lmig-rdma src: the guest ended before the migration started\n");
    }
    return kExitMigrationFailed;
  }
  return ExitStatusFor(e);
}

absl::StatusOr<int> DestCommand(const DestFlags& flags) {
  ASSIGN_OR_RETURN(HostPort where, ParseHostPort("--listen", flags.listen));
  const proto::TransportKind kind = KindOf(flags.transport.transport);
  ASSIGN_OR_RETURN(auto listener,
                   ListenTransport(kind, where.host, where.port, OptionsOf(flags.transport)));
  std::fprintf(stderr, "lmig-rdma dst: listening on %s (%s)\n", flags.listen.c_str(),
               flags.transport.transport.c_str());
  ASSIGN_OR_RETURN(auto transport, listener->Accept());
  std::unique_ptr<VmRuntime> rt;
  MigrationStats stats;
  MigrationReceiver receiver(
      transport.get(), flags.transport.key,
      [&](const proto::Hello& h) -> absl::StatusOr<Machine*> {
        MachineConfig c;
        c.mem_size = h.mem_size;
        c.num_cpus = static_cast<int>(h.num_cpus);
        c.dirty_mode = h.dirty_mode == 2 ? DirtyMode::kBitmap : DirtyMode::kRing;
        c.kvm_path = flags.kvm_path;
        ASSIGN_OR_RETURN(rt, VmRuntime::Create(c));
        return rt->machine.get();
      },
      [&](Machine* m) -> absl::Status {
        RETURN_IF_ERROR(rt->session->Start());
        return m->Start();
      },
      [](const std::string& line) { std::fprintf(stderr, "lmig-rdma dst: %s\n", line.c_str()); });
  absl::Status s = receiver.Run(stats);
  transport.reset();
  listener.reset();
  Report("dst", stats, flags.transport.stats_json);
  if (!s.ok()) {
    return Annotate(s, "dst: migration failed, no guest resumed");
  }
  std::fprintf(stderr, "lmig-rdma dst: guest resumed\n");
  return rt->RunToEnd("dst");
}

}  // namespace lmig
