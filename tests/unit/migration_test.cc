// The migration engine and the TCP transport on the host: loopback TCP, tiny guests.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <random>
#include <thread>

#include "include/lmig/transport.h"
#include "src/migration/machine_vm.h"
#include "src/migration/receiver.h"
#include "src/migration/secure_channel.h"
#include "tests/hostile_peer.h"
#include "src/crypto/primitives.h"
#include "src/migration/sender.h"
#include "tests/unit/tiny_guest.h"

namespace lmig {
namespace {

using namespace testing_guest;

uint16_t FreePort() {
  static std::mt19937 rng(std::random_device{}());
  return static_cast<uint16_t>(20000 + rng() % 20000);
}

struct Pair {
  std::unique_ptr<Transport> src, dst;
};

Pair ConnectPair(TransportOptions opts = {}) {
  for (int attempt = 0; attempt < 10; ++attempt) {
    const uint16_t port = FreePort();
    auto listener = ListenTransport(proto::TransportKind::kTcp, "127.0.0.1", port, opts);
    if (!listener.ok()) {
      continue;
    }
    Pair p;
    std::thread t([&] {
      auto d = (*listener)->Accept(absl::InfiniteFuture());
      if (d.ok()) {
        p.dst = std::move(*d);
      }
    });
    auto s = ConnectTransport(proto::TransportKind::kTcp, "127.0.0.1", port, opts);
    t.join();
    if (s.ok() && p.dst) {
      p.src = std::move(*s);
      return p;
    }
  }
  ADD_FAILURE() << "no loopback connection";
  return {};
}

TEST(TcpTransport, MovesRangesIntoTheSameOffsetsAndOrdersControlAfterData) {
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  std::vector<uint8_t> a(64 * 4096), b(64 * 4096, 0);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<uint8_t>(i * 7 + 3);
  }
  ASSERT_TRUE(p.src->AttachMemory(a.data(), a.size()).ok());
  ASSERT_TRUE(p.dst->AttachMemory(b.data(), b.size()).ok());
  p.dst->AllowIncomingPages(true);
  const std::vector<RamRange> ranges = {{0, 4096}, {8 * 4096, 16 * 4096}, {63 * 4096, 4096}};
  ASSERT_TRUE(p.src->Write(ranges).ok());
  ASSERT_TRUE(p.src->Send(proto::MsgType::kEndRound, 0, std::vector<uint8_t>(24, 1)).ok());
  auto m = p.dst->Receive();
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->type, proto::MsgType::kEndRound);
  for (const RamRange& r : ranges) {
    EXPECT_EQ(0, std::memcmp(a.data() + r.offset, b.data() + r.offset, r.length));
  }
  EXPECT_EQ(b[4 * 4096], 0);  // untouched range stays zero
  EXPECT_EQ(p.src->stats().data_bytes, 18u * 4096);
}

TEST(TcpTransport, CorruptStreamAndDeadPeerAreErrors) {
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  p.src.reset();  // the peer dies
  auto m = p.dst->Receive();
  EXPECT_FALSE(m.ok());
  EXPECT_THAT(std::string(m.status().message()), testing::HasSubstr("closed"));

  // A peer that speaks something else: raw bytes where a frame header should be.
  const uint16_t port = FreePort();
  auto listener = ListenTransport(proto::TransportKind::kTcp, "127.0.0.1", port, {});
  ASSERT_TRUE(listener.ok());
  std::thread junk([&] {
    int fd = ::socket(AF_INET, SOCK_STREAM, 0);
    sockaddr_in sa{};
    sa.sin_family = AF_INET;
    sa.sin_port = htons(port);
    sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    ASSERT_EQ(::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)), 0);
    const std::string http = "GET / HTTP/1.1\r\nHost: x\r\n\r\n......................";
    ASSERT_GT(::write(fd, http.data(), http.size()), 0);
    std::this_thread::sleep_for(std::chrono::milliseconds(200));
    ::close(fd);
  });
  auto t = (*listener)->Accept(absl::InfiniteFuture());
  ASSERT_TRUE(t.ok());
  auto bad = (*t)->Receive();
  junk.join();
  ASSERT_FALSE(bad.ok());
  EXPECT_THAT(std::string(bad.status().message()), testing::HasSubstr("corrupt stream"));
}

TEST(TcpTransport, UnreachablePeerNamesTheAddress) {
  TransportOptions o;
  o.timeout = absl::Seconds(2);
  auto t = ConnectTransport(proto::TransportKind::kTcp, "127.0.0.1", 1, o);
  ASSERT_FALSE(t.ok());
  EXPECT_THAT(std::string(t.status().message()), testing::HasSubstr("127.0.0.1:1"));
}

// A 16 MiB, 1-vCPU tiny guest running SlowCounter.
void StartCounterGuest(Vm& vm) {
  ASSERT_TRUE(CreateVm(vm, 16ull << 20, 1).ok());
  ASSERT_TRUE(LoadRealMode(*vm.machine, SlowCounter()).ok());
  ASSERT_TRUE(vm.machine->Start().ok());
}

// Runs the real engine: sender on machine A, receiver creating machine B.
struct EngineRun {
  absl::Status send_status, recv_status;
  MigrationStats send_stats, recv_stats;
};

// The destination's side of a test migration: a receiver that creates VM B like `dst` does.
absl::Status Receive(Transport* t, Vm& b, ReceiverOptions ropts, MigrationStats& stats) {
  MigrationReceiver recv(
      t, std::move(ropts),
      [&](const proto::Hello& h) -> absl::StatusOr<IncomingVm*> {
        ASSIGN_OR_RETURN(Machine * m, CreateVm(b, h.mem_size, h.num_cpus));
        b.incoming = std::make_unique<MachineVm>(m, [](Machine* m) { return m->Start(); });
        return b.incoming.get();
      },
      [](const std::string&) {});
  RETURN_IF_ERROR(recv.Handshake(stats));
  return recv.Run(stats);
}

EngineRun Migrate(Machine* a, Pair& p, Vm& b, SenderOptions opts,
                  const crypto::Psk* dst_psk = nullptr) {
  EngineRun r;
  std::thread dst([&] {
    ReceiverOptions ropts;
    ropts.psk = dst_psk;
    r.recv_status = Receive(p.dst.get(), b, ropts, r.recv_stats);
  });
  MigrationSender sender(a, p.src.get(), opts, [](const std::string&) {});
  r.send_status = sender.Run(r.send_stats);
  dst.join();
  return r;
}

TEST(Engine, MigratesARunningTinyGuestThatContinuesWithoutLosingOutput) {
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartCounterGuest(a));
  std::string out_a = TakeOutput(*a.console, 4);
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  Vm b;
  SenderOptions opts;
  opts.verify_memory = true;
  EngineRun r = Migrate(a.machine.get(), p, b, opts);
  ASSERT_TRUE(r.send_status.ok()) << r.send_status;
  ASSERT_TRUE(r.recv_status.ok()) << r.recv_status;
  out_a += a.console->Take();
  a.machine->RequestStop({ExitInfo::kStopped, "migrated"});
  a.machine->Join();
  ASSERT_LT(out_a.size(), 40u) << "the guest finished before the migration did";
  ASSERT_TRUE(WaitStopped(*b.machine, 30000));
  b.machine->Join();
  EXPECT_EQ(b.machine->exit_info().kind, ExitInfo::kReset);
  EXPECT_EQ(out_a + b.console->Take(), CounterOutput());
  EXPECT_EQ(r.send_stats.status, "completed");
  EXPECT_GE(r.send_stats.rounds, 2);
  EXPECT_GT(r.send_stats.zero_pages_skipped, 4000u);  // 16 MiB, nearly all zero
  EXPECT_GT(r.send_stats.downtime_ms, 0);
  EXPECT_EQ(r.send_stats.pages_sent, r.recv_stats.pages_sent);
  EXPECT_NE(r.send_stats.ToJson().find("\"downtime_ms\""), std::string::npos);
}

// The pause is broken down phase by phase, the destination's part from its ACK, and the
// phases add up to the downtime.
TEST(Engine, ThePauseIsAccountedPhaseByPhaseOnBothSides) {
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartCounterGuest(a));
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  Vm b;
  EngineRun r = Migrate(a.machine.get(), p, b, SenderOptions{});
  ASSERT_TRUE(r.send_status.ok()) << r.send_status;
  ASSERT_TRUE(r.recv_status.ok()) << r.recv_status;
  a.machine->RequestStop({ExitInfo::kStopped, "migrated"});
  a.machine->Join();
  b.machine->RequestStop({ExitInfo::kStopped, "test over"});
  b.machine->Join();
  const MigrationStats& s = r.send_stats;
  const PhaseCheck c = CheckPhases(s.phases, s.downtime_ms);
  EXPECT_TRUE(c.missing.empty()) << s.HumanReport();
  EXPECT_TRUE(c.Within(0.10, s.downtime_ms)) << s.HumanReport();
  std::vector<std::string> names;
  for (const Phase& ph : s.phases) {
    names.push_back(ph.name);
  }
  for (const char* want : kSourcePausePhases) {
    EXPECT_THAT(names, testing::Contains(want)) << s.HumanReport();
  }
  EXPECT_THAT(names, testing::Contains("dst.state_validated"));
  for (const Phase& ph : s.phases) {
    if (ph.name == "vcpus_stopped") {
      ASSERT_EQ(ph.parts.size(), 1u);  // one vCPU
      EXPECT_LE(ph.parts[0].ms, ph.ms);
    }
    if (ph.name == "state_saved" || ph.name == "dst.state_restored") {
      EXPECT_FALSE(ph.calls.empty()) << ph.name;
      double parts = 0;
      for (const Phase& q : ph.parts) {
        EXPECT_FALSE(q.missing) << ph.name << "/" << q.name;
        parts += q.ms;
      }
      EXPECT_NEAR(parts, ph.ms, 0.10 * ph.ms + 0.05) << ph.name;
    }
  }
  EXPECT_FALSE(r.recv_stats.phases.empty());
  EXPECT_NE(s.ToJson().find("\"downtime_phases\""), std::string::npos);
}

TEST(Engine, LongRoundsTellTheDestinationTheSourceIsAlive) {
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartCounterGuest(a));
  // 12 MiB of data the guest does not touch: more than one 8 MiB batch in round 1.
  std::memset(a.machine->memory().base() + (2 << 20), 0x5a, 12 << 20);
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  Vm b;
  SenderOptions opts;
  opts.verify_memory = true;
  opts.alive_interval = absl::ZeroDuration();  // PROGRESS after every batch
  EngineRun r = Migrate(a.machine.get(), p, b, opts);
  ASSERT_TRUE(r.send_status.ok()) << r.send_status;
  ASSERT_TRUE(r.recv_status.ok()) << r.recv_status;  // PROGRESS was accepted mid-round
  a.machine->RequestStop({ExitInfo::kStopped, "migrated"});
  a.machine->Join();
  EXPECT_GE(r.send_stats.pages_sent, (12u << 20) / 4096);
  // Under host load the guest can end on A before stop-and-copy (its reset request is A's):
  // B then holds the ended guest, halted, with nothing left to run.
  if (a.machine->exit_info().kind == ExitInfo::kReset) {
    b.machine->RequestStop({ExitInfo::kStopped, "the guest had ended on the source"});
  } else {
    ASSERT_TRUE(WaitStopped(*b.machine, 30000));
  }
  b.machine->Join();
}

crypto::Psk TestKey(uint8_t fill) {
  return *crypto::Psk::FromBytes(std::vector<uint8_t>(32, fill));
}

TEST(Auth, TheRightKeyMigratesWithEveryControlMessageSealed) {
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartCounterGuest(a));
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  Vm b;
  const crypto::Psk key = TestKey(7), same = TestKey(7);
  SenderOptions opts;
  opts.psk = &key;
  opts.verify_memory = true;
  EngineRun r = Migrate(a.machine.get(), p, b, opts, &same);
  ASSERT_TRUE(r.send_status.ok()) << r.send_status;
  ASSERT_TRUE(r.recv_status.ok()) << r.recv_status;
  a.machine->RequestStop({ExitInfo::kStopped, "migrated"});
  a.machine->Join();
  ASSERT_TRUE(WaitStopped(*b.machine, 30000));
  b.machine->Join();
  EXPECT_EQ(b.machine->exit_info().kind, ExitInfo::kReset);
}

// --key sent an unkeyed hash of the key in the clear; a wrong key now fails the proofs.
TEST(Auth, AWrongKeyIsRefusedByBothSidesBeforeAnyVmOrMemory) {
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartCounterGuest(a));
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  Vm b;
  const crypto::Psk right = TestKey(1), wrong = TestKey(2);
  SenderOptions opts;
  opts.psk = &right;
  EngineRun r = Migrate(a.machine.get(), p, b, opts, &wrong);
  EXPECT_EQ(r.send_status.code(), absl::StatusCode::kUnauthenticated) << r.send_status;
  EXPECT_THAT(std::string(r.send_status.message()),
              testing::HasSubstr("authentication failed (refused by the source)"));
  EXPECT_THAT(std::string(r.recv_status.message()), testing::HasSubstr("authentication failed"));
  EXPECT_EQ(b.machine, nullptr);  // no VM, no vCPU, no memory registered
  EXPECT_EQ(r.send_stats.pages_sent, 0u);
  // The source guest was never stopped: it runs to its end.
  ASSERT_TRUE(WaitStopped(*a.machine, 30000));
  a.machine->Join();
  EXPECT_EQ(a.machine->exit_info().kind, ExitInfo::kReset);
}

TEST(Auth, AKeyedDestinationRefusesASourceWithoutAKey) {
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartCounterGuest(a));
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  Vm b;
  const crypto::Psk key = TestKey(3);
  EngineRun r = Migrate(a.machine.get(), p, b, SenderOptions{}, &key);
  EXPECT_THAT(std::string(r.send_status.message()),
              testing::HasSubstr("authentication failed (refused by the destination)"));
  EXPECT_EQ(b.machine, nullptr);
  ASSERT_TRUE(WaitStopped(*a.machine, 30000));
  a.machine->Join();
}

proto::Hello AuthHello(const crypto::Nonce& ns) {
  proto::Hello h =
      hostile::ValidHello(16 << 20, proto::TransportKind::kTcp, proto::AuthMode::kPsk);
  std::memcpy(h.nonce, ns.data(), 32);
  return h;
}

// A HELLO recorded from a real source and replayed unchanged was accepted and its pages run;
// a recorded handshake (HELLO + AUTH_PROOF) must fail against a fresh destination's challenge.
TEST(Auth, AReplayedHandshakeIsRefused) {
  const crypto::Psk key = TestKey(9), same = TestKey(9);
  const crypto::Nonce ns = *crypto::NewNonce();
  const std::vector<uint8_t> hello = proto::Bytes(AuthHello(ns));
  // Session 1: the source's side by hand, as a real source computes it; recorded.
  std::vector<uint8_t> recorded_proof;
  {
    Pair p = ConnectPair();
    ASSERT_TRUE(p.src && p.dst);
    absl::Status dst_status;
    std::thread dst([&] {
      auto m = p.dst->Receive();
      ASSERT_TRUE(m.ok());
      dst_status = AuthenticateAsDestination(p.dst.get(), same, m->payload).status();
    });
    ASSERT_TRUE(p.src->Send(proto::MsgType::kHello, 0, hello).ok());
    auto m = p.src->Receive();
    ASSERT_TRUE(m.ok() && m->type == proto::MsgType::kAuthChallenge);
    auto c = proto::Parse<proto::AuthChallenge>(m->payload, m->type);
    ASSERT_TRUE(c.ok());
    crypto::Nonce nd;
    std::memcpy(nd.data(), c->nonce, 32);
    auto proof = crypto::Proof(key, crypto::Role::kSource, ns, nd, *crypto::Sha256(hello));
    ASSERT_TRUE(proof.ok());
    proto::AuthProof ap{};
    std::memcpy(ap.proof, proof->data(), 32);
    recorded_proof = proto::Bytes(ap);
    ASSERT_TRUE(p.src->Send(proto::MsgType::kAuthProof, 0, recorded_proof).ok());
    dst.join();
    ASSERT_TRUE(dst_status.ok()) << dst_status;  // session 1 was genuine
  }
  // Session 2: the recording, replayed to a destination with the same key.
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  Vm b;
  absl::Status recv_status;
  MigrationStats st;
  std::thread dst([&] {
    ReceiverOptions ropts;
    ropts.psk = &same;
    recv_status = Receive(p.dst.get(), b, ropts, st);
  });
  ASSERT_TRUE(p.src->Send(proto::MsgType::kHello, 0, hello).ok());
  auto challenge = p.src->Receive();
  ASSERT_TRUE(challenge.ok() && challenge->type == proto::MsgType::kAuthChallenge);
  ASSERT_TRUE(p.src->Send(proto::MsgType::kAuthProof, 0, recorded_proof).ok());
  dst.join();
  EXPECT_EQ(recv_status.code(), absl::StatusCode::kUnauthenticated) << recv_status;
  EXPECT_THAT(std::string(recv_status.message()),
              testing::HasSubstr("authentication failed (refused by the destination)"));
  EXPECT_EQ(b.machine, nullptr);  // nothing created, nothing registered
}

// After the handshake a message injected in the clear (or altered) fails authentication.
TEST(Auth, AnUnsealedMessageAfterTheHandshakeIsRefused) {
  const crypto::Psk key = TestKey(5), same = TestKey(5);
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  Vm b;
  absl::Status recv_status;
  std::thread dst([&] {
    ReceiverOptions ropts;
    ropts.psk = &same;
    MigrationStats st;
    recv_status = Receive(p.dst.get(), b, ropts, st);
  });
  const crypto::Nonce ns = *crypto::NewNonce();
  const std::vector<uint8_t> hello = proto::Bytes(AuthHello(ns));
  ASSERT_TRUE(p.src->Send(proto::MsgType::kHello, 0, hello).ok());
  auto sealed = AuthenticateAsSource(p.src.get(), key, ns, hello);
  ASSERT_TRUE(sealed.ok()) << sealed.status();
  auto ack = (*sealed)->Receive();
  ASSERT_TRUE(ack.ok()) << ack.status();
  EXPECT_EQ(ack->type, proto::MsgType::kHelloAck);
  proto::EndRound er{1, 1, 0, 0};  // in the clear, on the raw connection
  ASSERT_TRUE(p.src->Send(proto::MsgType::kEndRound, 0, proto::Bytes(er)).ok());
  dst.join();
  EXPECT_EQ(recv_status.code(), absl::StatusCode::kUnauthenticated) << recv_status;
  EXPECT_THAT(std::string(recv_status.message()), testing::HasSubstr("authentication failed"));
}

TEST(Engine, DestinationDyingMidMigrationLeavesTheSourceRunning) {
  Vm a;
  ASSERT_NO_FATAL_FAILURE(StartCounterGuest(a));
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  // The "destination" reads the HELLO, then vanishes.
  std::thread dst([&] {
    (void)p.dst->Receive();
    p.dst.reset();
  });
  MigrationSender sender(a.machine.get(), p.src.get(), SenderOptions{}, [](const std::string&) {});
  MigrationStats stats;
  absl::Status s = sender.Run(stats);
  dst.join();
  EXPECT_FALSE(s.ok());
  EXPECT_EQ(stats.status, "failed");
  EXPECT_FALSE(a.machine->dirty_log().active());
  ASSERT_TRUE(WaitStopped(*a.machine, 30000));
  a.machine->Join();
  EXPECT_EQ(a.machine->exit_info().kind, ExitInfo::kReset);
  EXPECT_EQ(a.console->Take(), CounterOutput());
}

TEST(Receiver, RejectsMessagesOutOfOrder) {
  Pair p = ConnectPair();
  ASSERT_TRUE(p.src && p.dst);
  ASSERT_TRUE(p.src->Send(proto::MsgType::kComplete, 0,
                          std::vector<uint8_t>(sizeof(proto::Complete))).ok());
  MigrationReceiver recv(
      p.dst.get(), ReceiverOptions{}, [](const proto::Hello&) -> absl::StatusOr<IncomingVm*> {
        return absl::InternalError("must not be called");
      },
      [](const std::string&) {});
  MigrationStats stats;
  absl::Status s = recv.Handshake(stats);
  EXPECT_THAT(std::string(s.message()), testing::HasSubstr("expected HELLO, got COMPLETE"));
  EXPECT_EQ(recv.state(), MigrationReceiver::State::kFailed);
}

}  // namespace
}  // namespace lmig
