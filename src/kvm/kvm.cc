#include "src/kvm/kvm.h"

#include <fcntl.h>
#include <sys/ioctl.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig {
namespace {

template <typename... Args>
absl::Status Ioctl(int fd, unsigned long req, const char* name, void* arg,
                   const absl::FormatSpec<Args...>& fmt = "", Args... args) {
  if (::ioctl(fd, req, arg) < 0) {
    const int err = errno;
    std::string detail = absl::StrFormat(fmt, args...);
    return ErrnoStatus(detail.empty() ? std::string(name) : absl::StrCat(name, " ", detail), err);
  }
  return absl::OkStatus();
}

// linux-libc-dev 6.1 declares the flexible arrays of kvm_cpuid2, kvm_msrs, kvm_msr_list and
// kvm_xsave with __DECLARE_FLEX_ARRAY, whose empty struct has size 1 in C++: the C++ sizes and
// array offsets (and so the ioctl numbers, which encode the size) differ from the kernel's C
// ABI. These are the C layouts: an 8-byte header (4 for kvm_msr_list), then the entries.
struct CHeader8 {
  uint32_t n;
  uint32_t pad;
};
constexpr size_t kXsaveSize = 4096;
struct CXsave {
  uint32_t region[kXsaveSize / 4];
};
constexpr unsigned long kGetSupportedCpuid = _IOWR(KVMIO, 0x05, CHeader8);
constexpr unsigned long kSetCpuid2 = _IOW(KVMIO, 0x90, CHeader8);
constexpr unsigned long kGetCpuid2 = _IOWR(KVMIO, 0x91, CHeader8);
constexpr unsigned long kGetMsrIndexList = _IOWR(KVMIO, 0x02, uint32_t);
constexpr unsigned long kGetMsrs = _IOWR(KVMIO, 0x88, CHeader8);
constexpr unsigned long kSetMsrs = _IOW(KVMIO, 0x89, CHeader8);
constexpr unsigned long kGetXsave = _IOR(KVMIO, 0xa4, CXsave);
constexpr unsigned long kSetXsave = _IOW(KVMIO, 0xa5, CXsave);
constexpr unsigned long kGetXsave2 = _IOR(KVMIO, 0xcf, CXsave);

// A C-layout header of HEADER bytes followed by N entries of type Entry, 8-byte aligned.
template <typename Entry>
class FlexBuf {
 public:
  FlexBuf(size_t header, size_t n)
      : header_(header), words_((header + n * sizeof(Entry) + 7) / 8, 0) {}
  void* data() { return words_.data(); }
  uint32_t& count() { return *reinterpret_cast<uint32_t*>(words_.data()); }
  Entry* entries() {
    return reinterpret_cast<Entry*>(reinterpret_cast<uint8_t*>(words_.data()) + header_);
  }

 private:
  size_t header_;
  std::vector<uint64_t> words_;
};

}  // namespace

absl::StatusOr<Kvm> Kvm::Open(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDWR | O_CLOEXEC));
  if (!fd.valid()) {
    const int err = errno;
    return ErrnoStatus(absl::StrCat("cannot open ", path,
                                    err == ENOENT ? " (is KVM enabled in the kernel?)" : ""),
                       err);
  }
  const int version = ::ioctl(fd.get(), KVM_GET_API_VERSION, 0);
  if (version < 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s is not a KVM device: %s", path, std::strerror(errno)));
  }
  if (version != KVM_API_VERSION) {
    return absl::FailedPreconditionError(
        absl::StrFormat("%s: KVM API version %d, need %d", path, version, KVM_API_VERSION));
  }
  return Kvm(std::move(fd));
}

int Kvm::CheckExtension(long cap) const {
  const int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

absl::StatusOr<size_t> Kvm::VcpuMmapSize() const {
  const int r = ::ioctl(fd_.get(), KVM_GET_VCPU_MMAP_SIZE, 0);
  if (r < 0) {
    return ErrnoStatus("KVM_GET_VCPU_MMAP_SIZE");
  }
  return static_cast<size_t>(r);
}

absl::StatusOr<std::vector<kvm_cpuid_entry2>> Kvm::SupportedCpuid() const {
  for (size_t n = 128; n <= 4096; n *= 2) {
    FlexBuf<kvm_cpuid_entry2> buf(8, n);
    buf.count() = static_cast<uint32_t>(n);
    if (::ioctl(fd_.get(), kGetSupportedCpuid, buf.data()) == 0) {
      return std::vector<kvm_cpuid_entry2>(buf.entries(), buf.entries() + buf.count());
    }
    if (errno != E2BIG) {
      return ErrnoStatus(absl::StrCat("KVM_GET_SUPPORTED_CPUID nent=", n));
    }
  }
  return absl::InternalError("KVM_GET_SUPPORTED_CPUID: more than 4096 entries");
}

absl::StatusOr<std::vector<uint32_t>> Kvm::MsrIndexList() const {
  uint32_t probe = 0;
  ::ioctl(fd_.get(), kGetMsrIndexList, &probe);  // E2BIG, sets the count
  FlexBuf<uint32_t> buf(4, probe);
  buf.count() = probe;
  RETURN_IF_ERROR(Ioctl(fd_.get(), kGetMsrIndexList, "KVM_GET_MSR_INDEX_LIST", buf.data(),
                        "nmsrs=%d", probe));
  return std::vector<uint32_t>(buf.entries(), buf.entries() + buf.count());
}

absl::StatusOr<VmFd> Kvm::CreateVm() const {
  // KVM_CREATE_VM returns EINTR when a signal is pending while it sets up the VM (seen in the
  // lab, with the test's earlier threads' signals): retry, as for any interrupted call.
  int fd;
  do {
    fd = ::ioctl(fd_.get(), KVM_CREATE_VM, 0);
  } while (fd < 0 && errno == EINTR);
  if (fd < 0) {
    return ErrnoStatus("KVM_CREATE_VM");
  }
  return VmFd(UniqueFd(fd));
}

int VmFd::CheckExtension(long cap) const {
  const int r = ::ioctl(fd_.get(), KVM_CHECK_EXTENSION, cap);
  return r < 0 ? 0 : r;
}

absl::Status VmFd::EnableCap(uint32_t cap, uint64_t arg0, uint64_t arg1) {
  kvm_enable_cap c{};
  c.cap = cap;
  c.args[0] = arg0;
  c.args[1] = arg1;
  return Ioctl(fd_.get(), KVM_ENABLE_CAP, "KVM_ENABLE_CAP", &c, "cap=%d arg0=0x%x", cap, arg0);
}

absl::Status VmFd::SetUserMemoryRegion(uint32_t slot, uint32_t flags, uint64_t gpa,
                                       uint64_t size, void* host) {
  kvm_userspace_memory_region r{};
  r.slot = slot;
  r.flags = flags;
  r.guest_phys_addr = gpa;
  r.memory_size = size;
  r.userspace_addr = reinterpret_cast<uint64_t>(host);
  return Ioctl(fd_.get(), KVM_SET_USER_MEMORY_REGION, "KVM_SET_USER_MEMORY_REGION", &r,
               "slot=%d gpa=0x%x size=%dMiB flags=0x%x", slot, gpa, size >> 20, flags);
}

absl::Status VmFd::SetTssAddr(uint64_t addr) {
  if (::ioctl(fd_.get(), KVM_SET_TSS_ADDR, addr) < 0) {
    return ErrnoStatus(absl::StrFormat("KVM_SET_TSS_ADDR 0x%x", addr));
  }
  return absl::OkStatus();
}

absl::Status VmFd::CreateIrqchip() {
  return Ioctl(fd_.get(), KVM_CREATE_IRQCHIP, "KVM_CREATE_IRQCHIP", nullptr);
}

absl::Status VmFd::CreatePit2() {
  kvm_pit_config c{};
  c.flags = KVM_PIT_SPEAKER_DUMMY;
  return Ioctl(fd_.get(), KVM_CREATE_PIT2, "KVM_CREATE_PIT2", &c);
}

absl::Status VmFd::IrqLine(uint32_t irq, bool level) {
  kvm_irq_level l{};
  l.irq = irq;
  l.level = level ? 1 : 0;
  return Ioctl(fd_.get(), KVM_IRQ_LINE, "KVM_IRQ_LINE", &l, "irq=%d level=%d", irq, l.level);
}

absl::StatusOr<VcpuFd> VmFd::CreateVcpu(int id, size_t mmap_size, size_t ring_bytes) {
  const int fd = ::ioctl(fd_.get(), KVM_CREATE_VCPU, id);
  if (fd < 0) {
    return ErrnoStatus(absl::StrCat("KVM_CREATE_VCPU id=", id));
  }
  UniqueFd vfd(fd);
  ASSIGN_OR_RETURN(Mapping run,
                   Mapping::Create(mmap_size, PROT_READ | PROT_WRITE, MAP_SHARED, vfd.get()));
  Mapping ring;
  if (ring_bytes > 0) {
    ASSIGN_OR_RETURN(ring, Mapping::Create(ring_bytes, PROT_READ | PROT_WRITE, MAP_SHARED,
                                           vfd.get(),
                                           KVM_DIRTY_LOG_PAGE_OFFSET * ::getpagesize()));
  }
  return VcpuFd(id, std::move(vfd), std::move(run), std::move(ring));
}

absl::Status VmFd::GetDirtyLog(uint32_t slot, uint64_t* bitmap) {
  kvm_dirty_log d{};
  d.slot = slot;
  d.dirty_bitmap = bitmap;
  return Ioctl(fd_.get(), KVM_GET_DIRTY_LOG, "KVM_GET_DIRTY_LOG", &d, "slot=%d", slot);
}

absl::Status VmFd::ClearDirtyLog(uint32_t slot, uint64_t first_page, uint32_t num_pages,
                                 uint64_t* bitmap) {
  kvm_clear_dirty_log d{};
  d.slot = slot;
  d.first_page = first_page;
  d.num_pages = num_pages;
  d.dirty_bitmap = bitmap;
  return Ioctl(fd_.get(), KVM_CLEAR_DIRTY_LOG, "KVM_CLEAR_DIRTY_LOG", &d,
               "slot=%d first=%d num=%d", slot, first_page, num_pages);
}

absl::Status VmFd::ResetDirtyRings() {
  if (::ioctl(fd_.get(), KVM_RESET_DIRTY_RINGS, 0) < 0) {
    return ErrnoStatus("KVM_RESET_DIRTY_RINGS");
  }
  return absl::OkStatus();
}

absl::StatusOr<kvm_irqchip> VmFd::GetIrqchip(uint32_t chip_id) {
  kvm_irqchip c{};
  c.chip_id = chip_id;
  RETURN_IF_ERROR(
      Ioctl(fd_.get(), KVM_GET_IRQCHIP, "KVM_GET_IRQCHIP", &c, "chip=%d", chip_id));
  return c;
}

absl::Status VmFd::SetIrqchip(const kvm_irqchip& chip) {
  kvm_irqchip c = chip;
  return Ioctl(fd_.get(), KVM_SET_IRQCHIP, "KVM_SET_IRQCHIP", &c, "chip=%d", chip.chip_id);
}

absl::StatusOr<kvm_pit_state2> VmFd::GetPit2() {
  kvm_pit_state2 p{};
  RETURN_IF_ERROR(Ioctl(fd_.get(), KVM_GET_PIT2, "KVM_GET_PIT2", &p));
  return p;
}

absl::Status VmFd::SetPit2(const kvm_pit_state2& pit) {
  kvm_pit_state2 p = pit;
  return Ioctl(fd_.get(), KVM_SET_PIT2, "KVM_SET_PIT2", &p);
}

absl::StatusOr<kvm_clock_data> VmFd::GetClock() {
  kvm_clock_data c{};
  RETURN_IF_ERROR(Ioctl(fd_.get(), KVM_GET_CLOCK, "KVM_GET_CLOCK", &c));
  return c;
}

absl::Status VmFd::SetClock(const kvm_clock_data& clock) {
  kvm_clock_data c{};
  c.clock = clock.clock;  // only the guest clock value; flags/realtime are host-local
  return Ioctl(fd_.get(), KVM_SET_CLOCK, "KVM_SET_CLOCK", &c);
}

int VcpuFd::Run() { return ::ioctl(fd_.get(), KVM_RUN, 0) < 0 ? errno : 0; }

#define LMIG_VCPU_GET(Type, Name, Req)                                            \
  absl::StatusOr<Type> VcpuFd::Get##Name() {                                      \
    Type v{};                                                                     \
    RETURN_IF_ERROR(Ioctl(fd_.get(), Req, #Req, &v, "vcpu=%d", id_));             \
    return v;                                                                     \
  }
#define LMIG_VCPU_SET(Type, Name, Req)                                            \
  absl::Status VcpuFd::Set##Name(const Type& in) {                                \
    Type v = in;                                                                  \
    return Ioctl(fd_.get(), Req, #Req, &v, "vcpu=%d", id_);                       \
  }
LMIG_VCPU_GET(kvm_regs, Regs, KVM_GET_REGS)
LMIG_VCPU_SET(kvm_regs, Regs, KVM_SET_REGS)
LMIG_VCPU_GET(kvm_sregs, Sregs, KVM_GET_SREGS)
LMIG_VCPU_SET(kvm_sregs, Sregs, KVM_SET_SREGS)
LMIG_VCPU_GET(kvm_lapic_state, Lapic, KVM_GET_LAPIC)
LMIG_VCPU_SET(kvm_lapic_state, Lapic, KVM_SET_LAPIC)
LMIG_VCPU_GET(kvm_xcrs, Xcrs, KVM_GET_XCRS)
LMIG_VCPU_SET(kvm_xcrs, Xcrs, KVM_SET_XCRS)
LMIG_VCPU_GET(kvm_vcpu_events, VcpuEvents, KVM_GET_VCPU_EVENTS)
LMIG_VCPU_SET(kvm_vcpu_events, VcpuEvents, KVM_SET_VCPU_EVENTS)
LMIG_VCPU_GET(kvm_mp_state, MpState, KVM_GET_MP_STATE)
LMIG_VCPU_SET(kvm_mp_state, MpState, KVM_SET_MP_STATE)
LMIG_VCPU_GET(kvm_debugregs, DebugRegs, KVM_GET_DEBUGREGS)
LMIG_VCPU_SET(kvm_debugregs, DebugRegs, KVM_SET_DEBUGREGS)
#undef LMIG_VCPU_GET
#undef LMIG_VCPU_SET

absl::StatusOr<uint64_t> VcpuFd::Translate(uint64_t linear) {
  kvm_translation t{};
  t.linear_address = linear;
  RETURN_IF_ERROR(Ioctl(fd_.get(), KVM_TRANSLATE, "KVM_TRANSLATE", &t, "vcpu=%d", id_));
  if (!t.valid) {
    return absl::NotFoundError(absl::StrFormat("vcpu=%d: 0x%x is not mapped", id_, linear));
  }
  return t.physical_address;
}

absl::Status VcpuFd::SetCpuid(const std::vector<kvm_cpuid_entry2>& entries) {
  FlexBuf<kvm_cpuid_entry2> buf(8, entries.size());
  buf.count() = static_cast<uint32_t>(entries.size());
  std::memcpy(buf.entries(), entries.data(), entries.size() * sizeof(kvm_cpuid_entry2));
  return Ioctl(fd_.get(), kSetCpuid2, "KVM_SET_CPUID2", buf.data(), "vcpu=%d nent=%d", id_,
               entries.size());
}

absl::StatusOr<std::vector<kvm_cpuid_entry2>> VcpuFd::GetCpuid() {
  constexpr size_t kMax = 4096;
  FlexBuf<kvm_cpuid_entry2> buf(8, kMax);
  buf.count() = kMax;
  RETURN_IF_ERROR(Ioctl(fd_.get(), kGetCpuid2, "KVM_GET_CPUID2", buf.data(), "vcpu=%d", id_));
  return std::vector<kvm_cpuid_entry2>(buf.entries(), buf.entries() + buf.count());
}

absl::Status VcpuFd::SetMsrs(const std::vector<kvm_msr_entry>& msrs) {
  // MAX_IO_MSRS (arch/x86/kvm/x86.c): KVM refuses nmsrs >= 256 with E2BIG.
  constexpr size_t kMaxIoMsrs = 256;
  if (msrs.size() >= kMaxIoMsrs) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVM_SET_MSRS vcpu=%d: %d MSRs, KVM takes fewer than %d", id_, msrs.size(), kMaxIoMsrs));
  }
  FlexBuf<kvm_msr_entry> buf(8, msrs.size());
  buf.count() = static_cast<uint32_t>(msrs.size());
  std::memcpy(buf.entries(), msrs.data(), msrs.size() * sizeof(kvm_msr_entry));
  const int r = ::ioctl(fd_.get(), kSetMsrs, buf.data());
  if (r < 0) {
    return ErrnoStatus(absl::StrFormat("KVM_SET_MSRS vcpu=%d n=%d", id_, msrs.size()));
  }
  if (static_cast<size_t>(r) > msrs.size()) {
    return absl::InternalError(absl::StrFormat("KVM_SET_MSRS vcpu=%d: set %d of %d MSRs", id_,
                                               r, msrs.size()));
  }
  if (static_cast<size_t>(r) != msrs.size()) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVM_SET_MSRS vcpu=%d: KVM refused MSR 0x%x (set %d of %d)", id_, msrs[r].index, r,
        msrs.size()));
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<kvm_msr_entry>> VcpuFd::GetMsrs(const std::vector<uint32_t>& idx) {
  FlexBuf<kvm_msr_entry> buf(8, idx.size());
  buf.count() = static_cast<uint32_t>(idx.size());
  for (size_t i = 0; i < idx.size(); ++i) {
    buf.entries()[i].index = idx[i];
  }
  const int r = ::ioctl(fd_.get(), kGetMsrs, buf.data());
  if (r < 0) {
    return ErrnoStatus(absl::StrFormat("KVM_GET_MSRS vcpu=%d n=%d", id_, idx.size()));
  }
  return std::vector<kvm_msr_entry>(buf.entries(), buf.entries() + r);
}

absl::StatusOr<std::vector<uint8_t>> VcpuFd::GetXsave(size_t size) {
  std::vector<uint8_t> x(std::max<size_t>(size, kXsaveSize), 0);
  const unsigned long req = size > kXsaveSize ? kGetXsave2 : kGetXsave;
  RETURN_IF_ERROR(Ioctl(fd_.get(), req, "KVM_GET_XSAVE", x.data(), "vcpu=%d size=%d", id_,
                        x.size()));
  return x;
}

absl::Status VcpuFd::SetXsave(std::span<const uint8_t> xsave, size_t kvm_size) {
  // KVM_SET_XSAVE copies the vCPU's uABI XSAVE size from the buffer whatever its length
  // (api.rst, KVM_GET_XSAVE2): a shorter buffer is an out-of-bounds read.
  if (kvm_size < kXsaveSize || xsave.size() != kvm_size) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "KVM_SET_XSAVE vcpu=%d: buffer of %d bytes, KVM reads %d", id_, xsave.size(),
        std::max(kvm_size, kXsaveSize)));
  }
  std::vector<uint8_t> x(xsave.begin(), xsave.end());
  return Ioctl(fd_.get(), kSetXsave, "KVM_SET_XSAVE", x.data(), "vcpu=%d size=%d", id_,
               x.size());
}

}  // namespace lmig
