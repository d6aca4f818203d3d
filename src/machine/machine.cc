// The machine itself: the VM, its vCPUs and devices created and wired, the boot vCPU pointed at
// the kernel, each KVM exit handled on its vCPU thread, and Describe for a guest that seems
// stuck. The vCPU threads, the dirty log and the state save/restore have files of their own.
#include "src/machine/machine.h"

#include <sys/eventfd.h>

#include <cstring>

#include "absl/cleanup/cleanup.h"
#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/arch/x86_64/cpu.h"
#include "src/arch/x86_64/layout.h"

namespace lmig {
namespace {

constexpr uint32_t kDirtyRingEntries = 65536;  // KVM_DIRTY_RING_MAX_ENTRIES

}  // namespace

// ---------------------------------------------------------------------------------------------
// Machine construction and boot

Machine::Machine(MachineConfig config, Kvm kvm, VmFd vm, GuestMemory mem, UniqueFd stop_event)
    : config_(std::move(config)),
      kvm_(std::move(kvm)),
      vm_(std::move(vm)),
      memory_(std::move(mem)),
      dirty_(config_.dirty_mode, vm_, memory_, vcpus_),
      runner_(vcpus_, [this](VcpuFd& v) { return HandleExit(v); }, std::move(stop_event)) {}

Machine::~Machine() { runner_.Shutdown(); }

absl::StatusOr<std::unique_ptr<Machine>> Machine::Create(const MachineConfig& config,
                                                         ConsoleBuffer* console) {
  if (config.num_cpus < 1 || static_cast<uint32_t>(config.num_cpus) > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("--cpus %d: must be 1..%d", config.num_cpus, kMaxVcpus));
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
  RETURN_IF_ERROR(vm_.SetTssAddr(x86::kTssAddress));
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
  ASSIGN_OR_RETURN(x86::BootEntry entry,
                   x86::LoadLinux(boot, memory_.low(), memory_.layout(), config_.num_cpus));
  VcpuFd& bsp = *vcpus_[0];
  ASSIGN_OR_RETURN(kvm_sregs sregs, bsp.GetSregs());
  RETURN_IF_ERROR(bsp.SetSregs(x86::BootSregs(sregs, entry.long_mode)));
  return bsp.SetRegs(x86::BootRegs(entry.rip));
}

// ---------------------------------------------------------------------------------------------
// KVM exits (on the vCPU's thread)

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

// ---------------------------------------------------------------------------------------------
// Diagnostics

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

}  // namespace lmig
