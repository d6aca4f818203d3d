#include "src/reactor/cancellation.h"

#include <poll.h>
#include <sys/eventfd.h>
#include <unistd.h>

#include "absl/strings/str_cat.h"
#include "include/lmig/status.h"

namespace lmig {

absl::StatusOr<std::shared_ptr<Cancellation>> Cancellation::Create() {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    return ErrnoStatus("eventfd");
  }
  return std::shared_ptr<Cancellation>(new Cancellation(UniqueFd(fd)));
}

void Cancellation::Cancel(std::string why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (cancelled_.load(std::memory_order_relaxed)) {
      return;
    }
    why_ = std::move(why);
    cancelled_.store(true, std::memory_order_release);
  }
  const uint64_t one = 1;
  (void)!::write(event_.get(), &one, sizeof(one));
}

absl::StatusOr<bool> PollOrCancel(int fd, short events, int timeout_ms,
                                  const Cancellation* cancel, const std::string& what) {
  if (cancel != nullptr && cancel->cancelled()) {
    return cancel->status();
  }
  pollfd p[2] = {{fd, events, 0}, {cancel != nullptr ? cancel->fd() : -1, POLLIN, 0}};
  const int r = ::poll(p, cancel != nullptr ? 2 : 1, timeout_ms);
  if (r < 0) {
    if (errno == EINTR) {
      return false;
    }
    return ErrnoStatus(absl::StrCat("poll (", what, ")"));
  }
  if (cancel != nullptr && cancel->cancelled()) {
    return cancel->status();
  }
  return r > 0 && p[0].revents != 0;
}

absl::Status Cancellation::status() const {
  if (!cancelled()) {
    return absl::OkStatus();
  }
  std::lock_guard<std::mutex> lock(mu_);
  return absl::CancelledError(why_);
}

}  // namespace lmig
