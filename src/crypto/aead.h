// The record layer for control messages: AES-256-GCM (OpenSSL EVP) with implicit, strictly
// increasing record numbers. Each direction has its own key (auth.h DeriveSessionKeys) and its
// own nonce prefix. The 12-byte GCM nonce of record n is
//     direction (4 bytes, big endian) || n (8 bytes, big endian),   n = 0, 1, 2, ...
// and n is never sent: the opener expects exactly the next number, so a dropped, replayed,
// reordered or reflected record fails authentication (the nonce it is checked under differs
// from the one it was sealed under). A record is ciphertext || 16-byte tag, the ciphertext as
// long as the plaintext; the caller frames it (length) and may pass its header as AAD.
//
// Threads: a RecordSealer / RecordOpener is used by one thread at a time (the migration
// thread); each owns its EVP_CIPHER_CTX.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <ostream>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/crypto/primitives.h"

namespace lmig::crypto {

inline constexpr size_t kAeadKeyBytes = 32;    // AES-256
inline constexpr size_t kAeadNonceBytes = 12;  // GCM's native IV length
inline constexpr size_t kAeadTagBytes = 16;
// Records per key: the counter's range, less one so that it can never wrap (the last value is
// refused rather than used).
inline constexpr uint64_t kAeadMaxRecords = UINT64_MAX;

// The 4-byte nonce prefix, one per direction (0 is never valid).
enum class Direction : uint32_t {
  kInvalid = 0,
  kSourceToDestination = 0x53324431,  // "S2D1"
  kDestinationToSource = 0x44325331,  // "D2S1"
};

// A 32-byte AEAD key, wiped when it dies or is moved from. Move-only.
class AeadKey {
 public:
  AeadKey() = default;
  // Error: BYTES is not kAeadKeyBytes long.
  static absl::StatusOr<AeadKey> FromBytes(std::span<const uint8_t> bytes);
  AeadKey(AeadKey&& o) noexcept;
  AeadKey& operator=(AeadKey&& o) noexcept;
  AeadKey(const AeadKey&) = delete;
  AeadKey& operator=(const AeadKey&) = delete;
  ~AeadKey() { Wipe(key_); }

  std::span<const uint8_t, kAeadKeyBytes> bytes() const { return key_; }

  // Streams (logs, gtest) show "AeadKey(redacted)", never the bytes.
  friend std::ostream& operator<<(std::ostream& os, const AeadKey&) {
    return os << "AeadKey(redacted)";
  }

 private:
  std::array<uint8_t, kAeadKeyBytes> key_{};
};

// The nonce of record RECORD in direction DIR (exposed for tests and documentation).
std::array<uint8_t, kAeadNonceBytes> RecordNonce(Direction dir, uint64_t record);

// Seals the records one direction sends. Move-only (owns an EVP_CIPHER_CTX).
class RecordSealer {
 public:
  // A sealer whose first record is FIRST_RECORD (0 in production; tests start near the end to
  // reach exhaustion). The key schedule runs once here. Errors: kInvalid direction, OpenSSL.
  static absl::StatusOr<RecordSealer> Create(const AeadKey& key, Direction dir,
                                             uint64_t first_record = 0);

  // Encrypts PLAINTEXT and authenticates it with AAD: returns ciphertext || tag and moves on to
  // the next record. Errors: counter exhausted ("... record limit reached, rekey"), inputs over
  // INT_MAX bytes, OpenSSL. After exhaustion or an OpenSSL error the sealer refuses
  // everything.
  absl::StatusOr<std::vector<uint8_t>> Seal(std::span<const uint8_t> aad,
                                            std::span<const uint8_t> plaintext);

  // The number the next Seal will use.
  uint64_t next_record() const { return next_; }

 private:
  RecordSealer(CipherCtx ctx, Direction dir, uint64_t next)
      : ctx_(std::move(ctx)), dir_(dir), next_(next) {}
  CipherCtx ctx_;
  Direction dir_ = Direction::kInvalid;
  uint64_t next_ = 0;
  bool failed_ = false;
};

// Opens the records one direction receives, in order. Move-only (owns an EVP_CIPHER_CTX).
class RecordOpener {
 public:
  // An opener that expects FIRST_RECORD first (0 in production). Errors as RecordSealer's.
  static absl::StatusOr<RecordOpener> Create(const AeadKey& key, Direction dir,
                                             uint64_t first_record = 0);

  // Checks RECORD (ciphertext || tag) against AAD as the next expected record and returns the
  // plaintext. Errors (kUnauthenticated unless noted), all naming the record number:
  //   "control message authentication failed (record 7)": wrong key, tampered byte or AAD,
  //     or a record that was sealed as another number (dropped, replayed, reordered);
  //   "... shorter than the 16-byte tag" (kInvalidArgument);
  //   counter exhausted (kResourceExhausted).
  // The first failure is final: every later Open fails too ("... after an authentication
  // failure at record 7"), because a stream that lost a record can never resynchronise and
  // an attacker must not get a second guess.
  absl::StatusOr<std::vector<uint8_t>> Open(std::span<const uint8_t> aad,
                                            std::span<const uint8_t> record);

  // The number the next Open expects.
  uint64_t next_record() const { return next_; }

 private:
  RecordOpener(CipherCtx ctx, Direction dir, uint64_t next)
      : ctx_(std::move(ctx)), dir_(dir), next_(next) {}
  CipherCtx ctx_;
  Direction dir_ = Direction::kInvalid;
  uint64_t next_ = 0;
  bool failed_ = false;
  uint64_t failed_record_ = 0;
};

}  // namespace lmig::crypto
