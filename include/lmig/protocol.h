// The lmig-rdma migration wire protocol (its version: kVersion below). Shared by the TCP and
// RDMA transports.
//
// Message sequence (src = source, dst = destination):
//
//   src -> dst  kHello        Hello: version, page size, memory size, vCPUs, features,
//                             transport, auth mode, stream count, the source's fresh nonce
//   -- with a pre-shared key (--psk-file on both sides; src/crypto/auth.h has the scheme) --
//   dst -> src  kAuthChallenge AuthChallenge: the destination's fresh nonce and its proof
//                             (HMAC under the PSK over both nonces, its role, its own nonce)
//   src -> dst  kAuthProof    AuthProof: the source's proof (both nonces, its role, the HELLO)
//               From here on every control message, both ways, is an AES-256-GCM record under
//               session keys derived from the PSK and both nonces (secure_channel.h): the
//               payload is sealed, the AAD is the type and arg, the record counter implicit.
//   -------------------------------------------------------------------------------------
//   dst -> src  kHelloAck     StatusMsg, HelloAckTimes, StreamKey (+ RDMA: the destination's
//                             memory regions and rkeys, a RegionWire table; the destination
//                             registers memory only after authentication)
//   -- with Hello::streams = N > 1: streams 1..N-1, each a connection of its own to the same
//      address (TCP: its own TLS handshake when TLS is on; RDMA: its own rdma_cm connection,
//      queue pair, CQ and protection domain), opened after HELLO_ACK -------------------
//   src -> dst  kStreamJoin   StreamJoin, the connection's first message: its index and a
//                             proof under HELLO_ACK's StreamKey (StreamJoinProof). Anything
//                             else, a wrong proof, an index out of 1..N-1 or taken: dropped
//   dst -> src  kStreamJoined once the proof is checked and the stream may carry pages (RDMA:
//                             its memory registered and its QP opened to remote writes):
//                             the stream's transport blob, over RDMA its own region table
//                             (RegionWire, as in HELLO_ACK), over TCP empty. The source
//                             sends nothing on the stream but the join before it.
//   src -> dst  kPages        on any stream: the source's chunk splitter gives each 2 MiB chunk
//                             of guest memory to one stream (SplitByChunk)
//   src -> dst  kStreamEnd    on streams 1..N-1, after their share of each round (arg = round):
//                             StreamEnd, the bytes of pages it carried in the round. The
//                             destination's round barrier completes round n only once every
//                             stream's marker for n is in; END_ROUND (stream 0) then counts.
//   -------------------------------------------------------------------------------------
//   src -> dst  kPages        (TCP only) arg = RAM offset, payload = the pages; over RDMA the
//                             pages land by one-sided RDMA WRITE and no message is sent
//   src -> dst  kEndRound     EndRound: after every pre-copy round, and after the final one
//   ...                       (more rounds)
//   src -> dst  kDeviceState  the machine state blob (vCPUs, irqchips, PIT, clock, UART)
//   src -> dst  kComplete     Complete: totals, a fresh random nonce and, with --verify-memory,
//                             a digest of all RAM
//   dst -> src  kAck          Ack: the guest runs on dst now; echoes COMPLETE's nonce, so an ACK
//                             sent before the destination saw COMPLETE can never count; then
//                             Ack::num_phases PhaseTiming entries: how long each step of the
//                             destination's part of the pause took (its monotonic clock)
//   either way  kAbort        StatusMsg: the sender of it gives up; the source keeps its guest
//   src -> dst  kProgress     mid-round (arg = round, payload = u64 bytes sent so far in it)
//   src -> dst  kPing         after HELLO_ACK (arg = sequence number); dst -> src kPong, the
//                             same number at once: the control round trip, measured
//
// What each side accepts (anything else ends the migration, naming the message and the state):
//   destination: HELLO first (within --timeout of the connection), then END_ROUND / PROGRESS
//     (rounds numbered 1, 2, ... with the final one last; over TCP also PAGES, but only between
//     HELLO_ACK and the final END_ROUND), then DEVICE_STATE, then COMPLETE; ABORT at any time.
//   source: HELLO_ACK (or ABORT) after HELLO; then nothing but ACK (or ABORT) after COMPLETE.
//     It never takes guest memory from the wire: a PAGES frame from the destination is refused.
//     On a further stream it takes STREAM_JOINED after its join, once, and nothing else.
//   destination, on a further stream: STREAM_JOIN first, then STREAM_END / PROGRESS (over
//     TCP also PAGES) until the final round's STREAM_END.
// Every payload has a per-type size bound (MaxPayload), checked on the header, before a byte
// of it is read or allocated.
//
// Every message is a FrameHeader followed by `length` payload bytes. The header carries an
// XXH32 of itself and an XXH3-64 of the payload (kPages frames, sent while the guest is running
// and therefore racing its writes, carry none: --verify-memory checks the final memory).
// Integers are little endian; the protocol is x86-64 only.
#pragma once

#include <cstddef>
#include <cstdint>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"
#include "include/lmig/limits.h"

namespace lmig::proto {

inline constexpr uint32_t kMagic = 0x47494d4c;  // "LMIG"
// 2: PROGRESS; 3: ACK echoes COMPLETE; 4: PSK auth; 5: ACK carries the destination's phases;
// 6: HELLO_ACK carries HelloAckTimes; 7: kTlsAccepted after the TLS handshake; 8: PING/PONG;
// 9: parallel streams (Hello::streams, StreamKey, STREAM_JOIN, STREAM_END); 10: STREAM_JOINED,
// streams over RDMA
inline constexpr uint32_t kVersion = 10;
// Streams of one migration (Hello::streams): 1..kMaxStreams.
inline constexpr uint32_t kMaxStreams = 64;
// Over TLS the destination's first application record, once its handshake has checked the
// source: a TLS 1.3 client's handshake ends before the server has seen the client's
// certificate and Finished, so the source waits for this (or the refusing alert) before it
// sends a byte. Without it a refused source could see only a reset on its next send.
inline constexpr char kTlsAccepted[16] = {'l', 'm', 'i', 'g', ' ', 't', 'l', 's',
                                          ' ', 'a', 'c', 'c', 'e', 'p', 't', '\n'};
using lmig::kMaxVcpus;
using lmig::kPageSize;
// Pre-copy rounds, final included: a source's --max-rounds is capped by this, and the
// destination refuses a round number beyond it (its per-round statistics stay bounded).
inline constexpr uint32_t kMaxRounds = 1000;
// The machine state blob: 64 vCPUs of XSAVE (<= 16 KiB with AMX), MSRs, CPUID, LAPIC... fit.
inline constexpr uint64_t kMaxDeviceState = 8ull << 20;
// HELLO_ACK's RDMA region table: one entry per registered chunk of at least 4 KiB... in
// practice per 1 GiB chunk; 64 Ki entries is ample.
inline constexpr uint32_t kMaxRegions = 64 << 10;
// HELLO_ACK: a StatusMsg, HelloAckTimes and, over RDMA, the region table (an 8-byte count and
// kMaxRegions 32-byte RegionWire entries at most); the sizes are checked below.
inline constexpr uint64_t kMaxRegionTable = 8 + uint64_t{kMaxRegions} * 32;
inline constexpr uint64_t kMaxHelloAck = 256 + 16 + 32 + kMaxRegionTable;

enum class MsgType : uint16_t {
  kInvalid = 0,
  kHello = 1,
  kHelloAck = 2,
  kPages = 3,
  kEndRound = 4,
  kDeviceState = 5,
  kComplete = 6,
  kAck = 7,
  kAbort = 8,
  // The source is alive mid-round (arg = round, payload = u64 bytes sent so far in it): an
  // RDMA round is silent to the destination, whose silence timeout would otherwise end a
  // round longer than --timeout.
  kProgress = 9,
  kAuthChallenge = 10,
  kAuthProof = 11,
  // A control round trip (arg = sequence number, no payload): the source's PING after
  // HELLO_ACK, the destination's PONG with the same number. What the pause's estimate counts
  // for the ACK's way back; at most kMaxPings per migration.
  kPing = 12,
  kPong = 13,
  // Parallel streams (Hello::streams > 1): a further stream's first message, and its marker
  // at the end of its share of a round (arg = round).
  kStreamJoin = 14,
  kStreamEnd = 15,
  // The destination's answer to a STREAM_JOIN it accepted (payload: the stream's region table
  // over RDMA, nothing over TCP).
  kStreamJoined = 16,
};
inline constexpr uint16_t kLastMsgType = 16;
inline constexpr uint32_t kMaxPings = 16;
// Bytes a sealed control record adds to its payload (the AES-GCM tag).
inline constexpr uint64_t kSealOverhead = 16;
const char* MsgTypeName(MsgType t);

enum FrameFlags : uint16_t {
  kNoPayloadHash = 1,
};

struct FrameHeader {
  uint32_t magic;
  uint16_t type;
  uint16_t flags;
  uint64_t length;
  uint64_t arg;
  uint64_t payload_hash;
  uint32_t reserved;
  uint32_t header_hash;  // XXH32 of the 36 bytes before it
};
static_assert(sizeof(FrameHeader) == 40);

enum class TransportKind : uint32_t { kInvalid = 0, kTcp = 1, kRdma = 2 };

enum Features : uint32_t {
  kFeatureVerifyMemory = 1,
  kKnownFeatures = kFeatureVerifyMemory,
};

// How the source tracks dirty pages; MachineConfig and HELLO share it (u32 on the wire).
enum class DirtyMode : uint32_t { kRing = 1, kBitmap = 2 };

struct Hello {
  uint32_t version;
  uint32_t page_size;
  uint64_t mem_size;
  uint32_t num_cpus;
  uint32_t features;
  uint32_t transport;    // TransportKind
  DirtyMode dirty_mode;  // informational
  uint32_t auth;         // AuthMode
  uint32_t streams;      // connections the migration uses, stream 0 included: 1..kMaxStreams
  uint8_t nonce[32];     // the source's fresh nonce (AuthMode::kPsk)
};
static_assert(sizeof(Hello) == 72);

enum class AuthMode : uint32_t {
  kNone = 0,  // no --psk-file: unauthenticated, unencrypted (loopback or --insecure)
  kPsk = 1,   // mutual challenge-response with the pre-shared key, then sealed control records
};

struct AuthChallenge {
  uint8_t nonce[32];  // the destination's fresh nonce
  uint8_t proof[32];  // its proof over (source nonce, this nonce, SHA-256 of this nonce)
};
static_assert(sizeof(AuthChallenge) == 64);

struct AuthProof {
  uint8_t proof[32];  // the source's proof over (both nonces, SHA-256 of its HELLO payload)
};
static_assert(sizeof(AuthProof) == 32);

struct EndRound {
  uint32_t round;
  uint32_t final_round;  // 1 for the stop-and-copy round
  uint64_t pages;
  uint64_t bytes;
};
static_assert(sizeof(EndRound) == 24);

struct Complete {
  uint64_t total_pages;
  uint64_t memory_digest;  // XXH3-64 over all RAM, when kFeatureVerifyMemory
  uint64_t state_bytes;
  uint64_t nonce;          // fresh from the OS CSPRNG for every COMPLETE; ACK echoes it
};
static_assert(sizeof(Complete) == 32);

// Status carried by kHelloAck, kAck and kAbort: code 0 = OK, else an absl::StatusCode.
struct StatusMsg {
  uint32_t code;
  uint32_t reserved;
  char text[248];
};
static_assert(sizeof(StatusMsg) == 256);

// After HELLO_ACK's StatusMsg: what the destination measured while it set up, for the source's
// estimate of the pause (all zero in a refusal). Each at most kMaxPhaseNs.
struct HelloAckTimes {
  uint64_t setup_ns;    // from the last message in hand (HELLO, or AUTH_PROOF with a key) to
                        // HELLO_ACK sent: the source's wait for HELLO_ACK after its last
                        // message minus this is one control round trip
  uint64_t restore_ns;  // a dry-run restore of the fresh VM's own state, after a first one
                        // (the warm cost; 0: not measured)
};
static_assert(sizeof(HelloAckTimes) == 16);

// After HelloAckTimes: the key further streams prove they belong to this migration with
// (fresh from the OS CSPRNG for each migration; all zero with one stream or in a refusal). It
// travels only on stream 0, which is sealed or TLS-protected whenever the migration is
// authenticated.
struct StreamKey {
  uint8_t key[32];
};
static_assert(sizeof(StreamKey) == 32);

// A HELLO_ACK payload.
struct HelloAckMsg {
  StatusMsg status;
  HelloAckTimes times;
  StreamKey stream_key;
  std::vector<uint8_t> regions;  // the transport's blob (RDMA region table), may be empty
};
std::vector<uint8_t> HelloAckBytes(const absl::Status& s, const HelloAckTimes& times,
                                   std::span<const uint8_t> regions,
                                   const StreamKey& stream_key = {});
// Parses a HELLO_ACK payload: a StatusMsg, HelloAckTimes (values within kMaxPhaseNs), a
// StreamKey; the rest is the region blob. Error names what is short or out of range.
absl::StatusOr<HelloAckMsg> ParseHelloAck(std::span<const uint8_t> payload);

// The region table, HELLO_ACK's blob over RDMA: where the destination registered its guest
// memory for remote writes. Little endian, whatever the host:
//   u32 count (1..kMaxRegions), u32 reserved (0), then count entries of
//   u64 offset, u64 length, u64 addr, u32 rkey, u32 reserved (0)
// Guest memory [offset, offset + length) is at ADDR in the destination under RKEY. The
// entries tile the guest memory from offset 0 in order: each starts where the one before it
// ends, every offset and length a multiple of kPageSize, no length zero.
struct RegionWire {
  uint64_t offset;
  uint64_t length;
  uint64_t addr;
  uint32_t rkey;
  uint32_t reserved;
};
static_assert(sizeof(RegionWire) == 32);
inline constexpr uint64_t kRegionTableHeader = 8;
static_assert(kMaxHelloAck == sizeof(StatusMsg) + sizeof(HelloAckTimes) + sizeof(StreamKey) +
                                  kRegionTableHeader +
                                  uint64_t{kMaxRegions} * sizeof(RegionWire));
// Checks REGIONS as a destination's table for MEM_SIZE bytes of guest memory: 1..kMaxRegions
// entries, reserved fields zero, each length nonzero, offsets and lengths page-aligned, offset
// + length and addr + length without overflow, the entries tiling [0, end) in order (so none
// overlaps another) with end at most MEM_SIZE. Error names the entry and its values.
absl::Status CheckRegionTable(std::span<const RegionWire> regions, uint64_t mem_size);
// Serializes REGIONS (checked by CheckRegionTable against the memory they tile): a table the
// peer would refuse is an error here, before it is sent.
absl::StatusOr<std::vector<uint8_t>> EncodeRegionTable(std::span<const RegionWire> regions);
// Parses and checks (CheckRegionTable, MEM_SIZE) a region table: its size must be exactly the
// header and count entries. Error names what is malformed and which entry.
absl::StatusOr<std::vector<RegionWire>> DecodeRegionTable(std::span<const uint8_t> blob,
                                                          uint64_t mem_size);

// A further stream's first message. proof = StreamJoinProof(key, stream, streams).
struct StreamJoin {
  uint32_t stream;    // 1..Hello::streams - 1
  uint32_t reserved;  // 0
  uint8_t proof[32];
};
static_assert(sizeof(StreamJoin) == 40);

// A further stream's marker after its share of a round (arg = the round).
struct StreamEnd {
  uint64_t bytes;        // of pages this stream carried in the round
  uint32_t final_round;  // 1 after the stop-and-copy round: the stream carries nothing more
  uint32_t reserved;     // 0
};
static_assert(sizeof(StreamEnd) == 16);

// The destination's answer to COMPLETE, followed by num_phases PhaseTiming entries.
struct Ack {
  StatusMsg status;
  uint64_t complete_nonce;  // Complete::nonce of the COMPLETE it answers
  uint64_t total_pages;     // what the destination counted
  uint32_t num_phases;      // PhaseTiming entries after this struct, at most kMaxAckPhases
  uint32_t reserved;        // 0
};
static_assert(sizeof(Ack) == 280);

// The steps of the destination's part of stop-and-copy that the ACK reports. Values are
// fixed on the wire; each appears at most once, per vCPU only where it says so.
enum class DstPhase : uint16_t {
  kInvalid = 0,
  // Concurrent with the source's steps (not part of the destination's share of the pause):
  kStateReceived = 1,    // from the final END_ROUND to DEVICE_STATE in hand
  kStateValidated = 2,   // ValidateState of the blob on arrival
  // From COMPLETE in hand to the ACK, in this order:
  kCompleteChecked = 3,  // COMPLETE's totals (and, with --verify-memory, the digest) checked
  kRemoteAccessRevoked = 4,  // RDMA: memory deregistered
  kRestoreVcpu = 5,      // per vCPU (PhaseTiming::vcpu): all of its KVM_SET_* calls
  kRestoreVm = 6,        // VM-wide: irqchips, PIT, clock, UART
  kResumed = 7,          // the console started and the vCPUs armed (they run once the ACK
                         // is sent)
  // One KVM call group of the restore, summed over the vCPUs (kRestoreGroupFirst + the
  // machine's StateCall: cpuid, mp_state, regs, sregs, xsave, xcrs, lapic, msrs, debugregs,
  // vcpu_events, irqchips, pit2, clock, uart, validate). Parts of kRestoreVcpu/kRestoreVm.
  kRestoreGroupFirst = 16,
  kRestoreGroupLast = 30,
};
inline constexpr uint16_t kVcpuNone = 0xffff;  // PhaseTiming::vcpu of a VM-wide phase
// Bounded: the fixed phases, the call groups and one restore entry per vCPU.
inline constexpr uint32_t kMaxAckPhases =
    static_cast<uint32_t>(DstPhase::kRestoreGroupLast) + 1 + kMaxVcpus;
// A phase longer than this is a lie (the source's whole pause is bounded by --timeout).
inline constexpr uint64_t kMaxPhaseNs = 3600ull * 1000 * 1000 * 1000;

struct PhaseTiming {
  uint16_t phase;     // DstPhase
  uint16_t vcpu;      // the vCPU for kRestoreVcpu, else kVcpuNone
  uint32_t reserved;  // 0
  uint64_t ns;        // duration
};
static_assert(sizeof(PhaseTiming) == 16);
const char* DstPhaseName(DstPhase p);

// Builds a header for a payload (hashing it unless FLAGS has kNoPayloadHash).
FrameHeader MakeHeader(MsgType type, uint64_t arg, std::span<const uint8_t> payload,
                       uint16_t flags = 0);
// The largest payload a frame of TYPE may carry (kPages: unbounded here; the transport checks
// it against guest memory).
uint64_t MaxPayload(MsgType type);
// Checks magic, header hash, type and the type's length bound. Errors name what is wrong.
absl::Status CheckHeader(const FrameHeader& h);
// Checks the payload hash of a received frame.
absl::Status CheckPayload(const FrameHeader& h, std::span<const uint8_t> payload);

StatusMsg MakeStatusMsg(const absl::Status& s);
absl::Status StatusFromMsg(const StatusMsg& m);

// XXH3-64 of the whole of MEM.
uint64_t MemoryDigest(std::span<const uint8_t> mem);

// What a destination is willing to take on.
struct HelloLimits {
  uint64_t max_mem = kMaxGuestMemory;  // bytes of guest memory
  AuthMode auth = AuthMode::kNone;  // what this destination requires
  TransportKind transport = TransportKind::kInvalid;  // kInvalid: any
};
// Validates a Hello against what this build supports and LIMITS allow. Error names the field
// and both values.
absl::Status CheckHello(const Hello& h, const HelloLimits& limits);
// 8 bytes from the OS CSPRNG (getrandom).
uint64_t RandomNonce();

// Serializes a POD message.
template <typename T>
std::vector<uint8_t> Bytes(const T& v) {
  const auto* p = reinterpret_cast<const uint8_t*>(&v);
  return std::vector<uint8_t>(p, p + sizeof(T));
}
// Parses a POD message of exactly sizeof(T) bytes (or at least, when PREFIX).
template <typename T>
absl::StatusOr<T> Parse(std::span<const uint8_t> b, MsgType type, bool prefix = false) {
  if (b.size() < sizeof(T) || (!prefix && b.size() != sizeof(T))) {
    return absl::DataLossError(std::string(MsgTypeName(type)) + ": payload of " +
                               std::to_string(b.size()) + " bytes, want " +
                               std::to_string(sizeof(T)));
  }
  T v;
  __builtin_memcpy(&v, b.data(), sizeof(T));
  return v;
}

// An ACK payload: the Ack and its phase table.
struct AckMsg {
  Ack ack;
  std::vector<PhaseTiming> phases;
};
// Serializes an Ack with PHASES (num_phases set from it; at most kMaxAckPhases are sent).
std::vector<uint8_t> AckBytes(const Ack& ack, std::span<const PhaseTiming> phases);
// Parses an ACK payload: exactly sizeof(Ack) + num_phases entries, num_phases within bounds,
// reserved fields zero. The entries' values are checked by CheckPhaseTimings.
absl::StatusOr<AckMsg> ParseAck(std::span<const uint8_t> payload);
// Checks a destination's phase table for a guest of NUM_CPUS vCPUs: known phases, each once
// (per vCPU only kRestoreVcpu, with a vCPU below NUM_CPUS), durations within kMaxPhaseNs.
// Error names the entry.
absl::Status CheckPhaseTimings(std::span<const PhaseTiming> phases, uint32_t num_cpus);

// One received control message.
struct Message {
  MsgType type = MsgType::kInvalid;
  uint64_t arg = 0;
  std::vector<uint8_t> payload;
};

// Why the peer sent the kAbort message M: its status, Aborted "no reason given" when that
// says OK, or the parse error of a malformed payload. Never OK.
absl::Status AbortReason(const Message& m);

}  // namespace lmig::proto
