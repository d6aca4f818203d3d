// The pure parts of parallel streams (--streams N): how a round's pages are shared out among
// the streams, and the destination's round barrier. No threads, no I/O: both are unit-tested
// on the host (tests/unit/streams_test.cc).
#pragma once

#include <cstdint>
#include <span>
#include <vector>

#include "absl/status/statusor.h"
#include "include/lmig/ram_range.h"

namespace lmig {

// Guest memory is cut into chunks of this size (a huge page: a hot 2 MiB region does not sit
// on one stream for long, and a chunk never spans two huge pages of the destination).
inline constexpr uint64_t kStreamChunkBytes = 2ull << 20;

// Splits RANGES among STREAMS (>= 1) streams: each range is cut at every multiple of
// CHUNK_BYTES (a power of two, at least a page), and the piece in chunk c goes to stream
// c % STREAMS (round-robin over the chunks: neighbouring chunks on different streams). Every
// byte of RANGES lands in exactly one output range, in RANGES' order within each stream.
std::vector<std::vector<RamRange>> SplitByChunk(std::span<const RamRange> ranges, int streams,
                                                uint64_t chunk_bytes = kStreamChunkBytes);

// The destination's round barrier over the further streams 1..STREAMS-1 (stream 0's share of a
// round ends with its END_ROUND, which the receiver checks itself). A round is complete once
// every further stream's STREAM_END for it is in, in any order. Not thread-safe: the
// destination's IncomingStreams guards it.
class RoundBarrier {
 public:
  explicit RoundBarrier(int streams);

  // Stream STREAM's marker for ROUND, which carried BYTES of pages; FINAL: the stop-and-copy
  // round. Refused (DataLoss, naming the stream and the rounds): a stream outside
  // 1..streams-1, a round other than the one the barrier waits for (a stream's marker for
  // round n+1 before round n completed is refused too: each stream sends its markers in order,
  // so it cannot run ahead), a second marker from the same stream, a final flag that differs
  // from another stream's for the same round, a marker after the final round.
  absl::Status Mark(int stream, uint32_t round, uint64_t bytes, bool final_round);
  // Whether every further stream's marker for the current round is in.
  bool complete() const { return marked_ == streams_ - 1; }
  // The round the barrier waits for (1 first).
  uint32_t round() const { return round_; }
  // The bytes the current round's markers carried so far.
  uint64_t bytes() const { return bytes_; }
  // Moves on to the next round; only once complete (FailedPrecondition otherwise). Returns the
  // bytes the finished round's markers carried.
  absl::StatusOr<uint64_t> Advance();
  // Whether the final round has completed: no marker is taken any more.
  bool finished() const { return finished_; }

 private:
  int streams_;
  uint32_t round_ = 1;
  int marked_ = 0;
  uint64_t bytes_ = 0;
  int final_ = -1;  // the current round's final flag once a marker set it
  bool finished_ = false;
  std::vector<bool> seen_;
};

}  // namespace lmig
