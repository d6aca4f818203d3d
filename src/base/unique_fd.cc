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

}  // namespace lmig
