// KVM dirty page tracking over all of guest RAM: the dirty ring (default) or the dirty bitmap
// with manual protect (KVM_CAP_MANUAL_DIRTY_LOG_PROTECT2, initially all set).
//
// Threads: Start, Collect and Stop come from the migration (one thread at a time);
// HarvestRingFull from a vCPU thread whose ring filled. A mutex orders them.
#pragma once

#include <memory>
#include <mutex>
#include <vector>

#include "absl/status/status.h"
#include "include/lmig/protocol.h"
#include "src/kvm/kvm.h"
#include "src/machine/guest_memory.h"

namespace lmig {

using DirtyMode = proto::DirtyMode;

class DirtyLog {
 public:
  // Tracks MEM's slots in VM. VCPUS (their rings, in ring mode) is read at Start and later, so
  // it may be filled after construction; all three outlive the log.
  DirtyLog(DirtyMode mode, VmFd& vm, const GuestMemory& mem,
           const std::vector<std::unique_ptr<VcpuFd>>& vcpus)
      : mode_(mode), vm_(vm), mem_(mem), vcpus_(vcpus) {}
  DirtyLog(const DirtyLog&) = delete;
  DirtyLog& operator=(const DirtyLog&) = delete;

  DirtyMode mode() const { return mode_; }
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

  const DirtyMode mode_;
  VmFd& vm_;
  const GuestMemory& mem_;
  const std::vector<std::unique_ptr<VcpuFd>>& vcpus_;
  std::mutex mu_;
  PageBitmap pending_;
  std::vector<uint32_t> fetch_index_;
  bool active_ = false;
};

}  // namespace lmig
