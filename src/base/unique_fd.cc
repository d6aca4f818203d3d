#include "src/base/unique_fd.h"

#include "absl/strings/str_cat.h"
#include "include/lmig/status.h"

namespace lmig {

absl::StatusOr<Mapping> Mapping::Create(size_t len, int prot, int flags, int fd, off_t offset) {
  void* addr = ::mmap(nullptr, len, prot, flags, fd, offset);
  if (addr == MAP_FAILED) {
    return ErrnoStatus(absl::StrCat("mmap len=", len, " fd=", fd, " offset=", offset));
  }
  return Mapping(addr, len);
}

absl::StatusOr<Mapping> Mapping::CreateAnonymousAligned(size_t len, size_t align, int prot,
                                                        int flags) {
  ASSIGN_OR_RETURN(Mapping raw, Create(len + align, prot, flags | MAP_ANONYMOUS));
  const uintptr_t start = reinterpret_cast<uintptr_t>(raw.data());
  const uintptr_t aligned = (start + align - 1) & ~(static_cast<uintptr_t>(align) - 1);
  // Keep [aligned, aligned + len); give back the head and the tail.
  void* addr = std::exchange(raw.addr_, nullptr);
  raw.len_ = 0;
  if (aligned > start) {
    ::munmap(addr, aligned - start);
  }
  const uintptr_t end = start + len + align;
  if (end > aligned + len) {
    ::munmap(reinterpret_cast<void*>(aligned + len), end - (aligned + len));
  }
  return Mapping(reinterpret_cast<void*>(aligned), len);
}

}  // namespace lmig
