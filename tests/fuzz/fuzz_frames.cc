// libFuzzer target: the frame decoder. The input is a byte stream as a transport receives it,
// split into frames the way TcpTransport::Receive does (header, CheckHeader, payload of the
// header's length, CheckPayload); every payload is then parsed as each message struct, and by
// its type as the receiver and sender would (HELLO + CheckHello, statuses, the state blob).
//
// The first input byte picks the mode: odd = each header is resealed (MakeHeader over the
// fuzzed type, arg, flags and the payload), so the fuzzer gets past the checksums to the
// parsers; even = the stream is taken as it is, exercising the checks themselves.
#include <algorithm>
#include <cstdint>
#include <cstring>
#include <span>

#include "include/lmig/protocol.h"
#include "src/machine/state_codec.h"
#include "src/migration/stats.h"
#include "tests/fuzz/fuzz_check.h"

namespace lmig::proto {
namespace {

// Parse<T> takes exactly sizeof(T) bytes (at least, as a prefix), and what it returns
// serializes back to those bytes.
template <typename T>
void ParseAs(std::span<const uint8_t> payload, MsgType type) {
  for (const bool prefix : {false, true}) {
    absl::StatusOr<T> v = Parse<T>(payload, type, prefix);
    const bool fits = prefix ? payload.size() >= sizeof(T) : payload.size() == sizeof(T);
    FUZZ_CHECK(v.ok() == fits);
    if (v.ok()) {
      const std::vector<uint8_t> back = Bytes(*v);
      FUZZ_CHECK(back.size() == sizeof(T));
      FUZZ_CHECK(std::equal(back.begin(), back.end(), payload.begin()));
    }
  }
}

void DecodeStatus(std::span<const uint8_t> payload, MsgType type, bool prefix) {
  absl::StatusOr<StatusMsg> m = Parse<StatusMsg>(payload, type, prefix);
  if (m.ok()) {
    const absl::Status s = StatusFromMsg(*m);
    FUZZ_CHECK(s.ok() == (m->code == 0));
    // What a side would send back about it.
    const StatusMsg again = MakeStatusMsg(s);
    FUZZ_CHECK(StatusFromMsg(again).ok() == s.ok());
  }
}

void DecodeMessage(MsgType type, std::span<const uint8_t> payload) {
  ParseAs<Hello>(payload, type);
  ParseAs<EndRound>(payload, type);
  ParseAs<Complete>(payload, type);
  ParseAs<StatusMsg>(payload, type);
  ParseAs<Ack>(payload, type);
  ParseAs<AuthChallenge>(payload, type);
  ParseAs<AuthProof>(payload, type);
  ParseAs<uint64_t>(payload, type);  // PROGRESS
  switch (type) {
    case MsgType::kHello:
      if (absl::StatusOr<Hello> h = Parse<Hello>(payload, type); h.ok()) {
        (void)CheckHello(*h, HelloLimits{});
      }
      break;
    case MsgType::kHelloAck:
      DecodeStatus(payload, type, /*prefix=*/true);
      break;
    case MsgType::kAbort:
      DecodeStatus(payload, type, /*prefix=*/false);
      break;
    case MsgType::kAck:
      if (absl::StatusOr<AckMsg> a = ParseAck(payload); a.ok()) {
        (void)StatusFromMsg(a->ack.status);
        FUZZ_CHECK(a->phases.size() == a->ack.num_phases &&
                   a->phases.size() <= kMaxAckPhases);
        for (uint32_t cpus : {1u, 2u, kMaxVcpus}) {
          if (CheckPhaseTimings(a->phases, cpus).ok()) {
            // What the source accepts it can turn into a bounded, complete report.
            const lmig::DestinationPhases d = lmig::PhasesFromTable(a->phases, static_cast<int>(cpus));
            FUZZ_CHECK(d.in_pause.size() == 4);
            FUZZ_CHECK(d.in_pause_ms >= 0 && d.in_pause_ms <= 1e-6 * kMaxPhaseNs * kMaxAckPhases);
          }
        }
      }
      break;
    case MsgType::kDeviceState:
      if (auto records = ParseState(payload); records.ok()) {
        for (const StateRecord& r : *records) {
          FUZZ_CHECK(r.data.data() >= payload.data() &&
                     r.data.data() + r.data.size() <= payload.data() + payload.size());
        }
      }
      break;
    default:
      break;
  }
}

}  // namespace
}  // namespace lmig::proto

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  using namespace lmig::proto;
  std::span<const uint8_t> in(data, size);
  if (in.empty()) {
    return 0;
  }
  const bool reseal = in[0] & 1;
  in = in.subspan(1);
  while (in.size() >= sizeof(FrameHeader)) {
    FrameHeader h;
    std::memcpy(&h, in.data(), sizeof(h));
    in = in.subspan(sizeof(h));
    const size_t n = static_cast<size_t>(std::min<uint64_t>(h.length, in.size()));
    const std::span<const uint8_t> payload = in.first(n);
    if (reseal) {
      h = MakeHeader(static_cast<MsgType>(h.type), h.arg, payload, h.flags);
      FUZZ_CHECK(h.length == n);
    }
    (void)MsgTypeName(static_cast<MsgType>(h.type));
    if (!CheckHeader(h).ok()) {
      return 0;  // the transport drops the connection
    }
    FUZZ_CHECK(h.length <= MaxPayload(static_cast<MsgType>(h.type)));
    if (h.length > in.size()) {
      return 0;  // the peer closed mid-frame
    }
    if (!CheckPayload(h, payload).ok()) {
      FUZZ_CHECK(!reseal);
      return 0;
    }
    // A header that passed both checks is what MakeHeader builds for that frame.
    const FrameHeader made = MakeHeader(static_cast<MsgType>(h.type), h.arg, payload, h.flags);
    FUZZ_CHECK(made.magic == h.magic && made.type == h.type && made.length == h.length &&
               made.arg == h.arg && made.flags == h.flags);
    if (!(h.flags & kNoPayloadHash)) {
      FUZZ_CHECK(made.payload_hash == h.payload_hash);
    }
    DecodeMessage(static_cast<MsgType>(h.type), payload);
    in = in.subspan(n);
  }
  return 0;
}
