// libFuzzer target: the handshake, both sides of it. The destination parses a HELLO and checks
// it against its limits (proto::Parse<Hello>, proto::CheckHello); the source parses the
// HELLO_ACK answer: a StatusMsg and the trailing blob after it (over RDMA the region table,
// decoded for a guest of 64 MiB).
//
// Input: byte 0 = length of the HELLO payload, byte 1 = which destination limits (bit 0: a
// 1 GiB memory cap; bit 1: one transport only, bit 2: RDMA rather than TCP), then the HELLO
// payload, then the HELLO_ACK payload (the rest).
#include <cstdint>
#include <span>

#include "include/lmig/protocol.h"
#include "tests/fuzz/fuzz_check.h"

namespace lmig::proto {
namespace {

void Destination(std::span<const uint8_t> payload, uint8_t pick) {
  absl::StatusOr<Hello> h = Parse<Hello>(payload, MsgType::kHello);
  FUZZ_CHECK(h.ok() == (payload.size() == sizeof(Hello)));
  if (!h.ok()) {
    return;
  }
  HelloLimits limits;
  if (pick & 1) {
    limits.max_mem = 1ull << 30;
  }
  if (pick & 2) {
    limits.transport = (pick & 4) ? TransportKind::kRdma : TransportKind::kTcp;
  }
  const absl::Status s = CheckHello(*h, limits);
  if (s.ok()) {
    // What the destination then sizes its machine and its dirty tracking by.
    FUZZ_CHECK(h->version == kVersion);
    FUZZ_CHECK(h->page_size == kPageSize);
    FUZZ_CHECK(h->mem_size > 0 && h->mem_size <= limits.max_mem);
    FUZZ_CHECK(h->mem_size % kPageSize == 0);
    FUZZ_CHECK(h->num_cpus >= 1 && h->num_cpus <= kMaxVcpus);
    FUZZ_CHECK(h->streams >= 1 && h->streams <= kMaxStreams);
    // Either transport carries any stream count (protocol 10).
    FUZZ_CHECK(h->transport == static_cast<uint32_t>(TransportKind::kTcp) ||
               h->transport == static_cast<uint32_t>(TransportKind::kRdma));
    FUZZ_CHECK(limits.transport == TransportKind::kInvalid ||
               h->transport == static_cast<uint32_t>(limits.transport));
  } else {
    FUZZ_CHECK(!s.message().empty());
  }
}

void Source(std::span<const uint8_t> payload) {
  for (const MsgType type : {MsgType::kHelloAck, MsgType::kAbort}) {
    absl::StatusOr<StatusMsg> m = Parse<StatusMsg>(payload, type, /*prefix=*/true);
    FUZZ_CHECK(m.ok() == (payload.size() >= sizeof(StatusMsg)));
    if (!m.ok()) {
      continue;
    }
    const absl::Status s = StatusFromMsg(*m);
    FUZZ_CHECK(s.ok() == (m->code == 0));
    FUZZ_CHECK(s.message().size() <= sizeof(m->text));
    const std::span<const uint8_t> blob = payload.subspan(sizeof(StatusMsg));
    FUZZ_CHECK(blob.size() == payload.size() - sizeof(StatusMsg));
  }
  // What the source takes from a HELLO_ACK: bounded times, the rest as the region blob.
  if (absl::StatusOr<HelloAckMsg> a = ParseHelloAck(payload); a.ok()) {
    FUZZ_CHECK(a->times.setup_ns <= kMaxPhaseNs && a->times.restore_ns <= kMaxPhaseNs);
    FUZZ_CHECK(a->regions.size() ==
               payload.size() - sizeof(StatusMsg) - sizeof(HelloAckTimes) - sizeof(StreamKey));
    // A region table the source accepts tiles the guest memory from 0 in pages, within it.
    constexpr uint64_t kMem = 64ull << 20;
    if (auto t = DecodeRegionTable(a->regions, kMem); t.ok()) {
      FUZZ_CHECK(!t->empty() && t->size() <= kMaxRegions);
      FUZZ_CHECK(a->regions.size() == kRegionTableHeader + t->size() * sizeof(RegionWire));
      uint64_t end = 0;
      for (const RegionWire& r : *t) {
        FUZZ_CHECK(r.offset == end && r.length > 0 && r.length % kPageSize == 0);
        FUZZ_CHECK(r.length <= kMem - r.offset && r.reserved == 0);
        end += r.length;
      }
      auto again = EncodeRegionTable(*t);
      FUZZ_CHECK(again.ok() && *again == a->regions);
    } else {
      FUZZ_CHECK(!t.status().message().empty());
    }
  } else {
    FUZZ_CHECK(!a.status().message().empty());
  }
}

}  // namespace
}  // namespace lmig::proto

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 2) {
    return 0;
  }
  std::span<const uint8_t> in(data + 2, size - 2);
  const size_t hello_len = std::min<size_t>(data[0], in.size());
  lmig::proto::Destination(in.first(hello_len), data[1]);
  lmig::proto::Source(in.subspan(hello_len));
  return 0;
}
