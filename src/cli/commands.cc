#include "src/cli/commands.h"

#include <cstdio>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/cli/options.h"
#include "src/cli/session.h"
#include "src/cli/vm_setup.h"

namespace lmig {

absl::StatusOr<MachineConfig> MachineConfigFromFlags(const VmFlags& f) {
  MachineConfig c;
  ASSIGN_OR_RETURN(c.mem_size, ParseSize("--mem", f.mem));
  if (c.mem_size < (16ull << 20) || c.mem_size % 4096 != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--mem %s: must be a multiple of 4K and at least 16M", f.mem));
  }
  if (c.mem_size > kMaxGuestMemory) {
    return absl::InvalidArgumentError(absl::StrFormat("--mem %s: more than 1T", f.mem));
  }
  if (f.cpus < 1 || f.cpus > 64) {
    return absl::InvalidArgumentError(absl::StrFormat("--cpus %d: must be 1..64", f.cpus));
  }
  c.num_cpus = f.cpus;
  c.dirty_mode = f.dirty_tracking == "bitmap" ? DirtyMode::kBitmap : DirtyMode::kRing;
  c.kvm_path = f.kvm_path;
  return c;
}

int ExitStatusFor(const ExitInfo& e) {
  switch (e.kind) {
    case ExitInfo::kReset:
    case ExitInfo::kShutdown:
    case ExitInfo::kStopped:
      return 0;
    default:
      return 1;
  }
}

absl::StatusOr<std::unique_ptr<VmRuntime>> VmRuntime::Create(const MachineConfig& config) {
  auto rt = std::unique_ptr<VmRuntime>(new VmRuntime());
  ASSIGN_OR_RETURN(rt->signal_fd, BlockStopSignals());
  ASSIGN_OR_RETURN(rt->reactor, Reactor::Create());
  ASSIGN_OR_RETURN(rt->console, ConsoleBuffer::Create());
  ASSIGN_OR_RETURN(rt->machine, Machine::Create(config, rt->console.get()));
  rt->session = std::make_unique<Session>(rt->reactor.get(), rt->console.get(),
                                          rt->machine.get(), rt->signal_fd.get());
  return rt;
}

absl::StatusOr<int> VmRuntime::RunToEnd(const char* role) {
  ASSIGN_OR_RETURN(ExitInfo e, session->Run());
  if (e.kind == ExitInfo::kError) {
    std::fprintf(stderr, "lmig-rdma %s: guest failed: %s\n", role, e.message.c_str());
  } else {
    std::fprintf(stderr, "lmig-rdma %s: %s\n", role, e.message.c_str());
  }
  return ExitStatusFor(e);
}

absl::StatusOr<int> RunCommand(const VmFlags& flags) {
  ASSIGN_OR_RETURN(MachineConfig config, MachineConfigFromFlags(flags));
  ASSIGN_OR_RETURN(auto rt, VmRuntime::Create(config));
  RETURN_IF_ERROR(rt->machine->LoadLinux({flags.kernel, flags.initrd, flags.cmdline}));
  RETURN_IF_ERROR(rt->session->Start());
  RETURN_IF_ERROR(rt->machine->Start());
  return rt->RunToEnd("run");
}

}  // namespace lmig
