// TLS 1.3 configuration (transport/tcp/tls.h): the two SSL_CTX, keyed by the pre-shared key
// (external PSK callbacks) or by certificates.
#include <fcntl.h>
#include <openssl/err.h>
#include <openssl/pem.h>
#include <sys/stat.h>
#include <unistd.h>

#include <csignal>
#include <cstring>
#include <string_view>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/base/unique_fd.h"
#include "src/crypto/primitives.h"
#include "transport/tcp/tls.h"

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

}  // namespace lmig
