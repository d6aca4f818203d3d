// Guest console output between the UART, which fills it on vCPU threads, and the reactor,
// which an eventfd wakes to drain it.
#pragma once

#include <cstdint>
#include <memory>
#include <mutex>
#include <string>

#include "absl/status/statusor.h"
#include "src/base/unique_fd.h"

namespace lmig {

class ConsoleBuffer {
 public:
  static absl::StatusOr<std::unique_ptr<ConsoleBuffer>> Create();
  // Any thread. Signals event_fd() when the buffer was empty.
  void Append(uint8_t byte);
  // Any thread: everything appended so far; the buffer is empty afterwards.
  std::string Take();
  int event_fd() const { return event_.get(); }

 private:
  explicit ConsoleBuffer(UniqueFd fd) : event_(std::move(fd)) {}
  std::mutex mu_;
  std::string buf_;
  UniqueFd event_;
};

}  // namespace lmig
