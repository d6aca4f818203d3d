// The few cryptographic primitives lmig-rdma uses, all from OpenSSL's libcrypto (no
// hand-written crypto): the OS-seeded CSPRNG, SHA-256, HMAC-SHA256 (RFC 2104, test vectors
// RFC 4231) and HKDF-SHA256 (RFC 5869). The handshake (auth.h), the record layer (aead.h) and
// the key file (psk.h) are built on these. Errors name the OpenSSL call and its error string.
#pragma once

#include <openssl/evp.h>
#include <openssl/kdf.h>

#include <array>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <span>
#include <vector>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/string_view.h"

namespace lmig::crypto {

inline constexpr size_t kSha256Bytes = 32;
using Sha256Digest = std::array<uint8_t, kSha256Bytes>;

// Move-only owners of OpenSSL objects (one each; the deleter is the object's *_free).
template <typename T, void (*kFree)(T*)>
struct OpensslDeleter {
  void operator()(T* p) const { kFree(p); }
};
using CipherCtx =
    std::unique_ptr<EVP_CIPHER_CTX, OpensslDeleter<EVP_CIPHER_CTX, EVP_CIPHER_CTX_free>>;
using Mac = std::unique_ptr<EVP_MAC, OpensslDeleter<EVP_MAC, EVP_MAC_free>>;
using MacCtx = std::unique_ptr<EVP_MAC_CTX, OpensslDeleter<EVP_MAC_CTX, EVP_MAC_CTX_free>>;
using Kdf = std::unique_ptr<EVP_KDF, OpensslDeleter<EVP_KDF, EVP_KDF_free>>;
using KdfCtx = std::unique_ptr<EVP_KDF_CTX, OpensslDeleter<EVP_KDF_CTX, EVP_KDF_CTX_free>>;
using MdCtx = std::unique_ptr<EVP_MD_CTX, OpensslDeleter<EVP_MD_CTX, EVP_MD_CTX_free>>;

// Status for a failed OpenSSL call: "<what>: <OpenSSL's error queue>" (the queue is drained,
// so one failure never shows up in the next error).
absl::Status OpensslError(absl::string_view what);

// Fills OUT from OpenSSL's CSPRNG (RAND_bytes, seeded by the kernel's getrandom()). Fails only
// if the generator cannot be seeded.
absl::Status RandomBytes(std::span<uint8_t> out);

// SHA-256 of DATA.
absl::StatusOr<Sha256Digest> Sha256(std::span<const uint8_t> data);

// HMAC-SHA256 of DATA under KEY (any length; RFC 4231).
absl::StatusOr<Sha256Digest> HmacSha256(std::span<const uint8_t> key,
                                        std::span<const uint8_t> data);

// HKDF-SHA256 (extract, then expand; RFC 5869) of IKM with SALT (empty: HashLen zero bytes)
// and INFO, OUT_LEN bytes (1..255*32).
absl::StatusOr<std::vector<uint8_t>> HkdfSha256(std::span<const uint8_t> ikm,
                                                std::span<const uint8_t> salt,
                                                std::span<const uint8_t> info, size_t out_len);

// Constant-time equality of two byte strings (CRYPTO_memcmp; unequal lengths are unequal).
bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b);

// Overwrites BYTES with zeros in a way the compiler cannot drop (OPENSSL_cleanse).
void Wipe(std::span<uint8_t> bytes);

// The bytes of a string literal or label, for the functions above.
inline std::span<const uint8_t> AsBytes(absl::string_view s) {
  return {reinterpret_cast<const uint8_t*>(s.data()), s.size()};
}

}  // namespace lmig::crypto
