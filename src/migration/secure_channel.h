// The authenticated, encrypted control channel of a migration with a pre-shared key: the
// mutual challenge-response of src/crypto/auth.h carried by HELLO / AUTH_CHALLENGE / AUTH_PROOF
// (include/lmig/protocol.h), then a Transport decorator that seals every control message as an
// AES-256-GCM record (AAD: type and arg; the record counter is implicit, so a dropped, replayed
// or reordered message fails). Guest memory is not sealed here: over RDMA it lands by one-sided
// WRITE, over TCP it travels as PAGES frames (README, "Security": what that leaves open).
#pragma once

#include <memory>
#include <span>

#include "absl/status/statusor.h"
#include "include/lmig/protocol.h"
#include "include/lmig/transport.h"
#include "src/crypto/aead.h"
#include "src/crypto/auth.h"
#include "src/crypto/psk.h"

namespace lmig {

// Seals what it sends and opens what it receives on INNER (not owned); memory, data path and
// deadlines are INNER's. A record that fails to open ends the channel (kUnauthenticated).
class SealedTransport : public Transport {
 public:
  SealedTransport(Transport* inner, crypto::RecordSealer sealer, crypto::RecordOpener opener)
      : inner_(inner), sealer_(std::move(sealer)), opener_(std::move(opener)) {}

  proto::TransportKind kind() const override { return inner_->kind(); }
  const std::string& peer() const override { return inner_->peer(); }
  absl::Status Send(proto::MsgType type, uint64_t arg, std::span<const uint8_t> payload) override;
  absl::StatusOr<proto::Message> Receive() override;
  void SetDeadline(absl::Time deadline, std::string what) override {
    inner_->SetDeadline(deadline, std::move(what));
  }
  void AllowIncomingPages(bool allow) override { inner_->AllowIncomingPages(allow); }
  absl::StatusOr<std::vector<uint8_t>> AttachMemory(uint8_t* base, uint64_t size) override {
    return inner_->AttachMemory(base, size);
  }
  absl::Status SetPeerMemory(std::span<const uint8_t> blob) override {
    return inner_->SetPeerMemory(blob);
  }
  absl::Status Write(std::span<const RamRange> ranges) override { return inner_->Write(ranges); }
  absl::Status Flush() override { return inner_->Flush(); }
  void RevokeRemoteAccess() override { inner_->RevokeRemoteAccess(); }
  void Shutdown() override { inner_->Shutdown(); }
  TransportStats stats() const override { return inner_->stats(); }

 private:
  Transport* inner_;
  crypto::RecordSealer sealer_;
  crypto::RecordOpener opener_;
};

// Source side, after sending HELLO_PAYLOAD (which carries NONCE_SRC) on T: takes the
// destination's AUTH_CHALLENGE, checks its proof, answers with AUTH_PROOF and returns the
// sealed channel over T. Errors: kUnauthenticated "authentication failed (refused by the
// source: ...)" when the destination does not prove the key; the destination's refusal (an
// ABORT or a failed HELLO_ACK); anything out of order.
absl::StatusOr<std::unique_ptr<Transport>> AuthenticateAsSource(
    Transport* t, const crypto::Psk& psk, const crypto::Nonce& nonce_src,
    std::span<const uint8_t> hello_payload);

// Destination side, for a HELLO (HELLO_PAYLOAD, carrying the source's nonce) that passed its
// checks: sends AUTH_CHALLENGE, takes AUTH_PROOF, checks it and returns the sealed channel.
// Errors: kUnauthenticated "authentication failed (refused by the destination: ...)".
absl::StatusOr<std::unique_ptr<Transport>> AuthenticateAsDestination(
    Transport* t, const crypto::Psk& psk, std::span<const uint8_t> hello_payload);

}  // namespace lmig
