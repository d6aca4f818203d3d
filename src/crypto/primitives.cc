#include "src/crypto/primitives.h"

#include <openssl/core_names.h>
#include <openssl/crypto.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <openssl/params.h>
#include <openssl/rand.h>

#include <climits>
#include <string>

#include "absl/strings/str_cat.h"

namespace lmig::crypto {

absl::Status OpensslError(absl::string_view what) {
  std::string detail;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&detail, detail.empty() ? "" : "; ", buf);
  }
  if (detail.empty()) {
    detail = "failed (no OpenSSL error queued)";
  }
  return absl::InternalError(absl::StrCat(what, ": ", detail));
}

absl::Status RandomBytes(std::span<uint8_t> out) {
  if (out.size() > INT_MAX) {
    return absl::InvalidArgumentError(absl::StrCat("RandomBytes: ", out.size(), " bytes"));
  }
  if (RAND_bytes(out.data(), static_cast<int>(out.size())) != 1) {
    return OpensslError(absl::StrCat("RAND_bytes(", out.size(), ")"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Sha256Digest> Sha256(std::span<const uint8_t> data) {
  MdCtx ctx(EVP_MD_CTX_new());
  if (ctx == nullptr) {
    return OpensslError("EVP_MD_CTX_new");
  }
  Sha256Digest out;
  unsigned int len = 0;
  if (EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1 ||
      EVP_DigestUpdate(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_DigestFinal_ex(ctx.get(), out.data(), &len) != 1 || len != out.size()) {
    return OpensslError("SHA-256");
  }
  return out;
}

absl::StatusOr<Sha256Digest> HmacSha256(std::span<const uint8_t> key,
                                        std::span<const uint8_t> data) {
  Mac mac(EVP_MAC_fetch(nullptr, OSSL_MAC_NAME_HMAC, nullptr));
  if (mac == nullptr) {
    return OpensslError("EVP_MAC_fetch(HMAC)");
  }
  MacCtx ctx(EVP_MAC_CTX_new(mac.get()));
  if (ctx == nullptr) {
    return OpensslError("EVP_MAC_CTX_new(HMAC)");
  }
  char digest[] = "SHA256";
  OSSL_PARAM params[] = {
      OSSL_PARAM_construct_utf8_string(OSSL_MAC_PARAM_DIGEST, digest, 0),
      OSSL_PARAM_construct_end(),
  };
  // EVP_MAC_init refuses a NULL key even when its length is 0: give it a valid pointer.
  static const uint8_t kEmpty = 0;
  const uint8_t* key_ptr = key.empty() ? &kEmpty : key.data();
  Sha256Digest out;
  size_t len = 0;
  if (EVP_MAC_init(ctx.get(), key_ptr, key.size(), params) != 1 ||
      EVP_MAC_update(ctx.get(), data.data(), data.size()) != 1 ||
      EVP_MAC_final(ctx.get(), out.data(), &len, out.size()) != 1 || len != out.size()) {
    return OpensslError("HMAC-SHA256");
  }
  return out;
}

absl::StatusOr<std::vector<uint8_t>> HkdfSha256(std::span<const uint8_t> ikm,
                                                std::span<const uint8_t> salt,
                                                std::span<const uint8_t> info, size_t out_len) {
  if (out_len == 0 || out_len > 255 * kSha256Bytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("HKDF-SHA256: output length ", out_len, " not in 1..", 255 * kSha256Bytes));
  }
  Kdf kdf(EVP_KDF_fetch(nullptr, OSSL_KDF_NAME_HKDF, nullptr));
  if (kdf == nullptr) {
    return OpensslError("EVP_KDF_fetch(HKDF)");
  }
  KdfCtx ctx(EVP_KDF_CTX_new(kdf.get()));
  if (ctx == nullptr) {
    return OpensslError("EVP_KDF_CTX_new(HKDF)");
  }
  char digest[] = "SHA256";
  // OSSL_PARAM takes non-const pointers but only reads these buffers.
  auto octets = [](const char* name, std::span<const uint8_t> s) {
    return OSSL_PARAM_construct_octet_string(name, const_cast<uint8_t*>(s.data()), s.size());
  };
  OSSL_PARAM params[5];
  size_t n = 0;
  params[n++] = OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, digest, 0);
  params[n++] = octets(OSSL_KDF_PARAM_KEY, ikm);
  // An absent salt is RFC 5869's default (HashLen zeros); an absent info is the empty string.
  if (!salt.empty()) {
    params[n++] = octets(OSSL_KDF_PARAM_SALT, salt);
  }
  if (!info.empty()) {
    params[n++] = octets(OSSL_KDF_PARAM_INFO, info);
  }
  params[n] = OSSL_PARAM_construct_end();
  std::vector<uint8_t> out(out_len);
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    Wipe(out);
    return OpensslError("HKDF-SHA256");
  }
  return out;
}

bool ConstantTimeEqual(std::span<const uint8_t> a, std::span<const uint8_t> b) {
  // The lengths are public (fixed-size proofs and tags); only the contents are secret.
  if (a.size() != b.size()) {
    return false;
  }
  return a.empty() || CRYPTO_memcmp(a.data(), b.data(), a.size()) == 0;
}

void Wipe(std::span<uint8_t> bytes) {
  if (!bytes.empty()) {
    OPENSSL_cleanse(bytes.data(), bytes.size());
  }
}

}  // namespace lmig::crypto
