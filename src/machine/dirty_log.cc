#include "src/machine/dirty_log.h"

#include "include/lmig/status.h"

namespace lmig {

absl::Status DirtyLog::SetLogging(bool on) {
  for (const MemorySlot& s : mem_.slots()) {
    RETURN_IF_ERROR(vm_.SetUserMemoryRegion(s.id, on ? KVM_MEM_LOG_DIRTY_PAGES : 0, s.gpa,
                                            s.size, mem_.base() + s.ram_offset));
  }
  return absl::OkStatus();
}

absl::Status DirtyLog::Start() {
  std::lock_guard<std::mutex> lock(mu_);
  pending_ = PageBitmap(mem_.num_pages());
  // The ring's fetch index is KVM's position, kept across a stop and a restart (a retried
  // migration): starting again from 0 would read reset entries and harvest nothing.
  if (fetch_index_.size() != vcpus_.size()) {
    fetch_index_.assign(vcpus_.size(), 0);
  }
  RETURN_IF_ERROR(SetLogging(true));
  active_ = true;
  if (mode_ == DirtyMode::kBitmap) {
    // Initially-all-set: clear (write-protect) everything now, so Collect reports only writes
    // that happen from here on, as with the ring.
    for (const MemorySlot& s : mem_.slots()) {
      std::vector<uint64_t> all((s.size / kPageSize + 63) / 64, ~0ull);
      RETURN_IF_ERROR(vm_.ClearDirtyLog(
          s.id, 0, static_cast<uint32_t>(s.size / kPageSize), all.data()));
    }
  }
  return absl::OkStatus();
}

uint64_t DirtyLog::HarvestRing(int vcpu) {
  VcpuFd& v = *vcpus_[vcpu];
  kvm_dirty_gfn* ring = v.dirty_ring();
  const uint32_t n = v.dirty_ring_entries();
  if (ring == nullptr || n == 0) {
    return 0;
  }
  const auto& slots = mem_.slots();
  uint64_t count = 0;
  for (;;) {
    kvm_dirty_gfn& e = ring[fetch_index_[vcpu] & (n - 1)];
    if ((__atomic_load_n(&e.flags, __ATOMIC_ACQUIRE) & KVM_DIRTY_GFN_F_DIRTY) == 0) {
      break;
    }
    const uint32_t slot = e.slot & 0xffff;  // low 16 bits: slot id (address space 0)
    if (slot < slots.size()) {
      pending_.Set(slots[slot].ram_offset / kPageSize + e.offset);
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
  return vm_.ResetDirtyRings();
}

absl::Status DirtyLog::Collect(PageBitmap& out) {
  std::lock_guard<std::mutex> lock(mu_);
  if (!active_) {
    return absl::FailedPreconditionError("dirty logging is not started");
  }
  if (mode_ == DirtyMode::kRing) {
    for (size_t i = 0; i < vcpus_.size(); ++i) {
      HarvestRing(static_cast<int>(i));
    }
    RETURN_IF_ERROR(vm_.ResetDirtyRings());
  } else {
    for (const MemorySlot& s : mem_.slots()) {
      const uint64_t pages = s.size / kPageSize;
      std::vector<uint64_t> bits((pages + 63) / 64, 0);
      RETURN_IF_ERROR(vm_.GetDirtyLog(s.id, bits.data()));
      RETURN_IF_ERROR(vm_.ClearDirtyLog(s.id, 0, static_cast<uint32_t>(pages), bits.data()));
      pending_.OrWords(s.ram_offset / kPageSize, bits.data(), pages);
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
