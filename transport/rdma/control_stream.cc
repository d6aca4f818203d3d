#include "transport/rdma/control_stream.h"

#include <algorithm>
#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/reactor/completion_token.h"

namespace lmig::rdma {

absl::Status ControlStream::Start() {
  buf_.assign((kRecvBuffers + kSendBuffers) * kChunk, 0);
  ASSIGN_OR_RETURN(mr_, RegisterMr(conn_->pd(), buf_.data(), buf_.size(),
                                   IBV_ACCESS_LOCAL_WRITE));
  for (int i = 0; i < kRecvBuffers; ++i) {
    RETURN_IF_ERROR(PostRecv(i));
  }
  for (int i = 0; i < kSendBuffers; ++i) {
    free_send_.push_back(i);
  }
  return absl::OkStatus();
}

absl::Status ControlStream::PostRecv(uint64_t i) {
  ibv_sge sge{reinterpret_cast<uint64_t>(RecvBuf(i)), static_cast<uint32_t>(kChunk),
              mr_->lkey};
  ibv_recv_wr wr{};
  wr.wr_id = CompletionToken{CompletionKind::kRdmaRecv, i}.Pack();
  wr.sg_list = &sge;
  wr.num_sge = 1;
  return conn_->PostRecv(&wr);
}

absl::Status ControlStream::Send(proto::MsgType type, uint64_t arg,
                                 std::span<const uint8_t> payload) {
  RETURN_IF_ERROR(conn_->CheckAlive());
  const proto::FrameHeader h = proto::MakeHeader(type, arg, payload);
  std::vector<uint8_t> frame(sizeof(h) + payload.size());
  std::memcpy(frame.data(), &h, sizeof(h));
  if (!payload.empty()) {
    std::memcpy(frame.data() + sizeof(h), payload.data(), payload.size());
  }
  bytes_sent_ += frame.size();
  SendQueue& sq = conn_->send_queue();
  for (size_t pos = 0; pos < frame.size(); pos += kChunk) {
    const size_t n = std::min(kChunk, frame.size() - pos);
    while (free_send_.empty() || !sq.Fits(1)) {
      RETURN_IF_ERROR(conn_->Poll("sending a control message"));
    }
    const int buf = free_send_.front();
    free_send_.pop_front();
    uint8_t* p = SendBuf(buf);
    std::memcpy(p, frame.data() + pos, n);
    ibv_sge sge{reinterpret_cast<uint64_t>(p), static_cast<uint32_t>(n), mr_->lkey};
    ibv_send_wr wr{};
    wr.wr_id = CompletionToken{CompletionKind::kRdmaSend, static_cast<uint64_t>(buf)}.Pack();
    wr.sg_list = &sge;
    wr.num_sge = 1;
    wr.opcode = IBV_WR_SEND;
    wr.send_flags = IBV_SEND_SIGNALED;
    RETURN_IF_ERROR(conn_->PostSend(&wr, "SEND"));
    sq.Posted(1);
    // Signalled: its completion retires it and the unsignalled WRITEs posted before it.
    send_covered_[buf] = sq.Track(/*signal=*/true);
  }
  return absl::OkStatus();
}

void ControlStream::OnSendComplete(uint64_t buf) {
  conn_->send_queue().Retire(send_covered_[buf]);
  free_send_.push_back(static_cast<int>(buf));
}

absl::Status ControlStream::OnRecvComplete(uint64_t buf, uint32_t bytes) {
  stream_.insert(stream_.end(), RecvBuf(buf), RecvBuf(buf) + bytes);
  return PostRecv(buf);
}

std::optional<proto::FrameHeader> ControlStream::PeekHeader() const {
  proto::FrameHeader h;
  if (stream_.size() < sizeof(h)) {
    return std::nullopt;
  }
  std::copy(stream_.begin(), stream_.begin() + sizeof(h), reinterpret_cast<uint8_t*>(&h));
  return h;
}

bool ControlStream::HasCompleteMessage() const {
  std::optional<proto::FrameHeader> h = PeekHeader();
  return h && proto::CheckHeader(*h).ok() && stream_.size() >= sizeof(*h) + h->length;
}

absl::StatusOr<proto::Message> ControlStream::Receive() {
  absl::Time last_progress = absl::Now();
  for (;;) {
    if (!conn_->error().ok() && !HasCompleteMessage()) {
      return conn_->error();
    }
    if (std::optional<proto::FrameHeader> header = PeekHeader()) {
      const proto::FrameHeader& h = *header;
      RETURN_IF_ERROR(proto::CheckHeader(h));
      if (h.type == static_cast<uint16_t>(proto::MsgType::kPages)) {
        return absl::DataLossError("corrupt stream: PAGES frame on an RDMA connection");
      }
      if (stream_.size() >= sizeof(h) + h.length) {
        proto::Message m;
        m.type = static_cast<proto::MsgType>(h.type);
        m.arg = h.arg;
        m.payload.assign(stream_.begin() + sizeof(h), stream_.begin() + sizeof(h) + h.length);
        stream_.erase(stream_.begin(), stream_.begin() + sizeof(h) + h.length);
        RETURN_IF_ERROR(proto::CheckPayload(h, m.payload));
        return m;
      }
    }
    const size_t before = stream_.size();
    if (absl::Status s = conn_->Poll("receiving a control message"); !s.ok()) {
      // A message that arrived before the error (the ACK before the peer's disconnect) is
      // still delivered; the error (sticky in the connection) comes with the next call.
      if (HasCompleteMessage()) {
        continue;
      }
      return s;
    }
    const absl::Duration timeout = conn_->options().timeout;
    if (stream_.size() != before) {
      last_progress = absl::Now();
    } else if (absl::Now() - last_progress > timeout) {
      return absl::DeadlineExceededError(
          absl::StrFormat("receiving a control message: %s silent for %d s", conn_->peer(),
                          absl::ToInt64Seconds(timeout)));
    }
  }
}

}  // namespace lmig::rdma
