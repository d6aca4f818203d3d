// The cryptographic building blocks of authenticated migration (src/crypto): OpenSSL called
// right (RFC known answers), the handshake's proofs, the record layer and the key file.
#include <fcntl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <gmock/gmock.h>
#include <gtest/gtest.h>

#include <openssl/evp.h>

#include <cstdlib>
#include <fstream>
#include <sstream>
#include <string>
#include <vector>

#include "absl/strings/escaping.h"
#include "absl/strings/str_cat.h"
#include "src/crypto/aead.h"
#include "src/crypto/auth.h"
#include "src/crypto/primitives.h"
#include "src/crypto/psk.h"

namespace lmig::crypto {
namespace {

using testing::HasSubstr;

std::vector<uint8_t> Hex(absl::string_view hex) {
  std::string bytes = absl::HexStringToBytes(hex);
  return std::vector<uint8_t>(bytes.begin(), bytes.end());
}

template <typename C>
std::string ToHex(const C& c) {
  return absl::BytesToHexString(
      absl::string_view(reinterpret_cast<const char*>(c.data()), c.size()));
}

std::string Msg(const absl::Status& s) { return std::string(s.message()); }

// --- Known answers: OpenSSL is called the way the RFCs define the functions. ---

TEST(CryptoKat, HmacSha256Rfc4231) {
  // RFC 4231 section 4.2, test case 1.
  auto mac = HmacSha256(std::vector<uint8_t>(20, 0x0b), AsBytes("Hi There"));
  ASSERT_TRUE(mac.ok()) << mac.status();
  EXPECT_EQ(ToHex(*mac), "b0344c61d8db38535ca8afceaf0bf12b881dc200c9833da726e9376c2e32cff7");
  // Test case 2: a key shorter than the block.
  mac = HmacSha256(AsBytes("Jefe"), AsBytes("what do ya want for nothing?"));
  ASSERT_TRUE(mac.ok()) << mac.status();
  EXPECT_EQ(ToHex(*mac), "5bdcc146bf60754e6a042426089575c75a003f089d2739839dec58b964ec3843");
  // Test case 6: a key longer than the block (hashed first).
  mac = HmacSha256(std::vector<uint8_t>(131, 0xaa),
                   AsBytes("Test Using Larger Than Block-Size Key - Hash Key First"));
  ASSERT_TRUE(mac.ok()) << mac.status();
  EXPECT_EQ(ToHex(*mac), "60e431591ee0b67f0d8a26aacbf5b77f8e0bc6213728c5140546040f0ee37f54");
}

TEST(CryptoKat, HkdfSha256Rfc5869) {
  // RFC 5869 appendix A.1, test case 1.
  auto okm = HkdfSha256(std::vector<uint8_t>(22, 0x0b), Hex("000102030405060708090a0b0c"),
                        Hex("f0f1f2f3f4f5f6f7f8f9"), 42);
  ASSERT_TRUE(okm.ok()) << okm.status();
  EXPECT_EQ(ToHex(*okm),
            "3cb25f25faacd57a90434f64d0362f2a2d2d0a90cf1a5a4c5db02d56ecc4c5bf34007208d5b887185865");
  // Test case 3: empty salt and info.
  okm = HkdfSha256(std::vector<uint8_t>(22, 0x0b), {}, {}, 42);
  ASSERT_TRUE(okm.ok()) << okm.status();
  EXPECT_EQ(ToHex(*okm),
            "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d9d201395faa4b61a96c8");
  EXPECT_FALSE(HkdfSha256(std::vector<uint8_t>(22, 0x0b), {}, {}, 0).ok());
  EXPECT_FALSE(HkdfSha256(std::vector<uint8_t>(22, 0x0b), {}, {}, 255 * 32 + 1).ok());
}

TEST(CryptoKat, Sha256Fips180) {
  auto h = Sha256(AsBytes("abc"));
  ASSERT_TRUE(h.ok());
  EXPECT_EQ(ToHex(*h), "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
}

TEST(CryptoKat, ConstantTimeEqual) {
  EXPECT_TRUE(ConstantTimeEqual(Hex("0102"), Hex("0102")));
  EXPECT_FALSE(ConstantTimeEqual(Hex("0102"), Hex("0103")));
  EXPECT_FALSE(ConstantTimeEqual(Hex("0102"), Hex("010200")));
}

// --- The handshake's proofs. ---

Psk TestPsk(uint8_t fill) {
  std::vector<uint8_t> b(32, fill);
  return *Psk::FromBytes(b);
}

struct Handshake {
  Nonce ns;
  Nonce nd;
  Sha256Digest hs;  // hash of the source's hello
  Sha256Digest hd;  // hash of the destination's hello
};

Handshake FreshHandshake() {
  Handshake h;
  h.ns = *NewNonce();
  h.nd = *NewNonce();
  h.hs = *Sha256(AsBytes("source hello"));
  h.hd = *Sha256(AsBytes("destination hello"));
  return h;
}

TEST(CryptoAuth, NoncesAreFreshAndFullLength) {
  auto a = NewNonce();
  auto b = NewNonce();
  ASSERT_TRUE(a.ok() && b.ok());
  EXPECT_NE(*a, *b);
}

TEST(CryptoAuth, ProofVerifiesWithTheRightKeyRoleNoncesAndHello) {
  Psk psk = TestPsk(7);
  Handshake h = FreshHandshake();
  auto ps = Proof(psk, Role::kSource, h.ns, h.nd, h.hs);
  auto pd = Proof(psk, Role::kDestination, h.ns, h.nd, h.hd);
  ASSERT_TRUE(ps.ok() && pd.ok());
  EXPECT_TRUE(VerifyProof(psk, Role::kSource, h.ns, h.nd, h.hs, *ps).ok());
  EXPECT_TRUE(VerifyProof(psk, Role::kDestination, h.ns, h.nd, h.hd, *pd).ok());
  EXPECT_NE(*ps, *pd);
  // Deterministic: the same inputs give the same proof.
  EXPECT_EQ(*Proof(psk, Role::kSource, h.ns, h.nd, h.hs), *ps);
}

TEST(CryptoAuth, ProofFailsWithAnythingWrong) {
  Psk psk = TestPsk(7);
  Psk other = TestPsk(8);
  Handshake h = FreshHandshake();
  ProofBytes ps = *Proof(psk, Role::kSource, h.ns, h.nd, h.hs);

  absl::Status wrong_key = VerifyProof(other, Role::kSource, h.ns, h.nd, h.hs, ps);
  EXPECT_EQ(wrong_key.code(), absl::StatusCode::kUnauthenticated);
  EXPECT_THAT(Msg(wrong_key), HasSubstr("authentication failed: the source's proof"));

  Nonce ns2 = h.ns;
  ns2[31] ^= 1;
  EXPECT_FALSE(VerifyProof(psk, Role::kSource, ns2, h.nd, h.hs, ps).ok());
  Nonce nd2 = h.nd;
  nd2[0] ^= 0x80;
  EXPECT_FALSE(VerifyProof(psk, Role::kSource, h.ns, nd2, h.hs, ps).ok());
  // The nonces swapped (source's as destination's) are different inputs.
  EXPECT_FALSE(VerifyProof(psk, Role::kSource, h.nd, h.ns, h.hs, ps).ok());
  Sha256Digest hs2 = h.hs;
  hs2[5] ^= 4;
  EXPECT_FALSE(VerifyProof(psk, Role::kSource, h.ns, h.nd, hs2, ps).ok());
  // Every bit of the proof matters; a truncated proof is refused.
  for (size_t i = 0; i < ps.size(); ++i) {
    ProofBytes bad = ps;
    bad[i] ^= 1;
    EXPECT_FALSE(VerifyProof(psk, Role::kSource, h.ns, h.nd, h.hs, bad).ok()) << i;
  }
  EXPECT_FALSE(VerifyProof(psk, Role::kSource, h.ns, h.nd, h.hs,
                           std::span<const uint8_t>(ps.data(), 31))
                   .ok());
  EXPECT_FALSE(Proof(psk, Role::kInvalid, h.ns, h.nd, h.hs).ok());
}

TEST(CryptoAuth, ReflectedProofFails) {
  // An attacker posing as the source sends the destination's own proof back as the source's:
  // the role in the MAC tells them apart, even over the same hello bytes.
  Psk psk = TestPsk(7);
  Handshake h = FreshHandshake();
  ProofBytes pd = *Proof(psk, Role::kDestination, h.ns, h.nd, h.hd);
  EXPECT_FALSE(VerifyProof(psk, Role::kSource, h.ns, h.nd, h.hd, pd).ok());
  ProofBytes pd_over_hs = *Proof(psk, Role::kDestination, h.ns, h.nd, h.hs);
  EXPECT_FALSE(VerifyProof(psk, Role::kSource, h.ns, h.nd, h.hs, pd_over_hs).ok());
  // The source's nonce echoed as the destination's is refused outright.
  ProofBytes echo = *Proof(psk, Role::kSource, h.ns, h.ns, h.hs);
  absl::Status st = VerifyProof(psk, Role::kSource, h.ns, h.ns, h.hs, echo);
  EXPECT_THAT(Msg(st), HasSubstr("same nonce"));
}

TEST(CryptoAuth, ReplayedTranscriptWithANewNonceFails) {
  // Issue 13's attack: a recorded HELLO and source proof replayed to a destination that has
  // drawn a fresh nonce.
  Psk psk = TestPsk(7);
  Handshake old = FreshHandshake();
  ProofBytes recorded = *Proof(psk, Role::kSource, old.ns, old.nd, old.hs);
  Nonce fresh_nd = *NewNonce();
  EXPECT_FALSE(VerifyProof(psk, Role::kSource, old.ns, fresh_nd, old.hs, recorded).ok());
  // And a recorded destination reply replayed to a source with a fresh nonce.
  ProofBytes recorded_d = *Proof(psk, Role::kDestination, old.ns, old.nd, old.hd);
  Nonce fresh_ns = *NewNonce();
  EXPECT_FALSE(VerifyProof(psk, Role::kDestination, fresh_ns, old.nd, old.hd, recorded_d).ok());
}

TEST(CryptoAuth, SessionKeysAreDirectionalAndFreshPerSession) {
  Psk psk = TestPsk(7);
  Handshake h = FreshHandshake();
  Sha256Digest th = *TranscriptHash(h.hs, h.hd);
  auto k1 = DeriveSessionKeys(psk, h.ns, h.nd, th);
  auto k1again = DeriveSessionKeys(psk, h.ns, h.nd, th);
  ASSERT_TRUE(k1.ok() && k1again.ok());
  auto eq = [](const AeadKey& a, const AeadKey& b) {
    return std::equal(a.bytes().begin(), a.bytes().end(), b.bytes().begin());
  };
  EXPECT_TRUE(eq(k1->source_to_destination, k1again->source_to_destination));
  EXPECT_TRUE(eq(k1->destination_to_source, k1again->destination_to_source));
  EXPECT_FALSE(eq(k1->source_to_destination, k1->destination_to_source));
  Nonce nd2 = *NewNonce();
  auto k2 = DeriveSessionKeys(psk, h.ns, nd2, th);
  EXPECT_FALSE(eq(k1->source_to_destination, k2->source_to_destination));
  auto k3 = DeriveSessionKeys(psk, h.ns, h.nd, *TranscriptHash(h.hd, h.hs));
  EXPECT_FALSE(eq(k1->source_to_destination, k3->source_to_destination));
  auto k4 = DeriveSessionKeys(TestPsk(8), h.ns, h.nd, th);
  EXPECT_FALSE(eq(k1->destination_to_source, k4->destination_to_source));
  // The session keys are not the proof keys: a proof reveals nothing usable as a record key.
  ProofBytes ps = *Proof(psk, Role::kSource, h.ns, h.nd, h.hs);
  EXPECT_FALSE(std::equal(ps.begin(), ps.end(), k1->source_to_destination.bytes().begin()));
}

TEST(CryptoAuth, SecretsDoNotFormatAsTheirBytes) {
  Psk psk = TestPsk('A');
  std::ostringstream os;
  os << psk;
  EXPECT_EQ(os.str(), "Psk(32 bytes, redacted)");
  AeadKey k = *AeadKey::FromBytes(std::vector<uint8_t>(32, 'A'));
  std::ostringstream ok;
  ok << k;
  EXPECT_EQ(ok.str(), "AeadKey(redacted)");
}

// --- The record layer. ---

struct Channel {
  RecordSealer sealer;
  RecordOpener opener;
};

Channel MakeChannel(Direction dir, uint64_t first = 0) {
  AeadKey key = *AeadKey::FromBytes(std::vector<uint8_t>(32, 0x5a));
  return Channel{*RecordSealer::Create(key, dir, first), *RecordOpener::Create(key, dir, first)};
}

TEST(CryptoAead, RoundTrip) {
  Channel c = MakeChannel(Direction::kSourceToDestination);
  for (size_t len : {size_t{0}, size_t{1}, size_t{15}, size_t{16}, size_t{4096}, size_t{70000}}) {
    std::vector<uint8_t> pt(len);
    for (size_t i = 0; i < len; ++i) {
      pt[i] = static_cast<uint8_t>(i * 7 + len);
    }
    auto rec = c.sealer.Seal(AsBytes("hdr"), pt);
    ASSERT_TRUE(rec.ok()) << rec.status();
    EXPECT_EQ(rec->size(), len + kAeadTagBytes);
    if (len >= 16) {
      EXPECT_FALSE(std::equal(pt.begin(), pt.begin() + 16, rec->begin()));  // encrypted
    }
    auto back = c.opener.Open(AsBytes("hdr"), *rec);
    ASSERT_TRUE(back.ok()) << back.status();
    EXPECT_EQ(*back, pt);
  }
  EXPECT_EQ(c.sealer.next_record(), 6u);
  EXPECT_EQ(c.opener.next_record(), 6u);
}

TEST(CryptoAead, SameMessageSealsDifferentlyEachRecord) {
  Channel c = MakeChannel(Direction::kSourceToDestination);
  auto a = c.sealer.Seal({}, AsBytes("END_ROUND 1"));
  auto b = c.sealer.Seal({}, AsBytes("END_ROUND 1"));
  EXPECT_NE(*a, *b);
}

TEST(CryptoAead, NonceIsDirectionThenCounterBigEndian) {
  // The documented layout: record 1 of source->destination opens with a plain EVP decrypt
  // under nonce 53324431 || 0000000000000001.
  EXPECT_EQ(ToHex(RecordNonce(Direction::kSourceToDestination, 1)), "533244310000000000000001");
  EXPECT_EQ(ToHex(RecordNonce(Direction::kDestinationToSource, 0x0102030405060708)),
            "443253310102030405060708");
  std::vector<uint8_t> key(32, 0x5a);
  Channel c = MakeChannel(Direction::kSourceToDestination);
  ASSERT_TRUE(c.sealer.Seal({}, AsBytes("zero")).ok());
  std::vector<uint8_t> rec = *c.sealer.Seal(AsBytes("aad"), AsBytes("record one"));
  auto nonce = RecordNonce(Direction::kSourceToDestination, 1);
  EVP_CIPHER_CTX* ctx = EVP_CIPHER_CTX_new();
  std::vector<uint8_t> out(rec.size() - kAeadTagBytes);
  int len = 0;
  int fin = 0;
  ASSERT_EQ(EVP_DecryptInit_ex(ctx, EVP_aes_256_gcm(), nullptr, key.data(), nonce.data()), 1);
  ASSERT_EQ(EVP_DecryptUpdate(ctx, nullptr, &len, reinterpret_cast<const uint8_t*>("aad"), 3), 1);
  ASSERT_EQ(EVP_DecryptUpdate(ctx, out.data(), &len, rec.data(), static_cast<int>(out.size())),
            1);
  ASSERT_EQ(EVP_CIPHER_CTX_ctrl(ctx, EVP_CTRL_GCM_SET_TAG, 16, rec.data() + out.size()), 1);
  EXPECT_EQ(EVP_DecryptFinal_ex(ctx, out.data() + len, &fin), 1);
  EVP_CIPHER_CTX_free(ctx);
  EXPECT_EQ(std::string(out.begin(), out.end()), "record one");
}

TEST(CryptoAead, TamperingWithAnyByteOrTheAadFails) {
  const std::vector<uint8_t> pt = Hex("00112233445566778899aabbccddeeff0102030405");
  std::vector<uint8_t> rec;
  {
    Channel c = MakeChannel(Direction::kSourceToDestination);
    rec = *c.sealer.Seal(AsBytes("header"), pt);
  }
  for (size_t i = 0; i < rec.size(); ++i) {
    Channel c = MakeChannel(Direction::kSourceToDestination);
    std::vector<uint8_t> bad = rec;
    bad[i] ^= 0x01;
    auto r = c.opener.Open(AsBytes("header"), bad);
    ASSERT_FALSE(r.ok()) << "byte " << i;
    EXPECT_EQ(r.status().code(), absl::StatusCode::kUnauthenticated);
    EXPECT_THAT(Msg(r.status()), HasSubstr("control message authentication failed (record 0"));
  }
  {
    Channel c = MakeChannel(Direction::kSourceToDestination);
    EXPECT_FALSE(c.opener.Open(AsBytes("headeR"), rec).ok());
  }
  {
    Channel c = MakeChannel(Direction::kSourceToDestination);
    EXPECT_FALSE(c.opener.Open({}, rec).ok());
  }
  {
    Channel c = MakeChannel(Direction::kSourceToDestination);
    std::vector<uint8_t> shorter(rec.begin(), rec.end() - 1);
    EXPECT_FALSE(c.opener.Open(AsBytes("header"), shorter).ok());
  }
  {
    Channel c = MakeChannel(Direction::kSourceToDestination);
    auto r = c.opener.Open({}, Hex("0011"));
    EXPECT_THAT(Msg(r.status()), HasSubstr("shorter than the 16-byte tag"));
  }
  {
    // The right record still opens: the failures above came from the tampering.
    Channel c = MakeChannel(Direction::kSourceToDestination);
    EXPECT_TRUE(c.opener.Open(AsBytes("header"), rec).ok());
  }
}

TEST(CryptoAead, WrongKeyOrReflectedDirectionFails) {
  AeadKey k1 = *AeadKey::FromBytes(std::vector<uint8_t>(32, 1));
  AeadKey k2 = *AeadKey::FromBytes(std::vector<uint8_t>(32, 2));
  RecordSealer s = *RecordSealer::Create(k1, Direction::kSourceToDestination);
  auto rec = *s.Seal({}, AsBytes("DEVICE_STATE"));
  RecordOpener wrong_key = *RecordOpener::Create(k2, Direction::kSourceToDestination);
  EXPECT_FALSE(wrong_key.Open({}, rec).ok());
  // Even under the same key, a record sent back the other way is refused (nonce prefix).
  RecordOpener reflected = *RecordOpener::Create(k1, Direction::kDestinationToSource);
  EXPECT_FALSE(reflected.Open({}, rec).ok());
  EXPECT_FALSE(RecordSealer::Create(k1, Direction::kInvalid).ok());
  EXPECT_FALSE(RecordOpener::Create(k1, static_cast<Direction>(7)).ok());
}

TEST(CryptoAead, ReplayReorderAndDropFail) {
  Channel c = MakeChannel(Direction::kDestinationToSource);
  std::vector<std::vector<uint8_t>> recs;
  for (int i = 0; i < 4; ++i) {
    recs.push_back(*c.sealer.Seal({}, AsBytes(absl::StrCat("message ", i))));
  }
  ASSERT_TRUE(c.opener.Open({}, recs[0]).ok());
  // Replay of record 0 where record 1 is expected.
  auto replay = c.opener.Open({}, recs[0]);
  EXPECT_THAT(Msg(replay.status()), HasSubstr("authentication failed (record 1"));
  // The channel stays closed: even the right next record is refused now.
  auto after = c.opener.Open({}, recs[1]);
  EXPECT_THAT(Msg(after.status()), HasSubstr("after an authentication failure at record 1"));

  Channel r = MakeChannel(Direction::kDestinationToSource);
  std::vector<std::vector<uint8_t>> recs2;
  for (int i = 0; i < 3; ++i) {
    recs2.push_back(*r.sealer.Seal({}, AsBytes(absl::StrCat("message ", i))));
  }
  EXPECT_FALSE(r.opener.Open({}, recs2[1]).ok());  // reordered (or record 0 dropped)

  Channel d = MakeChannel(Direction::kDestinationToSource);
  auto r0 = *d.sealer.Seal({}, AsBytes("a"));
  auto r1 = *d.sealer.Seal({}, AsBytes("b"));
  auto r2 = *d.sealer.Seal({}, AsBytes("c"));
  ASSERT_TRUE(d.opener.Open({}, r0).ok());
  EXPECT_FALSE(d.opener.Open({}, r2).ok());  // record 1 dropped
}

TEST(CryptoAead, CounterExhaustionIsRefused) {
  Channel c = MakeChannel(Direction::kSourceToDestination, kAeadMaxRecords - 2);
  auto a = c.sealer.Seal({}, AsBytes("second to last"));
  auto b = c.sealer.Seal({}, AsBytes("last"));
  ASSERT_TRUE(a.ok() && b.ok());
  auto none = c.sealer.Seal({}, AsBytes("one too many"));
  EXPECT_EQ(none.status().code(), absl::StatusCode::kResourceExhausted);
  EXPECT_THAT(Msg(none.status()), HasSubstr("record limit"));
  EXPECT_TRUE(c.opener.Open({}, *a).ok());
  EXPECT_TRUE(c.opener.Open({}, *b).ok());
  auto past = c.opener.Open({}, *b);
  EXPECT_EQ(past.status().code(), absl::StatusCode::kResourceExhausted);
}

TEST(CryptoAead, MovedSealerKeepsItsCounter) {
  Channel c = MakeChannel(Direction::kSourceToDestination);
  auto r0 = *c.sealer.Seal({}, AsBytes("x"));
  RecordSealer moved = std::move(c.sealer);
  auto r1 = *moved.Seal({}, AsBytes("y"));
  RecordOpener opener = std::move(c.opener);
  EXPECT_TRUE(opener.Open({}, r0).ok());
  EXPECT_TRUE(opener.Open({}, r1).ok());
}

// --- The key file. ---

class CryptoPskFile : public testing::Test {
 protected:
  void SetUp() override {
    char tmpl[] = "/tmp/lmig-crypto-test-XXXXXX";
    ASSERT_NE(::mkdtemp(tmpl), nullptr);
    dir_ = tmpl;
  }
  void TearDown() override {
    std::string cmd = "rm -rf '" + dir_ + "'";
    ASSERT_EQ(std::system(cmd.c_str()), 0);
  }
  std::string Write(const std::string& name, const std::string& bytes, mode_t mode) {
    std::string p = dir_ + "/" + name;
    {
      std::ofstream f(p, std::ios::binary);
      f << bytes;
    }
    EXPECT_EQ(::chmod(p.c_str(), mode), 0);
    return p;
  }
  std::string dir_;
};

TEST_F(CryptoPskFile, LoadsAPrivateFile) {
  std::string key(48, 'k');
  auto psk = LoadPskFile(Write("k", key, 0600));
  ASSERT_TRUE(psk.ok()) << psk.status();
  EXPECT_EQ(psk->size(), 48u);
  EXPECT_EQ(std::string(psk->bytes().begin(), psk->bytes().end()), key);
  EXPECT_TRUE(LoadPskFile(Write("ro", key, 0400)).ok());
}

TEST_F(CryptoPskFile, RefusesAFileOthersCanRead) {
  std::string p = Write("k", std::string(32, 'k'), 0644);
  auto psk = LoadPskFile(p);
  ASSERT_FALSE(psk.ok());
  EXPECT_EQ(Msg(psk.status()),
            "--psk-file " + p +
                ": mode 0644, must not be readable or writable by group or others (chmod 600)");
  EXPECT_THAT(Msg(LoadPskFile(Write("g", std::string(32, 'k'), 0640)).status()),
              HasSubstr("mode 0640"));
  EXPECT_THAT(Msg(LoadPskFile(Write("w", std::string(32, 'k'), 0602)).status()),
              HasSubstr("mode 0602"));
}

TEST_F(CryptoPskFile, RefusesShortHugeMissingAndNonRegularFiles) {
  std::string p = Write("short", std::string(31, 'k'), 0600);
  EXPECT_THAT(Msg(LoadPskFile(p).status()),
              HasSubstr("--psk-file " + p + ": 31 bytes, a key must be 32..4096 bytes"));
  EXPECT_THAT(Msg(LoadPskFile(Write("empty", "", 0600)).status()), HasSubstr(": 0 bytes"));
  EXPECT_THAT(Msg(LoadPskFile(Write("huge", std::string(4097, 'k'), 0600)).status()),
              HasSubstr("more than 4096 bytes"));
  absl::Status missing = LoadPskFile(dir_ + "/nope").status();
  EXPECT_THAT(Msg(missing), HasSubstr(dir_ + "/nope"));
  EXPECT_THAT(Msg(missing), HasSubstr("No such file"));
  EXPECT_THAT(Msg(LoadPskFile(dir_).status()), HasSubstr("not a regular file"));
  std::string fifo = dir_ + "/fifo";
  ASSERT_EQ(::mkfifo(fifo.c_str(), 0600), 0);
  EXPECT_THAT(Msg(LoadPskFile(fifo).status()), HasSubstr("not a regular file"));  // no hang
}

TEST_F(CryptoPskFile, WrittenKeyIs0600And32RandomBytesAndNeverOverwritten) {
  std::string p = dir_ + "/new.key";
  mode_t old_umask = ::umask(0);  // even a permissive umask gives 0600
  absl::Status st = WritePskFile(p);
  ::umask(old_umask);
  ASSERT_TRUE(st.ok()) << st;
  struct stat sb;
  ASSERT_EQ(::stat(p.c_str(), &sb), 0);
  EXPECT_EQ(sb.st_mode & 07777, 0600u);
  EXPECT_EQ(sb.st_size, 32);
  auto psk = LoadPskFile(p);
  ASSERT_TRUE(psk.ok()) << psk.status();
  std::vector<uint8_t> first(psk->bytes().begin(), psk->bytes().end());

  absl::Status again = WritePskFile(p);
  EXPECT_EQ(again.code(), absl::StatusCode::kAlreadyExists);
  EXPECT_THAT(Msg(again), HasSubstr("key file " + p + ": already exists"));
  auto still = LoadPskFile(p);
  EXPECT_TRUE(std::equal(first.begin(), first.end(), still->bytes().begin()));

  // A second key differs; a symlink (even dangling) is not followed.
  std::string p2 = dir_ + "/other.key";
  ASSERT_TRUE(WritePskFile(p2).ok());
  EXPECT_FALSE(std::equal(first.begin(), first.end(), LoadPskFile(p2)->bytes().begin()));
  std::string link = dir_ + "/link.key";
  ASSERT_EQ(::symlink((dir_ + "/target").c_str(), link.c_str()), 0);
  EXPECT_FALSE(WritePskFile(link).ok());
  EXPECT_NE(::access((dir_ + "/target").c_str(), F_OK), 0);
  EXPECT_THAT(Msg(WritePskFile(dir_ + "/no/such/dir/k")), HasSubstr("No such file"));
}

TEST(CryptoPsk, FromBytesChecksTheLength) {
  EXPECT_FALSE(Psk::FromBytes(std::vector<uint8_t>(31, 1)).ok());
  EXPECT_TRUE(Psk::FromBytes(std::vector<uint8_t>(32, 1)).ok());
  Psk a = TestPsk(3);
  Psk b = std::move(a);
  EXPECT_EQ(b.size(), 32u);
  EXPECT_EQ(a.size(), 0u);  // NOLINT(bugprone-use-after-move): moved-from is empty
}

}  // namespace
}  // namespace lmig::crypto
