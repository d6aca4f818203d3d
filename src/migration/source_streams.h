// The source's streams (--streams N): stream 0 is the control connection, whose share of the
// pages the migration thread writes itself; streams 1..N-1 are connections of their own, each
// owned by a stream reactor, a thread pinned to one CPU (round-robin over the online CPUs)
// that drives that connection's io_uring and nothing else. The migration thread hands a
// reactor its work by message (a Mailbox, no lock) and the reactor answers through an atomic
// counter; see src/base/thread_model.h.
//
// Each Write is split by 2 MiB chunk (SplitByChunk) among all N streams; EndRound has every
// further stream flush its share and send its STREAM_END marker, so the destination's round
// barrier knows when the round has landed. Any stream failing fails the migration: Write and
// EndRound return the first failed stream's error.
#pragma once

#include <atomic>
#include <functional>
#include <memory>
#include <span>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "include/lmig/protocol.h"
#include "include/lmig/transport.h"
#include "src/migration/stats.h"
#include "src/reactor/mailbox.h"

namespace lmig {

// Round 1's scan (zero_scan.h): the guest memory and mincore's answer for it, both outliving
// the round.
struct ScanSource {
  const uint8_t* base = nullptr;
  std::span<const unsigned char> resident;
  uint64_t max_run = 1 << 20;
};

// Opens a further connection to the same destination with the same options (TLS included).
using ConnectStreamFn = std::function<absl::StatusOr<std::unique_ptr<Transport>>()>;

class StreamReactor;
struct StreamCommand;

class SourceStreams {
 public:
  // STREAM0 (not owned) carries stream 0's share and the control messages.
  explicit SourceStreams(Transport* stream0);
  ~SourceStreams();  // stops and joins the reactors (each bounded by its transport's deadlines)
  SourceStreams(const SourceStreams&) = delete;
  SourceStreams& operator=(const SourceStreams&) = delete;

  // Opens streams 1..N-1 (N: 2..kMaxStreams), each from its own reactor thread: CONNECT, the
  // guest memory MEM attached, then STREAM_JOIN under KEY. Returns at once; AwaitJoined waits
  // for them.
  absl::Status Start(int n, const ConnectStreamFn& connect, const proto::StreamKey& key,
                     std::span<uint8_t> mem);
  // Once every stream has joined: OK, or the first error (naming the stream).
  absl::Status AwaitJoined();
  int count() const { return 1 + static_cast<int>(reactors_.size()); }
  // The deadline of the further streams' work from now on (stream 0's is its own).
  void SetDeadline(absl::Time deadline, std::string what);
  // Mid-round (ROUND): each further stream tells the destination it is alive (a PROGRESS on
  // it), as stream 0's PROGRESS does: a round may give a stream no chunk for longer than the
  // destination's silence timeout.
  void Alive(uint32_t round);
  // Queues RANGES (guest memory, read when sent) on the streams their chunks belong to.
  absl::Status Write(std::span<const RamRange> ranges);
  // The stop-and-copy round's pages when they are few (at most kFinalOnStream0Bytes): all on
  // stream 0, from this thread, without a hand-off to the reactors, whose wake-ups cost the
  // pause more than such a round's bytes take. Ordering holds: every earlier round ended on
  // every stream first (over RDMA its WRITEs completed; over TCP the destination takes stream
  // 0's pages of a round only after the barrier saw the previous round's markers, which come
  // after their pages on each stream), and no round follows. Larger final rounds go by Write.
  absl::Status WriteFinal(std::span<const RamRange> ranges);
  static constexpr uint64_t kFinalOnStream0Bytes = 1 << 20;
  // Round 1: RANGE of guest memory, each chunk scanned for zero pages by the thread of the
  // stream it belongs to (stream 0's here), its non-zero runs then queued there.
  absl::Status ScanAndWrite(const RamRange& range, const ScanSource& scan);
  // Bytes of pages queued on all streams so far (the reactors' count may lag a little), and
  // zero pages ScanAndWrite found (exact after an EndRound).
  uint64_t queued_bytes() const;
  uint64_t zero_pages() const;
  // Ends ROUND on every stream: stream 0 flushed, every further stream flushed and its
  // STREAM_END sent. Returns once all have, or the first error.
  absl::Status EndRound(uint32_t round, bool final_round);
  // Stops and joins the reactors (each closes its connection); the destructor does it too.
  // ABORT: each connection is shut down first, so a reactor waiting on a stalled peer ends now.
  void Close(bool abort = false);
  // Per stream, stream 0 first (its CPU time is the migration thread's: not counted here).
  // Only after an EndRound and before the next Write, or after Close.
  std::vector<StreamStats> stats() const;
  // CPU time the further streams' reactors have used (user + system); as stats().
  double reactor_cpu_ms() const;

 private:
  absl::Status FirstError() const;
  absl::Status WriteOnStream0(std::span<const RamRange> ranges);
  absl::Status PostWork(StreamReactor& r, StreamCommand c);
  // C to every further stream's reactor.
  void Broadcast(const StreamCommand& c);
  absl::Status AwaitAll();

  Transport* stream0_;
  uint64_t stream0_bytes_ = 0;
  uint64_t stream0_zero_ = 0;
  double stream0_busy_ms_ = 0;
  std::vector<std::unique_ptr<StreamReactor>> reactors_;
  uint64_t answers_expected_ = 1;  // the next answer each reactor owes (the join is the first)
  absl::Time deadline_ = absl::InfiniteFuture();
  std::string deadline_what_;
};

}  // namespace lmig
