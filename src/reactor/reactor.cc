#include "src/reactor/reactor.h"

#include <poll.h>

#include <cerrno>
#include <cstring>

#include "include/lmig/status.h"
#include "src/reactor/completion_token.h"

namespace lmig {

// What a kReactorOp token's value points to: the callback of one submitted operation.
struct Reactor::Completion {
  Reactor::Callback cb;
  __kernel_timespec ts{};
};

absl::StatusOr<std::unique_ptr<Reactor>> Reactor::Create(unsigned entries) {
  std::unique_ptr<Reactor> r(new Reactor());
  const int err = io_uring_queue_init(entries, &r->ring_, 0);
  if (err < 0) {
    return ErrnoStatus(absl::StrCat("io_uring_queue_init entries=", entries), -err);
  }
  r->initialized_ = true;
  r->probe_ = io_uring_get_probe_ring(&r->ring_);
  return r;
}

Reactor::~Reactor() {
  if (probe_ != nullptr) {
    io_uring_free_probe(probe_);
  }
  if (initialized_) {
    io_uring_queue_exit(&ring_);
  }
  // The ring is gone, so no CQE will ever name these (a pending console read, say).
  for (Completion* c : live_) {
    delete c;
  }
}

Reactor::Completion* Reactor::NewCompletion(Callback cb) {
  auto* c = new Completion{std::move(cb)};
  live_.insert(c);
  ++in_flight_;
  return c;
}

bool Reactor::Supports(int op) const {
  return probe_ != nullptr && io_uring_opcode_supported(probe_, op);
}

namespace {
// user_data: a kReactorOp token naming the operation's Completion.
void SetToken(io_uring_sqe* sqe, void* completion) {
  io_uring_sqe_set_data64(
      sqe,
      CompletionToken{CompletionKind::kReactorOp, reinterpret_cast<uint64_t>(completion)}.Pack());
}

io_uring_sqe* GetSqe(io_uring* ring) {
  io_uring_sqe* sqe = io_uring_get_sqe(ring);
  while (sqe == nullptr) {
    io_uring_submit(ring);
    sqe = io_uring_get_sqe(ring);
  }
  return sqe;
}
}  // namespace

io_uring_sqe* Reactor::Prepare(Callback cb) {
  io_uring_sqe* sqe = GetSqe(&ring_);
  SetToken(sqe, NewCompletion(std::move(cb)));
  return sqe;
}

void Reactor::Read(int fd, void* buf, size_t len, Callback cb) {
  io_uring_prep_read(Prepare(std::move(cb)), fd, buf, static_cast<unsigned>(len), -1);
}

void Reactor::Write(int fd, const void* buf, size_t len, Callback cb) {
  io_uring_prep_write(Prepare(std::move(cb)), fd, buf, static_cast<unsigned>(len), -1);
}

void Reactor::PollIn(int fd, Callback cb) {
  io_uring_prep_poll_add(Prepare(std::move(cb)), fd, POLLIN);
}

void Reactor::Timeout(absl::Duration d, Callback cb) {
  io_uring_sqe* sqe = GetSqe(&ring_);
  Completion* c = NewCompletion(std::move(cb));
  c->ts.tv_sec = absl::ToInt64Seconds(d);
  c->ts.tv_nsec = absl::ToInt64Nanoseconds(d - absl::Seconds(c->ts.tv_sec));
  io_uring_prep_timeout(sqe, &c->ts, 0, 0);
  SetToken(sqe, c);
}

absl::Status Reactor::Step(bool wait) {
  int err = io_uring_submit(&ring_);
  if (err < 0 && err != -EINTR && err != -EBUSY) {
    return ErrnoStatus("io_uring_submit", -err);
  }
  io_uring_cqe* cqe = nullptr;
  err = wait ? io_uring_wait_cqe(&ring_, &cqe) : io_uring_peek_cqe(&ring_, &cqe);
  if (err == -EINTR || err == -EAGAIN || err == -ETIME) {
    return absl::OkStatus();
  }
  if (err < 0) {
    return ErrnoStatus("io_uring_wait_cqe", -err);
  }
  // Drain everything that is ready.
  while (cqe != nullptr) {
    const CompletionToken token = CompletionToken::Unpack(io_uring_cqe_get_data64(cqe));
    auto* c = token.kind == CompletionKind::kReactorOp
                  ? reinterpret_cast<Completion*>(token.value)
                  : nullptr;
    const int res = cqe->res;
    const uint32_t flags = cqe->flags;
    io_uring_cqe_seen(&ring_, cqe);
    if (c != nullptr) {
      const bool more = (flags & IORING_CQE_F_MORE) != 0;
      if (!more) {
        --in_flight_;
      }
      Callback cb = more ? c->cb : std::move(c->cb);
      if (!more) {
        live_.erase(c);
        delete c;
      }
      cb(res, flags);
    }
    cqe = nullptr;
    if (io_uring_peek_cqe(&ring_, &cqe) != 0) {
      cqe = nullptr;
    }
  }
  return absl::OkStatus();
}

absl::Status Reactor::Run() {
  while (!stopped_) {
    RETURN_IF_ERROR(Step(true));
  }
  return absl::OkStatus();
}

absl::Status Reactor::RunUntil(const std::function<bool()>& pred, bool cancellable) {
  while (!pred()) {
    if (cancellable && cancel_ != nullptr && cancel_->cancelled()) {
      return cancel_->status();
    }
    RETURN_IF_ERROR(Step(true));
  }
  return absl::OkStatus();
}

void Reactor::WatchCancellation(std::shared_ptr<const Cancellation> cancel) {
  cancel_ = std::move(cancel);
  if (cancel_ == nullptr || cancel_poll_armed_) {
    return;
  }
  // The eventfd stays readable once cancelled, so one poll is enough: it completes then and
  // wakes the wait, and RunUntil sees the flag.
  cancel_poll_armed_ = true;
  PollIn(cancel_->fd(), [this](int, uint32_t) { cancel_poll_armed_ = false; });
}

}  // namespace lmig
