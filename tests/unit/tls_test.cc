// TLS 1.3 under the TCP transport (transport/tcp/tls.h): who may connect, and what the wire
// shows. A relay between the two ends records every byte the source sends (what a capture on
// the link would see) and can flip one, so confidentiality and integrity are checked on the
// bytes themselves. On this host the kernel has no TLS, so this is OpenSSL in user space; the
// lab's kernel has it (tests/lab/test_tls.py checks kernel TLS and a real capture).
#include <arpa/inet.h>
#include <gmock/gmock.h>
#include <gtest/gtest.h>
#include <netinet/in.h>
#include <poll.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <fstream>
#include <optional>
#include <random>
#include <sstream>
#include <thread>

#include "include/lmig/transport.h"
#include "src/crypto/psk.h"
#include "tests/hostile_peer.h"
#include "transport/tcp/tls.h"

namespace lmig {
namespace {

using testing::HasSubstr;

int ListenOn(uint16_t& port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::bind(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0 || ::listen(fd, 4) != 0) {
    ::close(fd);
    return -1;
  }
  socklen_t len = sizeof(sa);
  ::getsockname(fd, reinterpret_cast<sockaddr*>(&sa), &len);
  port = ntohs(sa.sin_port);
  return fd;
}

int ConnectTo(uint16_t port) {
  const int fd = ::socket(AF_INET, SOCK_STREAM, 0);
  sockaddr_in sa{};
  sa.sin_family = AF_INET;
  sa.sin_port = htons(port);
  sa.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
  if (::connect(fd, reinterpret_cast<sockaddr*>(&sa), sizeof(sa)) != 0) {
    ::close(fd);
    return -1;
  }
  return fd;
}

// A TCP relay from port() to TARGET: records what the client sends; if FLIP_AT >= 0, flips
// that byte of the client's stream on the way.
class Relay {
 public:
  Relay(uint16_t target, int64_t flip_at = -1) : flip_at_(flip_at) {
    lfd_ = ListenOn(port_);
    thread_ = std::thread([this, target] { Run(target); });
  }
  ~Relay() {
    stop_ = true;
    thread_.join();
    ::close(lfd_);
  }
  uint16_t port() const { return port_; }
  // The client's bytes so far (call once the exchange is done).
  std::string captured() {
    std::lock_guard<std::mutex> l(mu_);
    return captured_;
  }

 private:
  void Run(uint16_t target) {
    pollfd lp{lfd_, POLLIN, 0};
    while (!stop_ && ::poll(&lp, 1, 50) == 0) {
    }
    if (stop_) {
      return;
    }
    const int c = ::accept(lfd_, nullptr, nullptr);
    const int s = ConnectTo(target);
    if (c < 0 || s < 0) {
      return;
    }
    bool c_open = true, s_open = true;
    while (!stop_ && (c_open || s_open)) {
      pollfd p[2] = {{c, static_cast<short>(c_open ? POLLIN : 0), 0},
                     {s, static_cast<short>(s_open ? POLLIN : 0), 0}};
      if (::poll(p, 2, 50) <= 0) {
        continue;
      }
      if (p[0].revents) {
        c_open = Forward(c, s, true);
      }
      if (p[1].revents) {
        s_open = Forward(s, c, false);
      }
    }
    ::close(c);
    ::close(s);
  }

  // Moves what FROM has to TO; false once FROM has closed. CLIENT: the source's direction,
  // recorded (and its byte at flip_at_ flipped).
  bool Forward(int from, int to, bool client) {
    char buf[65536];
    const ssize_t n = ::read(from, buf, sizeof(buf));
    if (n <= 0) {
      ::shutdown(to, SHUT_WR);
      return false;
    }
    if (client) {
      std::lock_guard<std::mutex> l(mu_);
      const int64_t at = flip_at_ - static_cast<int64_t>(captured_.size());
      captured_.append(buf, static_cast<size_t>(n));
      if (at >= 0 && at < n) {
        buf[at] ^= 0x40;
      }
    }
    (void)::write(to, buf, static_cast<size_t>(n));
    return true;
  }

  int lfd_ = -1;
  uint16_t port_ = 0;
  int64_t flip_at_;
  std::atomic<bool> stop_{false};
  std::thread thread_;
  std::mutex mu_;
  std::string captured_;
};

std::vector<uint8_t> Key(uint8_t seed) { return std::vector<uint8_t>(32, seed); }

std::shared_ptr<const TlsConfig> Psk(uint8_t seed) {
  auto c = TlsConfig::WithPsk(Key(seed));
  EXPECT_TRUE(c.ok()) << c.status();
  return c.ok() ? *c : nullptr;
}

struct Ends {
  std::unique_ptr<Transport> src, dst;
};

// A listener with DST_OPTS; a source with SRC_OPTS dialling VIA (0: the listener itself).
// The handshake itself happens at the first Send/Receive.
Ends Connect(const TransportOptions& src_opts, const TransportOptions& dst_opts,
             std::unique_ptr<Relay>* relay = nullptr, int64_t flip_at = -1) {
  for (int attempt = 0; attempt < 10; ++attempt) {
    const uint16_t port = hostile::Port();
    auto listener = ListenTransport(proto::TransportKind::kTcp, "127.0.0.1", port, dst_opts);
    if (!listener.ok()) {
      continue;
    }
    uint16_t dial = port;
    if (relay != nullptr) {
      *relay = std::make_unique<Relay>(port, flip_at);
      dial = (*relay)->port();
    }
    Ends e;
    std::thread t([&] {
      auto d = (*listener)->Accept(absl::Now() + absl::Seconds(10));
      if (d.ok()) {
        e.dst = std::move(*d);
      }
    });
    auto s = ConnectTransport(proto::TransportKind::kTcp, "127.0.0.1", dial, src_opts);
    t.join();
    if (s.ok() && e.dst) {
      e.src = std::move(*s);
      return e;
    }
  }
  ADD_FAILURE() << "no loopback connection";
  return {};
}

// The source's first message and the destination's Receive, run at the same time (each end's
// handshake needs the other). Returns both results.
struct Exchange {
  absl::Status sent;
  absl::StatusOr<proto::Message> got = absl::UnknownError("not run");
};
Exchange FirstMessage(Ends& e) {
  Exchange x;
  std::thread d([&] {
    x.got = e.dst->Receive();
    if (!x.got.ok()) {
      e.dst.reset();  // as a destination does: the source's handshake must not wait for it
    }
  });
  x.sent = e.src->Send(proto::MsgType::kEndRound, 0, std::vector<uint8_t>(24, 1));
  if (!x.sent.ok()) {
    e.src.reset();  // the destination's Receive must not wait for a handshake that is over
  }
  d.join();
  return x;
}

// Guest pages the relay looks for: a 32-byte marker repeated.
constexpr char kMarker[] = "lmig-secret-page-content-31337!!";

std::vector<uint8_t> MarkedPages(size_t pages) {
  std::vector<uint8_t> a(pages * 4096);
  for (size_t i = 0; i < a.size(); ++i) {
    a[i] = static_cast<uint8_t>(kMarker[i % 32]);
  }
  return a;
}

// Sends all of A and an END_ROUND from src to dst (memory B): what the source's calls returned
// and what the destination received.
struct Transfer {
  absl::Status sent;
  absl::StatusOr<proto::Message> got = absl::UnknownError("not run");
};
Transfer SendPages(Ends& e, std::vector<uint8_t>& a, std::vector<uint8_t>& b) {
  Transfer x;
  x.sent = e.src->AttachMemory(a.data(), a.size()).status();
  if (absl::Status s = e.dst->AttachMemory(b.data(), b.size()).status(); !s.ok()) {
    x.got = s;
    return x;
  }
  e.dst->AllowIncomingPages(true);
  std::thread d([&] { x.got = e.dst->Receive(); });
  const std::vector<RamRange> all = {{0, a.size()}};
  if (x.sent.ok()) {
    x.sent = e.src->Write(all);
  }
  if (x.sent.ok()) {
    x.sent = e.src->Send(proto::MsgType::kEndRound, 0, std::vector<uint8_t>(24, 1));
  }
  d.join();
  return x;
}

// Moves 64 marked pages and an END_ROUND from src to dst; the pages must land intact.
void MovePages(Ends& e, std::vector<uint8_t>& a, std::vector<uint8_t>& b) {
  Transfer x = SendPages(e, a, b);
  absl::Status sent = x.sent;
  auto& m = x.got;
  ASSERT_TRUE(sent.ok()) << sent;
  ASSERT_TRUE(m.ok()) << m.status();
  EXPECT_EQ(m->type, proto::MsgType::kEndRound);
  EXPECT_EQ(a, b);
}

TEST(Tls, APreSharedKeyEncryptsPageDataSoTheWireShowsNoneOfIt) {
  TransportOptions o;
  o.tls = Psk(1);
  std::unique_ptr<Relay> relay;
  Ends e = Connect(o, o, &relay);
  ASSERT_TRUE(e.src && e.dst);
  std::vector<uint8_t> a = MarkedPages(64), b(a.size(), 0);
  ASSERT_NO_FATAL_FAILURE(MovePages(e, a, b));
  EXPECT_THAT(e.src->stats().security, HasSubstr("TLS 1.3 TLS_AES_256_GCM_SHA384, pre-shared key"));
  EXPECT_THAT(e.dst->stats().security, HasSubstr("TLS 1.3 TLS_AES_256_GCM_SHA384, pre-shared key"));
  EXPECT_FALSE(e.src->stats().zero_copy);
  e.src.reset();
  e.dst.reset();
  const std::string wire = relay->captured();
  EXPECT_GT(wire.size(), a.size());  // the pages did cross it
  EXPECT_EQ(wire.find(std::string(kMarker, 16)), std::string::npos) << "page data in clear";
}

// The control for the test above: the same relay sees the pages when there is no TLS, so the
// search can fail.
TEST(Tls, WithoutTlsTheSameCaptureShowsThePages) {
  std::unique_ptr<Relay> relay;
  Ends e = Connect({}, {}, &relay);
  ASSERT_TRUE(e.src && e.dst);
  std::vector<uint8_t> a = MarkedPages(64), b(a.size(), 0);
  ASSERT_NO_FATAL_FAILURE(MovePages(e, a, b));
  EXPECT_EQ(e.src->stats().security, "");
  e.src.reset();
  e.dst.reset();
  EXPECT_NE(relay->captured().find(std::string(kMarker, 16)), std::string::npos);
}

TEST(Tls, AWrongKeyIsRefusedByBothSidesAsAuthentication) {
  TransportOptions so, dop;
  so.tls = Psk(1);
  dop.tls = Psk(2);
  Ends e = Connect(so, dop);
  ASSERT_TRUE(e.src && e.dst);
  Exchange x = FirstMessage(e);
  ASSERT_FALSE(x.sent.ok());
  ASSERT_FALSE(x.got.ok());
  EXPECT_EQ(x.got.status().code(), absl::StatusCode::kUnauthenticated) << x.got.status();
  EXPECT_THAT(std::string(x.got.status().message()),
              HasSubstr("authentication failed (refused by the destination"));
  EXPECT_EQ(x.sent.code(), absl::StatusCode::kUnauthenticated) << x.sent;
  EXPECT_THAT(std::string(x.sent.message()),
              HasSubstr("authentication failed (refused by the destination"));
}

TEST(Tls, APlainPeerAndATlsPeerRefuseEachOtherSayingWhy) {
  TransportOptions tls;
  tls.tls = Psk(1);
  {
    Ends e = Connect({}, tls);  // plain source, TLS destination
    ASSERT_TRUE(e.src && e.dst);
    Exchange x = FirstMessage(e);
    ASSERT_FALSE(x.got.ok());
    EXPECT_THAT(std::string(x.got.status().message()), HasSubstr("does not speak TLS"));
  }
  {
    Ends e = Connect(tls, {});  // TLS source, plain destination
    ASSERT_TRUE(e.src && e.dst);
    Exchange x = FirstMessage(e);
    ASSERT_FALSE(x.got.ok());
    EXPECT_THAT(std::string(x.got.status().message()),
                HasSubstr("speaks TLS and this side does not"));
    EXPECT_FALSE(x.sent.ok());
  }
}

TEST(Tls, AFlippedByteAfterTheHandshakeFailsTheRecordNotTheGuest) {
  TransportOptions o;
  o.tls = Psk(1);
  std::unique_ptr<Relay> relay;
  // Byte 100000 of the source's stream is inside the page data (the handshake is ~1 KB).
  Ends e = Connect(o, o, &relay, 100000);
  ASSERT_TRUE(e.src && e.dst);
  std::vector<uint8_t> a = MarkedPages(64), b(a.size(), 0);
  auto m = SendPages(e, a, b).got;  // the source's calls may succeed or not: the data is sent
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDataLoss) << m.status();
  // The record with the flipped byte never reached guest memory: everything before it did.
  const size_t first_bad = std::mismatch(a.begin(), a.end(), b.begin()).first - a.begin();
  EXPECT_LT(first_bad, 100000u);
  EXPECT_TRUE(std::all_of(b.begin() + 100000, b.end(), [](uint8_t v) { return v == 0; }));
}

TEST(Tls, AClientThatNeverSpeaksIsDroppedAtTheDeadline) {
  TransportOptions o;
  o.tls = Psk(1);
  o.timeout = absl::Seconds(30);
  const uint16_t port = hostile::Port();
  auto listener = ListenTransport(proto::TransportKind::kTcp, "127.0.0.1", port, o);
  ASSERT_TRUE(listener.ok()) << listener.status();
  const int fd = ConnectTo(port);
  ASSERT_GE(fd, 0);
  auto t = (*listener)->Accept(absl::Now() + absl::Seconds(5));
  ASSERT_TRUE(t.ok()) << t.status();
  (*t)->SetDeadline(absl::Now() + absl::Seconds(1), "the HELLO");
  const absl::Time start = absl::Now();
  auto m = (*t)->Receive();
  ::close(fd);
  ASSERT_FALSE(m.ok());
  EXPECT_EQ(m.status().code(), absl::StatusCode::kDeadlineExceeded) << m.status();
  EXPECT_THAT(std::string(m.status().message()), HasSubstr("TLS handshake"));
  EXPECT_LT(absl::Now() - start, absl::Seconds(3));
}

// Certificates made for the tests with the openssl command: two CAs, and certificates for the
// destination (127.0.0.1, or another address) and the source.
class TlsCertificates : public testing::Test {
 protected:
  static void SetUpTestSuite() {
    dir_ = testing::TempDir() + "/tls-" + std::to_string(::getpid());
    const std::string script =
        "set -e; mkdir -p " + dir_ + "; cd " + dir_ + "\n"
        "ec() { openssl req -newkey ec -pkeyopt ec_paramgen_curve:P-256 -nodes "
        "-keyout $1.key -out $1.csr -subj /CN=$1 2>/dev/null; chmod 600 $1.key; }\n"
        "for ca in ca other-ca; do openssl req -x509 -newkey ec -pkeyopt "
        "ec_paramgen_curve:P-256 -nodes -keyout $ca.key -out $ca.pem -days 2 -subj /CN=$ca "
        "2>/dev/null; done\n"
        "sign() { printf 'subjectAltName=%s\\n' \"$3\" > $1.ext; openssl x509 -req -in $1.csr "
        "-CA $2.pem -CAkey $2.key -CAcreateserial -out $1.pem -days 2 -extfile $1.ext "
        "2>/dev/null; }\n"
        "ec dst; sign dst ca IP:127.0.0.1\n"
        "ec src; sign src ca DNS:source.test\n"
        "ec elsewhere; sign elsewhere ca IP:10.9.9.9\n"
        "ec stranger; sign stranger other-ca DNS:source.test\n";
    ASSERT_EQ(std::system(("sh -c '" + Escape(script) + "'").c_str()), 0) << script;
  }
  static std::string Escape(const std::string& s) {
    std::string out;
    for (char c : s) {
      out += c == '\'' ? std::string("'\\''") : std::string(1, c);
    }
    return out;
  }
  static std::shared_ptr<const TlsConfig> Cert(const std::string& who,
                                               const std::string& ca = "ca") {
    auto c = TlsConfig::WithCertificates(dir_ + "/" + who + ".pem", dir_ + "/" + who + ".key",
                                         dir_ + "/" + ca + ".pem");
    EXPECT_TRUE(c.ok()) << c.status();
    return c.ok() ? *c : nullptr;
  }
  static std::string dir_;
};
std::string TlsCertificates::dir_;

TEST_F(TlsCertificates, MutualCertificatesMovePages) {
  TransportOptions so, dop;
  so.tls = Cert("src");
  dop.tls = Cert("dst");
  Ends e = Connect(so, dop);
  ASSERT_TRUE(e.src && e.dst);
  std::vector<uint8_t> a = MarkedPages(16), b(a.size(), 0);
  ASSERT_NO_FATAL_FAILURE(MovePages(e, a, b));
  EXPECT_THAT(e.dst->stats().security, HasSubstr("TLS 1.3"));
  EXPECT_THAT(e.dst->stats().security, HasSubstr("certificates"));
}

TEST_F(TlsCertificates, ASourceWhoseCertificateOurCaDidNotSignIsRefused) {
  TransportOptions so, dop;
  so.tls = Cert("stranger");  // trusts "ca" (so it accepts the destination), signed by another
  dop.tls = Cert("dst");
  Ends e = Connect(so, dop);
  ASSERT_TRUE(e.src && e.dst);
  Exchange x = FirstMessage(e);
  ASSERT_FALSE(x.got.ok());
  EXPECT_EQ(x.got.status().code(), absl::StatusCode::kUnauthenticated) << x.got.status();
  EXPECT_THAT(std::string(x.got.status().message()),
              HasSubstr("authentication failed (refused by the destination: the certificate of "
                        "source"));
  // TLS 1.3 ends the client's handshake before the server has checked its certificate; the
  // source waits for the destination's word, so the refusal reaches it there, every time, and
  // not as a reset on some later send.
  ASSERT_FALSE(x.sent.ok());
  EXPECT_EQ(x.sent.code(), absl::StatusCode::kUnauthenticated) << x.sent;
  EXPECT_THAT(std::string(x.sent.message()),
              HasSubstr("authentication failed (refused by the destination"));
}

TEST_F(TlsCertificates, ADestinationCertifiedForAnotherAddressIsRefusedByTheSource) {
  TransportOptions so, dop;
  so.tls = Cert("src");
  dop.tls = Cert("elsewhere");  // a valid certificate, for 10.9.9.9, not 127.0.0.1
  Ends e = Connect(so, dop);
  ASSERT_TRUE(e.src && e.dst);
  Exchange x = FirstMessage(e);
  ASSERT_FALSE(x.sent.ok());
  EXPECT_EQ(x.sent.code(), absl::StatusCode::kUnauthenticated) << x.sent;
  EXPECT_THAT(std::string(x.sent.message()),
              HasSubstr("authentication failed (refused by the source: the certificate of "
                        "destination"));
  EXPECT_FALSE(x.got.ok());
}

TEST_F(TlsCertificates, APrivateKeyOthersCanReadIsRefusedNamingItsMode) {
  const std::string key = dir_ + "/src.key";
  ASSERT_EQ(::chmod(key.c_str(), 0644), 0);
  auto c = TlsConfig::WithCertificates(dir_ + "/src.pem", key, dir_ + "/ca.pem");
  ASSERT_EQ(::chmod(key.c_str(), 0600), 0);
  ASSERT_FALSE(c.ok());
  EXPECT_THAT(std::string(c.status().message()),
              HasSubstr("--tls-key " + key + ": mode 0644"));
  auto wrong = TlsConfig::WithCertificates(dir_ + "/src.pem", dir_ + "/dst.key", dir_ + "/ca.pem");
  ASSERT_FALSE(wrong.ok());
  EXPECT_THAT(std::string(wrong.status().message()), HasSubstr("does not match --tls-cert"));
}

// The real `dst` with a key: TLS over TCP is its default, and a source must speak it.
class TlsDestination : public testing::Test {
 protected:
  void SetUp() override {
    key_path_ = testing::TempDir() + "/tls-key-" + std::to_string(::getpid()) + "-" +
                std::to_string(hostile::Port());
    ASSERT_TRUE(crypto::WritePskFile(key_path_).ok());
    auto k = crypto::LoadPskFile(key_path_);
    ASSERT_TRUE(k.ok()) << k.status();
    key_.emplace(std::move(*k));
  }
  void TearDown() override { ::unlink(key_path_.c_str()); }

  // A tiny guest's migration to DST by a source whose key (for TLS and the handshake) is KEY.
  static absl::Status MigrateWithKey(hostile::Dst& dst, const crypto::Psk& key) {
    TransportOptions o;
    auto tls = TlsConfig::WithPsk(key.bytes());
    if (!tls.ok()) {
      return tls.status();
    }
    o.tls = *tls;
    MigrationStats stats;
    return hostile::MigrateTinyGuest(dst.port(), stats, proto::TransportKind::kTcp, "127.0.0.1",
                                     o, &key);
  }
  static bool Resumed(const hostile::Dst& dst) {
    for (int i = 0; i < 600; ++i) {
      if (dst.Stderr().find("dst: guest resumed") != std::string::npos) {
        return true;
      }
      std::this_thread::sleep_for(std::chrono::milliseconds(50));
    }
    return false;
  }
  std::string key_path_;
  std::optional<crypto::Psk> key_;
};

TEST_F(TlsDestination, ASourceWithTheKeyMigratesOverTls) {
  const std::string json = key_path_ + ".json";
  hostile::Dst dst({"--psk-file", key_path_, "--stats-json", json, "--timeout", "20"});
  EXPECT_THAT(dst.Stderr(), HasSubstr("TLS 1.3 (pre-shared key)"));
  absl::Status s = MigrateWithKey(dst, *key_);
  ASSERT_TRUE(s.ok()) << s << "\n" << dst.Stderr();
  // The tiny guest may well end on the source before the pause on a loaded host (then the
  // destination holds it halted): that it resumed there is what counts.
  ASSERT_TRUE(Resumed(dst)) << dst.Stderr();
  EXPECT_THAT(dst.Stderr(), HasSubstr("encryption: TLS 1.3 TLS_AES_256_GCM_SHA384, pre-shared key"));
  std::ifstream f(json);
  std::stringstream ss;
  ss << f.rdbuf();
  EXPECT_THAT(ss.str(), HasSubstr("\"tls\": \"TLS 1.3 TLS_AES_256_GCM_SHA384, pre-shared key"));
  ::unlink(json.c_str());
}

TEST_F(TlsDestination, ASourceWithAnotherKeyIsRefusedByBothAndTheDestinationListensOn) {
  hostile::Dst dst({"--psk-file", key_path_, "--timeout", "3"});
  auto other = crypto::Psk::FromBytes(Key(9));
  ASSERT_TRUE(other.ok());
  absl::Status s = MigrateWithKey(dst, *other);
  ASSERT_FALSE(s.ok());
  EXPECT_THAT(std::string(s.message()), HasSubstr("authentication failed (refused by the "
                                                  "destination"));
  // No valid source within --timeout of the refusal: it exits non-zero, no guest created.
  ASSERT_TRUE(dst.Exited(30000)) << dst.Stderr();
  EXPECT_NE(dst.Wait(0), 0);
  EXPECT_THAT(dst.Stderr(), HasSubstr("authentication failed (refused by the destination"));
  EXPECT_THAT(dst.Stderr(), testing::Not(HasSubstr("dst: guest resumed")));
}

// A stranger without the key that connects first does not take the real source's slot.
TEST_F(TlsDestination, AStrangerWithAnotherKeyDoesNotTakeTheSlotOfTheRealSource) {
  hostile::Dst dst({"--psk-file", key_path_, "--timeout", "10"});
  auto other = crypto::Psk::FromBytes(Key(7));
  ASSERT_TRUE(other.ok());
  absl::Status stranger = MigrateWithKey(dst, *other);
  EXPECT_EQ(stranger.code(), absl::StatusCode::kUnauthenticated) << stranger;
  absl::Status s = MigrateWithKey(dst, *key_);
  ASSERT_TRUE(s.ok()) << s << "\n" << dst.Stderr();
  // The tiny guest may well end on the source before the pause on a loaded host (then the
  // destination holds it halted): that it resumed there is what counts.
  ASSERT_TRUE(Resumed(dst)) << dst.Stderr();
  EXPECT_THAT(dst.Stderr(), HasSubstr("refused a connection"));
  EXPECT_THAT(dst.Stderr(), HasSubstr("dst: guest resumed"));
}

TEST_F(TlsDestination, APlainSourceIsToldTheDestinationSpeaksTls) {
  hostile::Dst dst({"--psk-file", key_path_, "--timeout", "3"});
  MigrationStats stats;
  absl::Status s = hostile::MigrateTinyGuest(dst.port(), stats, proto::TransportKind::kTcp,
                                             "127.0.0.1", {}, &*key_);
  ASSERT_FALSE(s.ok());
  ASSERT_TRUE(dst.Exited(30000)) << dst.Stderr();
  EXPECT_THAT(dst.Stderr(), HasSubstr("does not speak TLS"));
}

}  // namespace
}  // namespace lmig
