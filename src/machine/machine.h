// A running x86 VM: guest memory, the KVM VM and its vCPUs, the legacy devices, and the parts
// built from them: the vCPU threads (src/machine/vcpu_runner.h), dirty tracking
// (src/machine/dirty_log.h) and whole-machine state save/restore (machine_state.cc).
//
// Threads: every vCPU runs KVM_RUN on its own thread and handles its exits there, port I/O
// included (devices lock themselves). The owner (the command's main thread) creates the
// machine, loads the kernel, calls Start and Join; the migration calls Pause/Resume (its
// stop-and-copy and dry-run saves), SetThrottle and the dirty log; Describe pauses for its
// moment; RequestStop comes from any thread (vCPU threads and device callbacks included).
// State save/restore happens only while the vCPUs are parked (Pause) or not yet started.
// src/base/thread_model.h has the whole thread map.
#pragma once

#include <memory>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/arch/x86_64/boot.h"
#include "src/base/unique_fd.h"
#include "src/devices/acpi_pm.h"
#include "src/devices/console_buffer.h"
#include "src/devices/pio_bus.h"
#include "src/devices/uart.h"
#include "src/kvm/kvm.h"
#include "src/machine/dirty_log.h"
#include "src/machine/guest_memory.h"
#include "src/machine/state_codec.h"
#include "src/machine/state_timing.h"
#include "src/machine/vcpu_runner.h"

namespace lmig {

struct MachineConfig {
  uint64_t mem_size = 512ull << 20;
  int num_cpus = 1;
  DirtyMode dirty_mode = DirtyMode::kRing;
  std::string kvm_path = "/dev/kvm";
};

using x86::BootConfig;

// A saved state and how long saving it took.
struct SavedState {
  std::vector<uint8_t> blob;
  StateTiming timing;
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
  absl::Status Start() { return runner_.Start(); }
  // After StartPaused: a Start from now on only arms the vCPUs; ReleaseStart lets them run if
  // Start was called. The destination thus sends its ACK before its vCPUs compete for the
  // CPUs, and a guest whose ACK could not be sent never runs there.
  void HoldStart() { runner_.HoldStart(); }
  void ReleaseStart() { runner_.ReleaseStart(); }
  // Creates the vCPU threads parked, as if paused, and returns once every one is parked: a
  // machine that is to receive its state has its threads before the switchover, which then
  // only has to wake them (Start). State is restored while they are parked.
  absl::Status StartPaused() { return runner_.StartPaused(); }
  // Parks every vCPU outside KVM_RUN; returns once all are parked. Pauses nest: the vCPUs
  // run again after as many Resume calls as Pause calls (the migration's stop-and-copy and a
  // state dump may overlap).
  void Pause() { runner_.Pause(); }
  void Resume() { runner_.Resume(); }
  // How long the last Pause that parked the vCPUs took (per vCPU: kick to parked).
  PauseTiming last_pause() const { return runner_.last_pause(); }
  // One line per vCPU (RIP, RFLAGS.IF, MP state, pending events, LAPIC ISR/IRR) plus the
  // IOAPIC/PIC view of the console IRQ and the UART's registers: what a stuck guest is doing.
  // Pauses the vCPUs for the moment it takes.
  absl::StatusOr<std::string> Describe();
  // Throttles the vCPUs to run (100 - PCT)% of the time (0 lifts it): a throttle thread kicks
  // them every 10 ms and each sleeps its share before re-entering the guest.
  void SetThrottle(int pct) { runner_.SetThrottle(pct); }
  int throttle() const { return runner_.throttle(); }
  // Stops the machine for REASON (the first reason wins), kicks every vCPU, signals stop_fd.
  void RequestStop(ExitInfo reason) { runner_.RequestStop(std::move(reason)); }
  // Readable (eventfd) once the machine has stopped.
  int stop_fd() const { return runner_.stop_fd(); }
  ExitInfo exit_info() const { return runner_.exit_info(); }
  // Joins the vCPU threads (after RequestStop).
  void Join() { runner_.Join(); }

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
  uint64_t exit_count() const { return runner_.exit_count(); }

 private:
  Machine(MachineConfig config, Kvm kvm, VmFd vm, GuestMemory mem, UniqueFd stop_event);
  absl::Status Init(ConsoleBuffer* console);
  bool HandleExit(VcpuFd& vcpu);  // false: stop this vCPU
  absl::StatusOr<std::vector<uint32_t>> SavableMsrs();

  MachineConfig config_;
  Kvm kvm_;
  VmFd vm_;
  GuestMemory memory_;
  std::vector<std::unique_ptr<VcpuFd>> vcpus_;
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
  // Last: its destructor stops the vCPU threads before anything they use goes.
  VcpuRunner runner_;
};

}  // namespace lmig
