#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>

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
  h.dirty_mode = proto::DirtyMode::kRing;
  h.transport = static_cast<uint32_t>(proto::TransportKind::kTcp);
  h.auth = static_cast<uint32_t>(proto::AuthMode::kPsk);
  h.streams = 1;
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
  v.dirty_mode = static_cast<proto::DirtyMode>(7);
  EXPECT_FALSE(proto::CheckHello(v, Limits("psk")).ok());
  proto::HelloLimits rdma_only = Limits("psk");
  rdma_only.transport = proto::TransportKind::kRdma;
  EXPECT_THAT(std::string(proto::CheckHello(h, rdma_only).message()),
              testing::HasSubstr("transport mismatch"));
  // A transport that is neither, even to a destination that takes any.
  v = h;
  v.transport = 7;
  EXPECT_THAT(std::string(proto::CheckHello(v, Limits("psk")).message()),
              testing::HasSubstr("bad transport 7"));
  // Streams over RDMA are fine (protocol 10).
  v = h;
  v.transport = static_cast<uint32_t>(proto::TransportKind::kRdma);
  v.streams = 4;
  EXPECT_TRUE(proto::CheckHello(v, rdma_only).ok());
}

// A HELLO announcing 1 TiB was accepted before anything was checked against the host.
TEST(Protocol, HelloBeyondMaxMemIsRefusedNamingBothSizes) {
  proto::Hello h{};
  h.version = proto::kVersion;
  h.page_size = 4096;
  h.mem_size = 1ull << 40;
  h.num_cpus = 1;
  h.dirty_mode = proto::DirtyMode::kRing;
  h.streams = 1;
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
           {MsgType::kPing, kTag},
           {MsgType::kPong, kTag},
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

// HELLO_ACK's RDMA region table was a memcpy of host structs, checked only for tiling.
proto::RegionWire Region(uint64_t offset, uint64_t length, uint32_t rkey = 0x1234) {
  return {offset, length, 0x7f0000000000ull + offset, rkey, 0};
}

// A table's bytes as the transport wrote them before there was an encoder: a u32 count, four
// zero bytes, the structs as they lie in memory (x86-64: little endian). No checks, so tests
// can build hostile tables with it.
std::vector<uint8_t> RawTable(const std::vector<proto::RegionWire>& regions) {
  std::vector<uint8_t> b(8, 0);
  const auto n = static_cast<uint32_t>(regions.size());
  std::memcpy(b.data(), &n, 4);
  const auto* p = reinterpret_cast<const uint8_t*>(regions.data());
  b.insert(b.end(), p, p + regions.size() * sizeof(proto::RegionWire));
  return b;
}

TEST(RegionTable, RoundTripsWithTheBytesOfBefore) {
  const std::vector<proto::RegionWire> regions = {
      Region(0, 1ull << 30, 7), Region(1ull << 30, 1ull << 30, 8), Region(2ull << 30, 4096, 9)};
  auto bytes = proto::EncodeRegionTable(regions);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(*bytes, RawTable(regions));  // the wire is unchanged
  ASSERT_EQ(bytes->size(), 8 + 3 * 32u);
  // Little endian, field by field: the count, then entry 1's length (1 GiB) and rkey.
  EXPECT_EQ(std::vector<uint8_t>(bytes->begin(), bytes->begin() + 8),
            (std::vector<uint8_t>{3, 0, 0, 0, 0, 0, 0, 0}));
  EXPECT_EQ(std::vector<uint8_t>(bytes->begin() + 8 + 32 + 8, bytes->begin() + 8 + 32 + 16),
            (std::vector<uint8_t>{0, 0, 0, 0x40, 0, 0, 0, 0}));
  EXPECT_EQ(std::vector<uint8_t>(bytes->begin() + 8 + 32 + 24, bytes->begin() + 8 + 32 + 32),
            (std::vector<uint8_t>{8, 0, 0, 0, 0, 0, 0, 0}));
  auto back = proto::DecodeRegionTable(*bytes, (2ull << 30) + 4096);
  ASSERT_TRUE(back.ok()) << back.status();
  ASSERT_EQ(back->size(), 3u);
  for (size_t i = 0; i < 3; ++i) {
    EXPECT_EQ(0, std::memcmp(&(*back)[i], &regions[i], sizeof(proto::RegionWire))) << i;
  }
  // A table that ends short of the guest's memory is the transport's to refuse, per write.
  EXPECT_TRUE(proto::DecodeRegionTable(*bytes, 8ull << 30).ok());
}

TEST(RegionTable, AFullTableFitsHelloAckAndOneMoreIsRefused) {
  std::vector<proto::RegionWire> regions;
  for (uint64_t i = 0; i < proto::kMaxRegions; ++i) {
    regions.push_back(Region(i * 4096, 4096));
  }
  auto bytes = proto::EncodeRegionTable(regions);
  ASSERT_TRUE(bytes.ok()) << bytes.status();
  EXPECT_EQ(proto::HelloAckBytes(absl::OkStatus(), {}, *bytes).size(), proto::kMaxHelloAck);
  EXPECT_TRUE(proto::DecodeRegionTable(*bytes, UINT64_MAX).ok());
  regions.push_back(Region(proto::kMaxRegions * 4096ull, 4096));
  EXPECT_THAT(std::string(proto::EncodeRegionTable(regions).status().message()),
              testing::HasSubstr("65537 entries"));
  const absl::Status s = proto::DecodeRegionTable(RawTable(regions), UINT64_MAX).status();
  EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss);
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("65537 entries"));
}

TEST(RegionTable, MalformedTablesAreRefused) {
  const std::vector<uint8_t> good = RawTable({Region(0, 8192), Region(8192, 8192)});
  struct Case {
    std::vector<uint8_t> blob;
    std::string says;
  };
  std::vector<Case> cases = {
      {{}, "0 bytes, shorter than its 8-byte header"},
      {std::vector<uint8_t>(good.begin(), good.begin() + 7), "7 bytes"},
      {RawTable({}), "0 entries"},
      {std::vector<uint8_t>(good.begin(), good.end() - 1), "71 bytes, 2 entries need 72"},
      {good, "73 bytes, 2 entries need 72"},
      {good, "reserved 0x1"},
  };
  cases[4].blob.push_back(0);
  cases[5].blob[4] = 1;  // the header's reserved word
  for (const Case& c : cases) {
    const absl::Status s = proto::DecodeRegionTable(c.blob, 1 << 20).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << c.says;
    EXPECT_THAT(std::string(s.message()), testing::HasSubstr(c.says));
    EXPECT_THAT(std::string(s.message()), testing::StartsWith("HELLO_ACK: RDMA region table"));
  }
}

TEST(RegionTable, HostileEntriesAreRefusedNamingTheEntry) {
  constexpr uint64_t kMem = 64 << 20;
  struct Case {
    proto::RegionWire third;  // after two good entries tiling [0, 8 KiB)
    std::string says;
  };
  proto::RegionWire reserved = Region(8192, 4096);
  reserved.reserved = 5;
  proto::RegionWire addr_wraps = Region(8192, 8192);
  addr_wraps.addr = ~uint64_t{0} - 4095;
  const std::vector<Case> cases = {
      {reserved, "reserved 0x5"},
      {Region(8192, 0), "empty"},
      {Region(8192, 100), "not aligned to 4096-byte pages"},
      {Region(8192 + 1, 4096), "not aligned"},
      {Region(8192, ~uint64_t{0} - 4095), "overflows"},
      {addr_wraps, "overflows"},
      {Region(4096, 8192), "end at 0x2000"},   // overlaps entry 1
      {Region(16384, 4096), "end at 0x2000"},  // leaves a gap
      {Region(8192, kMem), "beyond the guest memory's 0x4000000 bytes"},
  };
  for (const Case& c : cases) {
    const std::vector<uint8_t> blob = RawTable({Region(0, 4096), Region(4096, 4096), c.third});
    const absl::Status s = proto::DecodeRegionTable(blob, kMem).status();
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << c.says;
    EXPECT_THAT(std::string(s.message()), testing::HasSubstr("HELLO_ACK: RDMA region 2 ["))
        << c.says;
    EXPECT_THAT(std::string(s.message()), testing::HasSubstr(c.says));
    // The destination's own encoder refuses what the source would (the bound aside).
    if (c.says.find("beyond") == std::string::npos) {
      EXPECT_FALSE(proto::EncodeRegionTable(std::vector<proto::RegionWire>{
                                                Region(0, 4096), Region(4096, 4096), c.third})
                       .ok())
          << c.says;
    }
  }
  // The first entry must start at 0.
  const absl::Status s = proto::DecodeRegionTable(RawTable({Region(4096, 4096)}), kMem).status();
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("region 0 [offset 0x1000"));
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
  EXPECT_EQ(runs[0], (RamRange{4096, 3 * 4096}));
  EXPECT_EQ(runs[1], (RamRange{10 * 4096, 4096}));
  EXPECT_EQ(runs[2], (RamRange{63 * 4096, 3 * 4096}));  // across a bitmap word
  EXPECT_EQ(runs[3], (RamRange{999 * 4096, 4096}));
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

FixedCosts Fixed(double stop, double save, double rtt, double dst) {
  FixedCosts f;
  f.AddDryRun(stop, save, 0);
  f.round_trip_ms = rtt;
  f.dst_restore_ms = dst;
  return f;
}

// The policy stopped when the pages fitted the target and the pause came out at twice it: the
// fixed part (stop, save, round trip, restore) was not in its model.
TEST(PolicyWithFixedCosts, StopsLaterWhenTheFixedPartIsLarge) {
  PolicyConfig cfg;
  cfg.downtime_target_ms = 50;
  std::vector<RoundSample> h = {{100'000'000, 1.0}};  // 100 MB/s
  // 4 MB is 40 ms of pages: enough alone, not with 20 ms of fixed costs.
  EXPECT_TRUE(DecideNextRound(cfg, h, 4'000'000, 0).stop_and_copy);
  const FixedCosts big = Fixed(5, 5, 5, 5);
  PolicyDecision d = DecideNextRound(cfg, h, 4'000'000, 0, big);
  EXPECT_FALSE(d.stop_and_copy) << d.reason;
  EXPECT_DOUBLE_EQ(d.fixed_ms, 20);
  EXPECT_DOUBLE_EQ(d.pages_ms, 40);
  EXPECT_DOUBLE_EQ(d.expected_downtime_ms, 60);
  // 3 MB (30 ms) + 20 ms fits exactly.
  d = DecideNextRound(cfg, h, 3'000'000, 0, big);
  EXPECT_TRUE(d.stop_and_copy);
  EXPECT_TRUE(d.target_met);
  EXPECT_THAT(d.reason, testing::HasSubstr("fixed 20.0 ms"));
  // The state blob travels at the measured rate too: 1 MB of state is 10 ms more.
  FixedCosts with_state = big;
  with_state.state_bytes = 1'000'000;
  EXPECT_DOUBLE_EQ(with_state.Ms(100'000'000), 30);
  EXPECT_FALSE(DecideNextRound(cfg, h, 3'000'000, 0, with_state).stop_and_copy);
  // Unmeasured parts (< 0) add nothing.
  EXPECT_DOUBLE_EQ(Fixed(1, 2, -1, -1).Ms(100'000'000), 3);
  // The pause's three control messages cost what a pre-copy END_ROUND did, each.
  FixedCosts sends = Fixed(1, 2, -1, -1);
  sends.control_send_ms = 2;
  EXPECT_DOUBLE_EQ(sends.Ms(100'000'000), 9);
  // The state blob's seal and checksum: once on each side.
  sends.state_seal_ms = 1.5;
  EXPECT_DOUBLE_EQ(sends.Ms(100'000'000), 12);
  // A round's cost beyond its pages at the rate (the streams' hand-off and markers): the
  // median excess of the last rounds, never negative, its spread in the error.
  FixedCosts rounds = Fixed(1, 2, -1, -1);
  rounds.AddRoundOverhead(30, 10);  // 20 ms beyond its pages
  rounds.AddRoundOverhead(5, 10);   // faster than the rate: 0, not -5
  rounds.AddRoundOverhead(40, 10);  // 30
  EXPECT_DOUBLE_EQ(rounds.round_overhead_ms, 20);
  EXPECT_DOUBLE_EQ(rounds.Ms(100'000'000), 23);
  EXPECT_DOUBLE_EQ(rounds.ErrorMs(), 30);  // the dry run's spread is 0
  for (int i = 0; i < 5; ++i) {
    rounds.AddRoundOverhead(12, 10);  // only the last five count
  }
  EXPECT_DOUBLE_EQ(rounds.round_overhead_ms, 2);
  EXPECT_DOUBLE_EQ(rounds.round_overhead_spread_ms, 0);
  // 3 MB (30 ms) fits the target 50 with 20 ms of fixed costs, not with a 20 ms round
  // overhead on top.
  FixedCosts slow_rounds = big;
  slow_rounds.AddRoundOverhead(30, 10);
  EXPECT_FALSE(DecideNextRound(cfg, h, 3'000'000, 0, slow_rounds).stop_and_copy);
}

TEST(PolicyWithFixedCosts, ThrottlesAndSaysSoWhenPagesAndFixedCannotFit) {
  PolicyConfig cfg;
  cfg.downtime_target_ms = 50;
  std::vector<RoundSample> h = {{100'000'000, 1.0}, {80'000'000, 0.8}};
  const FixedCosts f = Fixed(10, 10, 10, 10);  // 40 ms fixed: 10 ms left for pages
  // 2 MB is 20 ms of pages (fits without the fixed part): with it, not; not converging.
  const PolicyDecision d = DecideNextRound(cfg, h, 2'000'000, 0, f);
  EXPECT_FALSE(d.stop_and_copy);
  EXPECT_EQ(d.throttle_pct, 0);  // 2 MB after an 80 MB round converges: no throttle
  const PolicyDecision t = DecideNextRound(cfg, h, 45'000'000, 20, f);
  EXPECT_FALSE(t.stop_and_copy);
  EXPECT_EQ(t.throttle_pct, 40);
  EXPECT_THAT(t.reason, testing::HasSubstr("throttling vCPUs to 40%"));
  EXPECT_THAT(t.reason, testing::HasSubstr("fixed 40.0 ms"));
  // A fixed part beyond the target: said, and stopped once the pages are a small share.
  const FixedCosts huge = Fixed(30, 30, 0, 0);
  const PolicyDecision u = DecideNextRound(cfg, h, 400'000, 0, huge);  // 4 ms of pages
  EXPECT_TRUE(u.stop_and_copy);
  EXPECT_FALSE(u.target_met);
  EXPECT_THAT(u.reason, testing::HasSubstr("cannot meet the target"));
  EXPECT_FALSE(DecideNextRound(cfg, h, 40'000'000, 0, huge).stop_and_copy);  // 400 ms: go on
  // The round cap stops regardless, and says the target is not met.
  cfg.max_rounds = 2;
  const PolicyDecision cap = DecideNextRound(cfg, h, 45'000'000, 0, f);
  EXPECT_TRUE(cap.stop_and_copy);
  EXPECT_FALSE(cap.target_met);
  EXPECT_THAT(cap.reason, testing::HasSubstr("cannot meet the target"));
}

TEST(PolicyWithFixedCosts, NeverExceedsTheTargetInItsOwnModel) {
  std::mt19937_64 rng(16);
  int stops = 0;
  for (int i = 0; i < 20000; ++i) {
    PolicyConfig cfg;
    cfg.downtime_target_ms = 1 + rng() % 200;
    cfg.max_rounds = 1 + static_cast<int>(rng() % 10);
    std::vector<RoundSample> h;
    for (int r = 0, n = 1 + static_cast<int>(rng() % 5); r < n; ++r) {
      h.push_back({rng() % 500'000'000, 0.001 + (rng() % 10000) / 1000.0});
    }
    FixedCosts f;
    for (int r = 0, n = static_cast<int>(rng() % 4); r < n; ++r) {
      f.AddDryRun((rng() % 20000) / 1000.0, (rng() % 20000) / 1000.0, rng() % 100'000);
    }
    f.round_trip_ms = rng() % 3 == 0 ? -1 : (rng() % 30000) / 1000.0;
    f.dst_restore_ms = rng() % 3 == 0 ? -1 : (rng() % 30000) / 1000.0;
    f.control_send_ms = rng() % 3 == 0 ? -1 : (rng() % 5000) / 1000.0;
    const uint64_t pending = rng() % 4 == 0 ? 0 : rng() % 100'000'000;
    const PolicyDecision d = DecideNextRound(cfg, h, pending, static_cast<int>(rng() % 100), f);
    EXPECT_NEAR(d.expected_downtime_ms, d.pages_ms + d.fixed_ms, 1e-6);
    EXPECT_GE(d.error_ms, 0);
    EXPECT_GE(d.fixed_ms, f.stop_ms + f.save_ms - 1e-9);
    if (d.stop_and_copy && d.target_met) {
      ++stops;
      ASSERT_LE(d.expected_downtime_ms, static_cast<double>(cfg.downtime_target_ms)) << d.reason;
    }
    if (d.stop_and_copy && !d.target_met) {
      ASSERT_GT(d.expected_downtime_ms, static_cast<double>(cfg.downtime_target_ms));
      ASSERT_THAT(d.reason, testing::HasSubstr("cannot meet the target"));
    }
  }
  EXPECT_GT(stops, 100);  // the property was exercised
}

TEST(PolicyWithFixedCosts, DryRunsKeepTheLongestAndTheirSpread) {
  FixedCosts f;
  f.AddDryRun(1, 2, 100);
  EXPECT_DOUBLE_EQ(f.spread_ms, 0);
  f.AddDryRun(3, 4, 300);  // longest: 7
  f.AddDryRun(0.5, 0.5, 200);  // shortest: 1
  EXPECT_EQ(f.dry_runs, 3);
  EXPECT_DOUBLE_EQ(f.stop_ms, 3);
  EXPECT_DOUBLE_EQ(f.save_ms, 4);
  EXPECT_DOUBLE_EQ(f.spread_ms, 6);
  EXPECT_EQ(f.state_bytes, 300u);
  f.round_trip_ms = 2;
  EXPECT_DOUBLE_EQ(f.ErrorMs(), 8);
  // Control sends: the median of the latest kControlSamples, their spread thrice in the error.
  FixedCosts c;
  for (double ms : {9.0, 1.0, 3.0, 2.0, 4.0, 5.0}) {  // 9 falls out of the window
    c.AddControlSend(ms);
  }
  EXPECT_EQ(c.control_sends.size(), kControlSamples);
  EXPECT_DOUBLE_EQ(c.control_send_ms, 3);
  EXPECT_DOUBLE_EQ(c.control_spread_ms, 4);
  EXPECT_DOUBLE_EQ(c.ErrorMs(), 12);
  EXPECT_DOUBLE_EQ(c.Ms(0), 9);
  // The rate's spread is error too: pages at the slowest round's rate.
  PolicyConfig cfg;
  cfg.downtime_target_ms = 1000;
  const std::vector<RoundSample> h = {{100'000'000, 1.0}, {50'000'000, 1.0}};  // 75 MB/s mean
  const PolicyDecision d = DecideNextRound(cfg, h, 7'500'000, 0, f);
  EXPECT_NEAR(d.pages_ms, 100, 1e-9);
  EXPECT_NEAR(d.error_ms, 8 + (150 - 100), 1e-9);
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
