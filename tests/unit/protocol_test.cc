#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>

#include "include/lmig/protocol.h"
#include "src/cli/options.h"
#include "src/machine/guest_memory.h"
#include "src/machine/state_codec.h"
#include "src/migration/policy.h"

namespace lmig {
namespace {

using proto::FrameHeader;
using proto::MsgType;

TEST(Protocol, HeaderRoundTrips) {
  const std::vector<uint8_t> payload = {1, 2, 3, 4, 5};
  FrameHeader h = proto::MakeHeader(MsgType::kDeviceState, 42, payload);
  EXPECT_TRUE(proto::CheckHeader(h).ok());
  EXPECT_TRUE(proto::CheckPayload(h, payload).ok());
  EXPECT_EQ(h.length, 5u);
  EXPECT_EQ(h.arg, 42u);
}

TEST(Protocol, RejectsCorruptFrames) {
  const std::vector<uint8_t> payload = {1, 2, 3, 4, 5};
  FrameHeader h = proto::MakeHeader(MsgType::kComplete, 0, payload);
  FrameHeader bad = h;
  bad.magic ^= 1;
  EXPECT_THAT(std::string(proto::CheckHeader(bad).message()), testing::HasSubstr("magic"));
  bad = h;
  bad.length += 1;  // a flipped bit in a covered field
  EXPECT_THAT(std::string(proto::CheckHeader(bad).message()), testing::HasSubstr("checksum"));
  std::vector<uint8_t> corrupt = payload;
  corrupt[2] ^= 0x40;
  EXPECT_THAT(std::string(proto::CheckPayload(h, corrupt).message()),
              testing::HasSubstr("payload checksum"));
  FrameHeader pages = proto::MakeHeader(MsgType::kPages, 4096, corrupt, proto::kNoPayloadHash);
  EXPECT_TRUE(proto::CheckPayload(pages, payload).ok());
}

TEST(Protocol, StatusTravelsWithCodeAndText) {
  const absl::Status s = absl::PermissionDeniedError("wrong key");
  proto::StatusMsg m = proto::MakeStatusMsg(s);
  auto parsed = proto::Parse<proto::StatusMsg>(proto::Bytes(m), MsgType::kAck);
  ASSERT_TRUE(parsed.ok());
  EXPECT_EQ(proto::StatusFromMsg(*parsed), s);
  EXPECT_TRUE(proto::StatusFromMsg(proto::MakeStatusMsg(absl::OkStatus())).ok());
  EXPECT_FALSE(proto::Parse<proto::StatusMsg>(std::vector<uint8_t>(3), MsgType::kAck).ok());
}

proto::HelloLimits Limits(const std::string& auth, uint64_t max_mem = 1ull << 40) {
  proto::HelloLimits l;
  l.auth = auth == "psk" ? proto::AuthMode::kPsk : proto::AuthMode::kNone;
  l.max_mem = max_mem;
  return l;
}

TEST(Protocol, HelloChecksVersionPageSizeAndKey) {
  proto::Hello h{};
  h.version = proto::kVersion;
  h.page_size = 4096;
  h.mem_size = 512ull << 20;
  h.num_cpus = 2;
  h.dirty_mode = 1;
  h.transport = static_cast<uint32_t>(proto::TransportKind::kTcp);
  h.auth = static_cast<uint32_t>(proto::AuthMode::kPsk);
  EXPECT_TRUE(proto::CheckHello(h, Limits("psk")).ok());
  // A destination with a key refuses a source that offers none, and the other way round.
  proto::Hello none = h;
  none.auth = 0;
  EXPECT_EQ(proto::CheckHello(none, Limits("psk")).code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(std::string(proto::CheckHello(none, Limits("psk")).message()),
              testing::HasSubstr("authentication failed (refused by the destination)"));
  EXPECT_FALSE(proto::CheckHello(h, Limits("")).ok());
  proto::Hello v = h;
  v.version = 99;
  EXPECT_THAT(std::string(proto::CheckHello(v, Limits("psk")).message()),
              testing::HasSubstr("version mismatch"));
  v = h;
  v.page_size = 65536;
  EXPECT_FALSE(proto::CheckHello(v, Limits("psk")).ok());
  v = h;
  v.num_cpus = 0;
  EXPECT_FALSE(proto::CheckHello(v, Limits("psk")).ok());
  v.num_cpus = proto::kMaxVcpus + 1;
  EXPECT_FALSE(proto::CheckHello(v, Limits("psk")).ok());
  v = h;
  v.features = 0x80;
  EXPECT_THAT(std::string(proto::CheckHello(v, Limits("psk")).message()),
              testing::HasSubstr("unknown feature"));
  v = h;
  v.dirty_mode = 7;
  EXPECT_FALSE(proto::CheckHello(v, Limits("psk")).ok());
  proto::HelloLimits rdma_only = Limits("psk");
  rdma_only.transport = proto::TransportKind::kRdma;
  EXPECT_THAT(std::string(proto::CheckHello(h, rdma_only).message()),
              testing::HasSubstr("transport mismatch"));
}

// A HELLO announcing 1 TiB was accepted before anything was checked against the host.
TEST(Protocol, HelloBeyondMaxMemIsRefusedNamingBothSizes) {
  proto::Hello h{};
  h.version = proto::kVersion;
  h.page_size = 4096;
  h.mem_size = 1ull << 40;
  h.num_cpus = 1;
  h.dirty_mode = 1;
  const absl::Status s = proto::CheckHello(h, Limits("", 2ull << 30));
  EXPECT_EQ(s.code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("1048576 MiB"));
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("2048 MiB (--max-mem)"));
}

// A control frame could announce 64 MiB of payload whatever its type; now each type has a bound.
TEST(Protocol, EachMessageTypeHasAPayloadBound) {
  constexpr uint64_t kTag = proto::kSealOverhead;  // control records after the handshake
  for (auto [type, max] : std::vector<std::pair<MsgType, uint64_t>>{
           {MsgType::kHello, sizeof(proto::Hello)},
           {MsgType::kAuthChallenge, sizeof(proto::AuthChallenge)},
           {MsgType::kAuthProof, sizeof(proto::AuthProof)},
           {MsgType::kEndRound, sizeof(proto::EndRound) + kTag},
           {MsgType::kComplete, sizeof(proto::Complete) + kTag},
           {MsgType::kAck, sizeof(proto::Ack) + proto::kMaxAckPhases * sizeof(proto::PhaseTiming) + kTag},
           {MsgType::kAbort, sizeof(proto::StatusMsg) + kTag},
           {MsgType::kProgress, 8 + kTag},
           {MsgType::kDeviceState, proto::kMaxDeviceState + kTag}}) {
    EXPECT_EQ(proto::MaxPayload(type), max) << proto::MsgTypeName(type);
    std::vector<uint8_t> payload(max);
    proto::FrameHeader full = proto::MakeHeader(type, 0, payload);
    EXPECT_TRUE(proto::CheckHeader(full).ok()) << proto::MsgTypeName(type);
    std::vector<uint8_t> over(max + 1);
    proto::FrameHeader big = proto::MakeHeader(type, 0, over);
    const absl::Status s = proto::CheckHeader(big);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << proto::MsgTypeName(type);
    EXPECT_THAT(std::string(s.message()), testing::HasSubstr("at most"));
  }
  // A control frame may not claim the no-payload-hash flag only PAGES frames carry.
  EXPECT_FALSE(proto::CheckHeader(proto::MakeHeader(MsgType::kHello, 0, {}, proto::kNoPayloadHash)).ok());
}

TEST(StateCodec, RoundTripsAndRejectsTruncation) {
  StateWriter w;
  const uint64_t a = 7;
  w.AddPod(StateTag::kRegs, 0, a);
  w.Add(StateTag::kUart, kVmWide, "xyz", 3);
  std::vector<uint8_t> blob = w.Finish();
  auto recs = ParseState(blob);
  ASSERT_TRUE(recs.ok());
  ASSERT_EQ(recs->size(), 2u);
  EXPECT_EQ((*RecordAs<uint64_t>((*recs)[0])), 7u);
  EXPECT_EQ((*recs)[1].vcpu, kVmWide);
  EXPECT_FALSE(RecordAs<uint32_t>((*recs)[0]).ok());
  blob.pop_back();
  EXPECT_FALSE(ParseState(blob).ok());
  std::vector<uint8_t> unknown(12, 0);
  unknown[0] = 200;
  EXPECT_FALSE(ParseState(unknown).ok());
}

TEST(Coalesce, MergesContiguousPagesUpToTheCap) {
  PageBitmap b(1000);
  for (uint64_t p : {1, 2, 3, 10, 63, 64, 65, 999}) {
    b.Set(p);
  }
  auto runs = CoalesceRuns(b, 1 << 20);
  ASSERT_EQ(runs.size(), 4u);
  EXPECT_EQ(runs[0], (RamRun{4096, 3 * 4096}));
  EXPECT_EQ(runs[1], (RamRun{10 * 4096, 4096}));
  EXPECT_EQ(runs[2], (RamRun{63 * 4096, 3 * 4096}));  // across a bitmap word
  EXPECT_EQ(runs[3], (RamRun{999 * 4096, 4096}));
  PageBitmap all(100);
  all.SetAll();
  EXPECT_EQ(all.Count(), 100u);
  auto capped = CoalesceRuns(all, 8 * 4096);
  ASSERT_EQ(capped.size(), 13u);
  EXPECT_EQ(capped[0].length, 8u * 4096);
  EXPECT_EQ(capped[12].length, 4u * 4096);
}

TEST(Policy, StopsWhenTheRestFitsTheDowntimeTarget) {
  PolicyConfig cfg;
  cfg.downtime_target_ms = 50;
  std::vector<RoundSample> h = {{100'000'000, 1.0}};  // 100 MB/s
  EXPECT_TRUE(DecideNextRound(cfg, h, 4'000'000, 0).stop_and_copy);   // 40 ms
  EXPECT_FALSE(DecideNextRound(cfg, h, 6'000'000, 0).stop_and_copy);  // 60 ms
  EXPECT_TRUE(DecideNextRound(cfg, h, 0, 0).stop_and_copy);
}

TEST(Policy, RoundCapForcesStopAndCopy) {
  PolicyConfig cfg;
  cfg.max_rounds = 3;
  std::vector<RoundSample> h(3, {100'000'000, 1.0});
  auto d = DecideNextRound(cfg, h, 90'000'000, 0);
  EXPECT_TRUE(d.stop_and_copy);
  EXPECT_THAT(d.reason, testing::HasSubstr("round cap"));
}

TEST(Policy, ThrottlesAGuestThatOutrunsTheLink) {
  PolicyConfig cfg;
  std::vector<RoundSample> h = {{100'000'000, 1.0}, {80'000'000, 0.8}};
  auto d = DecideNextRound(cfg, h, 70'000'000, 0);
  EXPECT_FALSE(d.stop_and_copy);
  EXPECT_EQ(d.throttle_pct, 20);
  EXPECT_EQ(DecideNextRound(cfg, h, 70'000'000, 20).throttle_pct, 40);
  EXPECT_EQ(DecideNextRound(cfg, h, 70'000'000, 90).throttle_pct, 99);
  // Converging (dirty set well below what the last round sent): no throttle.
  EXPECT_EQ(DecideNextRound(cfg, h, 10'000'000, 0).throttle_pct, 0);
  cfg.allow_throttle = false;
  EXPECT_EQ(DecideNextRound(cfg, h, 70'000'000, 0).throttle_pct, 0);
}

TEST(Options, ParsesSizesRatesAndAddresses) {
  EXPECT_EQ(*ParseSize("--mem", "512M"), 512ull << 20);
  EXPECT_EQ(*ParseSize("--mem", "4G"), 4ull << 30);
  EXPECT_EQ(*ParseSize("--mem", "4GiB"), 4ull << 30);
  EXPECT_EQ(*ParseSize("--mem", "1024"), 1ull << 30);
  EXPECT_THAT(std::string(ParseSize("--mem", "lots").status().message()),
              testing::HasSubstr("--mem 'lots': not a size"));
  EXPECT_FALSE(ParseSize("--mem", "12Q").ok());
  EXPECT_EQ(*ParseRate("--max-bandwidth", "100M"), 100'000'000u);
  auto hp = ParseHostPort("--peer", "10.0.2.15:4444");
  ASSERT_TRUE(hp.ok());
  EXPECT_EQ(hp->host, "10.0.2.15");
  EXPECT_EQ(hp->port, 4444);
  EXPECT_FALSE(ParseHostPort("--peer", "10.0.2.15").ok());
  EXPECT_FALSE(ParseHostPort("--peer", "h:70000").ok());
}

}  // namespace
}  // namespace lmig
