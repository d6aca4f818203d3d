// What every subcommand that runs a VM holds: signals, the reactor, the console, the machine
// and its session, built in that order (signals are blocked before any thread starts).
#pragma once

#include <memory>

#include "absl/status/statusor.h"
#include "src/cli/commands.h"
#include "src/cli/session.h"
#include "src/machine/machine.h"
#include "src/reactor/reactor.h"

namespace lmig {

struct VmRuntime {
  static absl::StatusOr<std::unique_ptr<VmRuntime>> Create(const MachineConfig& config);
  // Runs the session until the guest ends; prints why and returns the exit status.
  absl::StatusOr<int> RunToEnd(const char* role);

  UniqueFd signal_fd;
  std::unique_ptr<Reactor> reactor;
  std::unique_ptr<ConsoleBuffer> console;
  std::unique_ptr<Machine> machine;
  std::unique_ptr<Session> session;
};

absl::StatusOr<MachineConfig> MachineConfigFromFlags(const VmFlags& f);
int ExitStatusFor(const ExitInfo& e);

}  // namespace lmig
