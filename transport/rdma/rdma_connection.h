// One RDMA connection: a librdmacm id on an event channel of its own (cm_endpoint.h) and, on
// the device its route goes through, a protection domain, a completion queue with its
// completion channel and an RC queue pair (rping.c shows the sequence). It holds the tail of
// setup that connect and accept share, the send queue's accounting under selective
// signalling, and the waiting: the CQ's completion channel and the CM event channel are both
// polled by the connection's own io_uring reactor (or the CQ is busy-polled,
// TransportOptions::busy_poll). What a completion means is for its token
// (src/reactor/completion_token.h) and the handler the owner installs to say.
//
// Threads: a connection is used by one thread (the migration thread, or a stream's reactor or
// reader), which drives its reactor inside Poll and the setup calls; only Shutdown may come
// from another.
#pragma once

#include <atomic>
#include <cstdint>
#include <functional>
#include <memory>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "include/lmig/transport.h"
#include "src/reactor/completion_token.h"
#include "src/reactor/reactor.h"
#include "transport/rdma/cm_endpoint.h"
#include "transport/rdma/verbs.h"

namespace lmig::rdma {

// What the queue pair is asked to hold; the device's limits cap each.
struct QueueSizes {
  int max_send_wr = 1024;
  int max_recv_wr = 1;
  int max_send_sge = 32;
};

// The send queue's occupancy under selective signalling: a signalled work request's
// completion retires it and every unsignalled one posted since the signalled one before it.
class SendQueue {
 public:
  static constexpr int kSignalEvery = 64;  // at most this many WRs per signalled completion

  void set_depth(int depth) { depth_ = depth; }
  int depth() const { return depth_; }
  int outstanding() const { return outstanding_; }
  // Whether N more work requests fit.
  bool Fits(int n) const { return outstanding_ + n <= depth_; }
  // Counts one more work request to post. Returns 0 when it may go unsignalled, else (it is
  // the kSignalEvery-th, or SIGNAL) how many its completion retires: signal it.
  uint64_t Track(bool signal) {
    ++unsignaled_;
    if (!signal && unsignaled_ < kSignalEvery) {
      return 0;
    }
    const uint64_t covered = static_cast<uint64_t>(unsignaled_);
    unsignaled_ = 0;
    return covered;
  }
  // N work requests were posted / retired by a completion.
  void Posted(int n) { outstanding_ += n; }
  void Retire(uint64_t n) { outstanding_ -= static_cast<int>(n); }

 private:
  int depth_ = 0;
  int outstanding_ = 0;
  int unsignaled_ = 0;
};

class RdmaConnection {
 public:
  enum class Side { kSource, kDestination };  // rdma_connect / rdma_accept
  // Takes each successful completion (failures become the connection's error).
  using CompletionHandler = std::function<absl::Status(CompletionToken, const ibv_wc&)>;

  RdmaConnection(Side side, CmEndpoint endpoint, const TransportOptions& opts);
  // Close()s, then releases the CQ, completion channel, PD, id, event channel and reactor.
  ~RdmaConnection();
  RdmaConnection(const RdmaConnection&) = delete;
  RdmaConnection& operator=(const RdmaConnection&) = delete;

  // The tail that connect and accept share: on the device the id's route goes through (which
  // must be --rdma-device's, when one is named) creates the PD, the CQ with its completion
  // channel and the RC QP (SIZES, capped by the device); lets PREPARE post its receives; then
  // connects (source) or accepts (destination) and waits for ESTABLISHED within the timeout.
  // A destination rejects the request when anything before the accept fails. Errors name the
  // peer and the failed step.
  absl::Status Establish(const QueueSizes& sizes, const std::function<absl::Status()>& prepare);

  void set_handler(CompletionHandler handler) { handler_ = std::move(handler); }

  // Posts a chain of send work requests; WHAT names them in the error.
  absl::Status PostSend(ibv_send_wr* wr, const char* what);
  absl::Status PostRecv(ibv_recv_wr* wr);

  // Reaps completions (handing them to the handler), sleeping on the completion channel (or
  // spinning with busy_poll) until at least one arrives, a CM event (disconnect) does, or a
  // second passes (so callers can check their own timeouts). Completions are reaped before CM
  // events are looked at, so what arrived before a disconnect is not lost. DOING names the
  // caller's step in errors: the first failed completion, a disconnect, the deadline.
  absl::Status Poll(const char* doing);
  // The connection's sticky error, after taking any pending CM event (a disconnect or device
  // removal becomes that error).
  absl::Status CheckAlive();
  const absl::Status& error() const { return error_; }

  // What the peer may do to this side's memory through the QP (its qp_access_flags; an MR's
  // own access flags must allow it too): nothing (the default once established, on both
  // sides) or, ALLOW, RDMA WRITE. A failure becomes the connection's error.
  void SetRemoteWrite(bool allow);

  // Any thread, while the owner may wait in Poll: moves the QP to the error state, so its
  // posted receives flush and the owner's wait ends at once with "shut down".
  void Shutdown();

  // Every wait in Poll fails with DeadlineExceeded once DEADLINE has passed; WHAT names it.
  void SetDeadline(absl::Time deadline, std::string what);

  // Lets the last SENDs reach the peer (an RC SEND completes once the peer has it; bounded at
  // 2 s for a silent peer) if connected and healthy, disconnects, and destroys the QP, so that
  // the MRs its work requests named may go. Flushed work is not a failure from here on.
  // Called by the owner before it releases its MRs; idempotent.
  void Close();

  Side side() const { return side_; }
  const std::string& peer() const { return peer_; }
  const TransportOptions& options() const { return opts_; }
  const ibv_device_attr& device_attr() const { return attr_; }
  ibv_pd* pd() const { return pd_.get(); }
  int max_sge() const { return max_sge_; }
  SendQueue& send_queue() { return sq_; }

 private:
  absl::Status CreateResources(const QueueSizes& sizes);
  absl::Status HandleWc(const ibv_wc& wc);
  int ReapCq(absl::Status& first_error);
  absl::Status DrainAfterDisconnect(const absl::Status& cause);

  const Side side_;
  std::unique_ptr<Reactor> reactor_;
  EventChannel ch_;
  CmId id_;
  Pd pd_;
  CompChannel cc_;
  Cq cq_;
  Qp qp_;

  const std::string peer_;
  const TransportOptions opts_;
  CompletionHandler handler_;
  ibv_device_attr attr_{};
  int max_sge_ = 1;
  SendQueue sq_;
  absl::Status error_;
  bool connected_ = false;
  bool closing_ = false;
  std::atomic<bool> shut_down_{false};
  absl::Time deadline_ = absl::InfiniteFuture();
  std::string deadline_what_;
  bool cq_poll_armed_ = false, cq_ready_ = false;
  bool cm_poll_armed_ = false, cm_ready_ = false;
  bool tick_armed_ = false, tick_fired_ = false;
};

}  // namespace lmig::rdma
