// Owning file descriptor and owning memory mapping: the two RAII types every kernel object
// in the VMM is built on.
#pragma once

#include <sys/mman.h>
#include <unistd.h>

#include <cstddef>
#include <cstdint>
#include <utility>

#include "absl/status/statusor.h"

namespace lmig {

// Move-only owner of a file descriptor; closes it on destruction.
class UniqueFd {
 public:
  UniqueFd() = default;
  explicit UniqueFd(int fd) : fd_(fd) {}
  UniqueFd(UniqueFd&& o) noexcept : fd_(std::exchange(o.fd_, -1)) {}
  UniqueFd& operator=(UniqueFd&& o) noexcept {
    if (this != &o) {
      Reset(std::exchange(o.fd_, -1));
    }
    return *this;
  }
  UniqueFd(const UniqueFd&) = delete;
  UniqueFd& operator=(const UniqueFd&) = delete;
  ~UniqueFd() { Reset(); }

  int get() const { return fd_; }
  bool valid() const { return fd_ >= 0; }
  int Release() { return std::exchange(fd_, -1); }
  void Reset(int fd = -1) {
    if (fd_ >= 0) {
      ::close(fd_);
    }
    fd_ = fd;
  }

 private:
  int fd_ = -1;
};

// Move-only owner of an mmap()ed region; munmaps it on destruction.
class Mapping {
 public:
  Mapping() = default;
  // Maps LEN bytes of FD at OFFSET (fd -1: anonymous). Errors name the length and fd.
  static absl::StatusOr<Mapping> Create(size_t len, int prot, int flags, int fd = -1,
                                        off_t offset = 0);
  // Anonymous memory starting at a multiple of ALIGN (a power of two), so that transparent
  // huge pages can back it and KVM can map it with large pages, as QEMU aligns guest RAM.
  static absl::StatusOr<Mapping> CreateAnonymousAligned(size_t len, size_t align, int prot,
                                                        int flags);
  Mapping(Mapping&& o) noexcept
      : addr_(std::exchange(o.addr_, nullptr)), len_(std::exchange(o.len_, 0)) {}
  Mapping& operator=(Mapping&& o) noexcept {
    if (this != &o) {
      Reset();
      addr_ = std::exchange(o.addr_, nullptr);
      len_ = std::exchange(o.len_, 0);
    }
    return *this;
  }
  Mapping(const Mapping&) = delete;
  Mapping& operator=(const Mapping&) = delete;
  ~Mapping() { Reset(); }

  uint8_t* data() const { return static_cast<uint8_t*>(addr_); }
  size_t size() const { return len_; }
  void Reset() {
    if (addr_ != nullptr) {
      ::munmap(addr_, len_);
      addr_ = nullptr;
      len_ = 0;
    }
  }

 private:
  Mapping(void* addr, size_t len) : addr_(addr), len_(len) {}
  void* addr_ = nullptr;
  size_t len_ = 0;
};

}  // namespace lmig
