#include "src/cli/session.h"

#include <signal.h>
#include <sys/eventfd.h>
#include <sys/signalfd.h>
#include <unistd.h>

#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig {
namespace {
constexpr uint8_t kCtrlA = 0x01;
constexpr absl::Duration kConsoleBatch = absl::Milliseconds(2);
}  // namespace

absl::StatusOr<UniqueFd> BlockStopSignals() {
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, SIGINT);
  sigaddset(&set, SIGTERM);
  sigaddset(&set, SIGHUP);
  sigaddset(&set, SIGQUIT);
  sigset_t block = set;
  sigaddset(&block, SIGPIPE);
  if (pthread_sigmask(SIG_BLOCK, &block, nullptr) != 0) {
    return ErrnoStatus("pthread_sigmask");
  }
  const int fd = ::signalfd(-1, &set, SFD_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus("signalfd");
  }
  return UniqueFd(fd);
}

Session::Session(Reactor* reactor, ConsoleBuffer* console, Machine* machine, int signal_fd)
    : reactor_(reactor), console_(console), machine_(machine), signal_fd_(signal_fd) {}

Session::~Session() {
  if (tty_) {
    ::tcsetattr(STDIN_FILENO, TCSANOW, &saved_termios_);
  }
}

absl::Status Session::Start() {
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    return ErrnoStatus("eventfd");
  }
  post_fd_.Reset(efd);
  if (::isatty(STDIN_FILENO) && ::tcgetattr(STDIN_FILENO, &saved_termios_) == 0) {
    termios raw = saved_termios_;
    cfmakeraw(&raw);
    raw.c_oflag |= OPOST | ONLCR;
    if (::tcsetattr(STDIN_FILENO, TCSANOW, &raw) == 0) {
      tty_ = true;
    }
  }
  ArmConsole();
  ArmStdin();
  ArmSignals();
  ArmStop();
  ArmPost();
  return absl::OkStatus();
}

void Session::Post(std::function<void()> fn) {
  {
    std::lock_guard<std::mutex> lock(post_mu_);
    posted_.push_back(std::move(fn));
  }
  const uint64_t one = 1;
  (void)!::write(post_fd_.get(), &one, sizeof(one));
}

void Session::ArmPost() {
  reactor_->Read(post_fd_.get(), &post_event_, sizeof(post_event_), [this](int res, uint32_t) {
    std::deque<std::function<void()>> fns;
    {
      std::lock_guard<std::mutex> lock(post_mu_);
      fns.swap(posted_);
    }
    for (auto& fn : fns) {
      fn();
    }
    if (res >= 0 && !stopped_) {
      ArmPost();
    }
  });
}

void Session::ArmConsole() {
  reactor_->Read(console_->event_fd(), &console_event_, sizeof(console_event_),
                 [this](int res, uint32_t) {
                   if (res < 0 || stopped_) {
                     FlushOutput();
                     return;
                   }
                   // Let output gather for a moment: the vCPU signals only when the buffer
                   // was empty, so this bounds wakeups (and the IPIs they cost the vCPU's
                   // CPU) to one per kConsoleBatch instead of one per character.
                   reactor_->Timeout(kConsoleBatch, [this](int, uint32_t) {
                     FlushOutput();
                     if (!stopped_) {
                       ArmConsole();
                     }
                   });
                 });
}

void Session::FlushOutput() {
  std::string out = console_->Take();
  if (out.empty()) {
    return;
  }
  if (watcher_) {
    watcher_(out);
  }
  pending_out_ += out;
  WriteMore();
}

void Session::WriteMore() {
  if (write_in_flight_ || pending_out_.empty()) {
    return;
  }
  writing_.swap(pending_out_);
  pending_out_.clear();
  write_in_flight_ = true;
  reactor_->Write(STDOUT_FILENO, writing_.data(), writing_.size(), [this](int res, uint32_t) {
    write_in_flight_ = false;
    if (res > 0 && static_cast<size_t>(res) < writing_.size()) {
      pending_out_.insert(0, writing_.substr(static_cast<size_t>(res)));
    }
    // res < 0: stdout is gone (EPIPE); drop output, the guest keeps running.
    writing_.clear();
    WriteMore();
  });
}

void Session::ArmStdin() {
  if (!stdin_open_) {
    return;
  }
  reactor_->Read(STDIN_FILENO, stdin_buf_, sizeof(stdin_buf_), [this](int res, uint32_t) {
    if (res <= 0) {
      stdin_open_ = false;  // end of input: stop reading, never stop the guest
      return;
    }
    HandleInput(stdin_buf_, static_cast<size_t>(res));
    if (!stopped_) {
      ArmStdin();
    }
  });
}

void Session::HandleInput(const uint8_t* data, size_t n) {
  for (size_t i = 0; i < n; ++i) {
    const uint8_t b = data[i];
    if (tty_) {
      if (escape_) {
        escape_ = false;
        if (b == 'x') {
          machine_->RequestStop({ExitInfo::kStopped, "stopped by Ctrl-A x"});
          return;
        }
        if (b != kCtrlA) {
          stdin_backlog_.push_back(kCtrlA);
        }
      } else if (b == kCtrlA) {
        escape_ = true;
        continue;
      }
    }
    stdin_backlog_.push_back(b);
  }
  // Feed the UART what fits; retry the rest shortly (the guest drains its FIFO).
  std::vector<uint8_t> chunk(stdin_backlog_.begin(), stdin_backlog_.end());
  const size_t took = machine_->uart().EnqueueInput(chunk);
  stdin_backlog_.erase(stdin_backlog_.begin(), stdin_backlog_.begin() + took);
  if (!stdin_backlog_.empty()) {
    reactor_->Timeout(absl::Milliseconds(10), [this](int, uint32_t) { HandleInput(nullptr, 0); });
  }
}

void Session::ArmSignals() {
  reactor_->Read(signal_fd_, &siginfo_, sizeof(siginfo_), [this](int res, uint32_t) {
    if (res == sizeof(siginfo_) && siginfo_.ssi_signo == SIGQUIT) {
      DumpState();
    } else if (res == sizeof(siginfo_)) {
      machine_->RequestStop({ExitInfo::kStopped,
                             absl::StrFormat("stopped by %s", strsignal(siginfo_.ssi_signo))});
      return;
    }
    if (!stopped_) {
      ArmSignals();
    }
  });
}

void Session::DumpState() {
  absl::StatusOr<std::string> machine = machine_->Describe();
  const std::string text = absl::StrFormat(
      "lmig-rdma: state on SIGQUIT (the guest keeps running)\n%s"
      "console: stdin %s, %d bytes waiting for the UART, %d bytes of output pending\n",
      machine.ok() ? *machine : machine.status().ToString() + "\n",
      stdin_open_ ? "open" : "at end", stdin_backlog_.size(),
      pending_out_.size() + writing_.size());
  (void)!::write(STDERR_FILENO, text.data(), text.size());
}

void Session::ArmStop() {
  reactor_->Read(machine_->stop_fd(), &stop_event_, sizeof(stop_event_),
                 [this](int, uint32_t) {
                   stopped_ = true;
                   reactor_->Stop();
                 });
}

absl::StatusOr<ExitInfo> Session::Run() {
  RETURN_IF_ERROR(reactor_->Run());
  machine_->Join();
  // Whatever the guest printed last reaches stdout before we return.
  FlushOutput();
  RETURN_IF_ERROR(reactor_->RunUntil([this] { return !write_in_flight_; }));
  return machine_->exit_info();
}

}  // namespace lmig
