// The destination's further streams (Hello::streams = N > 1): streams 1..N-1 join after
// HELLO_ACK, each proving it belongs to this migration (stream_join.h); each then gets a
// reader thread of its own that takes its PAGES straight into guest memory and its STREAM_END
// markers into the round barrier (stream_split.h). The receiver (on the migration thread)
// completes a round only once AwaitRound says every stream's share has landed.
//
// A stream that fails (a broken or corrupt connection, a marker the barrier refuses, an
// unexpected message) fails the migration: its connection is shut down (the source's writes
// on it fail) and status() says why from then on; the receiver checks it at every control
// message and in AwaitRound.
#pragma once

#include <condition_variable>
#include <functional>
#include <memory>
#include <mutex>
#include <string>
#include <thread>
#include <vector>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "include/lmig/protocol.h"
#include "include/lmig/transport.h"
#include "src/migration/stats.h"
#include "src/migration/stream_split.h"

namespace lmig {

// The next connection to the migration's address, or DeadlineExceeded at DEADLINE.
using AcceptStreamFn =
    std::function<absl::StatusOr<std::unique_ptr<Transport>>(absl::Time deadline)>;

class IncomingStreams {
 public:
  // For a migration of STREAMS streams (stream 0 included).
  explicit IncomingStreams(int streams);
  ~IncomingStreams();  // Close()
  IncomingStreams(const IncomingStreams&) = delete;
  IncomingStreams& operator=(const IncomingStreams&) = delete;

  // Takes connections from ACCEPT until streams 1..N-1 have joined under KEY, by
  // JOIN_DEADLINE: a connection whose first message (within JOIN_WAIT of its arrival) is not
  // a valid STREAM_JOIN for a free index is dropped; SAY gets one line for each connection
  // dropped and each stream joined. Each joined stream gets a thread of its own, which
  // attaches MEM to it (RDMA: registers it), answers STREAM_JOINED (with the stream's region
  // table over RDMA) and reads it, by MIGRATION_DEADLINE at the latest.
  absl::Status Join(const AcceptStreamFn& accept, const proto::StreamKey& key,
                    absl::Time join_deadline, absl::Duration join_wait,
                    absl::Time migration_deadline, std::span<uint8_t> mem,
                    const std::function<void(const std::string&)>& say);
  // Waits, by DEADLINE, until every further stream's STREAM_END for ROUND (FINAL: the
  // stop-and-copy round) is in; returns the bytes of pages they carried in it. The first
  // failed stream's error, or DeadlineExceeded naming the streams still missing.
  absl::StatusOr<uint64_t> AwaitRound(uint32_t round, bool final_round, absl::Time deadline);
  // The first failed stream's error, or OK.
  absl::Status status() const;
  // Ends every stream (shut down, readers joined); idempotent.
  void Close();
  // Per further stream, after Close (or once the final round is complete).
  std::vector<StreamStats> stats() const;

 private:
  struct Stream;
  // A joined stream's reader, first: attaches the memory, opens the stream to pages and
  // answers STREAM_JOINED with the stream's transport blob.
  absl::Status Open(Stream& s, std::span<uint8_t> mem);
  void Read(Stream& s);
  void Fail(Stream& s, absl::Status why);

  const int n_;
  mutable std::mutex mu_;
  std::condition_variable cv_;
  RoundBarrier barrier_;           // under mu_
  absl::Status error_;             // under mu_: the first failure
  bool closing_ = false;           // under mu_
  absl::Time migration_deadline_ = absl::InfiniteFuture();
  std::vector<std::unique_ptr<Stream>> streams_;
};

}  // namespace lmig
