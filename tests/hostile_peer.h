// Shared by the hostile-peer tests on the host (TCP, tests/unit) and in the lab (RDMA,
// tests/lab): a tiny source guest, the real `lmig-rdma dst` as a child process, and a real
// source migrating a tiny guest. LMIG_BINARY names the VMM binary.
#pragma once

#include <fcntl.h>
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>

#include <chrono>
#include <fstream>
#include <random>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include <gtest/gtest.h>

#include "include/lmig/transport.h"
#include "src/migration/sender.h"
#include "tests/unit/tiny_guest.h"

namespace lmig::hostile {

using namespace testing_guest;
using Clock = std::chrono::steady_clock;

inline double SecondsSince(Clock::time_point t) {
  return std::chrono::duration<double>(Clock::now() - t).count();
}

// A HELLO a destination accepts (no --psk-file on it unless AUTH is kPsk).
inline proto::Hello ValidHello(uint64_t mem, proto::TransportKind transport =
                                                 proto::TransportKind::kTcp,
                               proto::AuthMode auth = proto::AuthMode::kNone) {
  proto::Hello h{};
  h.version = proto::kVersion;
  h.page_size = 4096;
  h.mem_size = mem;
  h.num_cpus = 1;
  h.transport = static_cast<uint32_t>(transport);
  h.dirty_mode = proto::DirtyMode::kRing;
  h.auth = static_cast<uint32_t>(auth);
  h.streams = 1;
  return h;
}

inline uint16_t Port() {
  static std::mt19937 rng(std::random_device{}());  // not the pid: processes reuse those
  return static_cast<uint16_t>(20000 + rng() % 30000);
}

struct SourceVm {
  std::unique_ptr<ConsoleBuffer> console;
  std::unique_ptr<Machine> machine;
};

inline void StartCounter(SourceVm& vm) {
  auto console = ConsoleBuffer::Create();
  ASSERT_TRUE(console.ok());
  vm.console = std::move(*console);
  MachineConfig c;
  c.mem_size = 16ull << 20;
  c.num_cpus = 1;
  auto m = Machine::Create(c, vm.console.get());
  ASSERT_TRUE(m.ok()) << m.status();
  vm.machine = std::move(*m);
  ASSERT_TRUE(LoadRealMode(*vm.machine, kCounter).ok());
  ASSERT_TRUE(vm.machine->Start().ok());
}

// The guest is still ours: it runs its counter to the end and resets.
inline void ExpectGuestRunsToItsEnd(SourceVm& vm) {
  ASSERT_TRUE(WaitStopped(*vm.machine, 60000)) << "the source's guest stopped running";
  vm.machine->Join();
  EXPECT_EQ(vm.machine->exit_info().kind, ExitInfo::kReset);
  EXPECT_EQ(vm.console->Take(), CounterOutput());
}

// `lmig-rdma dst --transport T --listen HOST:PORT ARGS...`, stderr into a file.
class Dst {
 public:
  explicit Dst(std::vector<std::string> args, std::string transport = "tcp",
               std::string host = "127.0.0.1") {
    for (int i = 0; i < 3; ++i) {
      port_ = Port();
      // A fresh, empty file of our own: a name made from the pid could hold an earlier
      // process's "listening on", read before the child got to truncate it.
      if (i > 0) {
        ::unlink(err_path_.c_str());  // the last attempt's
      }
      err_path_ = ::testing::TempDir() + "/dst-XXXXXX";
      const int err = ::mkstemp(err_path_.data());
      if (err < 0) {
        ADD_FAILURE() << "mkstemp " << err_path_;
        return;
      }
      std::vector<std::string> argv = {LMIG_BINARY, "dst", "--transport", transport,
                                       "--listen", host + ":" + std::to_string(port_)};
      argv.insert(argv.end(), args.begin(), args.end());
      pid_ = ::fork();
      if (pid_ == 0) {
        const int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(err, 2);
        std::vector<char*> cargv;
        for (auto& a : argv) {
          cargv.push_back(a.data());
        }
        cargv.push_back(nullptr);
        ::execv(cargv[0], cargv.data());
        ::_exit(127);
      }
      ::close(err);
      // Listening once stderr says so.
      // Up to 30 s: the lab's nested guests and shared cores make a process start slowly.
      for (int t = 0; t < 1200 && Stderr().find("listening on") == std::string::npos; ++t) {
        if (Exited(0)) {
          break;
        }
        std::this_thread::sleep_for(std::chrono::milliseconds(25));
      }
      if (Stderr().find("listening on") != std::string::npos) {
        return;
      }
      if (!Exited(0)) {
        ::kill(pid_, SIGKILL);
        (void)Wait(5);
      }
    }
    ADD_FAILURE() << "dst did not start within 30 s (" << LMIG_BINARY << "): " << Stderr();
  }
  ~Dst() {
    if (!exited_) {
      ::kill(pid_, SIGKILL);
      (void)Wait(10);
    }
    ::unlink(err_path_.c_str());
  }
  uint16_t port() const { return port_; }
  std::string Stderr() const {
    std::ifstream f(err_path_);
    std::stringstream ss;
    ss << f.rdbuf();
    return ss.str();
  }
  bool Exited(int timeout_ms) {
    if (exited_) {
      return true;
    }
    for (int waited = 0;; waited += 20) {
      int st = 0;
      if (::waitpid(pid_, &st, WNOHANG) == pid_) {
        exited_ = true;
        status_ = WIFEXITED(st) ? WEXITSTATUS(st) : 128 + WTERMSIG(st);
        return true;
      }
      if (waited >= timeout_ms) {
        return false;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
  }
  // Exit status, or -1 if still running after SECONDS.
  void Signal(int sig) { ::kill(pid_, sig); }
  int Wait(double seconds) { return Exited(static_cast<int>(seconds * 1000)) ? status_ : -1; }

 private:
  uint16_t port_ = 0;
  pid_t pid_ = -1;
  std::string err_path_;
  bool exited_ = false;
  int status_ = -1;
};

// A real source: the engine migrating a tiny guest to DST. Returns the sender's status.
// TO: the transport's options (TLS, say); PSK: the source's key (null: none).
inline absl::Status MigrateTinyGuest(uint16_t port, MigrationStats& stats,
                              proto::TransportKind kind = proto::TransportKind::kTcp,
                              const std::string& host = "127.0.0.1",
                              TransportOptions to = {}, const crypto::Psk* psk = nullptr) {
  SourceVm a;
  StartCounter(a);
  if (a.machine == nullptr) {
    return absl::InternalError("no source VM");
  }
  to.timeout = absl::Seconds(20);
  auto t = ConnectTransport(kind, host, port, to);
  if (!t.ok()) {
    return t.status();
  }
  SenderOptions so;
  so.psk = psk;
  MigrationSender sender(a.machine.get(), t->get(), so, [](const std::string&) {});
  absl::Status s = sender.Run(stats);
  a.machine->RequestStop({ExitInfo::kStopped, "done"});
  a.machine->Join();
  return s;
}

}  // namespace lmig::hostile
