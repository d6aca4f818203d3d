#include "src/base/file.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>

#include "absl/strings/str_cat.h"
#include "include/lmig/status.h"
#include "src/base/unique_fd.h"

namespace lmig {

absl::StatusOr<std::vector<uint8_t>> ReadFile(const std::string& path, const char* what) {
  const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
  if (fd < 0) {
    return ErrnoStatus(absl::StrCat(what, " ", path));
  }
  UniqueFd f(fd);
  struct stat st;
  if (::fstat(fd, &st) < 0) {
    return ErrnoStatus(absl::StrCat(what, " ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(what, " ", path, ": not a regular file"));
  }
  std::vector<uint8_t> data(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < data.size()) {
    const ssize_t n = ::read(fd, data.data() + got, data.size() - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return ErrnoStatus(absl::StrCat(what, " ", path, ": read"), n == 0 ? EIO : errno);
    }
    got += static_cast<size_t>(n);
  }
  return data;
}

}  // namespace lmig
