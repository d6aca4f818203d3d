// A running x86 VM: guest memory, the KVM VM and its vCPUs (one thread each), the legacy
// devices, dirty tracking and whole-machine state save/restore.
//
// Threads: every vCPU runs KVM_RUN on its own thread and handles port I/O there (devices lock
// themselves). The owner (the reactor thread) calls Start/Pause/Resume/RequestStop; state
// save/restore happens only while the vCPUs are parked (Pause) or not yet started.
#pragma once

#include <array>
#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "src/base/unique_fd.h"
#include "src/devices/acpi_pm.h"
#include "src/devices/pio_bus.h"
#include "src/devices/uart.h"
#include "src/kvm/kvm.h"
#include "src/machine/guest_memory.h"
#include "src/machine/state_codec.h"
#include "src/machine/state_timing.h"

namespace lmig {

enum class DirtyMode { kRing, kBitmap };

struct MachineConfig {
  uint64_t mem_size = 512ull << 20;
  int num_cpus = 1;
  DirtyMode dirty_mode = DirtyMode::kRing;
  std::string kvm_path = "/dev/kvm";
};

struct BootConfig {
  std::string kernel;
  std::string initrd;  // may be empty
  std::string cmdline;
};

// How long the last Pause took to park the vCPUs (monotonic clock): the whole call, and for
// each vCPU the time from its kick to its parking (0 for a vCPU that was already parked).
struct PauseTiming {
  double total_ms = 0;
  std::vector<double> vcpu_ms;
};

// A saved state and how long saving it took.
struct SavedState {
  std::vector<uint8_t> blob;
  StateTiming timing;
};

// Why the machine stopped.
struct ExitInfo {
  enum Kind { kRunning = 0, kReset, kShutdown, kError, kStopped } kind = kRunning;
  std::string message;
};

// Guest console output, filled by the UART on vCPU threads and drained by the reactor, which an
// eventfd wakes.
class ConsoleBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<ConsoleBuffer>> Create();
  void Append(uint8_t byte);
  std::string Take();
  int event_fd() const { return event_.get(); }

 private:
  explicit ConsoleBuffer(UniqueFd fd) : event_(std::move(fd)) {}
  std::mutex mu_;
  std::string buf_;
  UniqueFd event_;
};

class Machine;

// KVM dirty page tracking over all of guest RAM: the dirty ring (default) or the dirty bitmap
// with manual protect (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, initially all set).
class DirtyLog {
 public:
  explicit DirtyLog(Machine* m) : m_(m) {}
  // Turns logging on; from now on Collect returns the pages written since the previous call.
  absl::Status Start();
  // Adds the pages dirtied since Start/the last Collect to OUT and re-protects them, so that a
  // write after Collect returns is reported by the next Collect.
  absl::Status Collect(PageBitmap& out);
  absl::Status Stop();
  // Called on a vCPU thread on KVM_EXIT_DIRTY_RING_FULL: harvests that vCPU's ring.
  absl::Status HarvestRingFull(int vcpu);
  bool active() const { return active_; }

 private:
  absl::Status SetLogging(bool on);
  uint64_t HarvestRing(int vcpu);  // caller holds mu_
  Machine* m_;
  std::mutex mu_;
  PageBitmap pending_;
  std::vector<uint32_t> fetch_index_;
  bool active_ = false;
};

class Machine {
 public:
  // Creates the VM: memory, irqchip, PIT, vCPUs with CPUID/MSRs/LAPIC set, devices.
  // Console output goes to CONSOLE.
  static absl::StatusOr<std::unique_ptr<Machine>> Create(const MachineConfig& config,
                                                         ConsoleBuffer* console);
  ~Machine();

  // Loads a bzImage + initramfs as the boot protocol says and points vCPU 0 at its entry.
  absl::Status LoadLinux(const BootConfig& boot);

  // Starts the vCPU threads (after StartPaused: lets the parked threads run, or, while
  // HoldStart is in force, records that they may run once ReleaseStart is called).
  absl::Status Start();
  // After StartPaused: a Start from now on only arms the vCPUs; ReleaseStart lets them run if
  // Start was called. The destination thus sends its ACK before its vCPUs compete for the
  // CPUs, and a guest whose ACK could not be sent never runs there.
  void HoldStart();
  void ReleaseStart();
  // Creates the vCPU threads parked, as if paused, and returns once every one is parked: a
  // machine that is to receive its state has its threads before the switchover, which then
  // only has to wake them (Start). State is restored while they are parked.
  absl::Status StartPaused();
  // Parks every vCPU outside KVM_RUN; returns once all are parked. Pauses nest: the vCPUs
  // run again after as many Resume calls as Pause calls (the migration's stop-and-copy and a
  // state dump may overlap).
  void Pause();
  void Resume();
  // How long the last Pause that parked the vCPUs took (per vCPU: kick to parked).
  PauseTiming last_pause() const;
  // One line per vCPU (RIP, RFLAGS.IF, MP state, pending events, LAPIC ISR/IRR) plus the
  // IOAPIC/PIC view of the console IRQ and the UART's registers: what a stuck guest is doing.
  // Pauses the vCPUs for the moment it takes.
  absl::StatusOr<std::string> Describe();
  // Throttles the vCPUs to run (100 - PCT)% of the time (0 lifts it): a throttle thread kicks
  // them every 10 ms and each sleeps its share before re-entering the guest.
  void SetThrottle(int pct);
  int throttle() const { return throttle_pct_.load(); }
  // Stops the machine for REASON (the first reason wins), kicks every vCPU, signals stop_fd.
  void RequestStop(ExitInfo reason);
  // Readable (eventfd) once the machine has stopped.
  int stop_fd() const { return stop_event_.get(); }
  ExitInfo exit_info() const;
  // Joins the vCPU threads (after RequestStop).
  void Join();

  // Machine state (all vCPUs, irqchips, PIT, clock, UART) as a blob (src/machine/state_codec.h).
  // Call only while paused or before Start.
  absl::StatusOr<std::vector<uint8_t>> SaveState();
  // SaveState, timed per vCPU, VM-wide and per KVM call group.
  absl::StatusOr<SavedState> SaveStateTimed();
  // Checks the whole of STATE against this machine's limits (ValidateState: one message naming
  // the record and the problem) before any of it reaches KVM, then applies it in a fixed order.
  // A rejected blob leaves the machine untouched; an ioctl failing midway leaves it partly
  // restored (it must then not run). For a machine created with the same config.
  absl::Status RestoreState(std::span<const uint8_t> state);
  // RestoreState, timed per vCPU, VM-wide and per KVM call group (kValidate: the validation).
  absl::StatusOr<StateTiming> RestoreStateTimed(std::span<const uint8_t> state);
  // What this machine's KVM reads and accepts: vCPU count, XSAVE size, restorable MSRs.
  StateLimits state_limits() const;

  const MachineConfig& config() const { return config_; }
  GuestMemory& memory() { return memory_; }
  VmFd& vm() { return vm_; }
  Uart& uart() { return *uart_; }
  DirtyLog& dirty_log() { return dirty_; }
  int num_vcpus() const { return static_cast<int>(vcpus_.size()); }
  VcpuFd& vcpu(int i) { return *vcpus_[i]; }
  // Total KVM exits so far (all vCPUs), for tests and stats.
  uint64_t exit_count() const { return exits_.load(); }

 private:
  Machine(MachineConfig config, Kvm kvm, VmFd vm, GuestMemory mem, UniqueFd stop_event);
  absl::Status Init(ConsoleBuffer* console);
  void VcpuLoop(int index);
  bool HandleExit(VcpuFd& vcpu);  // false: stop this vCPU
  absl::StatusOr<std::vector<uint32_t>> SavableMsrs();

  MachineConfig config_;
  Kvm kvm_;
  VmFd vm_;
  GuestMemory memory_;
  std::vector<std::unique_ptr<VcpuFd>> vcpus_;
  std::vector<std::thread> threads_;
  std::vector<uint32_t> msr_indices_;
  std::vector<std::vector<kvm_cpuid_entry2>> cpuid_;  // as set on each vCPU
  size_t xsave_size_ = 0;
  PioBus pio_;
  std::unique_ptr<Uart> uart_;
  std::unique_ptr<I8042> i8042_;
  std::unique_ptr<Cmos> cmos_;
  // PM1 enable bits are not migrated: no PM1 event is ever raised, so they change nothing.
  std::unique_ptr<AcpiPm> acpi_pm_;
  DirtyLog dirty_;
  friend class DirtyLog;

  // vCPU run control.
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int pause_depth_ = 0;
  bool started_paused_ = false;  // StartPaused's pause, which Start lifts
  bool hold_start_ = false;      // HoldStart: Start only arms
  bool start_armed_ = false;     // Start was called while held
  int parked_ = 0;
  int running_threads_ = 0;
  using Clock = std::chrono::steady_clock;
  std::vector<Clock::time_point> parked_at_;  // per vCPU: when it last parked
  PauseTiming last_pause_;
  std::atomic<bool> stop_{false};
  ExitInfo exit_;
  UniqueFd stop_event_;
  std::atomic<uint64_t> exits_{0};
  std::atomic<int> throttle_pct_{0};
  std::atomic<uint64_t> throttle_epoch_{0};
  std::thread throttle_thread_;
  void ThrottleLoop();
};

// Reads a whole file; errors name the path ("kernel /x: No such file or directory").
absl::StatusOr<std::vector<uint8_t>> ReadFile(const std::string& path, const char* what);

}  // namespace lmig
