#include "src/crypto/auth.h"

#include <string>
#include <vector>

#include "absl/strings/str_cat.h"
#include "absl/strings/string_view.h"
#include "include/lmig/status.h"

namespace lmig::crypto {
namespace {

// Every label ends in NUL inside the hashed data, so no label is a prefix of another's input.
constexpr absl::string_view kProofLabel{"lmig-rdma auth v1 proof\0", 24};
constexpr absl::string_view kTranscriptLabel{"lmig-rdma auth v1 transcript\0", 29};

bool ValidRole(Role role) { return role == Role::kSource || role == Role::kDestination; }

absl::StatusOr<std::vector<uint8_t>> ProofKey(const Psk& psk, Role role) {
  const std::string info = absl::StrCat("lmig-rdma auth v1 proof key ", RoleName(role));
  return HkdfSha256(psk.bytes(), {}, AsBytes(info), kSha256Bytes);
}

}  // namespace

const char* RoleName(Role role) {
  switch (role) {
    case Role::kSource:
      return "source";
    case Role::kDestination:
      return "destination";
    case Role::kInvalid:
      break;
  }
  return "invalid role";
}

absl::StatusOr<Nonce> NewNonce() {
  Nonce n;
  RETURN_IF_ERROR(RandomBytes(n));
  return n;
}

absl::StatusOr<ProofBytes> Proof(const Psk& psk, Role role, const Nonce& nonce_src,
                                 const Nonce& nonce_dst, const Sha256Digest& hello_hash) {
  if (!ValidRole(role)) {
    return absl::InvalidArgumentError(
        absl::StrCat("authentication proof for role ", static_cast<int>(role)));
  }
  ASSIGN_OR_RETURN(std::vector<uint8_t> key, ProofKey(psk, role));
  std::vector<uint8_t> msg;
  msg.reserve(kProofLabel.size() + 1 + 2 * kNonceBytes + kSha256Bytes);
  msg.insert(msg.end(), kProofLabel.begin(), kProofLabel.end());
  msg.push_back(static_cast<uint8_t>(role));
  msg.insert(msg.end(), nonce_src.begin(), nonce_src.end());
  msg.insert(msg.end(), nonce_dst.begin(), nonce_dst.end());
  msg.insert(msg.end(), hello_hash.begin(), hello_hash.end());
  absl::StatusOr<Sha256Digest> mac = HmacSha256(key, msg);
  Wipe(key);
  if (!mac.ok()) {
    return mac.status();
  }
  return *mac;
}

absl::Status VerifyProof(const Psk& psk, Role role, const Nonce& nonce_src,
                         const Nonce& nonce_dst, const Sha256Digest& hello_hash,
                         std::span<const uint8_t> proof) {
  const std::string who = absl::StrCat("authentication failed: the ", RoleName(role), "'s proof");
  if (nonce_src == nonce_dst) {
    return absl::UnauthenticatedError(
        absl::StrCat(who, " uses the same nonce for both sides (a reflected handshake)"));
  }
  if (proof.size() != kProofBytes) {
    return absl::UnauthenticatedError(
        absl::StrCat(who, " is ", proof.size(), " bytes, not ", kProofBytes));
  }
  ASSIGN_OR_RETURN(ProofBytes expected, Proof(psk, role, nonce_src, nonce_dst, hello_hash));
  const bool equal = ConstantTimeEqual(expected, proof);
  Wipe(expected);
  if (!equal) {
    return absl::UnauthenticatedError(absl::StrCat(
        who, " does not match (a different key, or a replayed or altered handshake)"));
  }
  return absl::OkStatus();
}

absl::StatusOr<Sha256Digest> TranscriptHash(const Sha256Digest& hello_hash_src,
                                            const Sha256Digest& hello_hash_dst) {
  std::vector<uint8_t> msg(kTranscriptLabel.begin(), kTranscriptLabel.end());
  msg.insert(msg.end(), hello_hash_src.begin(), hello_hash_src.end());
  msg.insert(msg.end(), hello_hash_dst.begin(), hello_hash_dst.end());
  return Sha256(msg);
}

absl::StatusOr<SessionKeys> DeriveSessionKeys(const Psk& psk, const Nonce& nonce_src,
                                              const Nonce& nonce_dst,
                                              const Sha256Digest& transcript_hash) {
  std::vector<uint8_t> salt(nonce_src.begin(), nonce_src.end());
  salt.insert(salt.end(), nonce_dst.begin(), nonce_dst.end());
  auto derive = [&](absl::string_view direction) -> absl::StatusOr<AeadKey> {
    std::vector<uint8_t> info;
    const std::string label = absl::StrCat("lmig-rdma auth v1 session key ", direction);
    info.insert(info.end(), label.begin(), label.end());
    info.push_back(0);
    info.insert(info.end(), transcript_hash.begin(), transcript_hash.end());
    ASSIGN_OR_RETURN(std::vector<uint8_t> okm, HkdfSha256(psk.bytes(), salt, info, kAeadKeyBytes));
    absl::StatusOr<AeadKey> key = AeadKey::FromBytes(okm);
    Wipe(okm);
    return key;
  };
  ASSIGN_OR_RETURN(AeadKey s2d, derive("source to destination"));
  ASSIGN_OR_RETURN(AeadKey d2s, derive("destination to source"));
  return SessionKeys{std::move(s2d), std::move(d2s)};
}

}  // namespace lmig::crypto
