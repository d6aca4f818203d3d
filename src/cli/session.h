// A VM session on the main thread's reactor: the guest console (UART output to stdout, stdin
// to the UART), SIGINT/SIGTERM, the machine's stop event, and messages posted from other
// threads (the migration thread reports through Post).
//
// stdin: raw terminal mode only when stdin is a terminal (Ctrl-A x quits); end of input on
// stdin stops reading it and never stops the guest.
#pragma once

#include <sys/signalfd.h>
#include <termios.h>

#include <deque>
#include <functional>
#include <mutex>
#include <string>
#include <string_view>

#include "absl/status/statusor.h"
#include "src/base/unique_fd.h"
#include "src/machine/machine.h"
#include "src/reactor/reactor.h"

namespace lmig {

// Blocks SIGINT/SIGTERM/SIGHUP/SIGQUIT/SIGPIPE in the calling thread (call first in main,
// before any thread starts, so every thread inherits the mask) and returns a signalfd for all
// but SIGPIPE. SIGQUIT does not stop the VM: it prints the machine's state (Machine::Describe)
// to stderr, for looking into a guest that seems stuck.
absl::StatusOr<UniqueFd> BlockStopSignals();

class Session {
 public:
  Session(Reactor* reactor, ConsoleBuffer* console, Machine* machine, int signal_fd);
  ~Session();

  // Called on the reactor thread with every chunk of guest console output.
  void SetOutputWatcher(std::function<void(std::string_view)> w) { watcher_ = std::move(w); }
  // Runs FN on the reactor thread (callable from any thread).
  void Post(std::function<void()> fn);
  // Arms console, stdin, signals and the stop event.
  absl::Status Start();
  // Runs until the machine stops; returns why. Flushes console output first.
  absl::StatusOr<ExitInfo> Run();
  Reactor* reactor() { return reactor_; }
  Machine* machine() { return machine_; }

 private:
  void ArmConsole();
  void ArmStdin();
  void ArmSignals();
  void ArmStop();
  void ArmPost();
  void FlushOutput();
  void WriteMore();
  void HandleInput(const uint8_t* data, size_t n);
  void DumpState();

  Reactor* reactor_;
  ConsoleBuffer* console_;
  Machine* machine_;
  int signal_fd_;
  UniqueFd post_fd_;
  std::mutex post_mu_;
  std::deque<std::function<void()>> posted_;
  std::function<void(std::string_view)> watcher_;
  uint64_t console_event_ = 0, stop_event_ = 0, post_event_ = 0;
  uint8_t stdin_buf_[512];
  signalfd_siginfo siginfo_{};
  std::string pending_out_, writing_;
  bool write_in_flight_ = false;
  bool stdin_open_ = true;
  std::deque<uint8_t> stdin_backlog_;
  bool escape_ = false;
  bool tty_ = false;
  termios saved_termios_{};
  bool stopped_ = false;
};

}  // namespace lmig
