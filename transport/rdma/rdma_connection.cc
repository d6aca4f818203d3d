#include "transport/rdma/rdma_connection.h"

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig::rdma {
namespace {

rdma_conn_param ConnParam() {
  rdma_conn_param p{};
  p.initiator_depth = 1;
  p.responder_resources = 1;
  p.retry_count = 7;
  p.rnr_retry_count = 7;  // infinite: a busy receiver is waited for, not failed
  return p;
}

}  // namespace

RdmaConnection::RdmaConnection(Side side, CmEndpoint endpoint, const TransportOptions& opts)
    : side_(side),
      reactor_(std::move(endpoint.reactor)),
      ch_(std::move(endpoint.channel)),
      id_(std::move(endpoint.id)),
      peer_(std::move(endpoint.name)),
      opts_(opts) {}

RdmaConnection::~RdmaConnection() { Close(); }

absl::Status RdmaConnection::CreateResources(const QueueSizes& sizes) {
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
  if (ibv_query_device(ctx, &attr_) != 0) {
    return ErrnoStatus(absl::StrCat("ibv_query_device ", dev));
  }
  ASSIGN_OR_RETURN(pd_, AllocPd(ctx));
  ASSIGN_OR_RETURN(cc_, CreateCompChannel(ctx));
  RETURN_IF_ERROR(MakeNonBlocking(cc_->fd));
  sq_.set_depth(std::min(sizes.max_send_wr, attr_.max_qp_wr));
  max_sge_ = std::min(sizes.max_send_sge, attr_.max_sge);
  const int cqe = std::min(sq_.depth() + sizes.max_recv_wr + 16, attr_.max_cqe);
  ASSIGN_OR_RETURN(cq_, CreateCq(ctx, cqe, cc_.get()));
  ibv_qp_init_attr qa{};
  qa.send_cq = cq_.get();
  qa.recv_cq = cq_.get();
  qa.qp_type = IBV_QPT_RC;
  qa.sq_sig_all = 0;
  qa.cap.max_send_wr = static_cast<uint32_t>(sq_.depth());
  qa.cap.max_recv_wr = static_cast<uint32_t>(sizes.max_recv_wr);
  qa.cap.max_send_sge = static_cast<uint32_t>(max_sge_);
  qa.cap.max_recv_sge = 1;
  ASSIGN_OR_RETURN(qp_, CreateQp(id_.get(), pd_.get(), &qa));
  return absl::OkStatus();
}

absl::Status RdmaConnection::Establish(const QueueSizes& sizes,
                                       const std::function<absl::Status()>& prepare) {
  absl::Status ready = CreateResources(sizes);
  if (ready.ok()) {
    ready = prepare();
  }
  if (ready.ok() && ibv_req_notify_cq(cq_.get(), 0) != 0) {
    ready = ErrnoStatus("ibv_req_notify_cq");
  }
  if (!ready.ok()) {
    if (side_ == Side::kDestination) {
      rdma_reject(id_.get(), nullptr, 0);
    }
    return ready;
  }
  rdma_conn_param p = ConnParam();
  if (side_ == Side::kSource) {
    if (rdma_connect(id_.get(), &p) != 0) {
      return ErrnoStatus(absl::StrCat("rdma_connect ", peer_));
    }
  } else if (rdma_accept(id_.get(), &p) != 0) {
    return ErrnoStatus(absl::StrCat("rdma_accept from ", peer_));
  }
  RETURN_IF_ERROR(
      WaitCmEvent(reactor_.get(), ch_.get(), RDMA_CM_EVENT_ESTABLISHED, opts_.timeout, peer_)
          .status());
  connected_ = true;
  // rdma_cm opens an RC QP to remote reads and writes; the peer gets neither until the owner
  // says so (a destination once its memory may be written, AllowIncomingPages).
  SetRemoteWrite(false);
  return error_;
}

void RdmaConnection::SetRemoteWrite(bool allow) {
  ibv_qp_attr a{};
  a.qp_access_flags = allow ? IBV_ACCESS_REMOTE_WRITE : 0;
  if (int r = ibv_modify_qp(qp_->qp, &a, IBV_QP_ACCESS_FLAGS); r != 0 && error_.ok()) {
    error_ = ErrnoStatus(absl::StrFormat("ibv_modify_qp (remote write %s) of the connection "
                                         "to %s", allow ? "on" : "off", peer_), r);
  }
}

void RdmaConnection::Shutdown() {
  shut_down_.store(true, std::memory_order_release);
  ibv_qp_attr a{};
  a.qp_state = IBV_QPS_ERR;
  if (qp_) {
    (void)ibv_modify_qp(qp_->qp, &a, IBV_QP_STATE);  // verbs calls are thread-safe
  }
}

absl::Status RdmaConnection::PostSend(ibv_send_wr* wr, const char* what) {
  ibv_send_wr* bad = nullptr;
  if (int r = ibv_post_send(qp_->qp, wr, &bad); r != 0) {
    return ErrnoStatus(absl::StrFormat("ibv_post_send %s to %s", what, peer_), r);
  }
  return absl::OkStatus();
}

absl::Status RdmaConnection::PostRecv(ibv_recv_wr* wr) {
  ibv_recv_wr* bad = nullptr;
  if (int r = ibv_post_recv(qp_->qp, wr, &bad); r != 0) {
    return ErrnoStatus("ibv_post_recv", r);
  }
  return absl::OkStatus();
}

void RdmaConnection::SetDeadline(absl::Time deadline, std::string what) {
  deadline_ = deadline;
  deadline_what_ = std::move(what);
}

absl::Status RdmaConnection::CheckAlive() {
  if (error_.ok() && shut_down_.load(std::memory_order_acquire)) {
    error_ = absl::CancelledError(absl::StrFormat("RDMA connection to %s shut down", peer_));
  }
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

absl::Status RdmaConnection::HandleWc(const ibv_wc& wc) {
  const CompletionToken token = CompletionToken::Unpack(wc.wr_id);
  if (wc.status != IBV_WC_SUCCESS) {
    if (wc.status == IBV_WC_WR_FLUSH_ERR && closing_) {
      return absl::OkStatus();  // teardown flushes outstanding work: not a failure
    }
    if (wc.status == IBV_WC_WR_FLUSH_ERR && shut_down_.load(std::memory_order_acquire)) {
      return CheckAlive();  // Shutdown flushed it: that is the error
    }
    if (error_.ok()) {  // the first failure is the cause; flushed work follows it
      error_ = absl::UnavailableError(absl::StrFormat(
          "%s to %s failed: %s (vendor error 0x%x)", CompletionKindName(token.kind), peer_,
          ibv_wc_status_str(wc.status), wc.vendor_err));
    }
    return error_;
  }
  return handler_ ? handler_(token, wc) : absl::OkStatus();
}

// Polls the CQ once and handles what it holds; returns how many completions (negative if
// polling failed) and puts the first failure among them in FIRST_ERROR.
int RdmaConnection::ReapCq(absl::Status& first_error) {
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

// The peer disconnected (CAUSE): what it sent just before may still be on its way into the
// CQ, as CM events and completions travel different paths (rxe in particular). Reaps for a
// short while; returns OK if something arrived, else CAUSE.
absl::Status RdmaConnection::DrainAfterDisconnect(const absl::Status& cause) {
  for (int i = 0; i < 100; ++i) {
    absl::Status ignored;  // errors after a disconnect are flushed work; CAUSE says why
    if (ReapCq(ignored) > 0) {
      return absl::OkStatus();
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return cause;
}

absl::Status RdmaConnection::Poll(const char* doing) {
  for (;;) {
    if (absl::Now() > deadline_) {
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
    if (opts_.busy_poll) {
      if (opts_.cancel != nullptr && opts_.cancel->cancelled()) {
        return opts_.cancel->status();
      }
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
    RETURN_IF_ERROR(reactor_->RunUntil([&] { return cq_ready_ || cm_ready_ || tick_fired_; }));
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

void RdmaConnection::Close() {
  if (closing_) {
    return;
  }
  if (connected_ && error_.ok()) {
    const absl::Time deadline = absl::Now() + absl::Seconds(2);
    while (sq_.outstanding() > 0 && absl::Now() < deadline &&
           Poll("draining the send queue").ok()) {
    }
  }
  closing_ = true;
  if (connected_) {
    rdma_disconnect(id_.get());
  }
  qp_.reset();
}

}  // namespace lmig::rdma
