// The migration transport interface: a control channel of framed messages (protocol.h) plus a
// data path that moves runs of guest RAM from the source's memory to the same RAM offsets in
// the destination's memory. TCP sends them as kPages frames (zero-copy from guest memory where
// io_uring offers SEND_ZC); RDMA writes them with one-sided RDMA WRITEs.
//
// A transport is used by one thread at a time (the migration thread, or a stream's reactor),
// which drives its own io_uring; only Shutdown may come from another thread.
#pragma once

#include <cstdint>
#include <memory>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "include/lmig/protocol.h"
#include "include/lmig/ram_range.h"

namespace lmig {

class Cancellation;  // src/reactor/cancellation.h
class TlsConfig;     // transport/tcp/tls.h

struct TransportOptions {
  std::string rdma_device;                // empty: whichever device owns the address
  absl::Duration timeout = absl::Seconds(30);
  uint64_t max_write_bytes = 256 << 10;   // RDMA: largest single WRITE
  uint64_t mr_chunk_bytes = 1ull << 30;   // RDMA: MR registration chunk (capped by max_mr_size)
  bool busy_poll = false;                 // RDMA: spin on the CQ instead of sleeping
  // TCP: TLS 1.3 over the whole connection, page data included (null: none). The handshake
  // runs at the first Send or Receive, under that call's deadline.
  std::shared_ptr<const TlsConfig> tls;
  // Once cancelled (from any thread: SIGINT/SIGTERM on the destination), every wait of the
  // listener and its connections fails at once with the cancellation's status. Null: never.
  std::shared_ptr<const Cancellation> cancel;
};

struct TransportStats {
  uint64_t data_bytes = 0;        // guest memory moved
  uint64_t control_bytes = 0;     // control messages, headers included
  uint64_t work_requests = 0;     // RDMA WRITEs or TCP send operations
  double registration_ms = 0;     // RDMA memory registration (both sides)
  bool zero_copy = false;
  std::string security;           // TCP: the TLS connection, e.g. "TLS 1.3 ..., kernel TLS"
};

class Transport {
 public:
  virtual ~Transport() = default;
  virtual proto::TransportKind kind() const = 0;
  // The peer's address, for messages.
  virtual const std::string& peer() const = 0;

  // Control channel.
  virtual absl::Status Send(proto::MsgType type, uint64_t arg,
                            std::span<const uint8_t> payload) = 0;
  // Next control message. kPages frames never surface here: while AllowIncomingPages(true)
  // the transport puts their payload straight into the memory given to AttachMemory, and
  // refuses them otherwise. Error on timeout, the deadline, a broken link or a corrupt frame.
  virtual absl::StatusOr<proto::Message> Receive() = 0;

  // Every blocking call fails with DeadlineExceeded once DEADLINE has passed, however the
  // peer trickles bytes; absl::InfiniteFuture() lifts it. The per-call silence timeout
  // (TransportOptions::timeout) applies as well. WHAT names the phase in the error.
  virtual void SetDeadline(absl::Time deadline, std::string what) = 0;

  // Destination: whether guest memory may be written from the wire now (TCP: PAGES frames;
  // RDMA: the QP's remote-write access, on top of the MRs' registration). Off until called: a
  // source never takes memory from the wire.
  virtual void AllowIncomingPages(bool allow) {}

  // Both sides: the local guest memory. On the destination (RDMA) this registers it for remote
  // writes and returns the blob the source needs (regions and rkeys), sent in kHelloAck.
  virtual absl::StatusOr<std::vector<uint8_t>> AttachMemory(uint8_t* base, uint64_t size) = 0;
  // Source: the blob from the destination's kHelloAck.
  virtual absl::Status SetPeerMemory(std::span<const uint8_t> blob) = 0;

  // Source data path: queues RANGES for transfer. Call Flush before a control message that
  // must follow the data (transports order them anyway; Flush also reports errors).
  virtual absl::Status Write(std::span<const RamRange> ranges) = 0;
  virtual absl::Status Flush() = 0;

  // Destination: invalidates remote access to local memory (RDMA deregisters its MRs).
  virtual void RevokeRemoteAccess() {}

  // Any thread, while the owning thread may be waiting in a call: ends the connection's every
  // wait at once (TCP: shutdown(2); the owner's call fails, the object stays valid until its
  // owner destroys it; RDMA: the QP to the error state). For the parallel streams' teardown.
  virtual void Shutdown() {}

  virtual TransportStats stats() const = 0;
};

// Waits for incoming connections. Destroying it stops listening: later connection attempts
// are refused at once.
class Listener {
 public:
  virtual ~Listener() = default;
  // The next connection, or DeadlineExceeded at DEADLINE (absl::InfiniteFuture(): wait).
  virtual absl::StatusOr<std::unique_ptr<Transport>> Accept(absl::Time deadline) = 0;
};

// Factories; HOST/ADDR are names or IPv4 addresses. Errors name the address.
absl::StatusOr<std::unique_ptr<Transport>> ConnectTransport(proto::TransportKind kind,
                                                            const std::string& host,
                                                            uint16_t port,
                                                            const TransportOptions& opts);
absl::StatusOr<std::unique_ptr<Listener>> ListenTransport(proto::TransportKind kind,
                                                          const std::string& addr,
                                                          uint16_t port,
                                                          const TransportOptions& opts);

}  // namespace lmig
