#include "src/migration/secure_channel.h"

#include <cstring>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/crypto/primitives.h"

namespace lmig {
namespace {

using proto::MsgType;

// The AAD of a record: its message type and arg, so neither can be changed or swapped.
std::array<uint8_t, 10> Aad(MsgType type, uint64_t arg) {
  std::array<uint8_t, 10> a{};
  const uint16_t t = static_cast<uint16_t>(type);
  std::memcpy(a.data(), &t, 2);
  std::memcpy(a.data() + 2, &arg, 8);
  return a;
}

crypto::Nonce NonceOf(const uint8_t (&b)[32]) {
  crypto::Nonce n;
  std::memcpy(n.data(), b, n.size());
  return n;
}

// Both sides: the sealed channel once both proofs verified.
absl::StatusOr<std::unique_ptr<Transport>> Seal(Transport* t, const crypto::Psk& psk,
                                                crypto::Role role, const crypto::Nonce& ns,
                                                const crypto::Nonce& nd,
                                                const crypto::Sha256Digest& hs,
                                                const crypto::Sha256Digest& hd) {
  ASSIGN_OR_RETURN(crypto::Sha256Digest transcript, crypto::TranscriptHash(hs, hd));
  ASSIGN_OR_RETURN(crypto::SessionKeys keys, crypto::DeriveSessionKeys(psk, ns, nd, transcript));
  const bool src = role == crypto::Role::kSource;
  ASSIGN_OR_RETURN(crypto::RecordSealer sealer,
                   crypto::RecordSealer::Create(
                       src ? keys.source_to_destination : keys.destination_to_source,
                       src ? crypto::Direction::kSourceToDestination
                           : crypto::Direction::kDestinationToSource));
  ASSIGN_OR_RETURN(crypto::RecordOpener opener,
                   crypto::RecordOpener::Create(
                       src ? keys.destination_to_source : keys.source_to_destination,
                       src ? crypto::Direction::kDestinationToSource
                           : crypto::Direction::kSourceToDestination));
  return std::unique_ptr<Transport>(
      new SealedTransport(t, std::move(sealer), std::move(opener)));
}

}  // namespace

absl::Status SealedTransport::Send(MsgType type, uint64_t arg, std::span<const uint8_t> payload) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> record, sealer_.Seal(Aad(type, arg), payload));
  return inner_->Send(type, arg, record);
}

absl::StatusOr<proto::Message> SealedTransport::Receive() {
  ASSIGN_OR_RETURN(proto::Message m, inner_->Receive());
  auto plain = opener_.Open(Aad(m.type, m.arg), m.payload);
  if (!plain.ok()) {
    return Annotate(plain.status(), absl::StrFormat("%s from %s", proto::MsgTypeName(m.type),
                                                    inner_->peer()));
  }
  m.payload = std::move(*plain);
  return m;
}

absl::StatusOr<std::unique_ptr<Transport>> AuthenticateAsSource(
    Transport* t, const crypto::Psk& psk, const crypto::Nonce& nonce_src,
    std::span<const uint8_t> hello_payload) {
  ASSIGN_OR_RETURN(proto::Message m, t->Receive());
  if (m.type == MsgType::kAbort || m.type == MsgType::kHelloAck) {
    // The destination refused before authenticating (limits, auth mode): a plain status.
    ASSIGN_OR_RETURN(auto st, proto::Parse<proto::StatusMsg>(m.payload, m.type, true));
    absl::Status s = proto::StatusFromMsg(st);
    return Annotate(s.ok() ? absl::UnauthenticatedError(
                                 "authentication failed (refused by the source): the "
                                 "destination skipped authentication")
                           : s,
                    "the destination refused the migration");
  }
  if (m.type != MsgType::kAuthChallenge) {
    return absl::DataLossError(absl::StrFormat("handshake: expected AUTH_CHALLENGE, got %s",
                                               proto::MsgTypeName(m.type)));
  }
  ASSIGN_OR_RETURN(proto::AuthChallenge c, proto::Parse<proto::AuthChallenge>(m.payload, m.type));
  const crypto::Nonce nd = NonceOf(c.nonce);
  ASSIGN_OR_RETURN(crypto::Sha256Digest hd, crypto::Sha256(nd));
  absl::Status v = crypto::VerifyProof(psk, crypto::Role::kDestination, nonce_src, nd, hd,
                                       std::span<const uint8_t>(c.proof, sizeof(c.proof)));
  if (!v.ok()) {
    return absl::UnauthenticatedError(absl::StrFormat(
        "authentication failed (refused by the source): %s does not hold the key "
        "(--psk-file)", t->peer()));
  }
  ASSIGN_OR_RETURN(crypto::Sha256Digest hs, crypto::Sha256(hello_payload));
  ASSIGN_OR_RETURN(crypto::ProofBytes ps,
                   crypto::Proof(psk, crypto::Role::kSource, nonce_src, nd, hs));
  proto::AuthProof p{};
  std::memcpy(p.proof, ps.data(), sizeof(p.proof));
  RETURN_IF_ERROR(t->Send(MsgType::kAuthProof, 0, proto::Bytes(p)));
  return Seal(t, psk, crypto::Role::kSource, nonce_src, nd, hs, hd);
}

absl::StatusOr<std::unique_ptr<Transport>> AuthenticateAsDestination(
    Transport* t, const crypto::Psk& psk, std::span<const uint8_t> hello_payload) {
  ASSIGN_OR_RETURN(proto::Hello h, proto::Parse<proto::Hello>(hello_payload, MsgType::kHello));
  const crypto::Nonce ns = NonceOf(h.nonce);
  ASSIGN_OR_RETURN(crypto::Nonce nd, crypto::NewNonce());
  ASSIGN_OR_RETURN(crypto::Sha256Digest hd, crypto::Sha256(nd));
  ASSIGN_OR_RETURN(crypto::ProofBytes pd,
                   crypto::Proof(psk, crypto::Role::kDestination, ns, nd, hd));
  proto::AuthChallenge c{};
  std::memcpy(c.nonce, nd.data(), sizeof(c.nonce));
  std::memcpy(c.proof, pd.data(), sizeof(c.proof));
  RETURN_IF_ERROR(t->Send(MsgType::kAuthChallenge, 0, proto::Bytes(c)));
  ASSIGN_OR_RETURN(proto::Message m, t->Receive());
  if (m.type == MsgType::kAbort) {
    return Annotate(proto::AbortReason(m), "the source aborted the handshake");
  }
  if (m.type != MsgType::kAuthProof) {
    return absl::DataLossError(absl::StrFormat("handshake: expected AUTH_PROOF, got %s",
                                               proto::MsgTypeName(m.type)));
  }
  ASSIGN_OR_RETURN(proto::AuthProof p, proto::Parse<proto::AuthProof>(m.payload, m.type));
  ASSIGN_OR_RETURN(crypto::Sha256Digest hs, crypto::Sha256(hello_payload));
  absl::Status v = crypto::VerifyProof(psk, crypto::Role::kSource, ns, nd, hs,
                                       std::span<const uint8_t>(p.proof, sizeof(p.proof)));
  if (!v.ok()) {
    return absl::UnauthenticatedError(absl::StrFormat(
        "authentication failed (refused by the destination): %s does not hold the key "
        "(--psk-file)", t->peer()));
  }
  return Seal(t, psk, crypto::Role::kDestination, ns, nd, hs, hd);
}

}  // namespace lmig
