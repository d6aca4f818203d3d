// The RDMA Transport: one RdmaConnection (rdma_connection.h) carrying the ControlStream
// (control_stream.h) and the data path, guest memory registered in chunks and written with
// the WRITEs the planner (write_planner.h) lays out. The listener and the factories of
// rdma_transport.h are here too.
#include "transport/rdma/rdma_transport.h"

#include <algorithm>
#include <vector>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/reactor/completion_token.h"
#include "transport/rdma/cm_endpoint.h"
#include "transport/rdma/control_stream.h"
#include "transport/rdma/rdma_connection.h"
#include "transport/rdma/verbs.h"
#include "transport/rdma/write_planner.h"

namespace lmig {
namespace {


using proto::RegionWire;
using rdma::CmEndpoint;
using rdma::ControlStream;
using rdma::RdmaConnection;

constexpr int kMaxSendWr = 1024;
constexpr int kMaxSge = 32;
constexpr size_t kWriteChain = 32;  // WRITEs per ibv_post_send

class RdmaTransport : public Transport {
 public:
  // The tail of RdmaConnect and Accept: the connection established with the control stream's
  // receives posted.
  static absl::StatusOr<std::unique_ptr<Transport>> Open(RdmaConnection::Side side,
                                                         CmEndpoint ep,
                                                         const TransportOptions& opts) {
    auto t = std::make_unique<RdmaTransport>(side, std::move(ep), opts);
    const rdma::QueueSizes sizes{kMaxSendWr, ControlStream::kRecvBuffers, kMaxSge};
    RETURN_IF_ERROR(t->conn_.Establish(sizes, [&] { return t->ctrl_.Start(); }));
    return std::unique_ptr<Transport>(std::move(t));
  }

  RdmaTransport(RdmaConnection::Side side, CmEndpoint ep, const TransportOptions& opts)
      : conn_(side, std::move(ep), opts), ctrl_(&conn_), opts_(opts) {
    conn_.set_handler(
        [this](CompletionToken token, const ibv_wc& wc) { return OnCompletion(token, wc); });
  }

  ~RdmaTransport() override {
    // The QP goes first (after the last SENDs drained), then the MRs its work named, then the
    // connection's CQ, channel, PD, id and event channel.
    conn_.Close();
  }

  proto::TransportKind kind() const override { return proto::TransportKind::kRdma; }
  const std::string& peer() const override { return conn_.peer(); }

  absl::Status Send(proto::MsgType type, uint64_t arg,
                    std::span<const uint8_t> payload) override {
    return ctrl_.Send(type, arg, payload);
  }

  absl::StatusOr<proto::Message> Receive() override { return ctrl_.Receive(); }

  absl::StatusOr<std::vector<uint8_t>> AttachMemory(uint8_t* base, uint64_t size) override {
    const bool source = conn_.side() == RdmaConnection::Side::kSource;
    if (source && !peer_table_.empty()) {
      // The destination's table came first: it must lie within this guest's memory.
      RETURN_IF_ERROR(Annotate(proto::CheckRegionTable(peer_table_, size), "HELLO_ACK"));
    }
    const absl::Time start = absl::Now();
    mem_size_ = size;
    uint64_t chunk = std::min<uint64_t>(opts_.mr_chunk_bytes, conn_.device_attr().max_mr_size);
    chunk = std::max<uint64_t>(4096, chunk & ~uint64_t{4095});
    // The destination takes remote writes. The source only reads, but registers with
    // LOCAL_WRITE too: a read-only pin of untouched anonymous memory would pin the shared zero
    // page, which the guest's first write replaces (copy-on-write) behind the MR's back.
    const int access =
        source ? IBV_ACCESS_LOCAL_WRITE : (IBV_ACCESS_LOCAL_WRITE | IBV_ACCESS_REMOTE_WRITE);
    std::vector<RegionWire> regions;
    for (uint64_t off = 0; off < size; off += chunk) {
      const uint64_t len = std::min(chunk, size - off);
      ASSIGN_OR_RETURN(rdma::Mr mr, rdma::RegisterMr(conn_.pd(), base + off, len, access));
      const auto addr = reinterpret_cast<uint64_t>(base + off);
      regions.push_back({off, len, addr, mr->rkey, 0});
      local_.push_back({off, len, addr, mr->lkey});
      mem_mrs_.push_back(std::move(mr));
    }
    stats_.registration_ms += absl::ToDoubleMilliseconds(absl::Now() - start);
    if (source) {
      return std::vector<uint8_t>();
    }
    return proto::EncodeRegionTable(regions);
  }

  absl::Status SetPeerMemory(std::span<const uint8_t> blob) override {
    // The source attaches its memory first (it registers while the destination does) and the
    // table is checked against its size here; attached later, at AttachMemory.
    ASSIGN_OR_RETURN(peer_table_,
                     proto::DecodeRegionTable(blob, local_.empty() ? UINT64_MAX : mem_size_));
    remote_.clear();
    for (const RegionWire& r : peer_table_) {
      remote_.push_back({r.offset, r.length, r.addr, r.rkey});
    }
    return absl::OkStatus();
  }

  absl::Status Write(std::span<const RamRange> ranges) override {
    RETURN_IF_ERROR(conn_.CheckAlive());
    if (mem_mrs_.empty() || remote_.empty()) {
      return absl::FailedPreconditionError("RDMA write before memory registration");
    }
    ASSIGN_OR_RETURN(
        std::vector<rdma::PlannedWrite> wrs,
        rdma::PlanWrites(ranges, local_, remote_,
                         {static_cast<size_t>(conn_.max_sge()), opts_.max_write_bytes}));
    return PostWrites(wrs);
  }

  absl::Status Flush() override {
    while (conn_.send_queue().outstanding() > 0) {
      RETURN_IF_ERROR(conn_.Poll("waiting for RDMA writes to complete"));
    }
    return conn_.CheckAlive();
  }

  // Destination: the QP takes the source's WRITEs only while allowed (the MRs, registered
  // with remote write, say where).
  void AllowIncomingPages(bool allow) override {
    if (conn_.side() == RdmaConnection::Side::kDestination) {
      conn_.SetRemoteWrite(allow);
    }
  }

  void Shutdown() override { conn_.Shutdown(); }

  void RevokeRemoteAccess() override {
    mem_mrs_.clear();
    local_.clear();
  }

  void SetDeadline(absl::Time deadline, std::string what) override {
    conn_.SetDeadline(deadline, std::move(what));
  }

  TransportStats stats() const override {
    TransportStats s = stats_;
    s.control_bytes = ctrl_.bytes_sent();
    s.zero_copy = true;
    return s;
  }

 private:
  // What each of the connection's completions means (its token's kind).
  absl::Status OnCompletion(CompletionToken token, const ibv_wc& wc) {
    switch (token.kind) {
      case CompletionKind::kRdmaWrite:
        conn_.send_queue().Retire(token.value);
        return absl::OkStatus();
      case CompletionKind::kRdmaSend:
        ctrl_.OnSendComplete(token.value);
        return absl::OkStatus();
      case CompletionKind::kRdmaRecv:
        return ctrl_.OnRecvComplete(token.value, wc.byte_len);
      default:
        return absl::OkStatus();
    }
  }

  // Posts WRS in chains of kWriteChain, waiting for send-queue room; every
  // SendQueue::kSignalEvery-th WRITE and the last are signalled.
  absl::Status PostWrites(std::vector<rdma::PlannedWrite>& wrs) {
    rdma::SendQueue& sq = conn_.send_queue();
    std::vector<ibv_send_wr> chain(kWriteChain);
    for (size_t i = 0; i < wrs.size();) {
      const size_t n = std::min(kWriteChain, wrs.size() - i);
      while (!sq.Fits(static_cast<int>(n))) {
        RETURN_IF_ERROR(conn_.Poll("waiting for send queue space"));
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
        const uint64_t covered = sq.Track(/*signal=*/i + k + 1 == wrs.size());
        wr.wr_id = CompletionToken{CompletionKind::kRdmaWrite, covered}.Pack();
        if (covered > 0) {
          wr.send_flags = IBV_SEND_SIGNALED;
        }
        stats_.data_bytes += p.bytes;
      }
      RETURN_IF_ERROR(conn_.PostSend(chain.data(), "RDMA WRITE"));
      sq.Posted(static_cast<int>(n));
      stats_.work_requests += n;
      i += n;
    }
    return absl::OkStatus();
  }

  // Members release in reverse order, after the destructor's Close (QP): the guest memory's
  // MRs, the control stream's MR, then the connection.
  RdmaConnection conn_;
  ControlStream ctrl_;
  TransportOptions opts_;
  std::vector<rdma::Mr> mem_mrs_;
  uint64_t mem_size_ = 0;
  std::vector<rdma::MemoryRegion> local_;   // the MRs of mem_mrs_, with their lkeys
  std::vector<RegionWire> peer_table_;      // source: the destination's region table
  std::vector<rdma::MemoryRegion> remote_;  // the same, with the rkeys, for the planner
  TransportStats stats_;
};

class RdmaListener : public Listener {
 public:
  RdmaListener(CmEndpoint ep, const TransportOptions& opts)
      : ep_(std::move(ep)), opts_(opts) {}

  absl::StatusOr<std::unique_ptr<Transport>> Accept(absl::Time deadline) override {
    ASSIGN_OR_RETURN(CmEndpoint child, rdma::NextConnectRequest(ep_, deadline));
    child.reactor->WatchCancellation(opts_.cancel);
    return RdmaTransport::Open(RdmaConnection::Side::kDestination, std::move(child), opts_);
  }

 private:
  CmEndpoint ep_;
  TransportOptions opts_;
};

}  // namespace

absl::StatusOr<std::unique_ptr<Transport>> RdmaConnect(const std::string& host, uint16_t port,
                                                       const TransportOptions& opts) {
  ASSIGN_OR_RETURN(CmEndpoint ep, rdma::ResolvePeer(host, port, opts.timeout));
  ep.reactor->WatchCancellation(opts.cancel);
  return RdmaTransport::Open(RdmaConnection::Side::kSource, std::move(ep), opts);
}

absl::StatusOr<std::unique_ptr<Listener>> RdmaListen(const std::string& addr, uint16_t port,
                                                     const TransportOptions& opts) {
  ASSIGN_OR_RETURN(CmEndpoint ep, rdma::ListenOn(addr, port));
  ep.reactor->WatchCancellation(opts.cancel);
  return std::unique_ptr<Listener>(new RdmaListener(std::move(ep), opts));
}

}  // namespace lmig
