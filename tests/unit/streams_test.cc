// Parallel streams (--streams N): the chunk splitter, the round barrier, the join proof, the
// mailbox, the destination's stream set against lying and breaking streams, and the engine
// with 1, 2 and 4 streams over loopback TCP on the host.
#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <cstring>
#include <random>
#include <thread>

#include "absl/strings/str_format.h"
#include "include/lmig/transport.h"
#include "src/migration/incoming_streams.h"
#include "src/migration/machine_vm.h"
#include "src/migration/receiver.h"
#include "src/migration/source_streams.h"
#include "src/migration/sender.h"
#include "src/migration/stream_join.h"
#include "src/migration/stream_split.h"
#include "src/migration/zero_scan.h"
#include "src/reactor/mailbox.h"
#include "tests/unit/tiny_guest.h"

namespace lmig {
namespace {

using namespace testing_guest;
using testing::HasSubstr;

constexpr uint64_t kChunk = kStreamChunkBytes;

// ---------------------------------------------------------------------------------------------
// The chunk splitter.

TEST(SplitByChunk, EveryPageGoesToExactlyOneStreamWithinItsChunk) {
  std::mt19937_64 rng(7);
  for (int streams : {1, 2, 3, 4, 8}) {
    for (int trial = 0; trial < 50; ++trial) {
      // Random disjoint page runs over 64 MiB, some spanning several chunks.
      std::vector<RamRange> ranges;
      uint64_t off = (rng() % 64) * kPageSize;
      while (off < (64ull << 20)) {
        const uint64_t len = std::min<uint64_t>((1 + rng() % 1500) * kPageSize,
                                                (64ull << 20) - off);
        ranges.push_back({off, len});
        off += len + (1 + rng() % 300) * kPageSize;
      }
      const auto shares = SplitByChunk(ranges, streams);
      ASSERT_EQ(shares.size(), static_cast<size_t>(streams));
      std::vector<int> owner((64ull << 20) / kPageSize, -1);
      for (int s = 0; s < streams; ++s) {
        for (const RamRange& r : shares[s]) {
          // Within one chunk (with one stream, runs stay whole), and that chunk is this
          // stream's.
          if (streams > 1) {
            ASSERT_EQ(r.offset / kChunk, (r.offset + r.length - 1) / kChunk);
          }
          ASSERT_EQ(static_cast<int>((r.offset / kChunk) % streams), s);
          for (uint64_t p = r.offset / kPageSize; p < (r.offset + r.length) / kPageSize; ++p) {
            ASSERT_EQ(owner[p], -1) << "page " << p << " on two streams";
            owner[p] = s;
          }
        }
      }
      uint64_t want = 0, got = 0;
      for (const RamRange& r : ranges) {
        want += r.length;
        for (uint64_t p = r.offset / kPageSize; p < (r.offset + r.length) / kPageSize; ++p) {
          ASSERT_NE(owner[p], -1) << "page " << p << " on no stream";
        }
      }
      for (int p : owner) {
        got += p >= 0 ? kPageSize : 0;
      }
      EXPECT_EQ(got, want);
    }
  }
}

TEST(SplitByChunk, ARunAcrossChunksIsCutAtTheirBoundariesAndNeighboursAlternate) {
  const std::vector<RamRange> one = {{kChunk - 4096, 2 * kChunk + 8192}};
  const auto s = SplitByChunk(one, 2);
  // The run ends at 3 chunks + 4 KiB: pieces in chunks 0, 1, 2 and 3.
  ASSERT_EQ(s[0].size(), 2u);
  ASSERT_EQ(s[1].size(), 2u);
  EXPECT_EQ(s[0][0], (RamRange{kChunk - 4096, 4096}));         // chunk 0
  EXPECT_EQ(s[1][0], (RamRange{kChunk, kChunk}));              // chunk 1
  EXPECT_EQ(s[0][1], (RamRange{2 * kChunk, kChunk}));          // chunk 2
  EXPECT_EQ(s[1][1], (RamRange{3 * kChunk, 4096}));            // chunk 3
  // Three streams: chunk 3 goes back to stream 0.
  const auto t = SplitByChunk(one, 3);
  EXPECT_EQ(t[0].back(), (RamRange{3 * kChunk, 4096}));
  EXPECT_EQ(t[2].size(), 1u);
  // One stream: the ranges as they were, runs across chunks merged back.
  const auto u = SplitByChunk(one, 1);
  ASSERT_EQ(u[0].size(), 1u);
  EXPECT_EQ(u[0][0], one[0]);
}

// ---------------------------------------------------------------------------------------------
// Round 1's zero-page scan, chunk by chunk.

TEST(ScanChunk, FindsTheNonZeroPagesAsCappedRunsAndSkipsUntouchedOnes) {
  constexpr uint64_t kPages = 64;
  std::vector<uint8_t> mem(kPages * kPageSize, 0);
  auto poke = [&](uint64_t page, uint64_t at) { mem[page * kPageSize + at] = 1; };
  for (uint64_t p : {1, 2, 3, 4, 5, 9, 40, 63}) {
    poke(p, p == 5 ? kPageSize - 1 : 7);  // the last byte of a page counts too
  }
  std::vector<unsigned char> resident(kPages, 1);
  resident[40] = 0;  // mincore said untouched: skipped unread (it reads as zero anyway)
  std::vector<RamRange> runs;
  const uint64_t zero = ScanChunk(mem.data(), 0, kPages * kPageSize, resident, 3 * kPageSize, runs);
  EXPECT_EQ(zero, kPages - 7);
  const std::vector<RamRange> want = {{1 * kPageSize, 3 * kPageSize},  // capped at 3 pages
                                      {4 * kPageSize, 2 * kPageSize},
                                      {9 * kPageSize, kPageSize},
                                      {63 * kPageSize, kPageSize}};
  EXPECT_EQ(runs, want);
  // A sub-range (one chunk of a larger memory), no residency known: only its own pages.
  runs.clear();
  EXPECT_EQ(ScanChunk(mem.data(), 32 * kPageSize, 32 * kPageSize, {}, 1 << 20, runs), 30u);
  EXPECT_EQ(runs, (std::vector<RamRange>{{40 * kPageSize, kPageSize}, {63 * kPageSize, kPageSize}}));
}

// ---------------------------------------------------------------------------------------------
// The round barrier.

TEST(RoundBarrier, CompletesOnlyWhenEveryStreamIsInInAnyOrder) {
  RoundBarrier b(4);  // streams 1..3 send markers
  EXPECT_FALSE(b.complete());
  ASSERT_TRUE(b.Mark(3, 1, 300, false).ok());
  EXPECT_FALSE(b.complete());
  ASSERT_TRUE(b.Mark(1, 1, 100, false).ok());
  EXPECT_FALSE(b.complete());
  EXPECT_FALSE(b.Advance().ok()) << "advanced with a stream missing";
  ASSERT_TRUE(b.Mark(2, 1, 200, false).ok());
  EXPECT_TRUE(b.complete());
  auto bytes = b.Advance();
  ASSERT_TRUE(bytes.ok());
  EXPECT_EQ(*bytes, 600u);
  EXPECT_EQ(b.round(), 2u);
  EXPECT_FALSE(b.complete());
  // Round 2, final, in another order.
  for (int s : {2, 3, 1}) {
    ASSERT_TRUE(b.Mark(s, 2, 0, true).ok());
  }
  ASSERT_TRUE(b.Advance().ok());
  EXPECT_TRUE(b.finished());
  EXPECT_FALSE(b.Mark(1, 3, 0, false).ok()) << "a marker after the final round";
}

TEST(RoundBarrier, UnknownDuplicateOutOfRoundAndInconsistentMarkersAreRefused) {
  RoundBarrier b(3);
  struct Case {
    int stream;
    uint32_t round;
    bool final_round;
    std::string says;
  };
  ASSERT_TRUE(b.Mark(1, 1, 4096, false).ok());
  const std::vector<Case> cases = {
      {0, 1, false, "streams 1..2"},  // stream 0 ends its share with END_ROUND
      {3, 1, false, "streams 1..2"},
      {-1, 1, false, "streams 1..2"},
      {1, 1, false, "a second STREAM_END"},
      {2, 2, false, "while round 1 is open"},
      {2, 0, false, "while round 1 is open"},
      {2, 1, true, "another stream said final=0"},
  };
  for (const Case& c : cases) {
    absl::Status s = b.Mark(c.stream, c.round, 0, c.final_round);
    EXPECT_EQ(s.code(), absl::StatusCode::kDataLoss) << c.says;
    EXPECT_THAT(std::string(s.message()), HasSubstr(c.says));
  }
  EXPECT_FALSE(b.complete()) << "a refused marker counted";
  ASSERT_TRUE(b.Mark(2, 1, 0, false).ok());
  EXPECT_TRUE(b.complete());
}

// ---------------------------------------------------------------------------------------------
// The join proof.

TEST(StreamJoin, OnlyTheKeysProofForAFreeIndexInRangeJoins) {
  auto key = NewStreamKey();
  ASSERT_TRUE(key.ok());
  auto other = NewStreamKey();
  ASSERT_TRUE(other.ok());
  auto j = MakeStreamJoin(*key, 2, 4);
  ASSERT_TRUE(j.ok());
  auto idx = CheckStreamJoin(proto::Bytes(*j), *key, 4);
  ASSERT_TRUE(idx.ok()) << idx.status();
  EXPECT_EQ(*idx, 2u);
  // Another migration's key, another stream count, a flipped bit, a bad index or size.
  EXPECT_EQ(CheckStreamJoin(proto::Bytes(*j), *other, 4).status().code(),
            absl::StatusCode::kUnauthenticated);
  EXPECT_EQ(CheckStreamJoin(proto::Bytes(*j), *key, 5).status().code(),
            absl::StatusCode::kUnauthenticated);
  proto::StreamJoin flipped = *j;
  flipped.proof[31] ^= 1;
  EXPECT_EQ(CheckStreamJoin(proto::Bytes(flipped), *key, 4).status().code(),
            absl::StatusCode::kUnauthenticated);
  proto::StreamJoin relabelled = *j;
  relabelled.stream = 3;  // a proof seen for stream 2 does not join stream 3
  EXPECT_EQ(CheckStreamJoin(proto::Bytes(relabelled), *key, 4).status().code(),
            absl::StatusCode::kUnauthenticated);
  for (uint32_t bad : {0u, 4u, 0xffffffffu}) {
    auto b = MakeStreamJoin(*key, bad, 4);
    ASSERT_TRUE(b.ok());
    EXPECT_THAT(std::string(CheckStreamJoin(proto::Bytes(*b), *key, 4).status().message()),
                HasSubstr("streams 1..3"));
  }
  proto::StreamJoin reserved = *j;
  reserved.reserved = 1;
  EXPECT_FALSE(CheckStreamJoin(proto::Bytes(reserved), *key, 4).ok());
  std::vector<uint8_t> shortp = proto::Bytes(*j);
  shortp.pop_back();
  EXPECT_FALSE(CheckStreamJoin(shortp, *key, 4).ok());
}

// ---------------------------------------------------------------------------------------------
// The mailbox.

TEST(Mailbox, DeliversEveryMessageInOrderAcrossThreadsWhenFull) {
  Mailbox<uint64_t, 4> box;
  constexpr uint64_t kCount = 100000;
  uint64_t sum = 0, last = 0;
  bool ordered = true;
  std::thread consumer([&] {
    for (uint64_t i = 1; i <= kCount; ++i) {
      const uint64_t v = box.Pop();
      ordered = ordered && v == last + 1;
      last = v;
      sum += v;
    }
  });
  for (uint64_t i = 1; i <= kCount; ++i) {
    box.Push(i);
  }
  consumer.join();
  EXPECT_TRUE(ordered);
  EXPECT_EQ(sum, kCount * (kCount + 1) / 2);
  EXPECT_FALSE(box.TryPop().has_value());
}

// ---------------------------------------------------------------------------------------------
// Loopback TCP: a listener, connections to it.

uint16_t FreePort() {
  static std::mt19937 rng(std::random_device{}());
  return static_cast<uint16_t>(20000 + rng() % 20000);
}

struct Loopback {
  std::unique_ptr<Listener> listener;
  uint16_t port = 0;
  absl::StatusOr<std::unique_ptr<Transport>> Connect() const {
    TransportOptions o;
    o.timeout = absl::Seconds(10);
    return ConnectTransport(proto::TransportKind::kTcp, "127.0.0.1", port, o);
  }
};

Loopback Listen() {
  Loopback l;
  TransportOptions o;
  o.timeout = absl::Seconds(10);
  for (int attempt = 0; attempt < 20 && l.listener == nullptr; ++attempt) {
    l.port = FreePort();
    auto li = ListenTransport(proto::TransportKind::kTcp, "127.0.0.1", l.port, o);
    if (li.ok()) {
      l.listener = std::move(*li);
    }
  }
  EXPECT_NE(l.listener, nullptr);
  return l;
}

// ---------------------------------------------------------------------------------------------
// The destination's further streams against strangers, liars and breakage.

struct StreamSet {
  Loopback lb = Listen();
  proto::StreamKey key = *NewStreamKey();
  std::vector<uint8_t> src_mem = std::vector<uint8_t>(8 * kChunk);
  std::vector<uint8_t> dst_mem = std::vector<uint8_t>(8 * kChunk, 0);
  std::vector<std::string> refused;
  IncomingStreams in{3};  // streams 1 and 2 join

  StreamSet() {
    for (size_t i = 0; i < src_mem.size(); ++i) {
      src_mem[i] = static_cast<uint8_t>(i * 13 + 5);
    }
  }
  // A further stream's connection that has sent a valid STREAM_JOIN for INDEX.
  std::unique_ptr<Transport> Joined(uint32_t index) {
    auto t = lb.Connect();
    EXPECT_TRUE(t.ok()) << t.status();
    auto j = MakeStreamJoin(key, index, 3);
    EXPECT_TRUE((*t)->Send(proto::MsgType::kStreamJoin, 0, proto::Bytes(*j)).ok());
    EXPECT_TRUE((*t)->AttachMemory(src_mem.data(), src_mem.size()).ok());
    return std::move(*t);
  }
  // Streams 1 and 2 joined from a thread of their own (the source's ends), and Join's result.
  absl::Status JoinTwo(std::unique_ptr<Transport>& one, std::unique_ptr<Transport>& two) {
    std::thread src([&] {
      one = Joined(1);
      two = Joined(2);
    });
    absl::Status s = Join();
    src.join();
    return s;
  }
  absl::Status Join() {
    return in.Join([this](absl::Time d) { return lb.listener->Accept(d); }, key,
                   absl::Now() + absl::Seconds(10), absl::Seconds(2),
                   absl::Now() + absl::Seconds(60), dst_mem,
                   [this](const std::string& line) { refused.push_back(line); });
  }
};

absl::Status SendShare(Transport& t, std::span<const RamRange> share, uint32_t round,
                       bool final_round, int64_t lie = 0) {
  uint64_t bytes = 0;
  for (const RamRange& r : share) {
    bytes += r.length;
  }
  RETURN_IF_ERROR(t.Write(share));
  RETURN_IF_ERROR(t.Flush());
  proto::StreamEnd e{bytes + lie, final_round ? 1u : 0u, 0};
  return t.Send(proto::MsgType::kStreamEnd, round, proto::Bytes(e));
}

TEST(IncomingStreams, StrangersAreDroppedTheStreamsJoinAndEachRoundLandsBeforeItCompletes) {
  StreamSet s;
  std::vector<std::unique_ptr<Transport>> conns;
  std::thread src([&] {
    // A stranger with no key, one speaking another message, then the real streams, then a
    // replay of stream 1's join (its index is taken).
    auto stranger = s.lb.Connect();
    proto::StreamKey wrong = *NewStreamKey();
    auto bad = MakeStreamJoin(wrong, 1, 3);
    (void)(*stranger)->Send(proto::MsgType::kStreamJoin, 0, proto::Bytes(*bad));
    conns.push_back(std::move(*stranger));
    auto talker = s.lb.Connect();
    (void)(*talker)->Send(proto::MsgType::kPing, 1, {});
    conns.push_back(std::move(*talker));
    conns.push_back(s.Joined(2));
    auto replay = s.lb.Connect();
    auto j2 = MakeStreamJoin(s.key, 2, 3);
    (void)(*replay)->Send(proto::MsgType::kStreamJoin, 0, proto::Bytes(*j2));
    conns.push_back(std::move(*replay));
    conns.push_back(s.Joined(1));
  });
  absl::Status joined = s.Join();
  src.join();
  ASSERT_TRUE(joined.ok()) << joined;
  ASSERT_EQ(s.refused.size(), 5u);  // three refused, two joined
  EXPECT_THAT(s.refused[0], HasSubstr("wrong proof"));
  EXPECT_THAT(s.refused[1], HasSubstr("expected STREAM_JOIN, got PING"));
  EXPECT_THAT(s.refused[2], HasSubstr("stream 2 joined from 127.0.0.1:"));
  EXPECT_THAT(s.refused[3], HasSubstr("which has joined already"));
  EXPECT_THAT(s.refused[4], HasSubstr("stream 1 joined from 127.0.0.1:"));
  Transport& one = *conns[4];
  Transport& two = *conns[2];
  // Each joined stream is answered with STREAM_JOINED (over TCP with no region table); the
  // refused connections learn nothing but the close.
  for (Transport* t : {&one, &two}) {
    auto m = t->Receive();
    ASSERT_TRUE(m.ok()) << m.status();
    EXPECT_EQ(m->type, proto::MsgType::kStreamJoined);
    EXPECT_TRUE(m->payload.empty());
  }
  for (size_t i : {0, 1, 3}) {
    EXPECT_FALSE(conns[i]->Receive().ok()) << "refused connection " << i << " got an answer";
  }
  // Round 1: stream 2 first, its marker in before stream 1's share has even been sent.
  const std::vector<RamRange> all = {{0, 8 * kChunk}};
  const auto shares = SplitByChunk(all, 3);
  ASSERT_TRUE(SendShare(two, shares[2], 1, false).ok());
  std::thread late([&] {
    std::this_thread::sleep_for(std::chrono::milliseconds(300));
    ASSERT_TRUE(SendShare(one, shares[1], 1, false).ok());
  });
  auto r1 = s.in.AwaitRound(1, false, absl::Now() + absl::Seconds(10));
  late.join();
  ASSERT_TRUE(r1.ok()) << r1.status();
  uint64_t want = 0;
  for (int i : {1, 2}) {
    for (const RamRange& r : shares[i]) {
      want += r.length;
      EXPECT_EQ(0, std::memcmp(s.src_mem.data() + r.offset, s.dst_mem.data() + r.offset,
                               r.length))
          << "stream " << i << "'s pages at " << r.offset << " did not land";
    }
  }
  EXPECT_EQ(*r1, want);
  // Stream 0's chunks were never sent here: still zero.
  EXPECT_EQ(s.dst_mem[shares[0][0].offset], 0);
  // Round 2, final, with a stream running ahead (its marker before the receiver asks).
  ASSERT_TRUE(SendShare(one, {}, 2, true).ok());
  ASSERT_TRUE(SendShare(two, {}, 2, true).ok());
  auto r2 = s.in.AwaitRound(2, true, absl::Now() + absl::Seconds(10));
  ASSERT_TRUE(r2.ok()) << r2.status();
  EXPECT_EQ(*r2, 0u);
  s.in.Close();
  EXPECT_TRUE(s.in.status().ok()) << s.in.status();
  ASSERT_EQ(s.in.stats().size(), 2u);
  EXPECT_EQ(s.in.stats()[0].bytes + s.in.stats()[1].bytes, want);
}

TEST(IncomingStreams, AStreamThatLiesAboutItsShareOrBreaksFailsTheRoundNamingIt) {
  {
    StreamSet s;
    std::unique_ptr<Transport> one, two;
    ASSERT_TRUE(s.JoinTwo(one, two).ok());
    const std::vector<RamRange> r = {{0, kChunk}};
    ASSERT_TRUE(SendShare(*one, r, 1, false, /*lie=*/4096).ok());
    ASSERT_TRUE(SendShare(*two, {}, 1, false).ok());
    auto got = s.in.AwaitRound(1, false, absl::Now() + absl::Seconds(10));
    ASSERT_FALSE(got.ok());
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("stream 1 from"));
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("arrived"));
    // The liar's connection was shut down: its next write fails.
    absl::Status later = absl::OkStatus();
    for (int i = 0; i < 50 && later.ok(); ++i) {
      later = one->Send(proto::MsgType::kProgress, 1, proto::Bytes(uint64_t{0}));
      std::this_thread::sleep_for(std::chrono::milliseconds(20));
    }
    EXPECT_FALSE(later.ok());
  }
  {
    StreamSet s;
    std::unique_ptr<Transport> one, two;
    ASSERT_TRUE(s.JoinTwo(one, two).ok());
    ASSERT_TRUE(SendShare(*one, {}, 1, false).ok());
    two.reset();  // stream 2 breaks before its marker
    auto got = s.in.AwaitRound(1, false, absl::Now() + absl::Seconds(10));
    ASSERT_FALSE(got.ok());
    EXPECT_THAT(std::string(got.status().message()), HasSubstr("stream 2 from"));
  }
  {
    // A stream that stalls: the round's deadline ends the wait, naming the round.
    StreamSet s;
    std::unique_ptr<Transport> one, two;
    ASSERT_TRUE(s.JoinTwo(one, two).ok());
    ASSERT_TRUE(SendShare(*one, {}, 1, false).ok());
    const absl::Time start = absl::Now();
    auto got = s.in.AwaitRound(1, false, absl::Now() + absl::Milliseconds(500));
    EXPECT_EQ(got.status().code(), absl::StatusCode::kDeadlineExceeded);
    EXPECT_LT(absl::Now() - start, absl::Seconds(3));
  }
}

// The source's side of a join against a destination that lies: a further stream starts only on
// STREAM_JOINED, and only with a blob its transport can take.
TEST(SourceStreams, AJoinAnsweredWithAnythingButAValidStreamJoinedFailsNamingTheStream) {
  struct Case {
    proto::MsgType type;
    std::vector<uint8_t> payload;
    const char* want;
  };
  const std::vector<Case> cases = {
      {proto::MsgType::kPing, {}, "expected STREAM_JOINED, got PING"},
      {proto::MsgType::kStreamJoined, std::vector<uint8_t>(40, 1), "memory regions"},
  };
  for (const Case& c : cases) {
    Loopback lb = Listen();
    proto::StreamKey key = *NewStreamKey();
    std::vector<uint8_t> mem(2 * kChunk);
    std::thread dst([&] {
      auto t = lb.listener->Accept(absl::Now() + absl::Seconds(10));
      ASSERT_TRUE(t.ok()) << t.status();
      auto join = (*t)->Receive();
      ASSERT_TRUE(join.ok()) << join.status();
      EXPECT_EQ(join->type, proto::MsgType::kStreamJoin);
      EXPECT_TRUE(CheckStreamJoin(join->payload, key, 2).ok());
      EXPECT_TRUE((*t)->Send(c.type, 0, c.payload).ok());
      (void)(*t)->Receive();  // until the source gives up on the stream
    });
    SourceStreams streams(nullptr);
    ASSERT_TRUE(streams.Start(2, [&] { return lb.Connect(); }, key, mem).ok());
    absl::Status joined = streams.AwaitJoined();
    EXPECT_FALSE(joined.ok());
    EXPECT_THAT(std::string(joined.message()), HasSubstr("stream 1"));
    EXPECT_THAT(std::string(joined.message()), HasSubstr(c.want));
    streams.Close(/*abort=*/true);
    dst.join();
  }
}

TEST(IncomingStreams, NotEnoughStreamsByTheDeadlineIsAnError) {
  StreamSet s;
  std::unique_ptr<Transport> one;
  std::thread src([&] { one = s.Joined(1); });
  const absl::Time start = absl::Now();
  absl::Status st = s.in.Join([&](absl::Time d) { return s.lb.listener->Accept(d); }, s.key,
                              absl::Now() + absl::Milliseconds(800), absl::Seconds(2),
                              absl::Now() + absl::Seconds(60), s.dst_mem,
                              [](const std::string&) {});
  src.join();
  EXPECT_FALSE(st.ok());
  EXPECT_THAT(std::string(st.message()), HasSubstr("1 of 2 further streams"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(4));
}

// ---------------------------------------------------------------------------------------------
// The engine with N streams.

// A 32 MiB guest running the counter, with 2..26 MiB filled with a pattern so that every
// stream has chunks to carry.
void StartFilledGuest(Vm& vm) {
  ASSERT_TRUE(CreateVm(vm, 32ull << 20, 1).ok());
  uint8_t* m = vm.machine->memory().base();
  for (uint64_t i = 2ull << 20; i < (26ull << 20); i += 8) {
    const uint64_t v = i * 0x9e3779b97f4a7c15ull;
    std::memcpy(m + i, &v, 8);
  }
  ASSERT_TRUE(LoadRealMode(*vm.machine, SlowCounter()).ok());
  ASSERT_TRUE(vm.machine->Start().ok());
}

// A transport whose connection breaks (shut down under it) at its BREAK_AT-th Write.
class BreakingTransport : public Transport {
 public:
  BreakingTransport(std::unique_ptr<Transport> inner, int break_at)
      : inner_(std::move(inner)), break_at_(break_at) {}
  proto::TransportKind kind() const override { return inner_->kind(); }
  const std::string& peer() const override { return inner_->peer(); }
  absl::Status Send(proto::MsgType t, uint64_t a, std::span<const uint8_t> p) override {
    return inner_->Send(t, a, p);
  }
  absl::StatusOr<proto::Message> Receive() override { return inner_->Receive(); }
  void SetDeadline(absl::Time d, std::string w) override { inner_->SetDeadline(d, w); }
  absl::StatusOr<std::vector<uint8_t>> AttachMemory(uint8_t* b, uint64_t s) override {
    return inner_->AttachMemory(b, s);
  }
  absl::Status SetPeerMemory(std::span<const uint8_t> b) override {
    return inner_->SetPeerMemory(b);
  }
  absl::Status Write(std::span<const RamRange> r) override {
    if (++writes_ == break_at_) {
      inner_->Shutdown();
    }
    return inner_->Write(r);
  }
  absl::Status Flush() override { return inner_->Flush(); }
  void Shutdown() override { inner_->Shutdown(); }
  TransportStats stats() const override { return inner_->stats(); }

 private:
  std::unique_ptr<Transport> inner_;
  int break_at_;
  int writes_ = 0;
};

struct StreamsRun {
  absl::Status send_status, recv_status;
  MigrationStats send_stats, recv_stats;
};

// Migrates A's guest into B over N loopback streams; BREAK_STREAM (>= 1) breaks that stream
// at its first Write.
StreamsRun MigrateOverStreams(Machine* a, Vm& b, int n, int break_stream = 0) {
  StreamsRun r;
  Loopback lb = Listen();
  std::thread dst([&] {
    auto t = lb.listener->Accept(absl::Now() + absl::Seconds(30));
    if (!t.ok()) {
      r.recv_status = t.status();
      return;
    }
    ReceiverOptions ropts;
    ropts.accept_stream = [&](absl::Time d) { return lb.listener->Accept(d); };
    MigrationReceiver recv(
        t->get(), ropts,
        [&](const proto::Hello& h) -> absl::StatusOr<IncomingVm*> {
          ASSIGN_OR_RETURN(Machine * m, CreateVm(b, h.mem_size, h.num_cpus));
          b.incoming = std::make_unique<MachineVm>(m, [](Machine* m) { return m->Start(); });
          return b.incoming.get();
        },
        [](const std::string&) {});
    r.recv_status = recv.Handshake(r.recv_stats);
    if (r.recv_status.ok()) {
      r.recv_status = recv.Run(r.recv_stats);
    }
  });
  auto t = lb.Connect();
  if (!t.ok()) {
    r.send_status = t.status();
    dst.join();
    return r;
  }
  SenderOptions opts;
  opts.verify_memory = true;
  opts.streams = n;
  std::atomic<int> opened{0};
  opts.connect_stream = [&]() -> absl::StatusOr<std::unique_ptr<Transport>> {
    ASSIGN_OR_RETURN(std::unique_ptr<Transport> c, lb.Connect());
    // Streams connect in parallel: which one this is, is the order they connect in (only
    // the breaking test cares, and any stream will do).
    if (break_stream > 0 && ++opened == 1) {
      return std::unique_ptr<Transport>(new BreakingTransport(std::move(c), 1));
    }
    return c;
  };
  MigrationSender sender(a, t->get(), opts, [](const std::string&) {});
  r.send_status = sender.Run(r.send_stats);
  dst.join();
  return r;
}

class EngineStreams : public testing::TestWithParam<int> {};

TEST_P(EngineStreams, MigratesTheGuestWithEveryStreamCarryingItsShare) {
  const int n = GetParam();
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartFilledGuest(a));
  std::string out_a = TakeOutput(*a.console, 4);
  Vm b;
  StreamsRun r = MigrateOverStreams(a.machine.get(), b, n);
  ASSERT_TRUE(r.send_status.ok()) << r.send_status;
  ASSERT_TRUE(r.recv_status.ok()) << r.recv_status;
  out_a += a.console->Take();
  a.machine->RequestStop({ExitInfo::kStopped, "migrated"});
  a.machine->Join();
  ASSERT_LT(out_a.size(), 40u) << "the guest finished before the migration did";
  ASSERT_TRUE(WaitStopped(*b.machine, 30000));
  b.machine->Join();
  EXPECT_EQ(b.machine->exit_info().kind, ExitInfo::kReset);
  EXPECT_EQ(out_a + b.console->Take(), CounterOutput());  // --verify-memory passed as well
  EXPECT_EQ(r.send_stats.pages_sent, r.recv_stats.pages_sent);
  if (n == 1) {
    EXPECT_TRUE(r.send_stats.streams.empty());
    return;
  }
  ASSERT_EQ(r.send_stats.streams.size(), static_cast<size_t>(n));
  ASSERT_EQ(r.recv_stats.streams.size(), static_cast<size_t>(n));
  uint64_t sent = 0, received = 0;
  for (int i = 0; i < n; ++i) {
    // 24 MiB of pattern = 12 chunks: every stream has some.
    EXPECT_GT(r.send_stats.streams[i].bytes, 4ull << 20) << "stream " << i;
    EXPECT_EQ(r.send_stats.streams[i].bytes, r.recv_stats.streams[i].bytes) << "stream " << i;
    sent += r.send_stats.streams[i].bytes;
    received += r.recv_stats.streams[i].bytes;
  }
  EXPECT_EQ(sent, r.send_stats.pages_sent * kPageSize);
  EXPECT_EQ(received, sent);
  const std::string json = r.send_stats.ToJson();
  EXPECT_THAT(json, HasSubstr("\"streams\""));
  EXPECT_THAT(json, HasSubstr("\"cpu_ms\""));
  EXPECT_THAT(r.send_stats.HumanReport(), HasSubstr(absl::StrFormat("stream %2d", n - 1)));
}

INSTANTIATE_TEST_SUITE_P(Streams, EngineStreams, testing::Values(1, 2, 4));

TEST(EngineStreams, OneBrokenStreamFailsTheMigrationAndTheSourceKeepsItsGuest) {
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartFilledGuest(a));
  Vm b;
  StreamsRun r = MigrateOverStreams(a.machine.get(), b, 3, /*break_stream=*/1);
  ASSERT_FALSE(r.send_status.ok());
  // Both sides name the stream and what happened to it.
  EXPECT_THAT(std::string(r.send_status.message()),
              testing::ContainsRegex("stream [12]: sending pages.*(Broken pipe|reset)"));
  EXPECT_THAT(std::string(r.recv_status.message()),
              testing::ContainsRegex("stream [12] from .*closed by the peer"));
  EXPECT_FALSE(r.recv_status.ok());
  EXPECT_EQ(r.send_stats.status, "failed");
  EXPECT_FALSE(a.machine->dirty_log().active());
  // The guest runs on here, to its end, its output whole.
  ASSERT_TRUE(WaitStopped(*a.machine, 60000));
  a.machine->Join();
  EXPECT_EQ(a.machine->exit_info().kind, ExitInfo::kReset);
  EXPECT_EQ(a.console->Take(), CounterOutput());
  if (b.machine) {
    EXPECT_EQ(b.machine->exit_count(), 0u) << "the destination ran a guest from a failed migration";
  }
}

}  // namespace
}  // namespace lmig
