// Mutual challenge-response authentication of the two migration peers with the pre-shared key
// (psk.h), and the session keys for the record layer (aead.h). Pure functions over OpenSSL
// (HKDF-SHA256, HMAC-SHA256, CRYPTO_memcmp); the handshake messages that carry the values are
// the wire protocol's (include/lmig/protocol.h).
//
// How the handshake uses it (S = source, D = destination; ns, nd = 32-byte nonces):
//
//   1. S: ns = NewNonce().  S -> D  HELLO carrying ns.   hs = Sha256(HELLO as sent: all its
//      bytes on the wire, frame header included).
//   2. D: nd = NewNonce().  D -> S  D's hello (HELLO_ACK without region table or rkeys) carrying
//      nd and, after the bytes it hashes, pd = Proof(psk, kDestination, ns, nd, hd), where hd =
//      Sha256 of that message's bytes without pd. D discloses nothing else yet.
//   3. S: VerifyProof(psk, kDestination, ns, nd, hd', pd), hd' computed from the bytes S
//      received. Failure: S prints "authentication failed (refused by the source: the
//      destination does not hold the key)", keeps its guest, sends ABORT at most.
//   4. S -> D  AUTH carrying ps = Proof(psk, kSource, ns, nd, hs').
//   5. D: VerifyProof(psk, kSource, ns, nd, hs, ps). Failure: D says "authentication failed
//      (refused by the destination)", exits non-zero, has created no vCPU and registered no
//      memory. Only after success does D register memory and send its region table / rkeys.
//   6. Both: keys = DeriveSessionKeys(psk, ns, nd, TranscriptHash(hs, hd)); S seals with
//      keys.source_to_destination and opens with keys.destination_to_source (aead.h), D the
//      other way round; every later control message (and the region table / rkeys) is a
//      record. A peer that changed any byte of either hello is caught at the first record.
//
// Why this resists replay: every proof covers both nonces, and each side checks a proof only
// against the nonce it has just drawn itself. A recorded HELLO + AUTH replayed to D meets a new
// nd, so the old ps does not verify; a recorded D reply replayed to S meets a new ns. Session
// keys come from both nonces, so even a replayed record stream is noise under the new keys.
// Why it resists reflection: the role is in the MAC (and in the HKDF label of its key), so D's
// proof sent back to D as if it were S's fails (and S never proves before D has proven, so a
// fake destination learns nothing from S). VerifyProof also refuses ns == nd. The PSK itself
// never crosses the wire, not even hashed: only HMACs under keys derived from it do.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <span>

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "src/crypto/aead.h"
#include "src/crypto/primitives.h"
#include "src/crypto/psk.h"

namespace lmig::crypto {

inline constexpr size_t kNonceBytes = 32;
inline constexpr size_t kProofBytes = 32;
using Nonce = std::array<uint8_t, kNonceBytes>;
using ProofBytes = std::array<uint8_t, kProofBytes>;

// Which side of a migration computed a proof. Encoded in the MAC, so proofs do not reflect.
enum class Role : uint8_t {
  kInvalid = 0,
  kSource = 1,
  kDestination = 2,
};

// "source" or "destination" (for messages).
const char* RoleName(Role role);

// A fresh nonce from the CSPRNG (one per handshake per side; never reuse one).
absl::StatusOr<Nonce> NewNonce();

// ROLE's proof that it holds PSK: HMAC-SHA256 under HKDF-SHA256(PSK, info "lmig-rdma auth v1
// proof key <role>") over the fixed-size encoding
//   "lmig-rdma auth v1 proof\0" || role (1 byte) || nonce_src || nonce_dst || hello_hash
// where HELLO_HASH is Sha256 of the hello message ROLE sent. Error: kInvalid role, OpenSSL.
absl::StatusOr<ProofBytes> Proof(const Psk& psk, Role role, const Nonce& nonce_src,
                                 const Nonce& nonce_dst, const Sha256Digest& hello_hash);

// Checks that PROOF is ROLE's proof for these values (constant-time comparison). Errors:
// kUnauthenticated "authentication failed: the <role>'s proof does not match ..." for a wrong
// key, role, nonce or hello (which of those cannot be told apart, by design), a proof that is
// not kProofBytes long, or nonce_src == nonce_dst (a reflected nonce).
absl::Status VerifyProof(const Psk& psk, Role role, const Nonce& nonce_src,
                         const Nonce& nonce_dst, const Sha256Digest& hello_hash,
                         std::span<const uint8_t> proof);

// The hash of the whole handshake for DeriveSessionKeys: SHA-256 over
// "lmig-rdma auth v1 transcript\0" || hello_hash_src || hello_hash_dst.
absl::StatusOr<Sha256Digest> TranscriptHash(const Sha256Digest& hello_hash_src,
                                            const Sha256Digest& hello_hash_dst);

// The two record-layer keys of one migration session.
struct SessionKeys {
  AeadKey source_to_destination;  // S seals, D opens
  AeadKey destination_to_source;  // D seals, S opens
};

// HKDF-SHA256 with IKM = PSK, salt = nonce_src || nonce_dst, info = "lmig-rdma auth v1 session
// key <direction>\0" || TRANSCRIPT_HASH, 32 bytes per direction. Fresh nonces make fresh keys
// every session. Call it only after both proofs verified.
absl::StatusOr<SessionKeys> DeriveSessionKeys(const Psk& psk, const Nonce& nonce_src,
                                              const Nonce& nonce_dst,
                                              const Sha256Digest& transcript_hash);

}  // namespace lmig::crypto
