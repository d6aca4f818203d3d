// The control stream of an RDMA connection: the protocol's frames (protocol.h) as a byte stream
// in SEND/RECV chunks on the connection's QP. kRecvBuffers receives of kChunk bytes stay posted
// (each is posted again once its bytes are taken); a frame is cut into kChunk SENDs from
// kSendBuffers registered buffers, each SEND signalled so that its completion frees its
// buffer. There are no credits: a SEND the peer has no receive posted for yet is retried by
// the QP (infinite RNR retry), so a busy receiver is waited for. RC ordering lands every WRITE
// posted before a SEND ahead of it, so the destination never reads an END_ROUND before the
// memory it follows.
#pragma once

#include <cstddef>
#include <cstdint>
#include <deque>
#include <optional>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "include/lmig/protocol.h"
#include "transport/rdma/rdma_connection.h"
#include "transport/rdma/verbs.h"

namespace lmig::rdma {

class ControlStream {
 public:
  static constexpr size_t kChunk = 64 << 10;  // bytes per SEND / RECV buffer
  static constexpr int kRecvBuffers = 32;
  static constexpr int kSendBuffers = 16;

  // CONN carries the stream and outlives it.
  explicit ControlStream(RdmaConnection* conn) : conn_(conn) {}
  ControlStream(const ControlStream&) = delete;
  ControlStream& operator=(const ControlStream&) = delete;

  // Registers the buffers on the connection's PD and posts every receive: before the
  // connection is established, so the peer's first SEND finds one.
  absl::Status Start();

  // Sends one frame; waits (Poll) for free send buffers and send-queue room. Error: the
  // connection's, or a failed post.
  absl::Status Send(proto::MsgType type, uint64_t arg, std::span<const uint8_t> payload);
  // The next frame, checked (header, type, payload hash). A message that arrived before an
  // error (the ACK before the peer's disconnect) is still delivered; the error comes with the
  // next call. Error on silence beyond the connection's timeout, its deadline, a broken link,
  // a corrupt frame or a PAGES frame.
  absl::StatusOr<proto::Message> Receive();

  // The connection's completions of this stream's work requests (kRdmaSend / kRdmaRecv
  // tokens with the buffer's index): a SEND retires its send-queue entries and frees its
  // buffer; a RECV's bytes join the stream and its buffer is posted again.
  void OnSendComplete(uint64_t buf);
  absl::Status OnRecvComplete(uint64_t buf, uint32_t bytes);

  // Control bytes sent, headers included.
  uint64_t bytes_sent() const { return bytes_sent_; }

 private:
  uint8_t* RecvBuf(uint64_t i) { return buf_.data() + i * kChunk; }
  uint8_t* SendBuf(uint64_t i) { return buf_.data() + (kRecvBuffers + i) * kChunk; }
  absl::Status PostRecv(uint64_t i);
  // The next frame's header, once the stream holds one.
  std::optional<proto::FrameHeader> PeekHeader() const;
  bool HasCompleteMessage() const;

  RdmaConnection* conn_;
  std::vector<uint8_t> buf_;  // kRecvBuffers receive buffers, then kSendBuffers send buffers
  Mr mr_;
  std::deque<int> free_send_;
  uint64_t send_covered_[kSendBuffers] = {};  // send-queue entries each SEND's completion retires
  std::deque<uint8_t> stream_;                // received bytes not yet taken as frames
  uint64_t bytes_sent_ = 0;
};

}  // namespace lmig::rdma
