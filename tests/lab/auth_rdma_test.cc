// Who may migrate over RDMA, against the real `dst --psk-file` (the challenge-response of
// src/crypto/auth.h on the RDMA control channel): a handshake recorded from a genuine session
// and replayed to a fresh destination, and a stranger without the key that connects ahead of
// the real source. Over TCP the same is in tests/unit/migration_test.cc (Auth.*) and
// tests/unit/tls_test.cc.
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <optional>

#include "include/lmig/transport.h"
#include "src/crypto/auth.h"
#include "src/crypto/primitives.h"
#include "src/crypto/psk.h"
#include "tests/hostile_peer.h"

namespace lmig {
namespace {

using hostile::Dst;
using proto::MsgType;
using testing::HasSubstr;

std::string RdmaIp() {
  const char* ip = std::getenv("LMIG_LAB_IP");
  return ip != nullptr ? ip : "10.0.2.15";
}

// A fresh key file (lmig-rdma keygen's format) and the key it holds.
struct KeyFile {
  KeyFile() {
    path = testing::TempDir() + "/auth-rdma-XXXXXX";
    const int fd = ::mkstemp(path.data());
    ::close(fd);
    ::unlink(path.c_str());  // WritePskFile makes it, mode 0600, and never overwrites
    EXPECT_TRUE(crypto::WritePskFile(path).ok());
    auto k = crypto::LoadPskFile(path);
    EXPECT_TRUE(k.ok()) << k.status();
    if (k.ok()) {
      psk.emplace(std::move(*k));
    }
  }
  ~KeyFile() { ::unlink(path.c_str()); }
  std::string path;
  std::optional<crypto::Psk> psk;
};

std::unique_ptr<Transport> Connect(uint16_t port) {
  TransportOptions to;
  to.timeout = absl::Seconds(10);
  auto t = ConnectTransport(proto::TransportKind::kRdma, RdmaIp(), port, to);
  EXPECT_TRUE(t.ok()) << t.status();
  return t.ok() ? std::move(*t) : nullptr;
}

// HELLO with auth and NS; sends it on T and returns the destination's nonce.
absl::StatusOr<crypto::Nonce> SendHello(Transport* t, std::span<const uint8_t> hello) {
  RETURN_IF_ERROR(t->Send(MsgType::kHello, 0, hello));
  ASSIGN_OR_RETURN(proto::Message m, t->Receive());
  if (m.type != MsgType::kAuthChallenge) {
    return absl::FailedPreconditionError(
        absl::StrCat("expected AUTH_CHALLENGE, got ", proto::MsgTypeName(m.type)));
  }
  ASSIGN_OR_RETURN(proto::AuthChallenge c, proto::Parse<proto::AuthChallenge>(m.payload, m.type));
  crypto::Nonce nd;
  std::memcpy(nd.data(), c.nonce, nd.size());
  return nd;
}

std::vector<uint8_t> AuthHello(const crypto::Nonce& ns) {
  proto::Hello h =
      hostile::ValidHello(16 << 20, proto::TransportKind::kRdma, proto::AuthMode::kPsk);
  std::memcpy(h.nonce, ns.data(), ns.size());
  return proto::Bytes(h);
}

bool WaitFor(const Dst& d, const std::string& text, int seconds) {
  for (int i = 0; i < seconds * 20; ++i) {
    if (d.Stderr().find(text) != std::string::npos) {
      return true;
    }
    std::this_thread::sleep_for(std::chrono::milliseconds(50));
  }
  return false;
}

TEST(RdmaAuth, AHandshakeRecordedAndReplayedToAFreshDestinationIsRefused) {
  KeyFile key;
  ASSERT_TRUE(key.psk);
  const std::vector<uint8_t> hello = AuthHello(*crypto::NewNonce());
  std::vector<uint8_t> recorded_proof;
  {
    // Session 1, genuine: the source's side by hand, as a real source computes it; recorded.
    Dst d({"--psk-file", key.path, "--timeout", "5"}, "rdma", RdmaIp());
    auto t = Connect(d.port());
    ASSERT_TRUE(t);
    auto nd = SendHello(t.get(), hello);
    ASSERT_TRUE(nd.ok()) << nd.status() << "\n" << d.Stderr();
    crypto::Nonce ns;
    std::memcpy(ns.data(), reinterpret_cast<const proto::Hello*>(hello.data())->nonce, 32);
    auto proof = crypto::Proof(*key.psk, crypto::Role::kSource, ns, *nd, *crypto::Sha256(hello));
    ASSERT_TRUE(proof.ok());
    proto::AuthProof ap{};
    std::memcpy(ap.proof, proof->data(), proof->size());
    recorded_proof = proto::Bytes(ap);
    ASSERT_TRUE(t->Send(MsgType::kAuthProof, 0, recorded_proof).ok());
    ASSERT_TRUE(WaitFor(d, "incoming migration", 20)) << d.Stderr();  // it was genuine
  }
  // Session 2: the recording, replayed to a destination with the same key.
  Dst d({"--psk-file", key.path, "--timeout", "3"}, "rdma", RdmaIp());
  auto t = Connect(d.port());
  ASSERT_TRUE(t);
  auto nd = SendHello(t.get(), hello);
  ASSERT_TRUE(nd.ok()) << nd.status() << "\n" << d.Stderr();
  ASSERT_TRUE(t->Send(MsgType::kAuthProof, 0, recorded_proof).ok());
  ASSERT_TRUE(d.Exited(30000)) << d.Stderr();
  EXPECT_NE(d.Wait(0), 0);
  EXPECT_THAT(d.Stderr(), HasSubstr("authentication failed (refused by the destination"));
  // No VM, so no memory registered and no rkey sent.
  EXPECT_THAT(d.Stderr(), testing::Not(HasSubstr("incoming migration")));
}

TEST(RdmaAuth, AStrangerWithoutTheKeyDoesNotTakeTheSlotOfTheRealSource) {
  KeyFile key;
  ASSERT_TRUE(key.psk);
  Dst d({"--psk-file", key.path, "--timeout", "10"}, "rdma", RdmaIp());
  {
    // A stranger connects first and answers the challenge with a proof it cannot make.
    auto t = Connect(d.port());
    ASSERT_TRUE(t);
    auto nd = SendHello(t.get(), AuthHello(*crypto::NewNonce()));
    ASSERT_TRUE(nd.ok()) << nd.status() << "\n" << d.Stderr();
    proto::AuthProof forged{};
    std::memset(forged.proof, 0x42, sizeof(forged.proof));
    ASSERT_TRUE(t->Send(MsgType::kAuthProof, 0, proto::Bytes(forged)).ok());
    ASSERT_TRUE(WaitFor(d, "refused a connection", 20)) << d.Stderr();
  }
  MigrationStats stats;
  absl::Status s = hostile::MigrateTinyGuest(d.port(), stats, proto::TransportKind::kRdma,
                                             RdmaIp(), {}, &*key.psk);
  EXPECT_TRUE(s.ok()) << s << "\n" << d.Stderr();
  EXPECT_THAT(d.Stderr(), HasSubstr("authentication failed (refused by the destination"));
  EXPECT_THAT(d.Stderr(), HasSubstr("dst: guest resumed"));
}

}  // namespace
}  // namespace lmig
