// A one-way switch that ends every wait of a migration at once, from any thread: the main
// thread flips it on SIGINT/SIGTERM, and each transport's reactor, poll() and busy loop that
// watches it fails with its status from then on (src/base/thread_model.h).
#pragma once

#include <atomic>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "src/base/unique_fd.h"

namespace lmig {

class Cancellation {
 public:
  static absl::StatusOr<std::shared_ptr<Cancellation>> Create();

  // Any thread, once (later calls change nothing): every watcher fails with
  // CancelledError(WHY) from now on.
  void Cancel(std::string why);
  bool cancelled() const { return cancelled_.load(std::memory_order_acquire); }
  // CancelledError(why) once cancelled, else OK.
  absl::Status status() const;
  // Readable (an eventfd, never reset) once cancelled: for poll() and io_uring polls.
  int fd() const { return event_.get(); }

 private:
  explicit Cancellation(UniqueFd fd) : event_(std::move(fd)) {}
  UniqueFd event_;
  std::atomic<bool> cancelled_{false};
  mutable std::mutex mu_;
  std::string why_;
};

// poll(2) on FD for EVENTS for up to TIMEOUT_MS (-1: no limit), woken by CANCEL (may be null)
// too: true once FD is ready; false when the time ran out or a signal interrupted the wait
// (callers re-check their deadline and loop); CANCEL's status once cancelled; errno of a
// failing poll, naming WHAT.
absl::StatusOr<bool> PollOrCancel(int fd, short events, int timeout_ms,
                                  const Cancellation* cancel, const std::string& what);

}  // namespace lmig
