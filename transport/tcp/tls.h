// TLS 1.3 under the TCP transport (OpenSSL's libssl): with a key or certificates, every byte of
// a migration over TCP, page data included, goes through it (README, "Security").
//
// Keyed either by the pre-shared key, as a TLS 1.3 external PSK derived from it with HKDF and
// combined with an ECDHE exchange (psk_dhe_ke: a recorded session stays unreadable even to
// someone who later learns the key), or by certificates, mutually: each side presents one and
// checks the other's against --tls-ca, and the source also checks that the destination's
// certificate names the host or address it dialled.
//
// Once the handshake is done the record keys go to the kernel (kTLS) where the kernel has it:
// the transport's io_uring path then sends and receives plaintext on the socket as before, and
// the kernel encrypts and decrypts on the way, with no copy in user space. Debian 12's OpenSSL
// 3.0 is built without its own kTLS support, so this installs the keys itself: OpenSSL's
// key-log callback gives the two application traffic secrets (kept in memory only, wiped once
// used), OpenSSL's TLS13-KDF derives each direction's key and IV from them (RFC 8446 7.3), and
// setsockopt(SOL_TLS) hands them to the kernel with record sequence 0 (nothing has been sent
// or received under them yet: no session tickets, no early data). Without kTLS, OpenSSL
// encrypts in user space and the transport reads and writes through it.
// No session tickets (no resumption: every connection does the full handshake) and no
// renegotiation or key update, so nothing but application data follows the handshake.
#pragma once

#include <openssl/ssl.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lmig {

// What both roles need to speak TLS: one SSL_CTX per role. Built once per process (files read
// and checked then), shared by every connection.
class TlsConfig {
 public:
  // KEY: the pre-shared key's bytes (at least 32).
  static absl::StatusOr<std::shared_ptr<const TlsConfig>> WithPsk(std::span<const uint8_t> key);
  // PEM files: this side's certificate chain and private key (mode checked like --psk-file),
  // and the CA that must have signed the peer's certificate. Errors name the flag and file.
  static absl::StatusOr<std::shared_ptr<const TlsConfig>> WithCertificates(
      const std::string& cert_file, const std::string& key_file, const std::string& ca_file);

  TlsConfig(const TlsConfig&) = delete;
  TlsConfig& operator=(const TlsConfig&) = delete;
  ~TlsConfig();

  bool certificates() const { return certificates_; }
  // "pre-shared key" or "certificates".
  const char* keyed_by() const { return certificates_ ? "certificates" : "pre-shared key"; }
  SSL_CTX* ctx(bool server) const { return server ? server_ : client_; }
  std::span<const uint8_t> tls_psk() const { return tls_psk_; }

 private:
  TlsConfig() = default;
  bool certificates_ = false;
  SSL_CTX* client_ = nullptr;
  SSL_CTX* server_ = nullptr;
  std::vector<uint8_t> tls_psk_;  // wiped on destruction
};

// One TLS connection on a connected, non-blocking TCP socket FD (not owned).
class TlsChannel {
 public:
  // Waits until FD is ready for EVENTS (POLLIN/POLLOUT) or fails with the transport's timeout
  // or deadline error.
  using WaitFn = std::function<absl::Status(short events)>;

  // Runs the handshake as SERVER (the destination) or client (the source, which checks the
  // certificate against PEER_HOST). PEER names the other end in errors. A peer that fails to
  // prove the key or certificate: kUnauthenticated "authentication failed (refused by the
  // destination|source: ...)"; one that does not speak TLS or breaks off: kUnavailable.
  static absl::StatusOr<std::unique_ptr<TlsChannel>> Handshake(const TlsConfig& config, int fd,
                                                               bool server,
                                                               const std::string& peer_host,
                                                               const std::string& peer,
                                                               const WaitFn& wait);
  ~TlsChannel();

  // OpenSSL's key-log callback (set on both contexts): keeps the application traffic secrets
  // of the connection, until the handshake hands them to the kernel.
  static void KeyLog(const SSL* ssl, const char* line);

  // Whether the kernel encrypts and decrypts both directions (then read and write the socket
  // directly; nothing is buffered in OpenSSL).
  bool kernel_offload() const { return kernel_offload_; }
  // E.g. "TLS 1.3 TLS_AES_256_GCM_SHA384, pre-shared key, kernel TLS".
  const std::string& description() const { return description_; }

  // User-space path (kernel_offload() false): all of DATA, or an error. WHAT names the
  // operation in errors ("sending pages").
  absl::Status Write(const uint8_t* data, size_t len, const std::string& what,
                     const WaitFn& wait);
  // Up to LEN bytes (at least one); the peer closing the connection is an error.
  absl::StatusOr<size_t> Read(uint8_t* buf, size_t len, const std::string& what,
                              const WaitFn& wait);

  // Kernel path: a read that failed with EIO met a record that is not application data (the
  // peer's alert, say, when it refused this side's certificate after the handshake). Reads that
  // record from FD and says what it was.
  absl::Status KernelRecordError(int fd, const std::string& what) const;

 private:
  TlsChannel(SSL* ssl, std::string peer, bool server)
      : ssl_(ssl), peer_(std::move(peer)), server_(server) {}
  // Hands the record keys to the kernel; false (nothing changed) where it has no TLS.
  absl::StatusOr<bool> OffloadToKernel(int fd);
  // After the handshake: the destination sends proto::kTlsAccepted, the source waits for it,
  // so a source the destination refused learns it from the alert, not from a reset later.
  absl::Status Confirm(int fd, const WaitFn& wait);
  absl::Status CheckAccepted(const uint8_t* got, const std::string& what) const;
  // The peer refused us with alert ALERT (a TLS alert description).
  absl::Status AlertError(int alert, const std::string& what) const;
  // After an SSL_read/SSL_write that returned RET: waits for the socket and returns OK to
  // retry, or the error.
  absl::Status Retry(int ret, const std::string& what, const WaitFn& wait);

  SSL* ssl_;
  std::string peer_;
  bool server_;
  bool kernel_offload_ = false;
  std::vector<uint8_t> client_secret_, server_secret_;  // wiped once used
  std::string description_;
};

}  // namespace lmig
