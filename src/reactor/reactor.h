// The io_uring reactor: one per thread that needs asynchronous I/O (the main thread drives the
// console, signals and the machine's stop event; a migration thread drives its transport).
// Each submitted operation's user_data is a CompletionToken (completion_token.h) naming a heap
// Completion; its callback runs on the reactor's thread with the CQE result (a negative errno
// on failure). No exceptions cross it.
#pragma once

#include <liburing.h>

#include <functional>
#include <memory>
#include <unordered_set>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "src/reactor/cancellation.h"

namespace lmig {

class Reactor {
 public:
  using Callback = std::function<void(int res, uint32_t cqe_flags)>;

  // Sets up a ring of ENTRIES and probes the opcodes it supports.
  static absl::StatusOr<std::unique_ptr<Reactor>> Create(unsigned entries = 256);
  ~Reactor();
  Reactor(const Reactor&) = delete;
  Reactor& operator=(const Reactor&) = delete;

  // Whether the running kernel's io_uring supports OP (e.g. IORING_OP_SEND_ZC).
  bool Supports(int op) const;

  void Read(int fd, void* buf, size_t len, Callback cb);
  void Write(int fd, const void* buf, size_t len, Callback cb);
  void PollIn(int fd, Callback cb);
  void Timeout(absl::Duration d, Callback cb);
  // Hands out an SQE whose completion runs CB (for transports building their own ops); the
  // caller fills the opcode. With MULTISHOT the callback survives CQEs flagged IORING_CQE_F_MORE.
  io_uring_sqe* Prepare(Callback cb);

  // Submits queued SQEs and processes completions until Stop() (from a callback). Error only
  // if io_uring itself fails.
  absl::Status Run();
  // Processes completions until PRED() is true (used by synchronous transport calls).
  // Fails with the cancellation's status once a watched Cancellation is cancelled, unless
  // CANCELLABLE is false (a bounded drain of operations still in flight, which must finish).
  absl::Status RunUntil(const std::function<bool()>& pred, bool cancellable = true);
  // From now on RunUntil fails as soon as CANCEL is cancelled (from any thread), even while it
  // waits: the reactor keeps a poll on its eventfd, which in_flight() does not count. Null:
  // nothing to watch.
  void WatchCancellation(std::shared_ptr<const Cancellation> cancel);
  void Stop() { stopped_ = true; }
  bool stopped() const { return stopped_; }
  size_t in_flight() const { return in_flight_ - (cancel_poll_armed_ ? 1 : 0); }

 private:
  struct Completion;
  Reactor() = default;
  absl::Status Step(bool wait);
  Completion* NewCompletion(Callback cb);
  io_uring ring_{};
  bool initialized_ = false;
  bool stopped_ = false;
  size_t in_flight_ = 0;
  io_uring_probe* probe_ = nullptr;
  // Every Completion not yet reaped: what the destructor frees of operations still in flight.
  std::unordered_set<Completion*> live_;
  std::shared_ptr<const Cancellation> cancel_;
  bool cancel_poll_armed_ = false;
};

}  // namespace lmig
