// KVM objects, one move-only RAII class each: Kvm (/dev/kvm), VmFd (a VM) and VcpuFd (a vCPU
// with its mmap()ed kvm_run and, when enabled, its dirty ring). Every failed ioctl becomes an
// absl::Status that names the ioctl and its arguments (Documentation/virt/kvm/api.rst).
#pragma once

#include <linux/kvm.h>

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "src/base/unique_fd.h"

namespace lmig {

class VmFd;

// The KVM system fd.
class Kvm {
 public:
  // Opens PATH. Errors: missing device, no permission, API version != 12.
  static absl::StatusOr<Kvm> Open(const std::string& path = "/dev/kvm");

  int fd() const { return fd_.get(); }
  // KVM_CHECK_EXTENSION on the system fd (0 when unsupported).
  int CheckExtension(long cap) const;
  absl::StatusOr<size_t> VcpuMmapSize() const;
  absl::StatusOr<std::vector<kvm_cpuid_entry2>> SupportedCpuid() const;
  // KVM_GET_MSR_INDEX_LIST: the MSRs KVM saves and restores for a vCPU.
  absl::StatusOr<std::vector<uint32_t>> MsrIndexList() const;
  absl::StatusOr<VmFd> CreateVm() const;

 private:
  explicit Kvm(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

class VcpuFd;

// A VM.
class VmFd {
 public:
  int fd() const { return fd_.get(); }
  int CheckExtension(long cap) const;
  absl::Status EnableCap(uint32_t cap, uint64_t arg0 = 0, uint64_t arg1 = 0);
  absl::Status SetUserMemoryRegion(uint32_t slot, uint32_t flags, uint64_t gpa, uint64_t size,
                                   void* host);
  absl::Status SetTssAddr(uint64_t addr);
  absl::Status CreateIrqchip();
  absl::Status CreatePit2();
  // KVM_IRQ_LINE: drives GSI IRQ to LEVEL (callable from any thread).
  absl::Status IrqLine(uint32_t irq, bool level);
  // Creates vCPU ID; maps its kvm_run (and its dirty ring of RING_BYTES, if non-zero).
  absl::StatusOr<VcpuFd> CreateVcpu(int id, size_t mmap_size, size_t ring_bytes);

  absl::Status GetDirtyLog(uint32_t slot, uint64_t* bitmap);
  absl::Status ClearDirtyLog(uint32_t slot, uint64_t first_page, uint32_t num_pages,
                             uint64_t* bitmap);
  absl::Status ResetDirtyRings();

  absl::StatusOr<kvm_irqchip> GetIrqchip(uint32_t chip_id);
  absl::Status SetIrqchip(const kvm_irqchip& chip);
  absl::StatusOr<kvm_pit_state2> GetPit2();
  absl::Status SetPit2(const kvm_pit_state2& pit);
  absl::StatusOr<kvm_clock_data> GetClock();
  absl::Status SetClock(const kvm_clock_data& clock);

 private:
  friend class Kvm;
  explicit VmFd(UniqueFd fd) : fd_(std::move(fd)) {}
  UniqueFd fd_;
};

// A vCPU.
class VcpuFd {
 public:
  int fd() const { return fd_.get(); }
  int id() const { return id_; }
  kvm_run* run() const { return reinterpret_cast<kvm_run*>(run_map_.data()); }
  // The dirty ring (nullptr when the VM has none) and its number of entries.
  kvm_dirty_gfn* dirty_ring() const {
    return reinterpret_cast<kvm_dirty_gfn*>(ring_map_.data());
  }
  uint32_t dirty_ring_entries() const {
    return static_cast<uint32_t>(ring_map_.size() / sizeof(kvm_dirty_gfn));
  }

  // KVM_RUN. Returns the errno (0 on success) so the caller can tell EINTR from failures.
  int Run();

  absl::StatusOr<kvm_regs> GetRegs();
  absl::Status SetRegs(const kvm_regs& r);
  absl::StatusOr<kvm_sregs> GetSregs();
  absl::Status SetSregs(const kvm_sregs& s);
  absl::Status SetCpuid(const std::vector<kvm_cpuid_entry2>& entries);
  absl::StatusOr<std::vector<kvm_cpuid_entry2>> GetCpuid();
  // Sets MSRS. InvalidArgument, before any ioctl, for 256 or more (KVM's MAX_IO_MSRS); an
  // error if KVM set fewer than all of them (names the first it refused).
  absl::Status SetMsrs(const std::vector<kvm_msr_entry>& msrs);
  // Reads the MSRs INDICES; returns as many as KVM read (it stops at the first it cannot).
  absl::StatusOr<std::vector<kvm_msr_entry>> GetMsrs(const std::vector<uint32_t>& indices);
  absl::StatusOr<kvm_lapic_state> GetLapic();
  absl::Status SetLapic(const kvm_lapic_state& l);
  // XSAVE state of SIZE bytes (KVM_GET_XSAVE2 when SIZE > 4096).
  absl::StatusOr<std::vector<uint8_t>> GetXsave(size_t size);
  // KVM_SET_XSAVE, which reads KVM_SIZE bytes (the VM's KVM_CAP_XSAVE2 size, 4096 without it)
  // from the buffer. InvalidArgument, before any ioctl, unless XSAVE holds exactly KVM_SIZE
  // bytes and KVM_SIZE is at least 4096 (sizeof(struct kvm_xsave)).
  absl::Status SetXsave(std::span<const uint8_t> xsave, size_t kvm_size);
  absl::StatusOr<kvm_xcrs> GetXcrs();
  absl::Status SetXcrs(const kvm_xcrs& x);
  absl::StatusOr<kvm_vcpu_events> GetVcpuEvents();
  absl::Status SetVcpuEvents(const kvm_vcpu_events& e);
  absl::StatusOr<kvm_mp_state> GetMpState();
  absl::Status SetMpState(const kvm_mp_state& m);
  absl::StatusOr<kvm_debugregs> GetDebugRegs();
  absl::Status SetDebugRegs(const kvm_debugregs& d);
  // KVM_TRANSLATE: the guest-physical address of LINEAR under the vCPU's current paging;
  // NotFound if it is not mapped.
  absl::StatusOr<uint64_t> Translate(uint64_t linear);

 private:
  friend class VmFd;
  VcpuFd(int id, UniqueFd fd, Mapping run, Mapping ring)
      : id_(id), fd_(std::move(fd)), run_map_(std::move(run)), ring_map_(std::move(ring)) {}
  int id_;
  UniqueFd fd_;
  Mapping run_map_;
  Mapping ring_map_;
};

}  // namespace lmig
