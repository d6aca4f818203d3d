#include "src/machine/vcpu_runner.h"

#include <pthread.h>
#include <signal.h>
#include <unistd.h>

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "src/base/thread_model.h"

namespace lmig {
namespace {

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

}  // namespace

VcpuRunner::VcpuRunner(const std::vector<std::unique_ptr<VcpuFd>>& vcpus, ExitHandler on_exit,
                       UniqueFd stop_event)
    : vcpus_(vcpus), on_exit_(std::move(on_exit)), stop_event_(std::move(stop_event)) {
  InstallKickHandler();
}

void VcpuRunner::SpawnThreads() {
  running_threads_ = static_cast<int>(vcpus_.size());
  parked_at_.assign(vcpus_.size(), Clock::time_point());
  for (size_t i = 0; i < vcpus_.size(); ++i) {
    threads_.emplace_back([this, i] { VcpuLoop(static_cast<int>(i)); });
  }
}

void VcpuRunner::KickAll() {
  for (size_t i = 0; i < threads_.size(); ++i) {
    vcpus_[i]->run()->immediate_exit = 1;
    if (threads_[i].joinable() && threads_[i].get_id() != std::this_thread::get_id()) {
      pthread_kill(threads_[i].native_handle(), kKickSignal);
    }
  }
}

absl::Status VcpuRunner::Start() {
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
  SpawnThreads();
  return absl::OkStatus();
}

void VcpuRunner::HoldStart() {
  std::lock_guard<std::mutex> lock(mu_);
  hold_start_ = started_paused_;
}

void VcpuRunner::ReleaseStart() {
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

absl::Status VcpuRunner::StartPaused() {
  std::unique_lock<std::mutex> lock(mu_);
  if (!threads_.empty()) {
    return absl::FailedPreconditionError("the vCPU threads are already started");
  }
  ++pause_depth_;
  started_paused_ = true;
  SpawnThreads();
  // Each thread parks after a KVM_RUN with immediate_exit set, which returns at once without
  // entering the guest (api.rst, KVM_RUN): the vCPU has not run, so its CPUID may still be set.
  cv_.wait(lock, [&] { return parked_ >= running_threads_; });
  return absl::OkStatus();
}

void VcpuRunner::VcpuLoop(int index) {
  VcpuFd& vcpu = *vcpus_[index];
  NameThisThread("vcpu" + std::to_string(index));
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
    if (!on_exit_(vcpu)) {
      break;
    }
  }
  std::lock_guard<std::mutex> lock(mu_);
  --running_threads_;
  cv_.notify_all();
}

void VcpuRunner::RequestStop(ExitInfo reason) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (exit_.kind == ExitInfo::kRunning) {
      exit_ = std::move(reason);
    }
    stop_ = true;
    cv_.notify_all();
  }
  KickAll();
  const uint64_t one = 1;
  (void)!::write(stop_event_.get(), &one, sizeof(one));
}

ExitInfo VcpuRunner::exit_info() const {
  std::lock_guard<std::mutex> lock(mu_);
  return exit_;
}

void VcpuRunner::Join() {
  for (std::thread& t : threads_) {
    if (t.joinable()) {
      t.join();
    }
  }
  threads_.clear();
}

void VcpuRunner::Shutdown() {
  SetThrottle(0);
  if (!threads_.empty()) {
    RequestStop({ExitInfo::kStopped, "machine destroyed"});
    Join();
  }
}

void VcpuRunner::SetThrottle(int pct) {
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

void VcpuRunner::ThrottleLoop() {
  NameThisThread("throttle");
  while (throttle_pct_.load() > 0 && !stop_.load()) {
    {
      std::lock_guard<std::mutex> lock(mu_);
      KickAll();
    }
    const int pct = throttle_pct_.load();
    std::unique_lock<std::mutex> lock(mu_);
    cv_.wait_for(lock, std::chrono::microseconds(10000 + 10000 * pct / (100 - pct)),
                 [&] { return throttle_pct_.load() == 0 || stop_.load(); });
  }
}

void VcpuRunner::Pause() {
  const Clock::time_point start = Clock::now();
  std::unique_lock<std::mutex> lock(mu_);
  const bool first = pause_depth_++ == 0;
  KickAll();
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

PauseTiming VcpuRunner::last_pause() const {
  std::lock_guard<std::mutex> lock(mu_);
  return last_pause_;
}

void VcpuRunner::Resume() {
  std::lock_guard<std::mutex> lock(mu_);
  if (pause_depth_ > 0 && --pause_depth_ == 0) {
    cv_.notify_all();
  }
}

}  // namespace lmig
