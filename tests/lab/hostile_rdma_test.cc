// Peers that lie, stall and break, over RDMA (Soft-RoCE in the lab): the TCP versions are in
// tests/unit/hostile_peer_test.cc. A fake peer speaks the protocol through the RDMA transport
// against the real engine (a tiny guest under the lab's nested KVM) and the real `dst`.
#include <signal.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <atomic>
#include <cstdlib>

#include "include/lmig/transport.h"
#include "tests/hostile_peer.h"

namespace lmig {
namespace {

using namespace hostile;
using proto::MsgType;

std::string LabIp() {
  const char* ip = std::getenv("LMIG_LAB_IP");
  return ip != nullptr ? ip : "10.0.2.15";
}

std::vector<uint8_t> OkAck(std::span<const uint8_t> regions) {
  return proto::HelloAckBytes(absl::OkStatus(), {}, regions);
}

// An RDMA listener on a free port of the lab's address (PORT gets the port).
std::unique_ptr<Listener> ListenRdma(uint16_t& port) {
  for (int i = 0; i < 10; ++i) {
    port = Port();
    auto l = ListenTransport(proto::TransportKind::kRdma, LabIp(), port, {});
    if (l.ok()) {
      return std::move(*l);
    }
  }
  return nullptr;
}

// Runs the sender on M against a fake RDMA destination FAKE(transport, its memory).
absl::Status RunSender(Machine* m, const std::function<void(Transport*, std::vector<uint8_t>&)>& fake,
                       MigrationStats& stats, SenderOptions opts) {
  uint16_t port = 0;
  std::unique_ptr<Listener> listener = ListenRdma(port);
  if (!listener) {
    return absl::InternalError("no RDMA listener");
  }
  std::vector<uint8_t> mem(m->memory().size());
  std::thread dst([&] {
    auto t = listener->Accept(absl::Now() + absl::Seconds(30));
    ASSERT_TRUE(t.ok()) << t.status();
    fake(t->get(), mem);
  });
  TransportOptions to;
  to.timeout = absl::Seconds(10);
  auto t = ConnectTransport(proto::TransportKind::kRdma, LabIp(), port, to);
  absl::Status s = t.status();
  if (t.ok()) {
    MigrationSender sender(m, t->get(), opts, [](const std::string&) {});
    s = sender.Run(stats);
  }
  dst.join();
  return s;
}

// The fake destination's handshake: HELLO in, its memory registered, HELLO_ACK with the rkeys.
void FakeHandshake(Transport* t, std::vector<uint8_t>& mem) {
  auto hello = t->Receive();
  ASSERT_TRUE(hello.ok() && hello->type == MsgType::kHello);
  auto blob = t->AttachMemory(mem.data(), mem.size());
  ASSERT_TRUE(blob.ok()) << blob.status();
  t->AllowIncomingPages(true);  // as a real destination opens its QP to the source's WRITEs
  ASSERT_TRUE(t->Send(MsgType::kHelloAck, 0, OkAck(*blob)).ok());
  for (int i = 0; i < SenderOptions().round_trip_samples; ++i) {  // the round trip, measured
    auto ping = t->Receive();
    ASSERT_TRUE(ping.ok() && ping->type == MsgType::kPing) << ping.status();
    ASSERT_TRUE(t->Send(MsgType::kPong, ping->arg, {}).ok());
  }
}

absl::StatusOr<proto::Message> ReceiveUntil(Transport* t, MsgType type) {
  for (;;) {
    ASSIGN_OR_RETURN(proto::Message m, t->Receive());
    if (m.type == type) {
      return m;
    }
  }
}

// An ACK sent right after HELLO_ACK made the source report "migrated" and drop its guest.
TEST(RdmaHostileDestination, AnEarlyAckDoesNotCountAsTheAnswerToComplete) {
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  MigrationStats stats;
  absl::Status s = RunSender(a.machine.get(), [](Transport* t, std::vector<uint8_t>& mem) {
    ASSERT_NO_FATAL_FAILURE(FakeHandshake(t, mem));
    proto::Ack ack{};
    ack.status = proto::MakeStatusMsg(absl::OkStatus());
    ASSERT_TRUE(t->Send(MsgType::kAck, 0, proto::Bytes(ack)).ok());
    (void)ReceiveUntil(t, MsgType::kAbort);
  }, stats, SenderOptions{});
  EXPECT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("does not answer this COMPLETE"));
  ExpectGuestRunsToItsEnd(a);
}

// A destination that goes silent after COMPLETE held the source's vCPUs paused past --timeout.
TEST(RdmaHostileDestination, AStallInStopAndCopyResumesTheGuestWithinTheTimeout) {
  SourceVm a;
  ASSERT_NO_FATAL_FAILURE(StartCounter(a));
  SenderOptions opts;
  opts.phase_timeout = absl::Seconds(2);
  MigrationStats stats;
  absl::Status s = RunSender(a.machine.get(), [](Transport* t, std::vector<uint8_t>& mem) {
    ASSERT_NO_FATAL_FAILURE(FakeHandshake(t, mem));
    ASSERT_TRUE(ReceiveUntil(t, MsgType::kComplete).ok());
    (void)ReceiveUntil(t, MsgType::kAbort);  // silent until the source gives up
  }, stats, opts);
  EXPECT_EQ(s.code(), absl::StatusCode::kDeadlineExceeded) << s;
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("stop-and-copy"));
  EXPECT_GE(stats.downtime_ms, 1900);
  EXPECT_LE(stats.downtime_ms, 5000);
  ExpectGuestRunsToItsEnd(a);
}

// The source never exposes its memory: it sends no region table and registers no remote access.
TEST(RdmaHostileDestination, TheSourceOffersNoRemoteAccessToItsMemory) {
  std::vector<uint8_t> mem(1 << 20);
  uint16_t port = 0;
  std::unique_ptr<Listener> listener = ListenRdma(port);
  ASSERT_TRUE(listener);
  std::thread dst([&] { (void)listener->Accept(absl::Now() + absl::Seconds(30)); });
  auto t = ConnectTransport(proto::TransportKind::kRdma, LabIp(), port, {});
  dst.join();
  ASSERT_TRUE(t.ok()) << t.status();
  auto blob = (*t)->AttachMemory(mem.data(), mem.size());
  ASSERT_TRUE(blob.ok()) << blob.status();
  EXPECT_TRUE(blob->empty());
}

// One connect-and-close, or a peer that connects and says nothing, ended or held a waiting dst;
// the real source behind them must get the slot.
TEST(RdmaHostileSource, StrangersDoNotEndTheDestinationOrTakeTheSlot) {
  Dst d({"--timeout", "4", "--insecure"}, "rdma", LabIp());
  {
    auto t = ConnectTransport(proto::TransportKind::kRdma, LabIp(), d.port(), {});
    ASSERT_TRUE(t.ok()) << t.status();
  }  // connects and goes
  std::atomic<bool> done{false};
  std::thread silent([&] {
    auto t = ConnectTransport(proto::TransportKind::kRdma, LabIp(), d.port(), {});
    while (!done) {
      std::this_thread::sleep_for(std::chrono::milliseconds(100));
    }
  });
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  ASSERT_FALSE(d.Exited(0)) << d.Stderr();
  MigrationStats stats;
  absl::Status s = MigrateTinyGuest(d.port(), stats, proto::TransportKind::kRdma, LabIp());
  done = true;
  silent.join();
  EXPECT_TRUE(s.ok()) << s << "\n" << d.Stderr();
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("dst: guest resumed"));
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("refused a connection"));
}

// A second connection while a migration runs is refused at once, without disturbing it.
TEST(RdmaHostileSource, ASecondConnectionDuringAMigrationIsRefusedAtOnce) {
  Dst d({"--timeout", "10", "--insecure"}, "rdma", LabIp());
  auto first = ConnectTransport(proto::TransportKind::kRdma, LabIp(), d.port(), {});
  ASSERT_TRUE(first.ok()) << first.status();
  const proto::Hello h = ValidHello(16 << 20, proto::TransportKind::kRdma);
  ASSERT_TRUE((*first)->Send(MsgType::kHello, 0, proto::Bytes(h)).ok());
  auto ack = (*first)->Receive();
  ASSERT_TRUE(ack.ok() && ack->type == MsgType::kHelloAck) << d.Stderr();
  const auto t0 = Clock::now();
  TransportOptions to;
  to.timeout = absl::Seconds(10);
  auto second = ConnectTransport(proto::TransportKind::kRdma, LabIp(), d.port(), to);
  EXPECT_FALSE(second.ok());
  EXPECT_LT(SecondsSince(t0), 3) << second.status();
  proto::EndRound er{1, 0, 0, 0};
  EXPECT_TRUE((*first)->Send(MsgType::kEndRound, 0, proto::Bytes(er)).ok());
  std::this_thread::sleep_for(std::chrono::milliseconds(500));
  EXPECT_FALSE(d.Exited(0)) << d.Stderr();
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("round 1 received"));
}

// SIGTERM to a destination receiving over RDMA (its wait on the CQ and the CM channel) ends
// the migration at once; no guest resumes, and the source's connection is torn down.
TEST(RdmaHostileSource, SigtermMidRoundEndsTheIncomingMigrationAtOnce) {
  Dst d({"--timeout", "30", "--insecure"}, "rdma", LabIp());
  auto src = ConnectTransport(proto::TransportKind::kRdma, LabIp(), d.port(), {});
  ASSERT_TRUE(src.ok()) << src.status();
  const proto::Hello h = ValidHello(16 << 20, proto::TransportKind::kRdma);
  ASSERT_TRUE((*src)->Send(MsgType::kHello, 0, proto::Bytes(h)).ok());
  auto ack = (*src)->Receive();
  ASSERT_TRUE(ack.ok() && ack->type == MsgType::kHelloAck) << d.Stderr();
  std::this_thread::sleep_for(std::chrono::milliseconds(300));
  ASSERT_FALSE(d.Exited(0)) << d.Stderr();
  const auto t0 = Clock::now();
  d.Signal(SIGTERM);
  EXPECT_EQ(d.Wait(10), 1) << d.Stderr();
  EXPECT_LT(SecondsSince(t0), 2) << d.Stderr();
  EXPECT_THAT(d.Stderr(), testing::HasSubstr("stopped by SIGTERM during the incoming migration, "
                                             "no guest resumed"));
  EXPECT_THAT(d.Stderr(), testing::Not(testing::HasSubstr("dst: guest resumed")));
  // The source's next wait ends: an ABORT saying why (posted before the connection went), or
  // the connection's end.
  (*src)->SetDeadline(absl::Now() + absl::Seconds(10), "after the destination's SIGTERM");
  auto m = (*src)->Receive();
  EXPECT_TRUE(!m.ok() || m->type == MsgType::kAbort) << proto::MsgTypeName(m->type);
}

}  // namespace
}  // namespace lmig
