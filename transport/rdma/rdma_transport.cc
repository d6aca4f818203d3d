#include "transport/rdma/rdma_transport.h"

#include <arpa/inet.h>
#include <fcntl.h>
#include <netdb.h>

#include <algorithm>
#include <cstring>
#include <chrono>
#include <deque>
#include <optional>
#include <thread>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/reactor/completion_token.h"
#include "src/reactor/reactor.h"
#include "transport/rdma/verbs.h"
#include "transport/rdma/write_planner.h"

namespace lmig {
namespace {

using proto::RegionWire;
using rdma::CmId;
using rdma::EventChannel;

constexpr size_t kCtrlChunk = 64 << 10;   // bytes per control SEND / RECV buffer
constexpr int kRecvBuffers = 32;
constexpr int kSendBuffers = 16;
constexpr int kSignalEvery = 64;          // selective signalling of WRITEs
constexpr int kMaxSendWr = 1024;
constexpr int kResolveTimeoutMs = 5000;

// wr_id: a CompletionToken (kRdmaWrite: a count; kRdmaSend / kRdmaRecv: a buffer index).
uint64_t WrId(CompletionKind k, uint64_t v) { return CompletionToken{k, v}.Pack(); }

absl::StatusOr<sockaddr_in> ResolveIpv4(const std::string& host, uint16_t port) {
  addrinfo hints{};
  hints.ai_family = AF_INET;
  addrinfo* res = nullptr;
  const int err = ::getaddrinfo(host.c_str(), nullptr, &hints, &res);
  if (err != 0 || res == nullptr) {
    return absl::NotFoundError(
        absl::StrFormat("cannot resolve %s: %s", host, ::gai_strerror(err)));
  }
  sockaddr_in sa;
  std::memcpy(&sa, res->ai_addr, sizeof(sa));
  ::freeaddrinfo(res);
  sa.sin_port = htons(port);
  return sa;
}

// Waits for FD to become readable, or TIMEOUT, on REACTOR. Returns false on timeout.
absl::StatusOr<bool> WaitReadable(Reactor* reactor, int fd, absl::Duration timeout) {
  struct State {
    bool ready = false;
    bool timed_out = false;
  };
  auto st = std::make_shared<State>();
  reactor->PollIn(fd, [st](int, uint32_t) { st->ready = true; });
  if (timeout != absl::InfiniteDuration()) {
    reactor->Timeout(timeout, [st](int, uint32_t) { st->timed_out = true; });
  }
  RETURN_IF_ERROR(reactor->RunUntil([&] { return st->ready || st->timed_out; }));
  return st->ready;
}

// Waits for the next CM event on CH and checks it is EXPECTED. On success returns the event's
// id (for CONNECT_REQUEST) after acknowledging the event.
absl::StatusOr<rdma_cm_id*> WaitCmEvent(Reactor* reactor, rdma_event_channel* ch,
                                        rdma_cm_event_type expected, absl::Duration timeout,
                                        const std::string& where) {
  for (;;) {
    rdma_cm_event* ev = nullptr;
    if (rdma_get_cm_event(ch, &ev) == 0) {
      const rdma_cm_event_type type = ev->event;
      const int status = ev->status;
      rdma_cm_id* id = ev->id;
      rdma_ack_cm_event(ev);
      if (type == expected) {
        return id;
      }
      std::string hint;
      if (type == RDMA_CM_EVENT_REJECTED) {
        hint = " (is an lmig-rdma dst --transport rdma listening there?)";
      }
      return absl::UnavailableError(absl::StrFormat(
          "RDMA connection to %s: got %s (status %d) while waiting for %s%s", where,
          rdma_event_str(type), status, rdma_event_str(expected), hint));
    }
    if (errno != EAGAIN) {
      return ErrnoStatus("rdma_get_cm_event");
    }
    ASSIGN_OR_RETURN(bool ready, WaitReadable(reactor, ch->fd, timeout));
    if (!ready) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "RDMA connection to %s: no %s within %d s", where, rdma_event_str(expected),
          absl::ToInt64Seconds(timeout)));
    }
  }
}

absl::Status MakeNonBlocking(int fd) {
  const int flags = ::fcntl(fd, F_GETFL);
  if (flags < 0 || ::fcntl(fd, F_SETFL, flags | O_NONBLOCK) < 0) {
    return ErrnoStatus("fcntl O_NONBLOCK");
  }
  return absl::OkStatus();
}

class RdmaTransport : public Transport {
 public:
  RdmaTransport(EventChannel ch, CmId id, std::unique_ptr<Reactor> reactor, std::string peer,
                const TransportOptions& opts)
      : reactor_(std::move(reactor)), ch_(std::move(ch)), id_(std::move(id)),
        peer_(std::move(peer)), opts_(opts) {}

  ~RdmaTransport() override {
    if (connected_ && error_.ok()) {
      // Let the last control messages (the destination's ACK) reach the peer before the
      // disconnect: an RC SEND completes once the peer has it. Bounded, for a silent peer.
      const absl::Time deadline = absl::Now() + absl::Seconds(2);
      while (sq_outstanding_ > 0 && absl::Now() < deadline &&
             PollOnce(true, "draining the send queue").ok()) {
      }
    }
    closing_ = true;
    if (connected_) {
      rdma_disconnect(id_.get());
    }
    // Members release in reverse order: QP, MRs, CQ, channel, PD, id, event channel.
  }

  // Creates PD, CQ + completion channel, QP and control buffers on the id's device, and posts
  // the control receives. Called before connect (source) or accept (destination).
  absl::Status SetupResources() {
    ibv_context* ctx = id_->verbs;
    if (ctx == nullptr) {
      return absl::FailedPreconditionError(
          absl::StrFormat("%s is not reachable through an RDMA device", peer_));
    }
    const char* dev = ibv_get_device_name(ctx->device);
    if (!opts_.rdma_device.empty() && opts_.rdma_device != dev) {
      return absl::InvalidArgumentError(absl::StrFormat(
          "--rdma-device %s: the connection to %s goes through %s", opts_.rdma_device, peer_,
          dev));
    }
    device_name_ = dev;
    if (ibv_query_device(ctx, &attr_) != 0) {
      return ErrnoStatus(absl::StrCat("ibv_query_device ", dev));
    }
    ASSIGN_OR_RETURN(pd_, rdma::AllocPd(ctx));
    ASSIGN_OR_RETURN(cc_, rdma::CreateCompChannel(ctx));
    RETURN_IF_ERROR(MakeNonBlocking(cc_->fd));
    sq_depth_ = std::min(kMaxSendWr, attr_.max_qp_wr);
    max_sge_ = std::min(32, attr_.max_sge);
    const int cqe = std::min(sq_depth_ + kRecvBuffers + 16, attr_.max_cqe);
    ASSIGN_OR_RETURN(cq_, rdma::CreateCq(ctx, cqe, cc_.get()));
    ibv_qp_init_attr qa{};
    qa.send_cq = cq_.get();
    qa.recv_cq = cq_.get();
    qa.qp_type = IBV_QPT_RC;
    qa.sq_sig_all = 0;
    qa.cap.max_send_wr = static_cast<uint32_t>(sq_depth_);
    qa.cap.max_recv_wr = kRecvBuffers;
    qa.cap.max_send_sge = static_cast<uint32_t>(max_sge_);
    qa.cap.max_recv_sge = 1;
    ASSIGN_OR_RETURN(qp_, rdma::CreateQp(id_.get(), pd_.get(), &qa));
    ctrl_buf_.assign((kRecvBuffers + kSendBuffers) * kCtrlChunk, 0);
    ASSIGN_OR_RETURN(ctrl_mr_, rdma::RegisterMr(pd_.get(), ctrl_buf_.data(), ctrl_buf_.size(),
                                                IBV_ACCESS_LOCAL_WRITE));
    for (int i = 0; i < kRecvBuffers; ++i) {
      RETURN_IF_ERROR(PostRecv(i));
    }
    for (int i = 0; i < kSendBuffers; ++i) {
      free_send_.push_back(i);
    }
    if (ibv_req_notify_cq(cq_.get(), 0) != 0) {
      return ErrnoStatus("ibv_req_notify_cq");
    }
    return absl::OkStatus();
  }

  void set_connected() { connected_ = true; }
  static rdma_conn_param ConnParam() {
    rdma_conn_param p{};
    p.initiator_depth = 1;
    p.responder_resources = 1;
    p.retry_count = 7;
    p.rnr_retry_count = 7;  // infinite: a busy receiver is waited for, not failed
    return p;
  }

  proto::TransportKind kind() const override { return proto::TransportKind::kRdma; }
  const std::string& peer() const override { return peer_; }

  absl::Status Send(proto::MsgType type, uint64_t arg,
                    std::span<const uint8_t> payload) override {
    RETURN_IF_ERROR(CheckAlive());
    const proto::FrameHeader h = proto::MakeHeader(type, arg, payload);
    std::vector<uint8_t> frame(sizeof(h) + payload.size());
    std::memcpy(frame.data(), &h, sizeof(h));
    if (!payload.empty()) {
      std::memcpy(frame.data() + sizeof(h), payload.data(), payload.size());
    }
    stats_.control_bytes += frame.size();
    for (size_t pos = 0; pos < frame.size(); pos += kCtrlChunk) {
      const size_t n = std::min(kCtrlChunk, frame.size() - pos);
      while (free_send_.empty() || sq_outstanding_ + 1 > sq_depth_) {
        RETURN_IF_ERROR(PollOnce(true, "sending a control message"));
      }
      const int buf = free_send_.front();
      free_send_.pop_front();
      uint8_t* p = SendBuf(buf);
      std::memcpy(p, frame.data() + pos, n);
      ibv_sge sge{reinterpret_cast<uint64_t>(p), static_cast<uint32_t>(n), ctrl_mr_->lkey};
      ibv_send_wr wr{};
      wr.wr_id = WrId(CompletionKind::kRdmaSend, buf);
      wr.sg_list = &sge;
      wr.num_sge = 1;
      wr.opcode = IBV_WR_SEND;
      wr.send_flags = IBV_SEND_SIGNALED;
      ibv_send_wr* bad = nullptr;
      if (int r = ibv_post_send(qp_->qp, &wr, &bad); r != 0) {
        return ErrnoStatus(absl::StrFormat("ibv_post_send SEND to %s", peer_), r);
      }
      ++sq_outstanding_;
      send_covered_[buf] = 1 + unsignaled_;
      unsignaled_ = 0;
    }
    return absl::OkStatus();
  }

  absl::StatusOr<proto::Message> Receive() override {
    absl::Time last_progress = absl::Now();
    for (;;) {
      if (!error_.ok() && !HasCompleteMessage()) {
        return error_;
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
      if (absl::Status s = PollOnce(true, "receiving a control message"); !s.ok()) {
        // A message that arrived before the error (the ACK before the peer's disconnect) is
        // still delivered; the error (sticky in error_) comes with the next call.
        if (HasCompleteMessage()) {
          continue;
        }
        return s;
      }
      if (stream_.size() != before) {
        last_progress = absl::Now();
      } else if (absl::Now() - last_progress > opts_.timeout) {
        return absl::DeadlineExceededError(absl::StrFormat(
            "receiving a control message: %s silent for %d s", peer_,
            absl::ToInt64Seconds(opts_.timeout)));
      }
    }
  }

  absl::StatusOr<std::vector<uint8_t>> AttachMemory(uint8_t* base, uint64_t size) override {
    if (is_source_ && !peer_table_.empty()) {
      // The destination's table came first: it must lie within this guest's memory.
      RETURN_IF_ERROR(Annotate(proto::CheckRegionTable(peer_table_, size), "HELLO_ACK"));
    }
    const absl::Time start = absl::Now();
    mem_size_ = size;
    uint64_t chunk = std::min<uint64_t>(opts_.mr_chunk_bytes, attr_.max_mr_size);
    chunk = std::max<uint64_t>(4096, chunk & ~uint64_t{4095});
    // The destination takes remote writes. The source only reads, but registers with
    // LOCAL_WRITE too: a read-only pin of untouched anonymous memory would pin the shared zero
    // page, which the guest's first write replaces (copy-on-write) behind the MR's back.
    const int access = is_source_ ? IBV_ACCESS_LOCAL_WRITE
                                  : (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    std::vector<RegionWire> regions;
    for (uint64_t off = 0; off < size; off += chunk) {
      const uint64_t len = std::min(chunk, size - off);
      ASSIGN_OR_RETURN(rdma::Mr mr, rdma::RegisterMr(pd_.get(), base + off, len, access));
      const auto addr = reinterpret_cast<uint64_t>(base + off);
      regions.push_back({off, len, addr, mr->rkey, 0});
      local_.push_back({off, len, addr, mr->lkey});
      mem_mrs_.push_back(std::move(mr));
    }
    stats_.registration_ms += absl::ToDoubleMilliseconds(absl::Now() - start);
    if (is_source_) {
      return std::vector<uint8_t>();
    }
    return proto::EncodeRegionTable(regions);
  }

  absl::Status SetPeerMemory(std::span<const uint8_t> blob) override {
    // The source learns its guest memory's size at AttachMemory, usually after this: the
    // table is checked against it there.
    ASSIGN_OR_RETURN(peer_table_,
                     proto::DecodeRegionTable(blob, local_.empty() ? UINT64_MAX : mem_size_));
    remote_.clear();
    for (const RegionWire& r : peer_table_) {
      remote_.push_back({r.offset, r.length, r.addr, r.rkey});
    }
    return absl::OkStatus();
  }

  absl::Status Write(std::span<const RamRange> ranges) override {
    RETURN_IF_ERROR(CheckAlive());
    if (mem_mrs_.empty() || remote_.empty()) {
      return absl::FailedPreconditionError("RDMA write before memory registration");
    }
    ASSIGN_OR_RETURN(std::vector<rdma::PlannedWrite> wrs,
                     rdma::PlanWrites(ranges, local_, remote_,
                                      {static_cast<size_t>(max_sge_), opts_.max_write_bytes}));
    return PostWrites(wrs);
  }

  absl::Status Flush() override {
    while (sq_outstanding_ > 0) {
      RETURN_IF_ERROR(PollOnce(true, "waiting for RDMA writes to complete"));
    }
    return CheckAlive();
  }

  void RevokeRemoteAccess() override {
    mem_mrs_.clear();
    local_.clear();
  }

  void SetDeadline(absl::Time deadline, std::string what) override {
    deadline_ = deadline;
    deadline_what_ = std::move(what);
  }

  TransportStats stats() const override {
    TransportStats s = stats_;
    s.zero_copy = true;
    return s;
  }

  void set_source(bool s) { is_source_ = s; }
  const std::string& device_name() const { return device_name_; }

 private:
  absl::Status PostWrites(std::vector<rdma::PlannedWrite>& wrs) {
    constexpr size_t kChain = 32;
    std::vector<ibv_send_wr> chain(kChain);
    for (size_t i = 0; i < wrs.size();) {
      const size_t n = std::min(kChain, wrs.size() - i);
      while (sq_outstanding_ + static_cast<int>(n) > sq_depth_) {
        RETURN_IF_ERROR(PollOnce(true, "waiting for send queue space"));
      }
      for (size_t k = 0; k < n; ++k) {
        rdma::PlannedWrite& p = wrs[i + k];
        ibv_send_wr& wr = chain[k];
        wr = {};
        wr.sg_list = p.sges.data();
        wr.num_sge = static_cast<int>(p.sges.size());
        wr.opcode = IBV_WR_RDMA_WRITE;
        wr.wr.rdma.remote_addr = p.remote_addr;
        wr.wr.rdma.rkey = p.rkey;
        wr.next = k + 1 < n ? &chain[k + 1] : nullptr;
        // An unsignalled WRITE completes only if it fails, and then says it was a WRITE.
        wr.wr_id = WrId(CompletionKind::kRdmaWrite, 0);
        ++unsignaled_;
        const bool last = i + k + 1 == wrs.size();
        if (unsignaled_ >= kSignalEvery || last) {
          wr.send_flags = IBV_SEND_SIGNALED;
          wr.wr_id = WrId(CompletionKind::kRdmaWrite, unsignaled_);
          unsignaled_ = 0;
        }
        stats_.data_bytes += p.bytes;
      }
      ibv_send_wr* bad = nullptr;
      if (int r = ibv_post_send(qp_->qp, chain.data(), &bad); r != 0) {
        return ErrnoStatus(absl::StrFormat("ibv_post_send RDMA WRITE to %s", peer_), r);
      }
      sq_outstanding_ += static_cast<int>(n);
      stats_.work_requests += n;
      i += n;
    }
    return absl::OkStatus();
  }

  uint8_t* RecvBuf(int i) { return ctrl_buf_.data() + i * kCtrlChunk; }
  uint8_t* SendBuf(int i) { return ctrl_buf_.data() + (kRecvBuffers + i) * kCtrlChunk; }

  absl::Status PostRecv(int i) {
    ibv_sge sge{reinterpret_cast<uint64_t>(RecvBuf(i)), static_cast<uint32_t>(kCtrlChunk),
                ctrl_mr_->lkey};
    ibv_recv_wr wr{};
    wr.wr_id = WrId(CompletionKind::kRdmaRecv, static_cast<uint64_t>(i));
    wr.sg_list = &sge;
    wr.num_sge = 1;
    ibv_recv_wr* bad = nullptr;
    if (int r = ibv_post_recv(qp_->qp, &wr, &bad); r != 0) {
      return ErrnoStatus("ibv_post_recv", r);
    }
    return absl::OkStatus();
  }

  absl::Status CheckAlive() {
    if (!error_.ok()) {
      return error_;
    }
    rdma_cm_event* ev = nullptr;
    while (rdma_get_cm_event(ch_.get(), &ev) == 0) {
      const rdma_cm_event_type type = ev->event;
      rdma_ack_cm_event(ev);
      if (type == RDMA_CM_EVENT_DISCONNECTED || type == RDMA_CM_EVENT_DEVICE_REMOVAL) {
        connected_ = false;
        error_ = absl::UnavailableError(
            absl::StrFormat("RDMA connection to %s: %s", peer_, rdma_event_str(type)));
        return error_;
      }
    }
    return absl::OkStatus();
  }

  absl::Status HandleWc(const ibv_wc& wc) {
    const CompletionToken token = CompletionToken::Unpack(wc.wr_id);
    if (wc.status != IBV_WC_SUCCESS) {
      if (wc.status == IBV_WC_WR_FLUSH_ERR && closing_) {
        return absl::OkStatus();  // teardown flushes outstanding work: not a failure
      }
      if (error_.ok()) {  // the first failure is the cause; flushed work follows it
        error_ = absl::UnavailableError(absl::StrFormat(
            "%s to %s failed: %s (vendor error 0x%x)", CompletionKindName(token.kind), peer_,
            ibv_wc_status_str(wc.status), wc.vendor_err));
      }
      return error_;
    }
    switch (token.kind) {
      case CompletionKind::kRdmaWrite:
        sq_outstanding_ -= static_cast<int>(token.value);
        break;
      case CompletionKind::kRdmaSend: {
        const int buf = static_cast<int>(token.value);
        sq_outstanding_ -= send_covered_[buf];
        free_send_.push_back(buf);
        break;
      }
      case CompletionKind::kRdmaRecv: {
        const int buf = static_cast<int>(token.value);
        stream_.insert(stream_.end(), RecvBuf(buf), RecvBuf(buf) + wc.byte_len);
        RETURN_IF_ERROR(PostRecv(buf));
        break;
      }
      default:
        break;
    }
    return absl::OkStatus();
  }

  // The peer disconnected (CAUSE): what it sent just before may still be on its way into the
  // CQ, as CM events and completions travel different paths (rxe in particular). Reaps for a
  // short while; returns OK if something arrived, else CAUSE.
  absl::Status DrainAfterDisconnect(const absl::Status& cause) {
    for (int i = 0; i < 100; ++i) {
      absl::Status ignored;  // errors after a disconnect are flushed work; CAUSE says why
      if (ReapCq(ignored) > 0) {
        return absl::OkStatus();
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(1));
    }
    return cause;
  }

  // Polls the CQ once and handles what it holds; returns how many completions (negative if
  // polling failed) and puts the first failure among them in FIRST_ERROR.
  int ReapCq(absl::Status& first_error) {
    ibv_wc wcs[32];
    const int n = ibv_poll_cq(cq_.get(), 32, wcs);
    for (int i = 0; i < n; ++i) {
      absl::Status s = HandleWc(wcs[i]);
      if (first_error.ok() && !s.ok()) {
        first_error = s;
      }
    }
    return n;
  }

  // The next frame's header, once the control stream holds one.
  std::optional<proto::FrameHeader> PeekHeader() const {
    proto::FrameHeader h;
    if (stream_.size() < sizeof(h)) {
      return std::nullopt;
    }
    std::copy(stream_.begin(), stream_.begin() + sizeof(h), reinterpret_cast<uint8_t*>(&h));
    return h;
  }

  bool HasCompleteMessage() const {
    std::optional<proto::FrameHeader> h = PeekHeader();
    return h && proto::CheckHeader(*h).ok() && stream_.size() >= sizeof(*h) + h->length;
  }

  // Reaps completions; with WAIT, sleeps on the completion channel (or spins with busy_poll)
  // until at least one arrives or a CM event (disconnect) does. Completions are reaped before
  // CM events are looked at, so what arrived before a disconnect is not lost.
  absl::Status PollOnce(bool wait, const char* doing) {
    for (;;) {
      if (wait && absl::Now() > deadline_) {
        return absl::DeadlineExceededError(absl::StrFormat(
            "%s: %s with %s passed its deadline", doing, deadline_what_, peer_));
      }
      absl::Status first_error;
      const int n = ReapCq(first_error);
      if (n < 0) {
        return absl::InternalError(absl::StrFormat("ibv_poll_cq failed while %s", doing));
      }
      if (n > 0) {
        return first_error;
      }
      if (absl::Status alive = CheckAlive(); !alive.ok()) {
        return DrainAfterDisconnect(alive);
      }
      if (!wait) {
        return absl::OkStatus();
      }
      if (opts_.busy_poll) {
        RETURN_IF_ERROR(CheckAlive());
        continue;
      }
      // Sleep until the CQ has something (or the CM reports a disconnect), then re-arm.
      if (!cq_poll_armed_) {
        cq_poll_armed_ = true;
        reactor_->PollIn(cc_->fd, [this](int, uint32_t) {
          cq_poll_armed_ = false;
          cq_ready_ = true;
        });
      }
      if (!cm_poll_armed_) {
        cm_poll_armed_ = true;
        reactor_->PollIn(ch_->fd, [this](int, uint32_t) {
          cm_poll_armed_ = false;
          cm_ready_ = true;
        });
      }
      if (!tick_armed_) {
        tick_armed_ = true;
        reactor_->Timeout(absl::Seconds(1), [this](int, uint32_t) {
          tick_armed_ = false;
          tick_fired_ = true;
        });
      }
      RETURN_IF_ERROR(
          reactor_->RunUntil([&] { return cq_ready_ || cm_ready_ || tick_fired_; }));
      if (cm_ready_) {
        cm_ready_ = false;
        continue;  // reap the CQ first: completions that came before a disconnect count
      }
      if (cq_ready_) {
        cq_ready_ = false;
        ibv_cq* ev_cq = nullptr;
        void* ev_ctx = nullptr;
        while (ibv_get_cq_event(cc_.get(), &ev_cq, &ev_ctx) == 0) {
          ibv_ack_cq_events(ev_cq, 1);
        }
        if (ibv_req_notify_cq(cq_.get(), 0) != 0) {
          return ErrnoStatus("ibv_req_notify_cq");
        }
      }
      if (tick_fired_) {
        tick_fired_ = false;
        return absl::OkStatus();  // let callers check their deadlines
      }
    }
  }

  std::unique_ptr<Reactor> reactor_;
  EventChannel ch_;
  CmId id_;
  rdma::Pd pd_;
  rdma::CompChannel cc_;
  rdma::Cq cq_;
  std::vector<uint8_t> ctrl_buf_;
  rdma::Mr ctrl_mr_;
  std::vector<rdma::Mr> mem_mrs_;
  rdma::Qp qp_;

  std::string peer_;
  std::string device_name_;
  TransportOptions opts_;
  absl::Time deadline_ = absl::InfiniteFuture();
  std::string deadline_what_;
  ibv_device_attr attr_{};
  bool is_source_ = false;
  bool connected_ = false;
  bool closing_ = false;
  absl::Status error_;
  int sq_depth_ = 0;
  int max_sge_ = 1;
  int sq_outstanding_ = 0;
  int unsignaled_ = 0;
  int send_covered_[kSendBuffers] = {};
  std::deque<int> free_send_;
  std::deque<uint8_t> stream_;
  bool cq_poll_armed_ = false, cq_ready_ = false;
  bool cm_poll_armed_ = false, cm_ready_ = false;
  bool tick_armed_ = false, tick_fired_ = false;
  uint64_t mem_size_ = 0;
  std::vector<rdma::MemoryRegion> local_;   // the MRs of mem_mrs_, with their lkeys
  std::vector<RegionWire> peer_table_;      // source: the destination's region table
  std::vector<rdma::MemoryRegion> remote_;  // the same, with the rkeys, for the planner
  TransportStats stats_;
};

class RdmaListener : public Listener {
 public:
  RdmaListener(EventChannel ch, CmId id, std::unique_ptr<Reactor> reactor, std::string where,
               const TransportOptions& opts)
      : reactor_(std::move(reactor)), ch_(std::move(ch)), id_(std::move(id)),
        where_(std::move(where)), opts_(opts) {}

  absl::StatusOr<std::unique_ptr<Transport>> Accept(absl::Time deadline) override {
    const absl::Duration wait = deadline == absl::InfiniteFuture()
                                    ? absl::InfiniteDuration()
                                    : std::max(absl::ZeroDuration(), deadline - absl::Now());
    ASSIGN_OR_RETURN(rdma_cm_id * child,
                     WaitCmEvent(reactor_.get(), ch_.get(), RDMA_CM_EVENT_CONNECT_REQUEST,
                                 wait, where_));
    CmId child_id(child);
    // The connection gets its own event channel, so it outlives this listener.
    ASSIGN_OR_RETURN(EventChannel ch, rdma::CreateEventChannel());
    if (rdma_migrate_id(child, ch.get()) != 0) {
      return ErrnoStatus("rdma_migrate_id");
    }
    RETURN_IF_ERROR(MakeNonBlocking(ch->fd));
    ASSIGN_OR_RETURN(auto reactor, Reactor::Create(64));
    char ip[INET_ADDRSTRLEN] = "?";
    const auto* peer = reinterpret_cast<const sockaddr_in*>(rdma_get_peer_addr(child));
    ::inet_ntop(AF_INET, &peer->sin_addr, ip, sizeof(ip));
    Reactor* r = reactor.get();
    rdma_event_channel* chp = ch.get();
    auto t = std::make_unique<RdmaTransport>(std::move(ch), std::move(child_id),
                                             std::move(reactor), ip, opts_);
    absl::Status s = t->SetupResources();
    if (!s.ok()) {
      rdma_reject(child, nullptr, 0);
      return s;
    }
    rdma_conn_param p = RdmaTransport::ConnParam();
    if (rdma_accept(child, &p) != 0) {
      return ErrnoStatus(absl::StrCat("rdma_accept from ", ip));
    }
    RETURN_IF_ERROR(
        WaitCmEvent(r, chp, RDMA_CM_EVENT_ESTABLISHED, opts_.timeout, ip).status());
    t->set_connected();
    return std::unique_ptr<Transport>(std::move(t));
  }

 private:
  std::unique_ptr<Reactor> reactor_;
  EventChannel ch_;
  CmId id_;
  std::string where_;
  TransportOptions opts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> RdmaConnect(const std::string& host, uint16_t port,
                                                       const TransportOptions& opts) {
  const std::string where = absl::StrFormat("%s:%d", host, port);
  ASSIGN_OR_RETURN(sockaddr_in sa, ResolveIpv4(host, port));
  ASSIGN_OR_RETURN(EventChannel ch, rdma::CreateEventChannel());
  RETURN_IF_ERROR(MakeNonBlocking(ch->fd));
  ASSIGN_OR_RETURN(CmId id, rdma::CreateId(ch.get()));
  ASSIGN_OR_RETURN(auto reactor, Reactor::Create(64));
  if (rdma_resolve_addr(id.get(), nullptr, reinterpret_cast<sockaddr*>(&sa),
                        kResolveTimeoutMs) != 0) {
    return ErrnoStatus(absl::StrCat("rdma_resolve_addr ", where));
  }
  RETURN_IF_ERROR(WaitCmEvent(reactor.get(), ch.get(), RDMA_CM_EVENT_ADDR_RESOLVED,
                              opts.timeout, where)
                      .status());
  if (rdma_resolve_route(id.get(), kResolveTimeoutMs) != 0) {
    return ErrnoStatus(absl::StrCat("rdma_resolve_route ", where));
  }
  RETURN_IF_ERROR(WaitCmEvent(reactor.get(), ch.get(), RDMA_CM_EVENT_ROUTE_RESOLVED,
                              opts.timeout, where)
                      .status());
  Reactor* r = reactor.get();
  rdma_event_channel* chp = ch.get();
  rdma_cm_id* idp = id.get();
  auto t = std::make_unique<RdmaTransport>(std::move(ch), std::move(id), std::move(reactor),
                                           where, opts);
  t->set_source(true);
  RETURN_IF_ERROR(t->SetupResources());
  rdma_conn_param p = RdmaTransport::ConnParam();
  if (rdma_connect(idp, &p) != 0) {
    return ErrnoStatus(absl::StrCat("rdma_connect ", where));
  }
  RETURN_IF_ERROR(
      WaitCmEvent(r, chp, RDMA_CM_EVENT_ESTABLISHED, opts.timeout, where).status());
  t->set_connected();
  return std::unique_ptr<Transport>(std::move(t));
}

absl::StatusOr<std::unique_ptr<Listener>> RdmaListen(const std::string& addr, uint16_t port,
                                                     const TransportOptions& opts) {
  const std::string where = absl::StrFormat("%s:%d", addr, port);
  ASSIGN_OR_RETURN(sockaddr_in sa, ResolveIpv4(addr, port));
  ASSIGN_OR_RETURN(EventChannel ch, rdma::CreateEventChannel());
  RETURN_IF_ERROR(MakeNonBlocking(ch->fd));
  ASSIGN_OR_RETURN(CmId id, rdma::CreateId(ch.get()));
  if (rdma_bind_addr(id.get(), reinterpret_cast<sockaddr*>(&sa)) != 0) {
    return ErrnoStatus(absl::StrCat("cannot listen for RDMA on ", where,
                                    " (no RDMA device with that address?)"));
  }
  if (rdma_listen(id.get(), 8) != 0) {
    return ErrnoStatus(absl::StrCat("rdma_listen ", where));
  }
  ASSIGN_OR_RETURN(auto reactor, Reactor::Create(64));
  return std::unique_ptr<Listener>(
      new RdmaListener(std::move(ch), std::move(id), std::move(reactor), where, opts));
}

}  // namespace lmig
