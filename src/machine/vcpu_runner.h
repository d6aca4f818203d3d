// The vCPU threads: one per vCPU, each looping on KVM_RUN and handing every exit to the
// machine; parking them (pause, nested), throttling them, stopping them.
//
// Threads: the vCPU threads run VcpuLoop and call the exit handler (which may call
// RequestStop). Start/StartPaused/HoldStart/ReleaseStart/Join come from the machine's owner;
// Pause/Resume from whoever needs the vCPUs parked (the migration's stop-and-copy and its
// dry-run saves, Describe); SetThrottle from the migration; RequestStop from any thread,
// vCPU threads and device callbacks included. A throttle thread exists while throttling.
#pragma once

#include <atomic>
#include <chrono>
#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/status.h"
#include "src/base/mono_clock.h"
#include "src/base/unique_fd.h"
#include "src/kvm/kvm.h"

namespace lmig {

// How long the last Pause took to park the vCPUs (monotonic clock): the whole call, and for
// each vCPU the time from its kick to its parking (0 for a vCPU that was already parked).
struct PauseTiming {
  double total_ms = 0;
  std::vector<double> vcpu_ms;
};

// Why the machine stopped.
struct ExitInfo {
  enum Kind { kRunning = 0, kReset, kShutdown, kError, kStopped } kind = kRunning;
  std::string message;
};

class VcpuRunner {
 public:
  // Handles one KVM exit on the vCPU's own thread; false stops that vCPU.
  using ExitHandler = std::function<bool(VcpuFd&)>;

  // Runs VCPUS (filled by the time Start is called; they outlive the runner). STOP_EVENT, an
  // eventfd, is signalled once the machine stops.
  VcpuRunner(const std::vector<std::unique_ptr<VcpuFd>>& vcpus, ExitHandler on_exit,
             UniqueFd stop_event);
  VcpuRunner(const VcpuRunner&) = delete;
  VcpuRunner& operator=(const VcpuRunner&) = delete;
  ~VcpuRunner() { Shutdown(); }

  // Starts the vCPU threads (after StartPaused: lets the parked threads run, or, while
  // HoldStart is in force, records that they may run once ReleaseStart is called).
  absl::Status Start();
  // After StartPaused: a Start from now on only arms the vCPUs; ReleaseStart lets them run if
  // Start was called.
  void HoldStart();
  void ReleaseStart();
  // Creates the vCPU threads parked, as if paused, and returns once every one is parked.
  absl::Status StartPaused();
  // Parks every vCPU outside KVM_RUN; returns once all are parked. Pauses nest: the vCPUs
  // run again after as many Resume calls as Pause calls.
  void Pause();
  void Resume();
  PauseTiming last_pause() const;
  // The vCPUs run (100 - PCT)% of the time (0 lifts it): a throttle thread kicks them every
  // 10 ms and each sleeps its share before re-entering the guest.
  void SetThrottle(int pct);
  int throttle() const { return throttle_pct_.load(); }
  // Stops the machine for REASON (the first reason wins), kicks every vCPU, signals stop_fd.
  void RequestStop(ExitInfo reason);
  int stop_fd() const { return stop_event_.get(); }
  ExitInfo exit_info() const;
  // Joins the vCPU threads (after RequestStop).
  void Join();
  // Ends throttling, stops and joins the vCPU threads if there are any.
  void Shutdown();
  uint64_t exit_count() const { return exits_.load(); }

 private:
  using Clock = MonoClock;
  // Creates the threads (caller holds mu_).
  void SpawnThreads();
  // Makes every vCPU thread but the caller's leave KVM_RUN at once (immediate_exit + signal).
  void KickAll();
  void VcpuLoop(int index);
  void ThrottleLoop();

  const std::vector<std::unique_ptr<VcpuFd>>& vcpus_;
  ExitHandler on_exit_;
  std::vector<std::thread> threads_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  int pause_depth_ = 0;
  bool started_paused_ = false;  // StartPaused's pause, which Start lifts
  bool hold_start_ = false;      // HoldStart: Start only arms
  bool start_armed_ = false;     // Start was called while held
  int parked_ = 0;
  int running_threads_ = 0;
  std::vector<Clock::time_point> parked_at_;  // per vCPU: when it last parked
  PauseTiming last_pause_;
  std::atomic<bool> stop_{false};
  ExitInfo exit_;
  UniqueFd stop_event_;
  std::atomic<uint64_t> exits_{0};
  std::atomic<int> throttle_pct_{0};
  std::thread throttle_thread_;
};

}  // namespace lmig
