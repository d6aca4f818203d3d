#include "src/migration/stream_join.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig {
namespace {

absl::StatusOr<crypto::Sha256Digest> JoinProof(const proto::StreamKey& key, uint32_t stream,
                                               uint32_t streams) {
  static constexpr char kLabel[] = "lmig-rdma stream join";
  uint8_t msg[sizeof(kLabel) - 1 + 8];
  std::memcpy(msg, kLabel, sizeof(kLabel) - 1);
  for (int i = 0; i < 4; ++i) {
    msg[sizeof(kLabel) - 1 + i] = static_cast<uint8_t>(stream >> (8 * i));
    msg[sizeof(kLabel) - 1 + 4 + i] = static_cast<uint8_t>(streams >> (8 * i));
  }
  return crypto::HmacSha256(std::span<const uint8_t>(key.key, sizeof(key.key)), msg);
}

}  // namespace

absl::StatusOr<proto::StreamKey> NewStreamKey() {
  proto::StreamKey k{};
  RETURN_IF_ERROR(crypto::RandomBytes(std::span<uint8_t>(k.key, sizeof(k.key))));
  return k;
}

absl::StatusOr<proto::StreamJoin> MakeStreamJoin(const proto::StreamKey& key, uint32_t stream,
                                                 uint32_t streams) {
  ASSIGN_OR_RETURN(crypto::Sha256Digest proof, JoinProof(key, stream, streams));
  proto::StreamJoin j{};
  j.stream = stream;
  std::memcpy(j.proof, proof.data(), sizeof(j.proof));
  return j;
}

absl::StatusOr<uint32_t> CheckStreamJoin(std::span<const uint8_t> payload,
                                         const proto::StreamKey& key, uint32_t streams) {
  ASSIGN_OR_RETURN(proto::StreamJoin j,
                   proto::Parse<proto::StreamJoin>(payload, proto::MsgType::kStreamJoin));
  if (j.reserved != 0) {
    return absl::DataLossError(absl::StrFormat("STREAM_JOIN: reserved 0x%x, want 0", j.reserved));
  }
  if (j.stream < 1 || j.stream >= streams) {
    return absl::DataLossError(absl::StrFormat(
        "STREAM_JOIN for stream %d: this migration has streams 1..%d", j.stream, streams - 1));
  }
  ASSIGN_OR_RETURN(crypto::Sha256Digest want, JoinProof(key, j.stream, streams));
  if (!crypto::ConstantTimeEqual(want, std::span<const uint8_t>(j.proof, sizeof(j.proof)))) {
    return absl::UnauthenticatedError(absl::StrFormat(
        "STREAM_JOIN for stream %d: wrong proof (not a stream of this migration)", j.stream));
  }
  return j.stream;
}

}  // namespace lmig
