// Kernel TLS for a finished TLS 1.3 handshake (transport/tcp/tls.h): the traffic secrets from
// OpenSSL's key log, each direction's key and IV by OpenSSL's TLS13-KDF, handed to the kernel
// with setsockopt(SOL_TLS).
#include <linux/tls.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/kdf.h>
#include <sys/socket.h>

#include <cstring>
#include <utility>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/crypto/primitives.h"
#include "transport/tcp/tls.h"

namespace lmig {

void TlsChannel::KeyLog(const SSL* ssl, const char* line) {
  auto* ch = static_cast<TlsChannel*>(SSL_get_app_data(ssl));
  const absl::string_view l(line);
  std::vector<uint8_t>* out = nullptr;
  if (absl::StartsWith(l, "CLIENT_TRAFFIC_SECRET_0 ")) {
    out = &ch->client_secret_;
  } else if (absl::StartsWith(l, "SERVER_TRAFFIC_SECRET_0 ")) {
    out = &ch->server_secret_;
  }
  // "LABEL <client random, hex> <secret, hex>"
  const size_t sp = l.rfind(' ');
  if (ch == nullptr || out == nullptr || sp == absl::string_view::npos) {
    return;
  }
  const absl::string_view hex = l.substr(sp + 1);
  out->clear();
  for (size_t i = 0; i + 1 < hex.size(); i += 2) {
    const int hi = OPENSSL_hexchar2int(static_cast<unsigned char>(hex[i]));
    const int lo = OPENSSL_hexchar2int(static_cast<unsigned char>(hex[i + 1]));
    if (hi < 0 || lo < 0) {
      out->clear();
      return;
    }
    out->push_back(static_cast<uint8_t>(hi << 4 | lo));
  }
}

namespace {

// HKDF-Expand-Label(SECRET, LABEL, "", LEN) of TLS 1.3 (RFC 8446 7.1), by OpenSSL's TLS13-KDF.
absl::StatusOr<std::vector<uint8_t>> ExpandLabel(const char* digest,
                                                 const std::vector<uint8_t>& secret,
                                                 const char* label, size_t len) {
  crypto::Kdf kdf(EVP_KDF_fetch(nullptr, "TLS13-KDF", nullptr));
  crypto::KdfCtx ctx(kdf ? EVP_KDF_CTX_new(kdf.get()) : nullptr);
  if (ctx == nullptr) {
    return crypto::OpensslError("TLS13-KDF");
  }
  int mode = EVP_KDF_HKDF_MODE_EXPAND_ONLY;
  static char prefix[] = "tls13 ";
  const OSSL_PARAM params[] = {
      OSSL_PARAM_construct_int(OSSL_KDF_PARAM_MODE, &mode),
      OSSL_PARAM_construct_utf8_string(OSSL_KDF_PARAM_DIGEST, const_cast<char*>(digest), 0),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_KEY, const_cast<uint8_t*>(secret.data()),
                                        secret.size()),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_PREFIX, prefix, sizeof(prefix) - 1),
      OSSL_PARAM_construct_octet_string(OSSL_KDF_PARAM_LABEL, const_cast<char*>(label),
                                        std::strlen(label)),
      OSSL_PARAM_construct_end(),
  };
  std::vector<uint8_t> out(len);
  if (EVP_KDF_derive(ctx.get(), out.data(), out.size(), params) != 1) {
    return crypto::OpensslError(absl::StrCat("TLS13-KDF ", label));
  }
  return out;
}

// One direction's kernel TLS parameters for AES-GCM (KEY_BYTES 16 or 32) from its secret.
template <typename Info>
absl::Status InstallKeys(int fd, int direction, uint16_t cipher_type, const char* digest,
                         const std::vector<uint8_t>& secret) {
  Info info{};
  info.info.version = TLS_1_3_VERSION;
  info.info.cipher_type = cipher_type;
  ASSIGN_OR_RETURN(std::vector<uint8_t> key, ExpandLabel(digest, secret, "key", sizeof(info.key)));
  ASSIGN_OR_RETURN(std::vector<uint8_t> iv,
                   ExpandLabel(digest, secret, "iv", sizeof(info.salt) + sizeof(info.iv)));
  std::memcpy(info.key, key.data(), sizeof(info.key));
  std::memcpy(info.salt, iv.data(), sizeof(info.salt));
  std::memcpy(info.iv, iv.data() + sizeof(info.salt), sizeof(info.iv));
  // rec_seq stays 0: no record has been sent or received under these keys.
  const int r = ::setsockopt(fd, SOL_TLS, direction, &info, sizeof(info));
  const int err = errno;
  OPENSSL_cleanse(&info, sizeof(info));
  OPENSSL_cleanse(key.data(), key.size());
  OPENSSL_cleanse(iv.data(), iv.size());
  if (r != 0) {
    return ErrnoStatus(direction == TLS_TX ? "kernel TLS (TLS_TX)" : "kernel TLS (TLS_RX)", err);
  }
  return absl::OkStatus();
}

}  // namespace

absl::StatusOr<bool> TlsChannel::OffloadToKernel(int fd) {
  const uint16_t suite = SSL_CIPHER_get_protocol_id(SSL_get_current_cipher(ssl_));
  if ((suite != 0x1302 && suite != 0x1301) || client_secret_.empty() ||
      server_secret_.empty()) {
    return false;
  }
  if (::setsockopt(fd, SOL_TCP, TCP_ULP, "tls", sizeof("tls")) != 0) {
    return false;  // this kernel has no TLS (or its module is not loaded): user space
  }
  // From here the socket is the kernel's TLS socket: both directions must be installed.
  const std::vector<uint8_t>& tx = server_ ? server_secret_ : client_secret_;
  const std::vector<uint8_t>& rx = server_ ? client_secret_ : server_secret_;
  for (const auto& [dir, secret] : {std::pair{TLS_TX, &tx}, std::pair{TLS_RX, &rx}}) {
    absl::Status s =
        suite == 0x1302
            ? InstallKeys<tls12_crypto_info_aes_gcm_256>(fd, dir, TLS_CIPHER_AES_GCM_256,
                                                         "SHA384", *secret)
            : InstallKeys<tls12_crypto_info_aes_gcm_128>(fd, dir, TLS_CIPHER_AES_GCM_128,
                                                         "SHA256", *secret);
    if (!s.ok()) {
      return Annotate(s, absl::StrCat("TLS with ", peer_));
    }
  }
  // We never pad records: the kernel may then decrypt straight into the reader's buffer.
  const int one = 1;
  (void)::setsockopt(fd, SOL_TLS, TLS_RX_EXPECT_NO_PAD, &one, sizeof(one));
  return true;
}

absl::Status TlsChannel::KernelRecordError(int fd, const std::string& what) const {
  uint8_t body[2] = {0, 0};
  iovec iov{body, sizeof(body)};
  alignas(cmsghdr) char control[CMSG_SPACE(sizeof(unsigned char))];
  msghdr msg{};
  msg.msg_iov = &iov;
  msg.msg_iovlen = 1;
  msg.msg_control = control;
  msg.msg_controllen = sizeof(control);
  const ssize_t n = ::recvmsg(fd, &msg, MSG_DONTWAIT);
  const cmsghdr* c = n >= 0 ? CMSG_FIRSTHDR(&msg) : nullptr;
  if (c != nullptr && c->cmsg_level == SOL_TLS && c->cmsg_type == TLS_GET_RECORD_TYPE) {
    const unsigned char type = *CMSG_DATA(c);
    if (type == SSL3_RT_ALERT && n >= 2) {
      return AlertError(body[1], what);
    }
    return absl::DataLossError(absl::StrFormat(
        "%s (%s): a TLS record of type %d where only application data may come", what, peer_,
        type));
  }
  return absl::DataLossError(absl::StrFormat(
      "%s (%s): the kernel's TLS refused a record (Input/output error)", what, peer_));
}

}  // namespace lmig
