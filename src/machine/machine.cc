#include "src/machine/machine.h"

#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <sys/eventfd.h>
#include <sys/stat.h>

#include <cstring>
#include <fstream>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/arch/x86_64/boot.h"
#include "src/arch/x86_64/cpu.h"
#include "src/arch/x86_64/layout.h"
#include "src/arch/x86_64/acpi.h"
#include "src/arch/x86_64/mptable.h"
#include "src/machine/state_codec.h"

namespace lmig {
namespace {

constexpr uint64_t kTssAddress = 0xfffbd000;
constexpr uint32_t kDirtyRingEntries = 65536;  // KVM_DIRTY_RING_MAX_ENTRIES
constexpr int kKickSignal = SIGUSR1;

void KickHandler(int) {}

void InstallKickHandler() {
  static std::once_flag once;
  std::call_once(once, [] {
    struct sigaction sa {};
    sa.sa_handler = KickHandler;
    sigemptyset(&sa.sa_mask);
    sa.sa_flags = 0;  // no SA_RESTART: KVM_RUN must return EINTR
    sigaction(kKickSignal, &sa, nullptr);
  });
}

double MsBetween(std::chrono::steady_clock::time_point a, std::chrono::steady_clock::time_point b) {
  return std::chrono::duration<double, std::milli>(b - a).count();
}

void SignalEvent(int fd) {
  const uint64_t one = 1;
  (void)!::write(fd, &one, sizeof(one));
}

}  // namespace

absl::StatusOr<std::vector<uint8_t>> ReadFile(const std::string& path, const char* what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus(absl::StrCat(what, " ", path));
  }
  UniqueFd f(fd);
  struct stat st;
  if (::fstat(fd, &st) < 0) {
    return ErrnoStatus(absl::StrCat(what, " ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": not a regular file"));
  }
  std::vector<uint8_t> data(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return ErrnoStatus(absl::StrCat(what, " ", path, ": read"), n == 0 ? EIO : errno);
    }
    got += static_cast<size_t>(n);
  }
  return data;
}

absl::StatusOr<std::unique_ptr<ConsoleBuffer>> ConsoleBuffer::Create() {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    return ErrnoStatus("eventfd");
  }
  return std::unique_ptr<ConsoleBuffer>(new ConsoleBuffer(UniqueFd(fd)));
}

void ConsoleBuffer::Append(uint8_t byte) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_empty = buf_.empty();
    buf_.push_back(static_cast<char>(byte));
  }
  if (was_empty) {
    SignalEvent(event_.get());
  }
}

std::string ConsoleBuffer::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(buf_, {});
}

// ---------------------------------------------------------------------------------------------
// Machine construction and boot

Machine::Machine(MachineConfig config, Kvm kvm, VmFd vm, GuestMemory mem, UniqueFd stop_event)
    : config_(std::move(config)),
      kvm_(std::move(kvm)),
      vm_(std::move(vm)),
      memory_(std::move(mem)),
      dirty_(this),
      stop_event_(std::move(stop_event)) {}

Machine::~Machine() {
  SetThrottle(0);
  if (!threads_.empty()) {
    RequestStop({ExitInfo::kStopped, "machine destroyed"});
    Join();
  }
}

absl::StatusOr<std::unique_ptr<Machine>> Machine::Create(const MachineConfig& config,
                                                         ConsoleBuffer* console) {
  if (config.num_cpus < 1 || config.num_cpus > x86::kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--cpus %d: must be 1..%d", config.num_cpus, x86::kMaxVcpus));
  }
  ASSIGN_OR_RETURN(Kvm kvm, Kvm::Open(config.kvm_path));
  for (auto [cap, name] : {std::pair<long, const char*>{KVM_CAP_IRQCHIP, "KVM_CAP_IRQCHIP"},
                           {KVM_CAP_PIT2, "KVM_CAP_PIT2"},
                           {KVM_CAP_USER_MEMORY, "KVM_CAP_USER_MEMORY"}}) {
    if (kvm.CheckExtension(cap) == 0) {
      return absl::FailedPreconditionError(absl::StrCat(config.kvm_path, " lacks ", name));
    }
  }
  ASSIGN_OR_RETURN(VmFd vm, kvm.CreateVm());
  ASSIGN_OR_RETURN(GuestMemory mem, GuestMemory::Create(config.mem_size));
  const int efd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (efd < 0) {
    return ErrnoStatus("eventfd");
  }
  std::unique_ptr<Machine> m(
      new Machine(config, std::move(kvm), std::move(vm), std::move(mem), UniqueFd(efd)));
  RETURN_IF_ERROR(m->Init(console));
  return m;
}

absl::Status Machine::Init(ConsoleBuffer* console) {
  InstallKickHandler();
  RETURN_IF_ERROR(vm_.SetTssAddr(kTssAddress));
  RETURN_IF_ERROR(vm_.CreateIrqchip());
  RETURN_IF_ERROR(vm_.CreatePit2());
  // With the exception payload split out, KVM_GET_VCPU_EVENTS reports a pending exception as
  // pending (not injected) and leaves its payload (CR2/DR6) unapplied, so reading the state
  // does not change it: otherwise a #PF queued at pause time writes CR2 after SaveState has
  // already read the sregs, and the destination's handler sees the previous CR2.
  if (vm_.CheckExtension(KVM_CAP_EXCEPTION_PAYLOAD) > 0) {
    RETURN_IF_ERROR(Annotate(vm_.EnableCap(KVM_CAP_EXCEPTION_PAYLOAD, 1),
                             "enabling KVM_CAP_EXCEPTION_PAYLOAD"));
  }

  size_t ring_bytes = 0;
  if (config_.dirty_mode == DirtyMode::kRing) {
    uint32_t cap = KVM_CAP_DIRTY_LOG_RING_ACQ_REL;
    int max_bytes = vm_.CheckExtension(cap);
    if (max_bytes <= 0) {
      cap = KVM_CAP_DIRTY_LOG_RING;
      max_bytes = vm_.CheckExtension(cap);
    }
    if (max_bytes <= 0) {
      return absl::FailedPreconditionError(
          "KVM has no dirty ring (KVM_CAP_DIRTY_LOG_RING); use --dirty-tracking bitmap");
    }
    ring_bytes = std::min<size_t>(static_cast<size_t>(max_bytes),
                                  kDirtyRingEntries * sizeof(kvm_dirty_gfn));
    RETURN_IF_ERROR(Annotate(vm_.EnableCap(cap, ring_bytes), "enabling the dirty ring"));
  } else {
    if (vm_.CheckExtension(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2) == 0) {
      return absl::FailedPreconditionError("KVM lacks KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2");
    }
    RETURN_IF_ERROR(vm_.EnableCap(KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2,
                                  KVM_DIRTY_LOG_MANUAL_PROTECT_ENABLE |
                                      KVM_DIRTY_LOG_INITIALLY_SET));
  }

  for (const MemorySlot& s : memory_.slots()) {
    RETURN_IF_ERROR(
        vm_.SetUserMemoryRegion(s.id, 0, s.gpa, s.size, memory_.base() + s.ram_offset));
  }

  ASSIGN_OR_RETURN(size_t mmap_size, kvm_.VcpuMmapSize());
  ASSIGN_OR_RETURN(std::vector<kvm_cpuid_entry2> cpuid, kvm_.SupportedCpuid());
  const int xsave2 = vm_.CheckExtension(KVM_CAP_XSAVE2);
  xsave_size_ = xsave2 > 0 ? static_cast<size_t>(xsave2) : 4096;
  const bool tsc_deadline = kvm_.CheckExtension(KVM_CAP_TSC_DEADLINE_TIMER) > 0;
  for (int i = 0; i < config_.num_cpus; ++i) {
    ASSIGN_OR_RETURN(VcpuFd v, vm_.CreateVcpu(i, mmap_size, ring_bytes));
    auto vcpu = std::make_unique<VcpuFd>(std::move(v));
    cpuid_.push_back(x86::FilterCpuid(cpuid, i, config_.num_cpus, tsc_deadline));
    RETURN_IF_ERROR(vcpu->SetCpuid(cpuid_.back()));
    RETURN_IF_ERROR(vcpu->SetMsrs(x86::BootMsrs()));
    ASSIGN_OR_RETURN(kvm_lapic_state lapic, vcpu->GetLapic());
    x86::SetupLapicLint(lapic);
    RETURN_IF_ERROR(vcpu->SetLapic(lapic));
    vcpus_.push_back(std::move(vcpu));
  }
  ASSIGN_OR_RETURN(msr_indices_, SavableMsrs());

  uart_ = std::make_unique<Uart>([console](uint8_t b) { console->Append(b); },
                                 [this](bool level) {
                                   absl::Status s = vm_.IrqLine(x86::kCom1Irq, level);
                                   if (!s.ok()) {
                                     std::fprintf(stderr, "lmig-rdma: UART interrupt: %s\n",
                                                  std::string(s.message()).c_str());
                                   }
                                 });
  i8042_ = std::make_unique<I8042>(
      [this] { RequestStop({ExitInfo::kReset, "guest reset (i8042 0xfe)"}); });
  cmos_ = std::make_unique<Cmos>();
  acpi_pm_ = std::make_unique<AcpiPm>(
      [this] { RequestStop({ExitInfo::kShutdown, "guest powered off (ACPI S5)"}); });
  pio_.Register(x86::kCom1Port, 8, uart_.get());
  pio_.Register(x86::kAcpiPm1EventPort, 4, acpi_pm_->event_block());
  pio_.Register(x86::kAcpiPm1ControlPort, 2, acpi_pm_->control_block());
  pio_.Register(x86::kI8042DataPort, 5, i8042_.get());
  pio_.Register(x86::kCmosIndexPort, 2, cmos_.get());
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint32_t>> Machine::SavableMsrs() {
  ASSIGN_OR_RETURN(std::vector<uint32_t> all, kvm_.MsrIndexList());
  std::vector<uint32_t> ok;
  for (uint32_t idx : all) {
    auto got = vcpus_[0]->GetMsrs({idx});
    if (got.ok() && got->size() == 1) {
      ok.push_back(idx);
    }
  }
  return ok;
}

absl::Status Machine::LoadLinux(const BootConfig& boot) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> image, ReadFile(boot.kernel, "kernel"));
  auto parsed = x86::ParseBzImage(image);
  if (!parsed.ok()) {
    return Annotate(parsed.status(), absl::StrCat("kernel ", boot.kernel));
  }
  const x86::BzImage& k = *parsed;
  const x86::RamLayout& ram = memory_.layout();
  if (ram.total() < x86::MinimumMemory(k)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--mem %dMiB is too small for kernel %s: it needs at least %dMiB", ram.total() >> 20,
        boot.kernel, (x86::MinimumMemory(k) + (1 << 20) - 1) >> 20));
  }
  std::span<uint8_t> low = memory_.low();
  std::memcpy(&low[x86::kKernelStart], image.data() + k.payload_offset, k.payload_size);

  uint64_t initrd_addr = 0, initrd_size = 0;
  if (!boot.initrd.empty()) {
    ASSIGN_OR_RETURN(std::vector<uint8_t> initrd, ReadFile(boot.initrd, "initrd"));
    auto addr = x86::PlaceInitrd(k, ram, initrd.size());
    if (!addr.ok()) {
      return Annotate(addr.status(), absl::StrCat("initrd ", boot.initrd));
    }
    initrd_addr = *addr;
    initrd_size = initrd.size();
    std::memcpy(&low[initrd_addr], initrd.data(), initrd.size());
  }
  if (boot.cmdline.size() + 1 > std::min<uint64_t>(k.cmdline_size + 1, x86::kCmdlineMax)) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "--cmdline is %d bytes; the kernel accepts at most %d", boot.cmdline.size(),
        k.cmdline_size));
  }
  std::memcpy(&low[x86::kCmdlineStart], boot.cmdline.c_str(), boot.cmdline.size() + 1);

  const boot_params bp =
      x86::BuildBootParams(k, x86::BuildE820(ram), initrd_addr, initrd_size);
  std::memcpy(&low[x86::kBootParamsStart], &bp, sizeof(bp));

  ASSIGN_OR_RETURN(x86::MpTables mp, x86::BuildMpTables(config_.num_cpus));
  std::memcpy(&low[x86::kEbdaStart], mp.floating_pointer.data(), mp.floating_pointer.size());
  static_assert(x86::kAcpiTablesStart > x86::kMpConfigStart);
  if (mp.config_table.size() > x86::kAcpiTablesStart - x86::kMpConfigStart) {
    return absl::InternalError("MP configuration table overlaps the ACPI tables");
  }
  std::memcpy(&low[x86::kMpConfigStart], mp.config_table.data(), mp.config_table.size());
  const std::vector<uint8_t> acpi = x86::BuildAcpiTables(x86::kAcpiTablesStart, config_.num_cpus);
  std::memcpy(&low[x86::kAcpiTablesStart], acpi.data(), acpi.size());
  const uint16_t ebda_segment = x86::kEbdaStart >> 4;
  std::memcpy(&low[x86::kBdaEbdaPointer], &ebda_segment, 2);

  const bool long_mode = k.Supports64BitEntry();
  x86::WriteBootGdt(low, long_mode);
  if (long_mode) {
    x86::WriteBootPageTables(low);
  }
  VcpuFd& bsp = *vcpus_[0];
  ASSIGN_OR_RETURN(kvm_sregs sregs, bsp.GetSregs());
  RETURN_IF_ERROR(bsp.SetSregs(x86::BootSregs(sregs, long_mode)));
  const uint64_t entry =
      long_mode ? x86::kKernelStart + x86::kKernel64EntryOffset : k.code32_start;
  RETURN_IF_ERROR(bsp.SetRegs(x86::BootRegs(entry)));
  return absl::OkStatus();
}

// ---------------------------------------------------------------------------------------------
// vCPU threads

absl::Status Machine::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  if (started_paused_) {
    if (hold_start_) {
      start_armed_ = true;
      return absl::OkStatus();
    }
    started_paused_ = false;
    if (pause_depth_ > 0 && --pause_depth_ == 0) {
      cv_.notify_all();
    }
    return absl::OkStatus();
  }
  if (!threads_.empty()) {
    return absl::FailedPreconditionError("the vCPU threads are already started");
  }
  running_threads_ = num_vcpus();
  parked_at_.assign(vcpus_.size(), Clock::time_point());
  for (int i = 0; i < num_vcpus(); ++i) {
    threads_.emplace_back([this, i] { VcpuLoop(i); });
  }
  return absl::OkStatus();
}

void Machine::HoldStart() {
  std::lock_guard<std::mutex> lock(mu_);
  hold_start_ = started_paused_;
}

void Machine::ReleaseStart() {
  std::lock_guard<std::mutex> lock(mu_);
  hold_start_ = false;
  if (start_armed_ && started_paused_) {
    start_armed_ = false;
    started_paused_ = false;
    if (pause_depth_ > 0 && --pause_depth_ == 0) {
      cv_.notify_all();
    }
  }
}

absl::Status Machine::StartPaused() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!threads_.empty()) {
    return absl::FailedPreconditionError("the vCPU threads are already started");
  }
  ++pause_depth_;
  started_paused_ = true;
  running_threads_ = num_vcpus();
  parked_at_.assign(vcpus_.size(), Clock::time_point());
  for (int i = 0; i < num_vcpus(); ++i) {
    threads_.emplace_back([this, i] { VcpuLoop(i); });
  }
  // Each thread parks after a KVM_RUN with immediate_exit set, which returns at once without
  // entering the guest (api.rst, KVM_RUN): the vCPU has not run, so its CPUID may still be set.
  cv_.wait(lock, [&] { return parked_ >= running_threads_; });
  return absl::OkStatus();
}

void Machine::VcpuLoop(int index) {
  VcpuFd& vcpu = *vcpus_[index];
  char name[16];
  std::snprintf(name, sizeof(name), "vcpu%d", index);
  pthread_setname_np(pthread_self(), name);
  sigset_t set;
  sigemptyset(&set);
  sigaddset(&set, kKickSignal);
  pthread_sigmask(SIG_UNBLOCK, &set, nullptr);
  for (;;) {
    vcpu.run()->immediate_exit = 0;
    {
      std::unique_lock<std::mutex> lock(mu_);
      if (stop_) {
        break;
      }
      if (pause_depth_ > 0) {
        // api.rst (KVM_RUN, immediate_exit): a port I/O or MMIO exit is complete only after
        // the next KVM_RUN; run once with immediate_exit so the saved state is consistent
        // (otherwise an IN's result never reaches RAX on the destination).
        vcpu.run()->immediate_exit = 1;
        (void)vcpu.Run();
        vcpu.run()->immediate_exit = 0;
        ++parked_;
        parked_at_[index] = Clock::now();
        cv_.notify_all();
        cv_.wait(lock, [&] { return pause_depth_ == 0 || stop_; });
        --parked_;
        continue;
      }
    }
    const int err = vcpu.Run();
    if (err == EINTR || err == EAGAIN) {
      const int pct = throttle_pct_.load();
      if (pct > 0) {
        // Sleep so that the vCPU runs (100 - pct)% of each 10 ms slice; a Pause, a stop or the
        // throttle's end cuts the sleep short (a sleeping vCPU would otherwise hold up a
        // stop-and-copy by up to its whole share, 1 s at 99%).
        std::unique_lock<std::mutex> lock(mu_);
        cv_.wait_for(lock, std::chrono::microseconds(10000 * pct / (100 - pct)), [&] {
          return pause_depth_ > 0 || stop_ || throttle_pct_.load() == 0;
        });
      }
      continue;
    }
    if (err != 0) {
      RequestStop({ExitInfo::kError,
                   absl::StrFormat("KVM_RUN vcpu=%d: %s", index, std::strerror(err))});
      break;
    }
    exits_.fetch_add(1, std::memory_order_relaxed);
    if (!HandleExit(vcpu)) {
      break;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  --running_threads_;
  cv_.notify_all();
}

bool Machine::HandleExit(VcpuFd& vcpu) {
  kvm_run* run = vcpu.run();
  auto rip = [&] {
    auto regs = vcpu.GetRegs();
    return regs.ok() ? regs->rip : 0;
  };
  switch (run->exit_reason) {
    case KVM_EXIT_IO: {
      uint8_t* data = reinterpret_cast<uint8_t*>(run) + run->io.data_offset;
      for (uint32_t i = 0; i < run->io.count; ++i, data += run->io.size) {
        if (run->io.direction == KVM_EXIT_IO_OUT) {
          pio_.Write(run->io.port, data, run->io.size);
        } else {
          pio_.Read(run->io.port, data, run->io.size);
        }
      }
      return true;
    }
    case KVM_EXIT_MMIO:
      if (!run->mmio.is_write) {
        std::memset(run->mmio.data, 0xff, sizeof(run->mmio.data));
      }
      return true;
    case KVM_EXIT_INTR:
    case KVM_EXIT_HLT:
      return true;
    case KVM_EXIT_DIRTY_RING_FULL: {
      absl::Status s = dirty_.HarvestRingFull(vcpu.id());
      if (!s.ok()) {
        RequestStop({ExitInfo::kError, absl::StrCat("dirty ring full: ", s.message())});
        return false;
      }
      return true;
    }
    case KVM_EXIT_SYSTEM_EVENT:
      switch (run->system_event.type) {
        case KVM_SYSTEM_EVENT_RESET:
          RequestStop({ExitInfo::kReset, "guest reset"});
          return false;
        case KVM_SYSTEM_EVENT_SHUTDOWN:
          RequestStop({ExitInfo::kShutdown, "guest powered off"});
          return false;
        default:
          RequestStop({ExitInfo::kError, absl::StrFormat("guest system event %d (crash)",
                                                         run->system_event.type)});
          return false;
      }
    case KVM_EXIT_SHUTDOWN:
      RequestStop({ExitInfo::kError,
                    absl::StrFormat("vcpu %d: triple fault (KVM_EXIT_SHUTDOWN) at rip=0x%x",
                                    vcpu.id(), rip())});
      return false;
    case KVM_EXIT_FAIL_ENTRY:
      RequestStop({ExitInfo::kError,
                    absl::StrFormat("vcpu %d: VM entry failed, reason 0x%x, rip=0x%x",
                                    vcpu.id(),
                                    run->fail_entry.hardware_entry_failure_reason, rip())});
      return false;
    case KVM_EXIT_INTERNAL_ERROR:
      RequestStop({ExitInfo::kError,
                    absl::StrFormat("vcpu %d: KVM internal error, suberror %d, rip=0x%x",
                                    vcpu.id(), run->internal.suberror, rip())});
      return false;
    default:
      RequestStop({ExitInfo::kError,
                    absl::StrFormat("vcpu %d: unhandled KVM exit reason %d at rip=0x%x",
                                    vcpu.id(), run->exit_reason, rip())});
      return false;
  }
}

void Machine::RequestStop(ExitInfo reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (exit_.kind == ExitInfo::kRunning) {
      exit_ = std::move(reason);
    }
    stop_ = true;
    cv_.notify_all();
  }
  for (size_t i = 0; i < threads_.size(); ++i) {
    vcpus_[i]->run()->immediate_exit = 1;
    if (threads_[i].joinable() && threads_[i].get_id() != std::this_thread::get_id()) {
      pthread_kill(threads_[i].native_handle(), kKickSignal);
    }
  }
  SignalEvent(stop_event_.get());
}

ExitInfo Machine::exit_info() const {
  std::lock_guard<std::mutex> lock(mu_);
  return exit_;
}

void Machine::Join() {
  for (std::thread& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
  threads_.clear();
}

void Machine::SetThrottle(int pct) {
  pct = std::clamp(pct, 0, 99);
  const int old = throttle_pct_.exchange(pct);
  if (pct > 0 && old == 0) {
    throttle_thread_ = std::thread([this] { ThrottleLoop(); });
  } else if (pct == 0 && throttle_thread_.joinable()) {
    {
      // Wakes the throttle thread and the vCPUs sleeping their share at once.
      std::lock_guard<std::mutex> lock(mu_);
      cv_.notify_all();
    }
    throttle_thread_.join();
  }
}

void Machine::ThrottleLoop() {
  pthread_setname_np(pthread_self(), "throttle");
  while (throttle_pct_.load() > 0 && !stop_.load()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      for (size_t i = 0; i < threads_.size(); ++i) {
        vcpus_[i]->run()->immediate_exit = 1;
        pthread_kill(threads_[i].native_handle(), kKickSignal);
      }
    }
    const int pct = throttle_pct_.load();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::microseconds(10000 + 10000 * pct / (100 - pct)),
                 [&] { return throttle_pct_.load() == 0 || stop_.load(); });
  }
}

void Machine::Pause() {
  const Clock::time_point start = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  const bool first = pause_depth_++ == 0;
  for (size_t i = 0; i < threads_.size(); ++i) {
    vcpus_[i]->run()->immediate_exit = 1;
    pthread_kill(threads_[i].native_handle(), kKickSignal);
  }
  cv_.notify_all();  // a throttled vCPU sleeping its share parks at once
  cv_.wait(lock, [&] { return parked_ >= running_threads_; });
  if (first) {
    last_pause_.vcpu_ms.assign(vcpus_.size(), 0);
    for (size_t i = 0; i < parked_at_.size() && i < vcpus_.size(); ++i) {
      if (parked_at_[i] >= start) {
        last_pause_.vcpu_ms[i] = MsBetween(start, parked_at_[i]);
      }
    }
    last_pause_.total_ms = MsBetween(start, Clock::now());
  }
}

PauseTiming Machine::last_pause() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_pause_;
}

void Machine::Resume() {
  std::lock_guard<std::mutex> lock(mu_);
  if (pause_depth_ > 0 && --pause_depth_ == 0) {
    cv_.notify_all();
  }
}

namespace {

// The highest vector set in the LAPIC's 256-bit register at OFFSET (ISR 0x100, IRR 0x200), or
// -1: eight 32-bit words, 16 bytes apart.
int HighestLapicVector(const kvm_lapic_state& lapic, size_t offset) {
  for (int word = 7; word >= 0; --word) {
    uint32_t bits;
    std::memcpy(&bits, &lapic.regs[offset + 16 * word], sizeof(bits));
    if (bits != 0) {
      return word * 32 + 31 - __builtin_clz(bits);
    }
  }
  return -1;
}

const char* MpStateName(uint32_t s) {
  switch (s) {
    case KVM_MP_STATE_RUNNABLE: return "runnable";
    case KVM_MP_STATE_UNINITIALIZED: return "uninitialized";
    case KVM_MP_STATE_INIT_RECEIVED: return "init-received";
    case KVM_MP_STATE_HALTED: return "halted";
    case KVM_MP_STATE_SIPI_RECEIVED: return "sipi-received";
    default: return "other";
  }
}

}  // namespace

absl::StatusOr<std::string> Machine::Describe() {
  Pause();
  absl::Cleanup resume = [this] { Resume(); };
  std::string out = absl::StrFormat("exits=%d throttle=%d%%\n", exit_count(), throttle());
  for (auto& vp : vcpus_) {
    VcpuFd& v = *vp;
    ASSIGN_OR_RETURN(kvm_regs regs, v.GetRegs());
    ASSIGN_OR_RETURN(kvm_mp_state mp, v.GetMpState());
    ASSIGN_OR_RETURN(kvm_vcpu_events ev, v.GetVcpuEvents());
    ASSIGN_OR_RETURN(kvm_lapic_state lapic, v.GetLapic());
    ASSIGN_OR_RETURN(kvm_sregs sregs, v.GetSregs());
    uint32_t tpr;
    std::memcpy(&tpr, &lapic.regs[0x80], sizeof(tpr));
    absl::StrAppendFormat(
        &out,
        "vcpu%d: rip=0x%x rsp=0x%x IF=%d %s irq_injected=%d(vec %d) irq_shadow=%d "
        "nmi_pending=%d exc_injected=%d(vec %d err 0x%x) tpr=0x%x isr=%d irr=%d cr0=0x%x "
        "cr2=0x%x cr3=0x%x cr4=0x%x efer=0x%x\n",
        v.id(), regs.rip, regs.rsp, (regs.rflags >> 9) & 1, MpStateName(mp.mp_state),
        ev.interrupt.injected, ev.interrupt.nr, ev.interrupt.shadow, ev.nmi.pending,
        ev.exception.injected, ev.exception.nr, ev.exception.error_code, tpr,
        HighestLapicVector(lapic, 0x100), HighestLapicVector(lapic, 0x200), sregs.cr0,
        sregs.cr2, sregs.cr3, sregs.cr4, sregs.efer);
    // The instruction bytes at RIP, to tell a loop from a fault.
    constexpr uint64_t kCodeBytes = 16;
    absl::StatusOr<uint64_t> gpa = v.Translate(sregs.cs.base + regs.rip);
    absl::StatusOr<std::span<uint8_t>> code =
        gpa.ok() ? memory_.GpaSpan(*gpa, kCodeBytes) : gpa.status();
    if (code.ok()) {
      absl::StrAppendFormat(&out, "  code at rip (gpa 0x%x):", *gpa);
      for (uint8_t b : *code) {
        absl::StrAppendFormat(&out, " %02x", b);
      }
      absl::StrAppend(&out, "\n");
    } else {
      absl::StrAppend(&out, "  code at rip: ", code.status().message(), "\n");
    }
  }
  ASSIGN_OR_RETURN(kvm_irqchip ioapic, vm_.GetIrqchip(KVM_IRQCHIP_IOAPIC));
  const auto& pin = ioapic.chip.ioapic.redirtbl[x86::kCom1Irq].fields;
  ASSIGN_OR_RETURN(kvm_irqchip pic, vm_.GetIrqchip(KVM_IRQCHIP_PIC_MASTER));
  absl::StrAppendFormat(&out,
                        "ioapic pin%d: vec=%d mask=%d trig=%s remote_irr=%d irr=%d; pic: "
                        "irr=%02x imr=%02x isr=%02x\n",
                        x86::kCom1Irq, pin.vector, pin.mask, pin.trig_mode ? "level" : "edge",
                        pin.remote_irr, (ioapic.chip.ioapic.irr >> x86::kCom1Irq) & 1,
                        pic.chip.pic.irr, pic.chip.pic.imr, pic.chip.pic.isr);
  absl::StrAppend(&out, uart_->Describe(), "\n");
  return out;
}

// ---------------------------------------------------------------------------------------------
// State save / restore (Documentation/virt/kvm/api.rst; restore order as Firecracker/QEMU:
// CPUID first, LAPIC before MSRs so TSC_DEADLINE sticks, events last)

const char* StateCallName(StateCall c) {
  switch (c) {
    case StateCall::kCpuid: return "cpuid";
    case StateCall::kMpState: return "mp_state";
    case StateCall::kRegs: return "regs";
    case StateCall::kSregs: return "sregs";
    case StateCall::kXsave: return "xsave";
    case StateCall::kXcrs: return "xcrs";
    case StateCall::kLapic: return "lapic";
    case StateCall::kMsrs: return "msrs";
    case StateCall::kDebugRegs: return "debugregs";
    case StateCall::kEvents: return "vcpu_events";
    case StateCall::kIrqchip: return "irqchips";
    case StateCall::kPit: return "pit2";
    case StateCall::kClock: return "clock";
    case StateCall::kUart: return "uart";
    case StateCall::kValidate: return "validate";
  }
  return "unknown";
}

namespace {

// Adds the time since the previous lap to one call group (and, through the caller, to the
// vCPU or VM-wide total).
class Laps {
 public:
  explicit Laps(StateTiming& t) : t_(t), last_(std::chrono::steady_clock::now()) {}
  void Lap(StateCall c) {
    const auto now = std::chrono::steady_clock::now();
    t_.call_ms[static_cast<int>(c)] += MsBetween(last_, now);
    last_ = now;
  }

 private:
  StateTiming& t_;
  std::chrono::steady_clock::time_point last_;
};

}  // namespace

absl::StatusOr<std::vector<uint8_t>> Machine::SaveState() {
  ASSIGN_OR_RETURN(SavedState s, SaveStateTimed());
  return std::move(s.blob);
}

absl::StatusOr<SavedState> Machine::SaveStateTimed() {
  const Clock::time_point start = Clock::now();
  SavedState out;
  StateTiming& t = out.timing;
  Laps laps(t);
  StateWriter w;
  for (auto& vp : vcpus_) {
    const Clock::time_point vcpu_start = Clock::now();
    VcpuFd& v = *vp;
    const uint32_t id = static_cast<uint32_t>(v.id());
    // KVM_GET_CPUID2 is not in every kernel's uapi; the VMM set the table, so it knows it.
    const std::vector<kvm_cpuid_entry2>& cpuid = cpuid_[id];
    w.Add(StateTag::kCpuid, id, cpuid.data(), cpuid.size() * sizeof(kvm_cpuid_entry2));
    laps.Lap(StateCall::kCpuid);
    ASSIGN_OR_RETURN(kvm_mp_state mp, v.GetMpState());
    w.AddPod(StateTag::kMpState, id, mp);
    laps.Lap(StateCall::kMpState);
    ASSIGN_OR_RETURN(kvm_regs regs, v.GetRegs());
    w.AddPod(StateTag::kRegs, id, regs);
    laps.Lap(StateCall::kRegs);
    ASSIGN_OR_RETURN(kvm_sregs sregs, v.GetSregs());
    w.AddPod(StateTag::kSregs, id, sregs);
    laps.Lap(StateCall::kSregs);
    ASSIGN_OR_RETURN(std::vector<uint8_t> xsave, v.GetXsave(xsave_size_));
    w.Add(StateTag::kXsave, id, xsave.data(), xsave.size());
    laps.Lap(StateCall::kXsave);
    ASSIGN_OR_RETURN(kvm_xcrs xcrs, v.GetXcrs());
    w.AddPod(StateTag::kXcrs, id, xcrs);
    laps.Lap(StateCall::kXcrs);
    ASSIGN_OR_RETURN(kvm_lapic_state lapic, v.GetLapic());
    w.AddPod(StateTag::kLapic, id, lapic);
    laps.Lap(StateCall::kLapic);
    ASSIGN_OR_RETURN(std::vector<kvm_msr_entry> msrs, v.GetMsrs(msr_indices_));
    if (msrs.size() != msr_indices_.size()) {
      return absl::InternalError(absl::StrFormat("KVM_GET_MSRS vcpu=%d: read %d of %d MSRs",
                                                 id, msrs.size(), msr_indices_.size()));
    }
    w.Add(StateTag::kMsrs, id, msrs.data(), msrs.size() * sizeof(kvm_msr_entry));
    laps.Lap(StateCall::kMsrs);
    ASSIGN_OR_RETURN(kvm_vcpu_events ev, v.GetVcpuEvents());
    w.AddPod(StateTag::kVcpuEvents, id, ev);
    laps.Lap(StateCall::kEvents);
    ASSIGN_OR_RETURN(kvm_debugregs dr, v.GetDebugRegs());
    w.AddPod(StateTag::kDebugRegs, id, dr);
    laps.Lap(StateCall::kDebugRegs);
    t.vcpu_ms.push_back(MsBetween(vcpu_start, Clock::now()));
  }
  const Clock::time_point vm_start = Clock::now();
  for (uint32_t chip : {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC}) {
    ASSIGN_OR_RETURN(kvm_irqchip c, vm_.GetIrqchip(chip));
    w.AddPod(StateTag::kIrqchip, kVmWide, c);
  }
  laps.Lap(StateCall::kIrqchip);
  ASSIGN_OR_RETURN(kvm_pit_state2 pit, vm_.GetPit2());
  w.AddPod(StateTag::kPit2, kVmWide, pit);
  laps.Lap(StateCall::kPit);
  ASSIGN_OR_RETURN(kvm_clock_data clock, vm_.GetClock());
  w.AddPod(StateTag::kClock, kVmWide, clock);
  laps.Lap(StateCall::kClock);
  const std::vector<uint8_t> uart = uart_->Save().Serialize();
  w.Add(StateTag::kUart, kVmWide, uart.data(), uart.size());
  out.blob = w.Finish();
  laps.Lap(StateCall::kUart);
  const Clock::time_point end = Clock::now();
  t.vm_ms = MsBetween(vm_start, end);
  t.total_ms = MsBetween(start, end);
  return out;
}

StateLimits Machine::state_limits() const {
  StateLimits l;
  l.num_vcpus = static_cast<uint32_t>(vcpus_.size());
  l.xsave_size = xsave_size_;
  l.msr_indices = msr_indices_;
  return l;
}

absl::Status Machine::RestoreState(std::span<const uint8_t> blob) {
  return RestoreStateTimed(blob).status();
}

absl::StatusOr<StateTiming> Machine::RestoreStateTimed(std::span<const uint8_t> blob) {
  const Clock::time_point start = Clock::now();
  StateTiming t;
  Laps laps(t);
  // Nothing reaches KVM before the whole blob is known to be complete and well-formed.
  ASSIGN_OR_RETURN(ValidatedState st, ValidateState(blob, state_limits()));
  laps.Lap(StateCall::kValidate);
  for (size_t id = 0; id < vcpus_.size(); ++id) {
    const Clock::time_point vcpu_start = Clock::now();
    VcpuFd& v = *vcpus_[id];
    const VcpuState& s = st.vcpus[id];
    RETURN_IF_ERROR(v.SetCpuid(s.cpuid));
    laps.Lap(StateCall::kCpuid);
    RETURN_IF_ERROR(v.SetMpState(s.mp_state));
    laps.Lap(StateCall::kMpState);
    RETURN_IF_ERROR(v.SetRegs(s.regs));
    laps.Lap(StateCall::kRegs);
    RETURN_IF_ERROR(v.SetSregs(s.sregs));
    laps.Lap(StateCall::kSregs);
    RETURN_IF_ERROR(v.SetXsave(s.xsave, xsave_size_));
    laps.Lap(StateCall::kXsave);
    RETURN_IF_ERROR(v.SetXcrs(s.xcrs));
    laps.Lap(StateCall::kXcrs);
    RETURN_IF_ERROR(v.SetLapic(s.lapic));
    laps.Lap(StateCall::kLapic);
    RETURN_IF_ERROR(v.SetMsrs(s.msrs));
    laps.Lap(StateCall::kMsrs);
    RETURN_IF_ERROR(v.SetDebugRegs(s.debugregs));
    laps.Lap(StateCall::kDebugRegs);
    RETURN_IF_ERROR(v.SetVcpuEvents(s.events));
    laps.Lap(StateCall::kEvents);
    cpuid_[id] = s.cpuid;
    t.vcpu_ms.push_back(MsBetween(vcpu_start, Clock::now()));
  }
  const Clock::time_point vm_start = Clock::now();
  for (const kvm_irqchip& c : st.irqchips) {
    RETURN_IF_ERROR(vm_.SetIrqchip(c));
  }
  laps.Lap(StateCall::kIrqchip);
  RETURN_IF_ERROR(vm_.SetPit2(st.pit));
  laps.Lap(StateCall::kPit);
  RETURN_IF_ERROR(vm_.SetClock(st.clock));
  laps.Lap(StateCall::kClock);
  uart_->Restore(st.uart);
  laps.Lap(StateCall::kUart);
  const Clock::time_point end = Clock::now();
  t.vm_ms = MsBetween(vm_start, end);
  t.total_ms = MsBetween(start, end);
  return t;
}

// ---------------------------------------------------------------------------------------------
// Dirty tracking

absl::Status DirtyLog::SetLogging(bool on) {
  const GuestMemory& mem = m_->memory_;
  for (const MemorySlot& s : mem.slots()) {
    RETURN_IF_ERROR(m_->vm_.SetUserMemoryRegion(s.id, on ? KVM_MEM_LOG_DIRTY_PAGES : 0, s.gpa,
                                                s.size, mem.base() + s.ram_offset));
  }
  return absl::OkStatus();
}

absl::Status DirtyLog::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  pending_ = PageBitmap(m_->memory_.num_pages());
  // The ring's fetch index is KVM's position, kept across a stop and a restart (a retried
  // migration): starting again from 0 would read reset entries and harvest nothing.
  if (fetch_index_.size() != m_->vcpus_.size()) {
    fetch_index_.assign(m_->vcpus_.size(), 0);
  }
  RETURN_IF_ERROR(SetLogging(true));
  active_ = true;
  if (m_->config_.dirty_mode == DirtyMode::kBitmap) {
    // Initially-all-set: clear (write-protect) everything now, so Collect reports only writes
    // that happen from here on, as with the ring.
    for (const MemorySlot& s : m_->memory_.slots()) {
      std::vector<uint64_t> all((s.size / GuestMemory::kPageSize + 63) / 64, ~0ull);
      RETURN_IF_ERROR(m_->vm_.ClearDirtyLog(
          s.id, 0, static_cast<uint32_t>(s.size / GuestMemory::kPageSize), all.data()));
    }
  }
  return absl::OkStatus();
}

uint64_t DirtyLog::HarvestRing(int vcpu) {
  VcpuFd& v = *m_->vcpus_[vcpu];
  kvm_dirty_gfn* ring = v.dirty_ring();
  const uint32_t n = v.dirty_ring_entries();
  if (ring == nullptr || n == 0) {
    return 0;
  }
  const auto& slots = m_->memory_.slots();
  uint64_t count = 0;
  for (;;) {
    kvm_dirty_gfn& e = ring[fetch_index_[vcpu] & (n - 1)];
    if ((__atomic_load_n(&e.flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY) == 0) {
      break;
    }
    const uint32_t slot = e.slot & 0xffff;  // low 16 bits: slot id (address space 0)
    if (slot < slots.size()) {
      pending_.Set(slots[slot].ram_offset / GuestMemory::kPageSize + e.offset);
    }
    __atomic_store_n(&e.flags, KVM_DIRTY_GFN_F_RESET, __ATOMIC_RELEASE);
    ++fetch_index_[vcpu];
    ++count;
  }
  return count;
}

absl::Status DirtyLog::HarvestRingFull(int vcpu) {
  std::lock_guard<std::mutex> lock(mu_);
  HarvestRing(vcpu);
  return m_->vm_.ResetDirtyRings();
}

absl::Status DirtyLog::Collect(PageBitmap& out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!active_) {
    return absl::FailedPreconditionError("dirty logging is not started");
  }
  if (m_->config_.dirty_mode == DirtyMode::kRing) {
    for (int i = 0; i < m_->num_vcpus(); ++i) {
      HarvestRing(i);
    }
    RETURN_IF_ERROR(m_->vm_.ResetDirtyRings());
  } else {
    for (const MemorySlot& s : m_->memory_.slots()) {
      const uint64_t pages = s.size / GuestMemory::kPageSize;
      std::vector<uint64_t> bits((pages + 63) / 64, 0);
      RETURN_IF_ERROR(m_->vm_.GetDirtyLog(s.id, bits.data()));
      RETURN_IF_ERROR(
          m_->vm_.ClearDirtyLog(s.id, 0, static_cast<uint32_t>(pages), bits.data()));
      pending_.OrWords(s.ram_offset / GuestMemory::kPageSize, bits.data(), pages);
    }
  }
  auto& dst = out.words();
  auto& src = pending_.words();
  for (size_t i = 0; i < dst.size() && i < src.size(); ++i) {
    dst[i] |= src[i];
  }
  pending_.Clear();
  return absl::OkStatus();
}

absl::Status DirtyLog::Stop() {
  std::lock_guard<std::mutex> lock(mu_);
  if (!active_) {
    return absl::OkStatus();
  }
  active_ = false;
  return SetLogging(false);
}

}  // namespace lmig
