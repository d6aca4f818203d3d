#include "src/crypto/psk.h"

#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstring>
#include <utility>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/base/unique_fd.h"
#include "src/crypto/primitives.h"

namespace lmig::crypto {
namespace {

// The directory part of PATH ("." for a bare name), for the fsync that makes a new file's
// directory entry durable.
std::string DirName(const std::string& path) {
  size_t slash = path.find_last_of('/');
  if (slash == std::string::npos) {
    return ".";
  }
  if (slash == 0) {
    return "/";
  }
  return path.substr(0, slash);
}

}  // namespace

absl::StatusOr<Psk> Psk::FromBytes(std::span<const uint8_t> bytes) {
  if (bytes.size() < kPskMinBytes || bytes.size() > kPskMaxBytes) {
    return absl::InvalidArgumentError(absl::StrCat("key of ", bytes.size(), " bytes, must be ",
                                                   kPskMinBytes, "..", kPskMaxBytes));
  }
  return Psk(std::vector<uint8_t>(bytes.begin(), bytes.end()));
}

Psk::Psk(Psk&& o) noexcept : key_(std::move(o.key_)) { o.key_.clear(); }

Psk& Psk::operator=(Psk&& o) noexcept {
  if (this != &o) {
    Clear();
    key_ = std::move(o.key_);
    o.key_.clear();
  }
  return *this;
}

Psk::~Psk() { Clear(); }

void Psk::Clear() {
  Wipe(key_);
  key_.clear();
}

absl::StatusOr<Psk> LoadPskFile(const std::string& path) {
  const std::string what = absl::StrCat("--psk-file ", path);
  // O_NONBLOCK: opening a FIFO must not wait for a writer; it is refused below as not a
  // regular file. Symlinks are followed (secret stores often link key files into place); the
  // checks apply to the file they reach.
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK));
  if (!fd.valid()) {
    int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat(what, ": cannot open"));
  }
  struct stat st;
  if (::fstat(fd.get(), &st) != 0) {
    int err = errno;
    return absl::ErrnoToStatus(err, absl::StrCat(what, ": fstat"));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrCat(what, ": not a regular file"));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "%s: mode %04o, must not be readable or writable by group or others (chmod 600)", what,
        st.st_mode & 07777));
  }
  // Read up to one byte past the limit, so a file that grew after fstat is still caught.
  std::vector<uint8_t> buf(kPskMaxBytes + 1);
  size_t got = 0;
  while (got < buf.size()) {
    ssize_t n = ::read(fd.get(), buf.data() + got, buf.size() - got);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n < 0) {
      int err = errno;
      Wipe(buf);
      return absl::ErrnoToStatus(err, absl::StrCat(what, ": read"));
    }
    if (n == 0) {
      break;
    }
    got += static_cast<size_t>(n);
  }
  if (got < kPskMinBytes || got > kPskMaxBytes) {
    Wipe(buf);
    return absl::InvalidArgumentError(absl::StrCat(
        what, ": ", got > kPskMaxBytes ? "more than " : "", got > kPskMaxBytes ? kPskMaxBytes : got,
        " bytes, a key must be ", kPskMinBytes, "..", kPskMaxBytes,
        " bytes (make one with `lmig-rdma keygen FILE`)"));
  }
  absl::StatusOr<Psk> psk = Psk::FromBytes(std::span<const uint8_t>(buf.data(), got));
  Wipe(buf);
  return psk;
}

absl::Status WritePskFile(const std::string& path) {
  const std::string what = absl::StrCat("key file ", path);
  std::array<uint8_t, kPskGeneratedBytes> key;
  RETURN_IF_ERROR(RandomBytes(key));
  UniqueFd fd(::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, 0600));
  if (!fd.valid()) {
    int err = errno;
    Wipe(key);
    if (err == EEXIST) {
      return absl::AlreadyExistsError(
          absl::StrCat(what, ": already exists, refusing to overwrite it"));
    }
    return absl::ErrnoToStatus(err, absl::StrCat(what, ": cannot create"));
  }
  // From here on a failure removes the file: a half-written key must never be used.
  auto fail = [&](absl::string_view call, int err) {
    Wipe(key);
    fd.Reset();
    ::unlink(path.c_str());
    return absl::ErrnoToStatus(err, absl::StrCat(what, ": ", call));
  };
  // The umask can only clear bits of 0600; fchmod makes the mode exactly 0600 regardless.
  if (::fchmod(fd.get(), 0600) != 0) {
    return fail("fchmod 0600", errno);
  }
  size_t done = 0;
  while (done < key.size()) {
    ssize_t n = ::write(fd.get(), key.data() + done, key.size() - done);
    if (n < 0 && errno == EINTR) {
      continue;
    }
    if (n <= 0) {
      return fail("write", n < 0 ? errno : EIO);
    }
    done += static_cast<size_t>(n);
  }
  Wipe(key);
  if (::fsync(fd.get()) != 0) {
    return fail("fsync", errno);
  }
  if (::close(fd.Release()) != 0) {
    return fail("close", errno);
  }
  // Make the new name durable too; a directory that cannot be opened for this is not an error
  // worth losing the key over (the data itself is on disk).
  UniqueFd dir(::open(DirName(path).c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
  if (dir.valid()) {
    ::fsync(dir.get());
  }
  return absl::OkStatus();
}

}  // namespace lmig::crypto
