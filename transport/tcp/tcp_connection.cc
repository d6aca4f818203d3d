#include "transport/tcp/tcp_connection.h"

#include <fcntl.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/uio.h>

#include <algorithm>
#include <climits>
#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "transport/tcp/tls.h"

namespace lmig {
namespace {

constexpr size_t kMaxIov = 512;                 // iovecs per sendmsg (IOV_MAX is 1024)
constexpr uint64_t kMaxBatchBytes = 16ull << 20;
class TcpTransport : public Transport {
 public:
  // SERVER: the accepting side (TLS server); PEER_HOST: the name dialled (TLS certificate
  // check).
  TcpTransport(UniqueFd sock, std::unique_ptr<Reactor> reactor, std::string peer,
               const TransportOptions& opts, bool server, std::string peer_host = "")
      : sock_(std::move(sock)), reactor_(std::move(reactor)), peer_(std::move(peer)),
        opts_(opts), server_(server), peer_host_(std::move(peer_host)) {
    // Zero-copy sends pin guest memory for the NIC; kTLS encrypts into its own buffers.
    zero_copy_ = opts_.tls == nullptr && reactor_->Supports(IORING_OP_SENDMSG_ZC);
  }
  ~TcpTransport() override {
    // Let outstanding zero-copy notifications arrive before the headers they pin go away. A
    // peer that stopped reading (stalled, or behind a cut link) never acknowledges the bytes
    // the kernel still holds, and their notifications never come: then abort the connection
    // (RST; the kernel drops its send queue, which completes them) and wait a bounded while.
    if (!DrainFor(absl::Seconds(1))) {
      const linger abort_now{1, 0};
      ::setsockopt(sock_.get(), SOL_SOCKET, SO_LINGER, &abort_now, sizeof(abort_now));
      sock_ = UniqueFd();
      (void)DrainFor(absl::Seconds(2));
    }
  }

  proto::TransportKind kind() const override { return proto::TransportKind::kTcp; }
  const std::string& peer() const override { return peer_; }

  absl::Status Send(proto::MsgType type, uint64_t arg,
                    std::span<const uint8_t> payload) override {
    RETURN_IF_ERROR(Flush());
    auto hdr = std::make_shared<proto::FrameHeader>(proto::MakeHeader(type, arg, payload));
    std::vector<iovec> iov = {{hdr.get(), sizeof(*hdr)}};
    if (!payload.empty()) {
      iov.push_back({const_cast<uint8_t*>(payload.data()), payload.size()});
    }
    stats_.control_bytes += sizeof(*hdr) + payload.size();
    return SendAll(std::move(iov), false, hdr, std::string("sending ") + proto::MsgTypeName(type));
  }

  absl::StatusOr<proto::Message> Receive() override {
    for (;;) {
      proto::FrameHeader h;
      RETURN_IF_ERROR(RecvAll(reinterpret_cast<uint8_t*>(&h), sizeof(h), "a frame header"));
      const auto* raw = reinterpret_cast<const uint8_t*>(&h);
      if (opts_.tls == nullptr && raw[0] == 0x16 && raw[1] == 0x03) {  // a TLS handshake record
        return absl::UnavailableError(absl::StrFormat(
            "%s speaks TLS and this side does not (both sides need the same --psk-file or "
            "--tls-* settings, and neither --no-tls)",
            peer_));
      }
      RETURN_IF_ERROR(proto::CheckHeader(h));
      const auto type = static_cast<proto::MsgType>(h.type);
      if (type == proto::MsgType::kPages) {
        if (!allow_pages_) {
          return absl::PermissionDeniedError(absl::StrFormat(
              "refused a PAGES frame from %s: guest memory is not taken from the wire now",
              peer_));
        }
        if (mem_ == nullptr || h.arg % 4096 != 0 || h.length % 4096 != 0 ||
            h.arg > mem_size_ || h.length > mem_size_ - h.arg) {
          return absl::DataLossError(absl::StrFormat(
              "corrupt stream: PAGES [0x%x, +0x%x) outside guest memory of 0x%x bytes", h.arg,
              h.length, mem_size_));
        }
        RETURN_IF_ERROR(RecvAll(mem_ + h.arg, h.length, "page data"));
        stats_.data_bytes += h.length;
        continue;
      }
      proto::Message m;
      m.type = type;
      m.arg = h.arg;
      m.payload.resize(h.length);
      RETURN_IF_ERROR(RecvAll(m.payload.data(), m.payload.size(), "a message payload"));
      RETURN_IF_ERROR(proto::CheckPayload(h, m.payload));
      stats_.control_bytes += sizeof(h) + h.length;
      return m;
    }
  }

  absl::StatusOr<std::vector<uint8_t>> AttachMemory(uint8_t* base, uint64_t size) override {
    mem_ = base;
    mem_size_ = size;
    return std::vector<uint8_t>();
  }
  absl::Status SetPeerMemory(std::span<const uint8_t> blob) override {
    if (!blob.empty()) {
      return absl::DataLossError(absl::StrFormat(
          "%s sent %d bytes of memory regions on a TCP connection", peer_,
          blob.size()));
    }
    return absl::OkStatus();
  }

  void SetDeadline(absl::Time deadline, std::string what) override {
    deadline_ = deadline;
    deadline_what_ = std::move(what);
  }
  void AllowIncomingPages(bool allow) override { allow_pages_ = allow; }
  void Shutdown() override { ::shutdown(sock_.get(), SHUT_RDWR); }

  absl::Status Write(std::span<const RamRange> ranges) override {
    for (const RamRange& r : ranges) {
      if (r.offset + r.length > mem_size_) {
        return absl::OutOfRangeError(absl::StrFormat("range [0x%x, +0x%x) beyond memory",
                                                     r.offset, r.length));
      }
      if (batch_iov_.size() + 2 > kMaxIov || batch_bytes_ >= kMaxBatchBytes) {
        RETURN_IF_ERROR(SubmitBatch());
      }
      if (!batch_headers_) {
        batch_headers_ = std::make_shared<std::vector<proto::FrameHeader>>();
        batch_headers_->reserve(kMaxIov / 2);
      }
      batch_headers_->push_back(proto::MakeHeader(
          proto::MsgType::kPages, r.offset, {mem_ + r.offset, r.length}, proto::kNoPayloadHash));
      batch_iov_.push_back({&batch_headers_->back(), sizeof(proto::FrameHeader)});
      batch_iov_.push_back({mem_ + r.offset, r.length});
      batch_bytes_ += r.length;
      stats_.data_bytes += r.length;
    }
    return absl::OkStatus();
  }

  absl::Status Flush() override { return SubmitBatch(); }

  TransportStats stats() const override {
    TransportStats s = stats_;
    s.zero_copy = zero_copy_;
    if (tls_ != nullptr) {
      s.security = tls_->description();
    }
    return s;
  }

 private:
  absl::Status SubmitBatch() {
    if (batch_iov_.empty()) {
      return absl::OkStatus();
    }
    auto headers = std::move(batch_headers_);
    std::vector<iovec> iov = std::move(batch_iov_);
    batch_iov_.clear();
    batch_bytes_ = 0;
    ++stats_.work_requests;
    return SendAll(std::move(iov), zero_copy_, headers, "sending pages");
  }

  // Sends every byte of IOV in order (one operation in flight keeps the stream ordered);
  // KEEPALIVE pins the header buffers until zero-copy notifications say the kernel is done.
  absl::Status SendAll(std::vector<iovec> iov, bool zc, std::shared_ptr<void> keepalive,
                       const std::string& what) {
    RETURN_IF_ERROR(EnsureTls());
    if (tls_ != nullptr && !tls_->kernel_offload()) {
      for (const iovec& v : iov) {
        RETURN_IF_ERROR(tls_->Write(static_cast<const uint8_t*>(v.iov_base), v.iov_len,
                                    absl::StrCat(what, " to ", peer_), SocketWait(what)));
      }
      return absl::OkStatus();
    }
    // The kernel's TLS refuses MSG_WAITALL on sends; the loop below resends the rest anyway.
    const int flags = MSG_NOSIGNAL | (tls_ != nullptr ? 0 : MSG_WAITALL);
    size_t first = 0;
    while (first < iov.size()) {
      msghdr msg{};
      msg.msg_iov = &iov[first];
      msg.msg_iovlen = iov.size() - first;
      ASSIGN_OR_RETURN(int n, SyncOp(
          [&](io_uring_sqe* sqe) {
            if (zc) {
              io_uring_prep_sendmsg_zc(sqe, sock_.get(), &msg, flags);
            } else {
              io_uring_prep_sendmsg(sqe, sock_.get(), &msg, flags);
            }
          },
          zc, keepalive, what));
      if (n == 0) {
        return absl::UnavailableError(absl::StrFormat("%s to %s: connection closed", what, peer_));
      }
      size_t left = static_cast<size_t>(n);
      while (first < iov.size() && left >= iov[first].iov_len) {
        left -= iov[first].iov_len;
        ++first;
      }
      if (left > 0) {
        iov[first].iov_base = static_cast<uint8_t*>(iov[first].iov_base) + left;
        iov[first].iov_len -= left;
      }
    }
    return absl::OkStatus();
  }

  absl::Status RecvAll(uint8_t* buf, uint64_t len, const char* what) {
    RETURN_IF_ERROR(EnsureTls());
    uint64_t got = 0;
    if (tls_ != nullptr && !tls_->kernel_offload()) {
      const std::string op = absl::StrCat("receiving ", what);
      while (got < len) {
        ASSIGN_OR_RETURN(size_t n, tls_->Read(buf + got, len - got, op, SocketWait(op)));
        got += n;
      }
      return absl::OkStatus();
    }
    while (got < len) {
      const unsigned chunk = static_cast<unsigned>(std::min<uint64_t>(len - got, 1u << 30));
      ASSIGN_OR_RETURN(int n, SyncOp(
          [&](io_uring_sqe* sqe) {
            // Over kernel TLS, whatever has arrived: a wait that its timeout interrupts
            // returns what it had, and the next one must time the silence from then, not
            // from an earlier start (a cut link is noticed --timeout after the last byte).
            io_uring_prep_recv(sqe, sock_.get(), buf + got, chunk,
                               tls_ != nullptr ? 0 : MSG_WAITALL);
          },
          false, nullptr, std::string("receiving ") + what));
      if (n == 0) {
        return absl::UnavailableError(absl::StrFormat(
            "receiving %s from %s: connection closed by the peer", what, peer_));
      }
      got += static_cast<uint64_t>(n);
    }
    return absl::OkStatus();
  }

  struct OpState {
    int result = INT_MIN;
    bool done = false;
  };

  // Runs one operation (prepared by PREP) with a linked timeout and waits for its result.
  absl::StatusOr<int> SyncOp(const std::function<void(io_uring_sqe*)>& prep, bool zc,
                             std::shared_ptr<void> keepalive, const std::string& what) {
    auto st = std::make_shared<OpState>();
    if (zc) {
      ++zc_pending_;
    }
    io_uring_sqe* sqe = reactor_->Prepare([this, st, zc, keepalive](int res, uint32_t flags) {
      if (flags & IORING_CQE_F_NOTIF) {
        --zc_pending_;
        return;
      }
      st->result = res;
      st->done = true;
      if (zc && !(flags & IORING_CQE_F_MORE)) {
        --zc_pending_;  // no notification will follow (the send failed)
      }
    });
    bool deadline_binds = false;
    const absl::Duration limit = Limit(deadline_binds);
    prep(sqe);
    sqe->flags |= IOSQE_IO_LINK;
    const int64_t ns = absl::ToInt64Nanoseconds(limit);
    timeout_.tv_sec = ns / 1000000000;
    timeout_.tv_nsec = std::max<int64_t>(ns % 1000000000, timeout_.tv_sec == 0 ? 1 : 0);
    // The timer's own completion says whether it fired (-ETIME) or was cancelled because the
    // operation finished first; wait for both.
    auto timer = std::make_shared<OpState>();
    io_uring_prep_link_timeout(reactor_->Prepare([timer](int res, uint32_t) {
                                 timer->result = res;
                                 timer->done = true;
                               }),
                               &timeout_, 0);
    if (absl::Status s = reactor_->RunUntil([&] { return st->done && timer->done; });
        !s.ok()) {
      // Cancelled (or io_uring failed): the connection is over. Shutting the socket down ends
      // the operation still in flight at once, so the destructor's drain does not wait.
      ::shutdown(sock_.get(), SHUT_RDWR);
      return s;
    }
    // A kernel TLS receive that the timer interrupts ends with EINTR rather than ECANCELED.
    if (st->result == -ECANCELED || st->result == -ETIME ||
        (st->result == -EINTR && timer->result == -ETIME)) {
      return TimedOut(deadline_binds, what);
    }
    if (st->result == -EIO && tls_ != nullptr) {
      return tls_->KernelRecordError(sock_.get(), what);
    }
    if (st->result < 0) {
      return ErrnoStatus(absl::StrFormat("%s (%s)", what, peer_), -st->result);
    }
    return st->result;
  }

  // How long the next wait may last: the whole-phase deadline bounds it as well as the silence
  // timeout, so a peer that trickles a byte at a time cannot stretch a phase.
  absl::Duration Limit(bool& deadline_binds) const {
    const absl::Duration left = deadline_ - absl::Now();
    deadline_binds = left < opts_.timeout;
    return std::max(absl::ZeroDuration(), std::min(left, opts_.timeout));
  }
  absl::Status TimedOut(bool deadline_binds, const std::string& what) const {
    if (deadline_binds) {
      return absl::DeadlineExceededError(
          absl::StrFormat("%s: %s from %s passed its deadline", what, deadline_what_, peer_));
    }
    return absl::DeadlineExceededError(absl::StrFormat(
        "%s: %s silent for %d s", what, peer_, absl::ToInt64Seconds(opts_.timeout)));
  }

  // For the TLS paths (non-blocking socket): waits for the socket under Limit().
  TlsChannel::WaitFn SocketWait(std::string what) {
    return [this, what = std::move(what)](short events) -> absl::Status {
      bool deadline_binds = false;
      const absl::Time until = absl::Now() + Limit(deadline_binds);
      for (;;) {
        const absl::Duration left = std::max(absl::ZeroDuration(), until - absl::Now());
        ASSIGN_OR_RETURN(const bool ready,
                         PollOrCancel(sock_.get(), events,
                                      static_cast<int>(std::min<int64_t>(
                                          absl::ToInt64Milliseconds(left) + 1, 1 << 30)),
                                      opts_.cancel.get(), peer_));
        if (ready) {
          return absl::OkStatus();
        }
        if (absl::Now() >= until) {
          return TimedOut(deadline_binds, what);
        }
      }
    };
  }

  // With TLS configured: the handshake, once, before the first byte of the migration. Its
  // failure is kept, so every later call fails the same way. With kernel TLS the socket goes
  // back to blocking for io_uring; OpenSSL in user space needs it non-blocking (poll waits).
  absl::Status EnsureTls() {
    if (opts_.tls == nullptr || tls_ != nullptr) {
      return absl::OkStatus();
    }
    RETURN_IF_ERROR(tls_error_);
    const int fl = ::fcntl(sock_.get(), F_GETFL);
    ::fcntl(sock_.get(), F_SETFL, fl | O_NONBLOCK);
    auto ch = TlsChannel::Handshake(*opts_.tls, sock_.get(), server_, peer_host_, peer_,
                                    SocketWait("TLS handshake"));
    if (!ch.ok()) {
      tls_error_ = ch.status();
      return tls_error_;
    }
    tls_ = std::move(*ch);
    if (tls_->kernel_offload()) {
      ::fcntl(sock_.get(), F_SETFL, fl & ~O_NONBLOCK);
    }
    return absl::OkStatus();
  }

  // Waits up to LIMIT for every operation and zero-copy notification; true if all came.
  bool DrainFor(absl::Duration limit) {
    if (zc_pending_ == 0 && reactor_->in_flight() == 0) {
      return true;
    }
    auto expired = std::make_shared<bool>(false);
    reactor_->Timeout(limit, [expired](int, uint32_t) { *expired = true; });
    // In flight besides our own timer (which counts until it fires).
    const auto others = [&] { return reactor_->in_flight() - (*expired ? 0 : 1); };
    absl::Status s =
        reactor_->RunUntil([&] { return (zc_pending_ == 0 && others() == 0) || *expired; },
                           /*cancellable=*/false);
    return s.ok() && zc_pending_ == 0;
  }

  UniqueFd sock_;
  std::unique_ptr<Reactor> reactor_;
  std::string peer_;
  TransportOptions opts_;
  bool server_;
  std::string peer_host_;
  std::unique_ptr<TlsChannel> tls_;
  absl::Status tls_error_;
  bool zero_copy_ = false;
  int zc_pending_ = 0;
  __kernel_timespec timeout_{};
  absl::Time deadline_ = absl::InfiniteFuture();
  std::string deadline_what_;
  bool allow_pages_ = false;
  uint8_t* mem_ = nullptr;
  uint64_t mem_size_ = 0;
  std::vector<iovec> batch_iov_;
  std::shared_ptr<std::vector<proto::FrameHeader>> batch_headers_;
  uint64_t batch_bytes_ = 0;
  TransportStats stats_;
};

}  // namespace

std::unique_ptr<Transport> NewTcpConnection(UniqueFd sock, std::unique_ptr<Reactor> reactor,
                                            std::string peer, const TransportOptions& opts,
                                            bool server, std::string peer_host) {
  return std::make_unique<TcpTransport>(std::move(sock), std::move(reactor), std::move(peer),
                                        opts, server, std::move(peer_host));
}

}  // namespace lmig
