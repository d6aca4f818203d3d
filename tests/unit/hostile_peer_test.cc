// Peers that lie, stall and break (issue "Trust nothing from the wire"): a fake peer speaking
// the wire protocol over loopback TCP against the real engine (source side: MigrationSender on
// a tiny guest) and against the real `lmig-rdma dst` process (destination side).
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <random>
#include <sstream>
#include <thread>

#include "include/lmig/transport.h"
#include "src/machine/state_codec.h"
#include "src/migration/sender.h"
#include "tests/hostile_peer.h"
#include "tests/unit/tiny_guest.h"

namespace lmig {
namespace {

using namespace testing_guest;
using proto::MsgType;
using namespace hostile;

// ---- raw frames ----------------------------------------------------------------------------

bool WriteAll(int fd, const void* p, size_t n) {
  const auto* b = static_cast<const uint8_t*>(p);
  while (n > 0) {
    const ssize_t w = ::send(fd, b, n, MSG_NOSIGNAL);
    if (w <= 0) {
      return false;
    }
    b += w;
    n -= static_cast<size_t>(w);
  }
  return true;
}

bool ReadAll(int fd, void* p, size_t n) {
  auto* b = static_cast<uint8_t*>(p);
  while (n > 0) {
    const ssize_t r = ::recv(fd, b, n, 0);
    if (r <= 0) {
      return false;
    }
    b += r;
    n -= static_cast<size_t>(r);
  }
  return true;
}

std::vector<uint8_t> Frame(MsgType type, uint64_t arg, std::span<const uint8_t> payload,
                           uint16_t flags = 0) {
  const proto::FrameHeader h = proto::MakeHeader(type, arg, payload, flags);
  std::vector<uint8_t> f(sizeof(h));
  std::memcpy(f.data(), &h, sizeof(h));
  f.insert(f.end(), payload.begin(), payload.end());
  return f;
}

bool SendFrame(int fd, MsgType type, uint64_t arg, std::span<const uint8_t> payload,
               uint16_t flags = 0) {
  const std::vector<uint8_t> f = Frame(type, arg, payload, flags);
  return WriteAll(fd, f.data(), f.size());
}

struct RawMsg {
  MsgType type = MsgType::kInvalid;
  uint64_t arg = 0;
  std::vector<uint8_t> payload;
};

std::optional<RawMsg> ReadFrame(int fd) {
  proto::FrameHeader h;
  if (!ReadAll(fd, &h, sizeof(h))) {
    return std::nullopt;
  }
  RawMsg m;
  m.type = static_cast<MsgType>(h.type);
  m.arg = h.arg;
  m.payload.resize(h.length);
  if (!ReadAll(fd, m.payload.data(), m.payload.size())) {
    return std::nullopt;
  }
  return m;
}

// Reads frames (skipping PAGES) until one of TYPE arrives.
std::optional<RawMsg> ReadUntil(int fd, MsgType type) {
  for (;;) {
    std::optional<RawMsg> m = ReadFrame(fd);
    if (!m || m->type == type) {
      return m;
    }
  }
}

// A destination's answers to the source's PINGs after HELLO_ACK (the round-trip measurement).
bool AnswerPing(int fd) {
  for (int i = 0; i < SenderOptions().round_trip_samples; ++i) {
    std::optional<RawMsg> ping = ReadUntil(fd, MsgType::kPing);
    if (!ping || !SendFrame(fd, MsgType::kPong, ping->arg, {})) {
      return false;
    }
  }
  return true;
}

int Listen(uint16_t& port) {
  for (int i = 0; i < 20; ++i) {
    port = Port();
    int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) == 0 && ::listen(fd, 4) == 0) {
      return fd;
    }
    ::close(fd);
  }
  return -1;
}

// Connects to 127.0.0.1:PORT; -errno on failure.
int Connect(uint16_t port) {
  int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    const int e = errno;
    ::close(fd);
    return -e;
  }
  return fd;
}

std::vector<uint8_t> OkStatus() { return proto::HelloAckBytes(absl::OkStatus(), {}, {}); }

// ---- source side: the engine against a lying destination ------------------------------------

// Runs the sender against a fake destination (FAKE gets the accepted socket).
// DONE (optional) is set once the sender has returned and its transport is gone.
absl::Status RunSender(Machine* m, const std::function<void(int)>& fake, MigrationStats& stats,
                       SenderOptions opts = {}, absl::Duration timeout = absl::Seconds(10),
                       std::atomic<bool>* done = nullptr) {
  uint16_t port = 0;
  const int lfd = Listen(port);
  if (lfd < 0) {
    return absl::InternalError("no port");
  }
  std::thread dst([&] {
    const int fd = ::accept(lfd, nullptr, nullptr);
    fake(fd);
    ::close(fd);
  });
  TransportOptions to;
  to.timeout = timeout;
  auto t = ConnectTransport(proto::TransportKind::kTcp, "127.0.0.1", port, to);
  absl::Status s = t.status();
  if (t.ok()) {
    MigrationSender sender(m, t->get(), opts, [](const std::string&) {});
    s = sender.Run(stats);
    t->reset();
  }
  if (done != nullptr) {
    *done = true;
  }
  dst.join();
  ::close(lfd);
  return s;
}

// An ACK sent right after HELLO_ACK made the source report "migrated" and drop its guest.
TEST(HostileDestination, AnEarlyAckDoesNotCountAsTheAnswerToComplete) {
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  MigrationStats stats;
  absl::Status s = RunSender(a.machine.get(), [](int fd) {
    ASSERT_TRUE(ReadUntil(fd, MsgType::kHello));
    ASSERT_TRUE(SendFrame(fd, MsgType::kHelloAck, 0, OkStatus()));
    ASSERT_TRUE(AnswerPing(fd));
    proto::Ack ack{};
    ack.status = proto::MakeStatusMsg(absl::OkStatus());
    ASSERT_TRUE(SendFrame(fd, MsgType::kAck, 0, proto::Bytes(ack)));
    (void)ReadUntil(fd, MsgType::kAbort);  // the source gives up
  }, stats);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("does not answer this COMPLETE"));
  EXPECT_EQ(stats.status, "failed");
  ExpectGuestRunsToItsEnd(a);
}

// A PONG that answers another PING (or none) is not a round trip: the source refuses it and
// keeps its guest.
TEST(HostileDestination, APongForAnotherPingIsRefused) {
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  MigrationStats stats;
  absl::Status s = RunSender(a.machine.get(), [](int fd) {
    ASSERT_TRUE(ReadUntil(fd, MsgType::kHello));
    ASSERT_TRUE(SendFrame(fd, MsgType::kHelloAck, 0, OkStatus()));
    std::optional<RawMsg> ping = ReadUntil(fd, MsgType::kPing);
    ASSERT_TRUE(ping);
    ASSERT_TRUE(SendFrame(fd, MsgType::kPong, ping->arg + 1, {}));
    (void)ReadUntil(fd, MsgType::kAbort);
  }, stats);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("expected PONG 1, got PONG 2"));
  EXPECT_EQ(stats.status, "failed");
  ExpectGuestRunsToItsEnd(a);
}

// Over TCP the source stored PAGES frames from the destination in its own guest RAM.
TEST(HostileDestination, PagesFromTheDestinationNeverReachTheSourcesMemory) {
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  const std::vector<uint8_t> code_before(a.machine->memory().base(),
                                         a.machine->memory().base() + 2 * 4096);
  MigrationStats stats;
  absl::Status s = RunSender(a.machine.get(), [](int fd) {
    ASSERT_TRUE(ReadUntil(fd, MsgType::kHello));
    ASSERT_TRUE(SendFrame(fd, MsgType::kHelloAck, 0, OkStatus()));
    ASSERT_TRUE(AnswerPing(fd));
    std::vector<uint8_t> evil(4096, 0xf4);  // hlt over the guest's code page
    ASSERT_TRUE(SendFrame(fd, MsgType::kPages, kCodeAddr, evil, proto::kNoPayloadHash));
    (void)ReadUntil(fd, MsgType::kComplete);
    // Best effort: the source may already have refused the PAGES frame and hung up.
    (void)SendFrame(fd, MsgType::kAbort, 0,
                    proto::Bytes(proto::MakeStatusMsg(absl::AbortedError("bye"))));
  }, stats);
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("refused a PAGES frame"));
  EXPECT_EQ(0, std::memcmp(code_before.data(), a.machine->memory().base(), code_before.size()));
  ExpectGuestRunsToItsEnd(a);
}

// An ABORT dripped a byte at a time kept the source's vCPUs paused for 49 s with --timeout 10,
// and the report said "downtime 0.0 ms".
TEST(HostileDestination, AStallInStopAndCopyResumesTheGuestWithinTheTimeout) {
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  SenderOptions opts;
  opts.phase_timeout = absl::Seconds(2);
  MigrationStats stats;
  Clock::time_point complete_at;
  absl::Status s = RunSender(a.machine.get(), [&](int fd) {
    ASSERT_TRUE(ReadUntil(fd, MsgType::kHello));
    ASSERT_TRUE(SendFrame(fd, MsgType::kHelloAck, 0, OkStatus()));
    ASSERT_TRUE(AnswerPing(fd));
    ASSERT_TRUE(ReadUntil(fd, MsgType::kComplete));
    complete_at = Clock::now();
    const std::vector<uint8_t> abort = Frame(
        MsgType::kAbort, 0, proto::Bytes(proto::MakeStatusMsg(absl::AbortedError("slow"))));
    for (uint8_t b : abort) {  // a byte every 300 ms: never silent for the 1 s timeout
      if (!WriteAll(fd, &b, 1)) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(300));
      if (SecondsSince(complete_at) > 8) {
        break;
      }
    }
  }, stats, opts, absl::Seconds(1));
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("stop-and-copy"));
  EXPECT_GE(stats.downtime_ms, 1900);  // the real pause, not 0
  EXPECT_LE(stats.downtime_ms, 4000);
  // The failed pause, phase by phase: the wait that failed, the resume, the rest missing.
  const PhaseCheck c = CheckPhases(stats.phases, stats.downtime_ms);
  EXPECT_TRUE(c.Within(0.10, stats.downtime_ms)) << stats.HumanReport();
  EXPECT_THAT(c.missing, testing::Contains("dst.state_restored"));
  bool failed_step = false;
  for (const Phase& p : stats.phases) {
    if (p.name == "failed_step") {
      failed_step = true;
      EXPECT_GE(p.ms, 1800) << stats.HumanReport();
    }
  }
  EXPECT_TRUE(failed_step) << stats.HumanReport();
  ExpectGuestRunsToItsEnd(a);
}

// A destination that stopped reading (SIGSTOPped, or behind a cut link) hung the source: the
// send failed on time, but closing the connection waited forever for zero-copy notifications
// of bytes the peer would never acknowledge.
TEST(HostileDestination, APeerThatStopsReadingCannotHangTheSource) {
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  std::memset(a.machine->memory().base() + (2 << 20), 0x5a, 13 << 20);  // more than buffers hold
  std::atomic<bool> sender_done{false};
  MigrationStats stats;
  const auto start = Clock::now();
  double returned_after = 0;
  absl::Status s = RunSender(a.machine.get(), [&](int fd) {
    ASSERT_TRUE(ReadUntil(fd, MsgType::kHello));
    ASSERT_TRUE(SendFrame(fd, MsgType::kHelloAck, 0, OkStatus()));
    ASSERT_TRUE(AnswerPing(fd));
    const int small = 4096;
    ::setsockopt(fd, SOL_SOCKET, SO_RCVBUF, &small, sizeof(small));
    // Reads nothing more, and keeps the connection open, until the source has given up.
    for (int i = 0; i < 300 && !sender_done; ++i) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  }, stats, SenderOptions{}, absl::Seconds(1), &sender_done);
  returned_after = SecondsSince(start);
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  // RunSender returns after the transport is destroyed: bounded, not waiting on the peer.
  EXPECT_LT(returned_after, 15) << s;
  ExpectGuestRunsToItsEnd(a);
}

// After a failed migration the same guest migrates again (the dirty ring keeps its place).
TEST(HostileDestination, AfterAFailureTheSameSourceMigratesToAFreshDestination) {
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  MigrationStats first;
  EXPECT_FALSE(RunSender(a.machine.get(), [](int fd) {
    ASSERT_TRUE(ReadUntil(fd, MsgType::kHello));
    ASSERT_TRUE(SendFrame(fd, MsgType::kHelloAck, 0, OkStatus()));
    ASSERT_TRUE(AnswerPing(fd));
    (void)ReadUntil(fd, MsgType::kEndRound);  // then the destination dies
  }, first).ok());
  // The second destination is real: a receiver that checks the memory digest.
  uint16_t port = 0;
  std::unique_ptr<Listener> listener;
  for (int i = 0; i < 10 && !listener; ++i) {
    port = Port();
    auto l = ListenTransport(proto::TransportKind::kTcp, "127.0.0.1", port, {});
    if (l.ok()) {
      listener = std::move(*l);
    }
  }
  ASSERT_TRUE(listener);
  std::vector<uint8_t> digest_seen;
  absl::Status recv_status;
  std::thread dst([&] {
    auto t = listener->Accept(absl::Now() + absl::Seconds(20));
    if (!t.ok()) {
      recv_status = t.status();
      return;
    }
    // Drain like a destination would, into a buffer of the guest's size.
    std::vector<uint8_t> mem(16ull << 20);
    (void)(*t)->AttachMemory(mem.data(), mem.size());
    (void)(*t)->Receive();  // HELLO
    (void)(*t)->Send(MsgType::kHelloAck, 0, OkStatus());
    (*t)->AllowIncomingPages(true);
    for (;;) {
      auto m = (*t)->Receive();
      if (!m.ok()) {
        recv_status = m.status();
        return;
      }
      if (m->type == MsgType::kPing) {
        (void)(*t)->Send(MsgType::kPong, m->arg, {});
        continue;
      }
      if (m->type == MsgType::kComplete) {
        auto c = proto::Parse<proto::Complete>(m->payload, m->type);
        if (!c.ok() || c->memory_digest != proto::MemoryDigest(mem)) {
          recv_status = absl::DataLossError("digest mismatch after a retried migration");
        }
        proto::Ack ack{};
        ack.status = proto::MakeStatusMsg(recv_status);
        ack.complete_nonce = c.ok() ? c->nonce : 0;
        ack.total_pages = c.ok() ? c->total_pages : 0;
        (void)(*t)->Send(MsgType::kAck, 0, proto::Bytes(ack));
        return;
      }
    }
  });
  auto t = ConnectTransport(proto::TransportKind::kTcp, "127.0.0.1", port, {});
  ASSERT_TRUE(t.ok()) << t.status();
  SenderOptions opts;
  opts.verify_memory = true;
  MigrationSender sender(a.machine.get(), t->get(), opts, [](const std::string&) {});
  MigrationStats second;
  absl::Status s = sender.Run(second);
  dst.join();
  EXPECT_TRUE(s.ok()) << s;
  EXPECT_TRUE(recv_status.ok()) << recv_status;
  a.machine->RequestStop({ExitInfo::kStopped, "migrated"});
  a.machine->Join();
}

// ---- destination side: the real `lmig-rdma dst` against a lying source ----------------------

// One connect-and-close ended a listening dst.
TEST(HostileSource, AStrangerThatConnectsAndClosesDoesNotEndTheDestination) {
  Dst d({"--timeout", "20"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  ::close(fd);
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_FALSE(d.Exited(0)) << d.Stderr();
  MigrationStats stats;
  absl::Status s = MigrateTinyGuest(d.port(), stats);
  EXPECT_TRUE(s.ok()) << s << "\n" << d.Stderr();
  EXPECT_EQ(d.Wait(60), 0) << d.Stderr();  // the tiny guest ran to its reset there
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("refused a connection from 127.0.0.1"));
}

// Whoever connected first got the migration slot, and a peer dripping a byte every few seconds
// kept it forever: the real source waiting behind it was reset.
TEST(HostileSource, ADrippingStrangerThatConnectedFirstDoesNotTakeTheSlot) {
  Dst d({"--timeout", "3"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  std::atomic<bool> stop{false};
  std::thread drip([&] {
    const std::vector<uint8_t> hello = Frame(MsgType::kHello, 0, proto::Bytes(ValidHello(16 << 20)));
    for (size_t i = 0; i < hello.size() && !stop; ++i) {
      if (!WriteAll(fd, &hello[i], 1)) {
        break;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(500));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto start = Clock::now();
  MigrationStats stats;
  absl::Status s = MigrateTinyGuest(d.port(), stats);
  stop = true;
  drip.join();
  ::close(fd);
  EXPECT_TRUE(s.ok()) << s << "\n" << d.Stderr();
  EXPECT_EQ(stats.status, "completed");
  EXPECT_LT(SecondsSince(start), 15);
  // (The tiny guest may have ended on the source while the stranger held the slot: that the
  // destination took the real source and resumed its guest is the point.)
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("dst: guest resumed"));
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("the HELLO from 127.0.0.1"));
}

// PROGRESS frames kept a destination past any timeout.
TEST(HostileSource, ProgressFramesCannotHoldTheDestinationPastItsMaxTime) {
  Dst d({"--timeout", "2", "--max-time", "3"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  const auto start = Clock::now();
  ASSERT_TRUE(SendFrame(fd, MsgType::kHello, 0, proto::Bytes(ValidHello(16 << 20))));
  std::optional<RawMsg> ack = ReadFrame(fd);
  ASSERT_TRUE(ack && ack->type == MsgType::kHelloAck) << d.Stderr();
  for (uint64_t i = 1; SecondsSince(start) < 12; ++i) {
    const uint64_t bytes = i * 4096;
    if (!SendFrame(fd, MsgType::kProgress, 1, proto::Bytes(bytes))) {
      break;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(500));
    if (d.Exited(0)) {
      break;
    }
  }
  ::close(fd);
  EXPECT_EQ(d.Wait(10), 1) << d.Stderr();
  EXPECT_LT(SecondsSince(start), 6);
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("passed its deadline"));
  EXPECT_THAT(d.Stderr(), testing::Not(testing::HasSubstr("dst: guest resumed")));
}

// A second connection while a migration runs reset it or waited; now it is refused at once.
TEST(HostileSource, ASecondConnectionDuringAMigrationIsRefusedAtOnce) {
  Dst d({"--timeout", "10"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendFrame(fd, MsgType::kHello, 0, proto::Bytes(ValidHello(16 << 20))));
  std::optional<RawMsg> ack = ReadFrame(fd);
  ASSERT_TRUE(ack && ack->type == MsgType::kHelloAck);
  const auto t0 = Clock::now();
  const int second = Connect(d.port());
  EXPECT_EQ(second, -ECONNREFUSED);
  EXPECT_LT(SecondsSince(t0), 1);
  // The first migration is undisturbed: it still takes a round marker.
  proto::EndRound er{1, 0, 0, 0};
  EXPECT_TRUE(SendFrame(fd, MsgType::kEndRound, 0, proto::Bytes(er)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  EXPECT_FALSE(d.Exited(0)) << d.Stderr();
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("round 1 received"));
  ::close(fd);
  EXPECT_EQ(d.Wait(10), 1);
}

// SIGTERM (and SIGINT) waited until the incoming migration or its timeout ended (signals were
// blocked for the guest's session); now they end it at once, and no guest resumes.
TEST(HostileSource, SigtermMidRoundEndsTheIncomingMigrationAtOnce) {
  Dst d({"--timeout", "30"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendFrame(fd, MsgType::kHello, 0, proto::Bytes(ValidHello(16 << 20))));
  std::optional<RawMsg> ack = ReadFrame(fd);
  ASSERT_TRUE(ack && ack->type == MsgType::kHelloAck) << d.Stderr();
  // Half a round, then silence: the destination waits for the rest (up to --timeout).
  ASSERT_TRUE(SendFrame(fd, MsgType::kPages, 0, std::vector<uint8_t>(4096, 7)));
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_FALSE(d.Exited(0)) << d.Stderr();
  const auto t0 = Clock::now();
  d.Signal(SIGTERM);
  EXPECT_EQ(d.Wait(10), 1) << d.Stderr();
  EXPECT_LT(SecondsSince(t0), 2) << d.Stderr();
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("stopped by SIGTERM during the incoming migration, "
                                             "no guest resumed"));
  EXPECT_THAT(d.Stderr(), testing::Not(testing::HasSubstr("dst: guest resumed")));
  // The source learns it from the connection: closed, not left hanging.
  std::optional<RawMsg> after = ReadFrame(fd);
  EXPECT_TRUE(!after || after->type == MsgType::kAbort);
  ::close(fd);
}

TEST(HostileSource, SigintWhileListeningEndsTheDestination) {
  Dst d({"--timeout", "30"});
  const auto t0 = Clock::now();
  d.Signal(SIGINT);
  EXPECT_EQ(d.Wait(10), 1) << d.Stderr();
  EXPECT_LT(SecondsSince(t0), 2);
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("stopped by SIGINT"));
}

TEST(HostileSource, SigtermDuringTheHandshakeEndsTheDestination) {
  // A connection that never sends its HELLO holds the destination in the handshake.
  Dst d({"--timeout", "30"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  std::this_thread::sleep_for(std::chrono::milliseconds(200));
  const auto t0 = Clock::now();
  d.Signal(SIGTERM);
  EXPECT_EQ(d.Wait(10), 1) << d.Stderr();
  EXPECT_LT(SecondsSince(t0), 2);
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("stopped by SIGTERM"));
  ::close(fd);
}

// The round-trip measurement's PING is answered, but is no lever: one before HELLO, or more
// than kMaxPings, ends the migration.
TEST(HostileSource, PingsAreAnsweredButBounded) {
  Dst d({"--timeout", "10"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendFrame(fd, MsgType::kHello, 0, proto::Bytes(ValidHello(16 << 20))));
  std::optional<RawMsg> ack = ReadFrame(fd);
  ASSERT_TRUE(ack && ack->type == MsgType::kHelloAck) << d.Stderr();
  for (uint32_t i = 1; i <= proto::kMaxPings; ++i) {
    ASSERT_TRUE(SendFrame(fd, MsgType::kPing, 1000 + i, {}));
    std::optional<RawMsg> pong = ReadFrame(fd);
    ASSERT_TRUE(pong && pong->type == MsgType::kPong) << d.Stderr();
    EXPECT_EQ(pong->arg, 1000 + i);
    EXPECT_TRUE(pong->payload.empty());
  }
  ASSERT_TRUE(SendFrame(fd, MsgType::kPing, 7, {}));
  EXPECT_EQ(d.Wait(10), 1) << d.Stderr();
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("more than 16 PINGs"));
  ::close(fd);
}

TEST(HostileSource, APingBeforeHelloIsRefused) {
  Dst d({"--timeout", "2"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendFrame(fd, MsgType::kPing, 1, {}));
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ::close(fd);
  EXPECT_EQ(d.Wait(10), 1) << d.Stderr();
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("PING"));
  EXPECT_THAT(d.Stderr(), testing::Not(testing::HasSubstr("dst: guest resumed")));
}

// A HELLO announcing 1 TiB was accepted (gigabytes of host memory) before anything was checked.
TEST(HostileSource, AHelloBeyondMaxMemIsRefusedBeforeAnythingIsAllocated) {
  Dst d({"--timeout", "2", "--max-mem", "64M"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  const auto t0 = Clock::now();
  ASSERT_TRUE(SendFrame(fd, MsgType::kHello, 0, proto::Bytes(ValidHello(1ull << 40))));
  std::optional<RawMsg> ack = ReadFrame(fd);
  ASSERT_TRUE(ack && ack->type == MsgType::kHelloAck);
  EXPECT_LT(SecondsSince(t0), 1);
  auto st = proto::Parse<proto::StatusMsg>(ack->payload, ack->type, true);
  ASSERT_TRUE(st.ok());
  EXPECT_THAT(std::string(proto::StatusFromMsg(*st).message()),
              testing::HasSubstr("at most 64 MiB (--max-mem)"));
  ::close(fd);
  // It listens on for --timeout, then gives up naming the refusal.
  EXPECT_EQ(d.Wait(10), 1) << d.Stderr();
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("no valid source within 2 s"));
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("--max-mem"));
}

// HELLO + DEVICE_STATE + COMPLETE with no round at all resumed a guest on all-zero memory.
TEST(HostileSource, StateWithoutAnyRoundIsRefusedAndNothingResumes) {
  Dst d({"--timeout", "5"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendFrame(fd, MsgType::kHello, 0, proto::Bytes(ValidHello(16 << 20))));
  ASSERT_TRUE(ReadFrame(fd));
  ASSERT_TRUE(SendFrame(fd, MsgType::kDeviceState, 0, std::vector<uint8_t>(64)));
  proto::Complete c{};
  c.state_bytes = 64;
  ASSERT_TRUE(SendFrame(fd, MsgType::kComplete, 0, proto::Bytes(c)));
  std::optional<RawMsg> reply = ReadFrame(fd);
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->type, MsgType::kAbort);
  ::close(fd);
  EXPECT_EQ(d.Wait(10), 1);
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("unexpected DEVICE_STATE while receiving memory"));
  EXPECT_THAT(d.Stderr(), testing::Not(testing::HasSubstr("dst: guest resumed")));
}

// Round markers must be consistent with what arrived: a round claiming pages it never sent.
TEST(HostileSource, ARoundMarkerThatDisagreesWithThePagesReceivedIsRefused) {
  Dst d({"--timeout", "5"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendFrame(fd, MsgType::kHello, 0, proto::Bytes(ValidHello(16 << 20))));
  ASSERT_TRUE(ReadFrame(fd));
  std::vector<uint8_t> page(4096, 1);
  ASSERT_TRUE(SendFrame(fd, MsgType::kPages, 0, page, proto::kNoPayloadHash));
  proto::EndRound er{1, 0, 5, 5 * 4096};
  ASSERT_TRUE(SendFrame(fd, MsgType::kEndRound, 0, proto::Bytes(er)));
  ::close(fd);
  EXPECT_EQ(d.Wait(10), 1);
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("END_ROUND 1 announces 20480 bytes of pages, 4096 arrived"));
}

// A short XSAVE record was handed to KVM_SET_XSAVE, which read 4 KiB of the destination's heap.
TEST(HostileSource, AShortXsaveRecordIsRefusedNamingTheRecord) {
  // A real state blob from a tiny guest, with its XSAVE record cut to 576 bytes.
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  a.machine->Pause();
  auto blob = a.machine->SaveState();
  a.machine->RequestStop({ExitInfo::kStopped, "done"});
  a.machine->Join();
  ASSERT_TRUE(blob.ok());
  auto recs = ParseState(*blob);
  ASSERT_TRUE(recs.ok());
  StateWriter w;
  for (const StateRecord& r : *recs) {
    const size_t n = r.tag == StateTag::kXsave ? 576 : r.data.size();
    w.Add(r.tag, r.vcpu, r.data.data(), n);
  }
  const std::vector<uint8_t> bad = w.Finish();

  Dst d({"--timeout", "5"});
  const int fd = Connect(d.port());
  ASSERT_GE(fd, 0);
  ASSERT_TRUE(SendFrame(fd, MsgType::kHello, 0, proto::Bytes(ValidHello(16 << 20))));
  ASSERT_TRUE(ReadFrame(fd));
  proto::EndRound er{1, 1, 0, 0};
  ASSERT_TRUE(SendFrame(fd, MsgType::kEndRound, 0, proto::Bytes(er)));
  ASSERT_TRUE(SendFrame(fd, MsgType::kDeviceState, 0, bad));
  std::optional<RawMsg> reply = ReadFrame(fd);
  ASSERT_TRUE(reply);
  EXPECT_EQ(reply->type, MsgType::kAbort);
  ::close(fd);
  EXPECT_EQ(d.Wait(10), 1);
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("DEVICE_STATE refused"));
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("XSAVE"));
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("576"));
}

}  // namespace
}  // namespace lmig
