#include "transport/tcp/tls.h"

#include <arpa/inet.h>
#include <openssl/err.h>
#include <openssl/x509v3.h>
#include <poll.h>
#include <sys/socket.h>

#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/protocol.h"
#include "include/lmig/status.h"
#include "src/crypto/primitives.h"

namespace lmig {
namespace {

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
        "authentication failed (refused by the %s %s: %sTLS alert \"%s\")", them, peer,
        psk ? "it does not take our pre-shared key, " : "",
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
  RETURN_IF_ERROR(ch->Confirm(fd, wait));
  ch->description_ = absl::StrFormat(
      "%s %s, %s, %s", SSL_version(ssl) == TLS1_3_VERSION ? "TLS 1.3" : SSL_get_version(ssl),
      SSL_CIPHER_get_name(SSL_get_current_cipher(ssl)), config.keyed_by(),
      ch->kernel_offload_ ? "kernel TLS" : "user-space TLS");
  return ch;
}

absl::Status TlsChannel::Confirm(int fd, const WaitFn& wait) {
  const std::string what =
      server_ ? "telling the source its TLS session is accepted"
              : "waiting for the destination to accept the TLS session";
  uint8_t token[sizeof(proto::kTlsAccepted)];
  std::memcpy(token, proto::kTlsAccepted, sizeof(token));
  if (!kernel_offload_) {
    if (server_) {
      return Write(token, sizeof(token), what, wait);
    }
    uint8_t got[sizeof(token)];
    for (size_t have = 0; have < sizeof(got);) {
      ASSIGN_OR_RETURN(const size_t n, Read(got + have, sizeof(got) - have, what, wait));
      have += n;
    }
    return CheckAccepted(got, what);
  }
  // Kernel TLS: the socket is still non-blocking here.
  uint8_t got[sizeof(token)];
  uint8_t* buf = server_ ? token : got;
  for (size_t done = 0; done < sizeof(token);) {
    const ssize_t n = server_ ? ::send(fd, buf + done, sizeof(token) - done, MSG_NOSIGNAL)
                              : ::recv(fd, buf + done, sizeof(token) - done, 0);
    if (n > 0) {
      done += static_cast<size_t>(n);
      continue;
    }
    if (n == 0) {
      return absl::UnavailableError(
          absl::StrFormat("%s: %s closed the connection", what, peer_));
    }
    if (errno == EAGAIN || errno == EWOULDBLOCK) {
      RETURN_IF_ERROR(wait(server_ ? POLLOUT : POLLIN));
    } else if (errno == EIO && !server_) {
      return KernelRecordError(fd, what);
    } else if (errno != EINTR) {
      return ErrnoStatus(absl::StrFormat("%s (%s)", what, peer_));
    }
  }
  return server_ ? absl::OkStatus() : CheckAccepted(got, what);
}

absl::Status TlsChannel::CheckAccepted(const uint8_t* got, const std::string& what) const {
  if (std::memcmp(got, proto::kTlsAccepted, sizeof(proto::kTlsAccepted)) != 0) {
    return absl::DataLossError(absl::StrFormat(
        "%s: %s sent something else first (is it lmig-rdma, protocol %d?)", what, peer_,
        proto::kVersion));
  }
  return absl::OkStatus();
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
    // certificate: a refusal of it arrives as an alert where the source waits for
    // proto::kTlsAccepted.
    return absl::UnauthenticatedError(absl::StrFormat(
        "authentication failed (refused by the %s %s: TLS alert \"%s\")", them, peer_,
        SSL_alert_desc_string_long(alert)));
  }
  return absl::UnavailableError(absl::StrFormat("%s: the %s %s ended the TLS connection (alert "
                                                "\"%s\")",
                                                what, them, peer_,
                                                SSL_alert_desc_string_long(alert)));
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
