// The pre-shared migration key: a file of random bytes that both hosts hold (`lmig-rdma keygen
// FILE` makes one; copy it to the other host over a secure channel). The key never crosses the
// migration wire in any form: the handshake (auth.h) proves possession with HMACs under keys
// derived from it.
#pragma once

#include <cstddef>
#include <cstdint>
#include <ostream>
#include <span>
#include <string>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"

namespace lmig::crypto {

inline constexpr size_t kPskMinBytes = 32;    // 256 bits: no offline guessing
inline constexpr size_t kPskMaxBytes = 4096;  // a key file, not a file that happens to be there
inline constexpr size_t kPskGeneratedBytes = 32;

// The key's bytes, wiped (OPENSSL_cleanse) when the object dies or is moved over. Move-only, so
// there is one owner of the one copy; it prints as "Psk(N bytes, redacted)" on a stream, never
// as its bytes.
class Psk {
 public:
  // A key from BYTES (copied; kPskMinBytes..kPskMaxBytes). For tests and callers that have the
  // key from elsewhere; files go through LoadPskFile.
  static absl::StatusOr<Psk> FromBytes(std::span<const uint8_t> bytes);

  Psk(Psk&& o) noexcept;
  Psk& operator=(Psk&& o) noexcept;
  Psk(const Psk&) = delete;
  Psk& operator=(const Psk&) = delete;
  ~Psk();

  // The secret itself: pass it to HKDF only (auth.h), never to a log or the wire.
  std::span<const uint8_t> bytes() const { return key_; }
  size_t size() const { return key_.size(); }

  // Streams (logs, gtest) show "Psk(N bytes, redacted)", never the bytes.
  friend std::ostream& operator<<(std::ostream& os, const Psk& k) {
    return os << "Psk(" << k.size() << " bytes, redacted)";
  }

 private:
  explicit Psk(std::vector<uint8_t> key) : key_(std::move(key)) {}
  void Clear();
  std::vector<uint8_t> key_;
};

// Reads the key file PATH (`--psk-file`): its whole contents are the key. Refused, with an
// error that starts "--psk-file PATH: " and says what to do:
//   - missing or unreadable (the errno text);
//   - not a regular file (directory, FIFO, device; opened non-blocking, so a FIFO never hangs);
//   - readable or writable by group or others (mode & 077), naming the mode in octal, e.g.
//     "--psk-file /x/k: mode 0644, must not be readable or writable by group or others
//     (chmod 600)";
//   - fewer than kPskMinBytes or more than kPskMaxBytes bytes.
// The mode and size are checked on the opened file (fstat), not on the name.
absl::StatusOr<Psk> LoadPskFile(const std::string& path);

// Writes a fresh key (kPskGeneratedBytes from the CSPRNG) to a new file PATH, mode 0600:
// created with O_CREAT|O_EXCL|O_NOFOLLOW, so an existing file or symlink is never overwritten or
// followed, then fsync()ed along with its directory. On failure no partial file is left behind.
// Errors start "key file PATH: " (already exists, directory missing, permission, I/O).
absl::Status WritePskFile(const std::string& path);

}  // namespace lmig::crypto
