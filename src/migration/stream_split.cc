#include "src/migration/stream_split.h"

#include <algorithm>

#include "absl/strings/str_format.h"

namespace lmig {

std::vector<std::vector<RamRange>> SplitByChunk(std::span<const RamRange> ranges, int streams,
                                                uint64_t chunk_bytes) {
  std::vector<std::vector<RamRange>> out(static_cast<size_t>(std::max(streams, 1)));
  const uint64_t n = out.size();
  for (const RamRange& r : ranges) {
    uint64_t off = r.offset;
    const uint64_t end = r.offset + r.length;
    while (off < end) {
      const uint64_t chunk = off / chunk_bytes;
      const uint64_t piece_end = std::min(end, (chunk + 1) * chunk_bytes);
      std::vector<RamRange>& dst = out[chunk % n];
      if (!dst.empty() && dst.back().offset + dst.back().length == off) {
        dst.back().length += piece_end - off;  // the run continues in the same stream
      } else {
        dst.push_back({off, piece_end - off});
      }
      off = piece_end;
    }
  }
  return out;
}

RoundBarrier::RoundBarrier(int streams)
    : streams_(std::max(streams, 1)), seen_(static_cast<size_t>(std::max(streams, 1)), false) {}

absl::Status RoundBarrier::Mark(int stream, uint32_t round, uint64_t bytes, bool final_round) {
  if (stream < 1 || stream >= streams_) {
    return absl::DataLossError(absl::StrFormat(
        "STREAM_END from stream %d: this migration has streams 1..%d", stream, streams_ - 1));
  }
  if (finished_) {
    return absl::DataLossError(absl::StrFormat(
        "STREAM_END for round %d on stream %d after the final round", round, stream));
  }
  if (round != round_) {
    return absl::DataLossError(absl::StrFormat(
        "STREAM_END for round %d on stream %d while round %d is open", round, stream, round_));
  }
  if (seen_[static_cast<size_t>(stream)]) {
    return absl::DataLossError(absl::StrFormat(
        "a second STREAM_END for round %d on stream %d", round, stream));
  }
  const int f = final_round ? 1 : 0;
  if (final_ >= 0 && final_ != f) {
    return absl::DataLossError(absl::StrFormat(
        "STREAM_END for round %d on stream %d says final=%d, another stream said final=%d",
        round, stream, f, final_));
  }
  final_ = f;
  seen_[static_cast<size_t>(stream)] = true;
  ++marked_;
  bytes_ += bytes;
  return absl::OkStatus();
}

absl::StatusOr<uint64_t> RoundBarrier::Advance() {
  if (!complete()) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "round %d: %d of %d streams' markers are in", round_, marked_, streams_ - 1));
  }
  const uint64_t bytes = bytes_;
  finished_ = final_ == 1;
  ++round_;
  marked_ = 0;
  bytes_ = 0;
  final_ = -1;
  std::fill(seen_.begin(), seen_.end(), false);
  return bytes;
}

}  // namespace lmig
