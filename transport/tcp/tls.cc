#include "transport/tcp/tls.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/tcp.h>
#include <openssl/core_names.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <linux/tls.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstring>

#include "absl/strings/match.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/base/unique_fd.h"
#include "src/crypto/primitives.h"

namespace lmig {
namespace {

// The external PSK's identity (public; the key is what authenticates) and the key it derives.
constexpr unsigned char kPskIdentity[] = "lmig-rdma migration key";
constexpr std::string_view kPskInfo = "lmig-rdma v4 TLS 1.3 external PSK";
constexpr size_t kTlsPskBytes = 48;  // SHA-384's length: the PSK's hash is the suite's
constexpr unsigned char kAes256GcmSha384[] = {0x13, 0x02};
constexpr unsigned char kContext[] = "lmig-rdma";  // the session id context

const TlsConfig* ConfigOf(SSL* ssl) {
  return static_cast<const TlsConfig*>(SSL_CTX_get_app_data(SSL_get_SSL_CTX(ssl)));
}

SSL_SESSION* PskSession(SSL* ssl) {
  const SSL_CIPHER* cipher = SSL_CIPHER_find(ssl, kAes256GcmSha384);
  SSL_SESSION* s = SSL_SESSION_new();
  const auto key = ConfigOf(ssl)->tls_psk();
  if (cipher == nullptr || s == nullptr ||
      SSL_SESSION_set1_master_key(s, key.data(), key.size()) != 1 ||
      SSL_SESSION_set_cipher(s, cipher) != 1 ||
      SSL_SESSION_set_protocol_version(s, TLS1_3_VERSION) != 1 ||
      SSL_SESSION_set1_id_context(s, kContext, sizeof(kContext) - 1) != 1) {
    SSL_SESSION_free(s);
    return nullptr;
  }
  return s;
}

// Client: offers the PSK (for the SHA-384 suite only).
int UsePsk(SSL* ssl, const EVP_MD* md, const unsigned char** id, size_t* idlen,
           SSL_SESSION** sess) {
  *sess = nullptr;
  *id = nullptr;
  *idlen = 0;
  if (md != nullptr && md != EVP_sha384()) {
    return 1;  // a retry for another hash: not ours
  }
  *sess = PskSession(ssl);
  if (*sess == nullptr) {
    return 0;
  }
  *id = kPskIdentity;
  *idlen = sizeof(kPskIdentity) - 1;
  return 1;
}

// Server: the PSK for our identity; any other identity finds nothing (and with no certificate
// the handshake then fails).
int FindPsk(SSL* ssl, const unsigned char* id, size_t idlen, SSL_SESSION** sess) {
  *sess = nullptr;
  if (idlen != sizeof(kPskIdentity) - 1 || std::memcmp(id, kPskIdentity, idlen) != 0) {
    return 1;
  }
  *sess = PskSession(ssl);
  return *sess != nullptr ? 1 : 0;
}

absl::StatusOr<SSL_CTX*> NewContext(bool server, bool psk) {
  SSL_CTX* ctx = SSL_CTX_new(server ? TLS_server_method() : TLS_client_method());
  if (ctx == nullptr) {
    return crypto::OpensslError("SSL_CTX_new");
  }
  // TLS 1.3 only, AES-GCM (which the kernel's TLS offers), no tickets, kTLS when available.
  if (SSL_CTX_set_min_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_max_proto_version(ctx, TLS1_3_VERSION) != 1 ||
      SSL_CTX_set_ciphersuites(ctx, psk ? "TLS_AES_256_GCM_SHA384"
                                        : "TLS_AES_256_GCM_SHA384:TLS_AES_128_GCM_SHA256") != 1 ||
      SSL_CTX_set_num_tickets(ctx, 0) != 1) {
    SSL_CTX_free(ctx);
    return crypto::OpensslError("configuring TLS 1.3");
  }
  SSL_CTX_set_options(ctx, SSL_OP_NO_TICKET);
  SSL_CTX_set_keylog_callback(ctx, TlsChannel::KeyLog);
  // No session cache (every connection does the full handshake); verifying clients needs a
  // session id context all the same.
  SSL_CTX_set_session_cache_mode(ctx, SSL_SESS_CACHE_OFF);
  SSL_CTX_set_session_id_context(ctx, kContext, sizeof(kContext) - 1);
  SSL_CTX_set_mode(ctx, SSL_MODE_ENABLE_PARTIAL_WRITE | SSL_MODE_ACCEPT_MOVING_WRITE_BUFFER);
  // Both roles insist on the peer's proof: a certificate in certificate mode; in PSK mode a
  // peer that skipped the PSK would have to present a certificate, which nothing trusts.
  SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER | SSL_VERIFY_FAIL_IF_NO_PEER_CERT, nullptr);
  if (psk) {
    if (server) {
      SSL_CTX_set_psk_find_session_callback(ctx, FindPsk);
    } else {
      SSL_CTX_set_psk_use_session_callback(ctx, UsePsk);
    }
  }
  return ctx;
}

// The private key file, refused like a --psk-file if group or others can read it.
absl::StatusOr<EVP_PKEY*> LoadPrivateKey(const std::string& path) {
  UniqueFd fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NONBLOCK));
  if (!fd.valid()) {
    return ErrnoStatus(absl::StrCat("--tls-key ", path));
  }
  struct stat st {};
  if (::fstat(fd.get(), &st) != 0) {
    return ErrnoStatus(absl::StrCat("--tls-key ", path));
  }
  if (!S_ISREG(st.st_mode)) {
    return absl::InvalidArgumentError(absl::StrFormat("--tls-key %s: not a regular file", path));
  }
  if ((st.st_mode & 077) != 0) {
    return absl::PermissionDeniedError(absl::StrFormat(
        "--tls-key %s: mode %04o, must not be readable or writable by group or others "
        "(chmod 600)",
        path, st.st_mode & 07777));
  }
  if (st.st_size > (1 << 20)) {
    return absl::InvalidArgumentError(absl::StrFormat("--tls-key %s: larger than 1 MiB", path));
  }
  std::vector<char> pem(static_cast<size_t>(st.st_size));
  size_t got = 0;
  while (got < pem.size()) {
    const ssize_t n = ::read(fd.get(), pem.data() + got, pem.size() - got);
    if (n <= 0) {
      return n == 0 ? absl::DataLossError(absl::StrFormat("--tls-key %s: shrank while read", path))
                    : ErrnoStatus(absl::StrCat("--tls-key ", path));
    }
    got += static_cast<size_t>(n);
  }
  BIO* bio = BIO_new_mem_buf(pem.data(), static_cast<int>(pem.size()));
  EVP_PKEY* key = bio ? PEM_read_bio_PrivateKey(bio, nullptr, nullptr, nullptr) : nullptr;
  BIO_free(bio);
  OPENSSL_cleanse(pem.data(), pem.size());
  if (key == nullptr) {
    return crypto::OpensslError(absl::StrFormat("--tls-key %s: not a PEM private key", path));
  }
  return key;
}

// TLS alerts that mean "I do not accept who you are".
bool IsAuthAlert(int alert) {
  switch (alert) {
    case SSL_AD_HANDSHAKE_FAILURE: case SSL_AD_BAD_CERTIFICATE:
    case SSL_AD_UNSUPPORTED_CERTIFICATE: case SSL_AD_CERTIFICATE_REVOKED:
    case SSL_AD_CERTIFICATE_EXPIRED: case SSL_AD_CERTIFICATE_UNKNOWN: case SSL_AD_UNKNOWN_CA:
    case SSL_AD_ACCESS_DENIED: case SSL_AD_DECRYPT_ERROR: case SSL_AD_CERTIFICATE_REQUIRED:
      return true;
    default:
      return false;
  }
}

std::string DrainErrors() {
  std::string detail;
  while (unsigned long e = ERR_get_error()) {
    char buf[256];
    ERR_error_string_n(e, buf, sizeof(buf));
    absl::StrAppend(&detail, detail.empty() ? "" : "; ", buf);
  }
  return detail;
}

absl::Status HandshakeError(SSL* ssl, int err, bool server, bool psk, const std::string& peer) {
  const char* us = server ? "destination" : "source";
  const char* them = server ? "source" : "destination";
  const int reason = ERR_GET_REASON(ERR_peek_error());
  const std::string detail = DrainErrors();
  if (reason == SSL_R_BINDER_DOES_NOT_VERIFY) {
    return absl::UnauthenticatedError(absl::StrFormat(
        "authentication failed (refused by the %s: %s %s does not hold our key: its TLS "
        "pre-shared-key binder does not verify)",
        us, them, peer));
  }
  if (reason == SSL_R_CERTIFICATE_VERIFY_FAILED || reason == SSL_R_NO_CERTIFICATES_RETURNED ||
      reason == SSL_R_PEER_DID_NOT_RETURN_A_CERTIFICATE) {
    const long v = SSL_get_verify_result(ssl);
    return absl::UnauthenticatedError(absl::StrFormat(
        "authentication failed (refused by the %s: the certificate of %s %s: %s)", us, them,
        peer, v != X509_V_OK ? X509_verify_cert_error_string(v) : "none presented"));
  }
  // With a pre-shared key, a destination that breaks off the handshake with any alert did not
  // take our key (OpenSSL answers a binder that does not verify with "illegal parameter").
  if (reason > SSL_AD_REASON_OFFSET &&
      (IsAuthAlert(reason - SSL_AD_REASON_OFFSET) || (psk && !server))) {
    return absl::UnauthenticatedError(absl::StrFormat(
        "authentication failed (refused by the %s %s: TLS alert \"%s\")", them, peer,
        SSL_alert_desc_string_long(reason - SSL_AD_REASON_OFFSET)));
  }
  if (reason == SSL_R_WRONG_VERSION_NUMBER || reason == SSL_R_HTTP_REQUEST ||
      reason == SSL_R_PACKET_LENGTH_TOO_LONG || reason == SSL_R_RECORD_LENGTH_MISMATCH) {
    return absl::UnavailableError(absl::StrFormat(
        "TLS handshake with %s failed: it does not speak TLS (both sides need the same "
        "--psk-file or --tls-* settings, and neither --no-tls)",
        peer));
  }
  if (detail.empty() || reason == SSL_R_UNEXPECTED_EOF_WHILE_READING ||
      err == SSL_ERROR_ZERO_RETURN) {
    return absl::UnavailableError(absl::StrFormat(
        "TLS handshake with %s failed: connection closed by the peer%s", peer,
        err == SSL_ERROR_SYSCALL && errno != 0 ? absl::StrCat(" (", std::strerror(errno), ")")
                                               : ""));
  }
  return absl::UnavailableError(absl::StrFormat(
      "TLS handshake with %s failed: %s (do both sides use the same --psk-file or --tls-* "
      "settings?)",
      peer, detail));
}

}  // namespace

TlsConfig::~TlsConfig() {
  SSL_CTX_free(client_);
  SSL_CTX_free(server_);
  OPENSSL_cleanse(tls_psk_.data(), tls_psk_.size());
}

absl::StatusOr<std::shared_ptr<const TlsConfig>> TlsConfig::WithPsk(
    std::span<const uint8_t> key) {
  std::shared_ptr<TlsConfig> c(new TlsConfig());
  const auto info = std::span(reinterpret_cast<const uint8_t*>(kPskInfo.data()), kPskInfo.size());
  ASSIGN_OR_RETURN(c->tls_psk_, crypto::HkdfSha256(key, {}, info, kTlsPskBytes));
  ASSIGN_OR_RETURN(c->client_, NewContext(false, true));
  ASSIGN_OR_RETURN(c->server_, NewContext(true, true));
  SSL_CTX_set_app_data(c->client_, c.get());
  SSL_CTX_set_app_data(c->server_, c.get());
  // OpenSSL writes to the socket with write(): a closed connection must be an EPIPE error,
  // not a signal that kills the process.
  std::signal(SIGPIPE, SIG_IGN);
  return std::shared_ptr<const TlsConfig>(std::move(c));
}

absl::StatusOr<std::shared_ptr<const TlsConfig>> TlsConfig::WithCertificates(
    const std::string& cert_file, const std::string& key_file, const std::string& ca_file) {
  std::shared_ptr<TlsConfig> c(new TlsConfig());
  c->certificates_ = true;
  ASSIGN_OR_RETURN(c->client_, NewContext(false, false));
  ASSIGN_OR_RETURN(c->server_, NewContext(true, false));
  ASSIGN_OR_RETURN(EVP_PKEY * key, LoadPrivateKey(key_file));
  for (SSL_CTX* ctx : {c->client_, c->server_}) {
    if (SSL_CTX_use_certificate_chain_file(ctx, cert_file.c_str()) != 1) {
      EVP_PKEY_free(key);
      return crypto::OpensslError(absl::StrFormat("--tls-cert %s", cert_file));
    }
    if (SSL_CTX_use_PrivateKey(ctx, key) != 1 || SSL_CTX_check_private_key(ctx) != 1) {
      EVP_PKEY_free(key);
      return crypto::OpensslError(
          absl::StrFormat("--tls-key %s: does not match --tls-cert %s", key_file, cert_file));
    }
    if (SSL_CTX_load_verify_locations(ctx, ca_file.c_str(), nullptr) != 1) {
      EVP_PKEY_free(key);
      return crypto::OpensslError(absl::StrFormat("--tls-ca %s", ca_file));
    }
    SSL_CTX_set_app_data(ctx, c.get());
  }
  EVP_PKEY_free(key);
  std::signal(SIGPIPE, SIG_IGN);
  return std::shared_ptr<const TlsConfig>(std::move(c));
}

TlsChannel::~TlsChannel() { SSL_free(ssl_); }

absl::StatusOr<std::unique_ptr<TlsChannel>> TlsChannel::Handshake(
    const TlsConfig& config, int fd, bool server, const std::string& peer_host,
    const std::string& peer, const WaitFn& wait) {
  ERR_clear_error();
  SSL* ssl = SSL_new(config.ctx(server));
  if (ssl == nullptr) {
    return crypto::OpensslError("SSL_new");
  }
  std::unique_ptr<TlsChannel> ch(new TlsChannel(ssl, peer, server));
  SSL_set_app_data(ssl, ch.get());
  if (SSL_set_fd(ssl, fd) != 1) {
    return crypto::OpensslError("SSL_set_fd");
  }
  if (!server && config.certificates()) {
    in_addr a{};
    const bool ip = ::inet_pton(AF_INET, peer_host.c_str(), &a) == 1;
    const int ok = ip ? X509_VERIFY_PARAM_set1_ip_asc(SSL_get0_param(ssl), peer_host.c_str())
                      : SSL_set1_host(ssl, peer_host.c_str()) &&
                            SSL_set_tlsext_host_name(ssl, peer_host.c_str());
    if (ok != 1) {
      return crypto::OpensslError(absl::StrCat("checking the certificate against ", peer_host));
    }
  }
  if (server) {
    SSL_set_accept_state(ssl);
  } else {
    SSL_set_connect_state(ssl);
  }
  for (;;) {
    ERR_clear_error();
    errno = 0;
    const int r = SSL_do_handshake(ssl);
    if (r == 1) {
      break;
    }
    const int err = SSL_get_error(ssl, r);
    if (err == SSL_ERROR_WANT_READ || err == SSL_ERROR_WANT_WRITE) {
      RETURN_IF_ERROR(wait(err == SSL_ERROR_WANT_READ ? POLLIN : POLLOUT));
      continue;
    }
    return HandshakeError(ssl, err, server, !config.certificates(), peer);
  }
  // In PSK mode the handshake must have used the key (OpenSSL calls an accepted external PSK
  // a resumption); a peer cannot get around it with some certificate, which nothing trusts.
  if (!config.certificates() && SSL_session_reused(ssl) != 1) {
    return absl::UnauthenticatedError(absl::StrFormat(
        "authentication failed (refused by the %s: %s did not use the pre-shared key)",
        server ? "destination" : "source", peer));
  }
  // Bytes OpenSSL already read past the handshake would be lost to the kernel: then stay in
  // user space (it does not happen with read-ahead off, the default).
  if (!SSL_has_pending(ssl)) {
    ASSIGN_OR_RETURN(ch->kernel_offload_, ch->OffloadToKernel(fd));
  }
  OPENSSL_cleanse(ch->client_secret_.data(), ch->client_secret_.size());
  OPENSSL_cleanse(ch->server_secret_.data(), ch->server_secret_.size());
  ch->client_secret_.clear();
  ch->server_secret_.clear();
  ch->description_ = absl::StrFormat(
      "%s %s, %s, %s", SSL_version(ssl) == TLS1_3_VERSION ? "TLS 1.3" : SSL_get_version(ssl),
      SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)), config.keyed_by(),
      ch->kernel_offload_ ? "kernel TLS" : "user-space TLS");
  return ch;
}

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

absl::Status TlsChannel::Retry(int ret, const std::string& what, const WaitFn& wait) {
  const int err = SSL_get_error(ssl_, ret);
  switch (err) {
    case SSL_ERROR_WANT_READ:
      return wait(POLLIN);
    case SSL_ERROR_WANT_WRITE:
      return wait(POLLOUT);
    case SSL_ERROR_ZERO_RETURN:
      return absl::UnavailableError(
          absl::StrFormat("%s: %s closed the TLS connection", what, peer_));
    case SSL_ERROR_SYSCALL:
      if (errno != 0 && ERR_peek_error() == 0) {
        return ErrnoStatus(absl::StrFormat("%s (%s)", what, peer_));
      }
      [[fallthrough]];
    default: {
      const int reason = ERR_GET_REASON(ERR_peek_error());
      if (reason > SSL_AD_REASON_OFFSET) {
        ERR_clear_error();
        return AlertError(reason - SSL_AD_REASON_OFFSET, what);
      }
      const std::string detail = DrainErrors();
      if (detail.empty() || reason == SSL_R_UNEXPECTED_EOF_WHILE_READING) {
        return absl::UnavailableError(
            absl::StrFormat("%s from %s: connection closed by the peer", what, peer_));
      }
      // A record that fails to authenticate is tampering or corruption on the wire.
      return absl::DataLossError(absl::StrFormat("%s (%s): TLS: %s", what, peer_, detail));
    }
  }
}

absl::Status TlsChannel::AlertError(int alert, const std::string& what) const {
  const char* them = server_ ? "source" : "destination";
  if (IsAuthAlert(alert)) {
    // TLS 1.3 ends the client's handshake before the server has checked the client's
    // certificate: a refusal of it arrives as an alert on the first read.
    return absl::UnauthenticatedError(absl::StrFormat(
        "authentication failed (refused by the %s %s: TLS alert \"%s\")", them, peer_,
        SSL_alert_desc_string_long(alert)));
  }
  return absl::UnavailableError(absl::StrFormat("%s: the %s %s ended the TLS connection (alert "
                                                "\"%s\")",
                                                what, them, peer_,
                                                SSL_alert_desc_string_long(alert)));
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

absl::Status TlsChannel::Write(const uint8_t* data, size_t len, const std::string& what,
                               const WaitFn& wait) {
  while (len > 0) {
    ERR_clear_error();
    errno = 0;
    size_t n = 0;
    const int r = SSL_write_ex(ssl_, data, len, &n);
    if (r == 1) {
      data += n;
      len -= n;
      continue;
    }
    RETURN_IF_ERROR(Retry(r, what, wait));
  }
  return absl::OkStatus();
}

absl::StatusOr<size_t> TlsChannel::Read(uint8_t* buf, size_t len, const std::string& what,
                                        const WaitFn& wait) {
  for (;;) {
    ERR_clear_error();
    errno = 0;
    size_t n = 0;
    const int r = SSL_read_ex(ssl_, buf, len, &n);
    if (r == 1) {
      return n;
    }
    RETURN_IF_ERROR(Retry(r, what, wait));
  }
}

}  // namespace lmig
