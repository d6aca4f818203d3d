// How a further stream (1..N-1) proves it belongs to the migration whose stream 0 it follows:
// HELLO_ACK (on stream 0, sealed under the PSK's session keys or inside TLS) carries a fresh
// StreamKey; each further connection's first message is a STREAM_JOIN with its index and
// HMAC-SHA256(key, "lmig-rdma stream join" || stream || streams), little endian. A stranger
// without the key cannot join; a proof seen on the wire names one index, which the
// destination takes only once, and one migration (the key is fresh each time).
#pragma once

#include <cstdint>

#include "absl/status/statusor.h"
#include "include/lmig/protocol.h"
#include "src/crypto/primitives.h"

namespace lmig {

// A fresh key from the OS CSPRNG.
absl::StatusOr<proto::StreamKey> NewStreamKey();
// The STREAM_JOIN for STREAM of STREAMS under KEY.
absl::StatusOr<proto::StreamJoin> MakeStreamJoin(const proto::StreamKey& key, uint32_t stream,
                                                 uint32_t streams);
// Checks a STREAM_JOIN payload against KEY for a migration of STREAMS streams: exactly one
// StreamJoin, reserved zero, stream in 1..STREAMS-1, the proof right (constant time).
// Returns the stream's index. Errors name what is wrong (kUnauthenticated for the proof).
absl::StatusOr<uint32_t> CheckStreamJoin(std::span<const uint8_t> payload,
                                         const proto::StreamKey& key, uint32_t streams);

}  // namespace lmig
