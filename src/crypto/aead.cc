#include "src/crypto/aead.h"

#include <openssl/err.h>
#include <openssl/evp.h>

#include <algorithm>
#include <climits>
#include <utility>

#include "absl/strings/str_cat.h"

namespace lmig::crypto {
namespace {

const char* DirectionName(Direction dir) {
  switch (dir) {
    case Direction::kSourceToDestination:
      return "source->destination";
    case Direction::kDestinationToSource:
      return "destination->source";
    case Direction::kInvalid:
      break;
  }
  return "invalid";
}

// A context keyed for AES-256-GCM in one direction (ENCRYPT 1) or the other (0); the per-record
// nonce is set later with a NULL cipher and key, which keeps the expanded key schedule.
absl::StatusOr<CipherCtx> KeyedContext(const AeadKey& key, Direction dir, int encrypt) {
  if (dir != Direction::kSourceToDestination && dir != Direction::kDestinationToSource) {
    return absl::InvalidArgumentError(
        absl::StrCat("AEAD direction ", static_cast<uint32_t>(dir), " is not valid"));
  }
  CipherCtx ctx(EVP_CIPHER_CTX_new());
  if (ctx == nullptr) {
    return OpensslError("EVP_CIPHER_CTX_new");
  }
  if (EVP_CipherInit_ex(ctx.get(), EVP_aes_256_gcm(), nullptr, nullptr, nullptr, encrypt) != 1 ||
      EVP_CIPHER_CTX_ctrl(ctx.get(), EVP_CTRL_GCM_SET_IVLEN, kAeadNonceBytes, nullptr) != 1 ||
      EVP_CipherInit_ex(ctx.get(), nullptr, nullptr, key.bytes().data(), nullptr, encrypt) != 1) {
    return OpensslError("AES-256-GCM key setup");
  }
  return ctx;
}

}  // namespace

absl::StatusOr<AeadKey> AeadKey::FromBytes(std::span<const uint8_t> bytes) {
  if (bytes.size() != kAeadKeyBytes) {
    return absl::InvalidArgumentError(
        absl::StrCat("AEAD key of ", bytes.size(), " bytes, must be ", kAeadKeyBytes));
  }
  AeadKey k;
  std::copy(bytes.begin(), bytes.end(), k.key_.begin());
  return k;
}

AeadKey::AeadKey(AeadKey&& o) noexcept : key_(o.key_) { Wipe(o.key_); }

AeadKey& AeadKey::operator=(AeadKey&& o) noexcept {
  if (this != &o) {
    key_ = o.key_;
    Wipe(o.key_);
  }
  return *this;
}

std::array<uint8_t, kAeadNonceBytes> RecordNonce(Direction dir, uint64_t record) {
  std::array<uint8_t, kAeadNonceBytes> n;
  uint32_t d = static_cast<uint32_t>(dir);
  for (int i = 0; i < 4; ++i) {
    n[i] = static_cast<uint8_t>(d >> (24 - 8 * i));
  }
  for (int i = 0; i < 8; ++i) {
    n[4 + i] = static_cast<uint8_t>(record >> (56 - 8 * i));
  }
  return n;
}

absl::StatusOr<RecordSealer> RecordSealer::Create(const AeadKey& key, Direction dir,
                                                  uint64_t first_record) {
  absl::StatusOr<CipherCtx> ctx = KeyedContext(key, dir, 1);
  if (!ctx.ok()) {
    return ctx.status();
  }
  return RecordSealer(std::move(*ctx), dir, first_record);
}

absl::StatusOr<std::vector<uint8_t>> RecordSealer::Seal(std::span<const uint8_t> aad,
                                                        std::span<const uint8_t> plaintext) {
  const uint64_t record = next_;
  auto prefix = [&] { return absl::StrCat("sealing control message ", DirectionName(dir_),
                                          " record ", record); };
  if (failed_ || ctx_ == nullptr) {
    return absl::FailedPreconditionError(absl::StrCat(prefix(), ": sealer failed before"));
  }
  if (record >= kAeadMaxRecords) {
    failed_ = true;
    return absl::ResourceExhaustedError(
        absl::StrCat(prefix(), ": record limit reached, the session must be rekeyed"));
  }
  if (aad.size() > INT_MAX || plaintext.size() > INT_MAX - kAeadTagBytes) {
    return absl::InvalidArgumentError(absl::StrCat(prefix(), ": ", plaintext.size(),
                                                   " bytes (aad ", aad.size(), ") too large"));
  }
  const std::array<uint8_t, kAeadNonceBytes> nonce = RecordNonce(dir_, record);
  std::vector<uint8_t> out(plaintext.size() + kAeadTagBytes);
  int len = 0;
  int fin = 0;
  EVP_CIPHER_CTX* c = ctx_.get();
  if (EVP_EncryptInit_ex(c, nullptr, nullptr, nullptr, nonce.data()) != 1 ||
      (!aad.empty() &&
       EVP_EncryptUpdate(c, nullptr, &len, aad.data(), static_cast<int>(aad.size())) != 1) ||
      EVP_EncryptUpdate(c, out.data(), &len, plaintext.data(),
                        static_cast<int>(plaintext.size())) != 1 ||
      EVP_EncryptFinal_ex(c, out.data() + len, &fin) != 1 ||
      static_cast<size_t>(len + fin) != plaintext.size() ||
      EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_GET_TAG, kAeadTagBytes,
                          out.data() + plaintext.size()) != 1) {
    failed_ = true;
    return OpensslError(prefix());
  }
  next_ = record + 1;
  return out;
}

absl::StatusOr<RecordOpener> RecordOpener::Create(const AeadKey& key, Direction dir,
                                                  uint64_t first_record) {
  absl::StatusOr<CipherCtx> ctx = KeyedContext(key, dir, 0);
  if (!ctx.ok()) {
    return ctx.status();
  }
  return RecordOpener(std::move(*ctx), dir, first_record);
}

absl::StatusOr<std::vector<uint8_t>> RecordOpener::Open(std::span<const uint8_t> aad,
                                                        std::span<const uint8_t> record) {
  const uint64_t n = next_;
  if (failed_ || ctx_ == nullptr) {
    return absl::UnauthenticatedError(absl::StrCat(
        "control message ", DirectionName(dir_), " record ", n,
        " refused: the channel is closed after an authentication failure at record ",
        failed_record_));
  }
  if (n >= kAeadMaxRecords) {
    failed_ = true;
    failed_record_ = n;
    return absl::ResourceExhaustedError(absl::StrCat(
        "control message record ", n, ": record limit reached, the session must be rekeyed"));
  }
  if (record.size() < kAeadTagBytes) {
    failed_ = true;
    failed_record_ = n;
    return absl::InvalidArgumentError(absl::StrCat("control message record ", n, ": ",
                                                   record.size(), " bytes, shorter than the ",
                                                   kAeadTagBytes, "-byte tag"));
  }
  if (aad.size() > INT_MAX || record.size() > INT_MAX) {
    failed_ = true;
    failed_record_ = n;
    return absl::InvalidArgumentError(
        absl::StrCat("control message record ", n, ": ", record.size(), " bytes, too large"));
  }
  const size_t ct_len = record.size() - kAeadTagBytes;
  const std::array<uint8_t, kAeadNonceBytes> nonce = RecordNonce(dir_, n);
  std::vector<uint8_t> out(ct_len);
  // The tag is an input here; OpenSSL's ctrl takes a non-const pointer but only copies it.
  std::array<uint8_t, kAeadTagBytes> tag;
  std::copy(record.end() - kAeadTagBytes, record.end(), tag.begin());
  int len = 0;
  int fin = 0;
  EVP_CIPHER_CTX* c = ctx_.get();
  bool setup = EVP_DecryptInit_ex(c, nullptr, nullptr, nullptr, nonce.data()) == 1 &&
               (aad.empty() ||
                EVP_DecryptUpdate(c, nullptr, &len, aad.data(), static_cast<int>(aad.size())) ==
                    1) &&
               EVP_DecryptUpdate(c, out.data(), &len, record.data(), static_cast<int>(ct_len)) ==
                   1 &&
               EVP_CIPHER_CTX_ctrl(c, EVP_CTRL_GCM_SET_TAG, kAeadTagBytes, tag.data()) == 1;
  if (!setup) {
    failed_ = true;
    failed_record_ = n;
    Wipe(out);
    return OpensslError(absl::StrCat("opening control message record ", n));
  }
  // EVP_DecryptFinal_ex compares the tag in constant time; failure is the only verdict given.
  if (EVP_DecryptFinal_ex(c, out.data() + len, &fin) != 1) {
    ERR_clear_error();
    failed_ = true;
    failed_record_ = n;
    Wipe(out);
    return absl::UnauthenticatedError(
        absl::StrCat("control message authentication failed (record ", n, ", ",
                     DirectionName(dir_), ")"));
  }
  next_ = n + 1;
  return out;
}

}  // namespace lmig::crypto
