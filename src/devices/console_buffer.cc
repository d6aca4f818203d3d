#include "src/devices/console_buffer.h"

#include <sys/eventfd.h>
#include <unistd.h>

#include <utility>

#include "include/lmig/status.h"

namespace lmig {

absl::StatusOr<std::unique_ptr<ConsoleBuffer>> ConsoleBuffer::Create() {
  const int fd = ::eventfd(0, EFD_CLOEXEC | EFD_NONBLOCK);
  if (fd < 0) {
    return ErrnoStatus("eventfd");
  }
  return std::unique_ptr<ConsoleBuffer>(new ConsoleBuffer(UniqueFd(fd)));
}

void ConsoleBuffer::Append(uint8_t byte) {
  bool was_empty;
  {
    std::lock_guard<std::mutex> lock(mu_);
    was_empty = buf_.empty();
    buf_.push_back(static_cast<char>(byte));
  }
  if (was_empty) {
    const uint64_t one = 1;
    (void)!::write(event_.get(), &one, sizeof(one));
  }
}

std::string ConsoleBuffer::Take() {
  std::lock_guard<std::mutex> lock(mu_);
  return std::exchange(buf_, {});
}

}  // namespace lmig
