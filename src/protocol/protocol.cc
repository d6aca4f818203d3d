#include "include/lmig/protocol.h"

#include <sys/random.h>
#include <xxhash.h>

#include <cerrno>
#include <algorithm>
#include <cstring>
#include <iterator>
#include <string_view>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig::proto {

const char* MsgTypeName(MsgType t) {
  switch (t) {
    case MsgType::kHello: return "HELLO";
    case MsgType::kHelloAck: return "HELLO_ACK";
    case MsgType::kPages: return "PAGES";
    case MsgType::kEndRound: return "END_ROUND";
    case MsgType::kDeviceState: return "DEVICE_STATE";
    case MsgType::kComplete: return "COMPLETE";
    case MsgType::kAck: return "ACK";
    case MsgType::kAbort: return "ABORT";
    case MsgType::kProgress: return "PROGRESS";
    case MsgType::kAuthChallenge: return "AUTH_CHALLENGE";
    case MsgType::kAuthProof: return "AUTH_PROOF";
    case MsgType::kPing: return "PING";
    case MsgType::kPong: return "PONG";
    case MsgType::kStreamJoin: return "STREAM_JOIN";
    case MsgType::kStreamEnd: return "STREAM_END";
    case MsgType::kStreamJoined: return "STREAM_JOINED";
    default: return "INVALID";
  }
}

namespace {
uint32_t HeaderHash(const FrameHeader& h) {
  return XXH32(&h, offsetof(FrameHeader, header_hash), kMagic);
}
}  // namespace

FrameHeader MakeHeader(MsgType type, uint64_t arg, std::span<const uint8_t> payload,
                       uint16_t flags) {
  FrameHeader h{};
  h.magic = kMagic;
  h.type = static_cast<uint16_t>(type);
  h.flags = flags;
  h.length = payload.size();
  h.arg = arg;
  h.payload_hash = (flags & kNoPayloadHash) ? 0 : XXH3_64bits(payload.data(), payload.size());
  h.header_hash = HeaderHash(h);
  return h;
}

uint64_t MaxPayload(MsgType type) {
  // Control messages after the handshake are sealed records: room for the tag.
  switch (type) {
    case MsgType::kHello: return sizeof(Hello);
    case MsgType::kHelloAck: return kMaxHelloAck + kSealOverhead;
    case MsgType::kPages: return UINT64_MAX;
    case MsgType::kEndRound: return sizeof(EndRound) + kSealOverhead;
    case MsgType::kDeviceState: return kMaxDeviceState + kSealOverhead;
    case MsgType::kComplete: return sizeof(Complete) + kSealOverhead;
    case MsgType::kAck: return sizeof(Ack) + kMaxAckPhases * sizeof(PhaseTiming) + kSealOverhead;
    case MsgType::kAbort: return sizeof(StatusMsg) + kSealOverhead;
    case MsgType::kProgress: return sizeof(uint64_t) + kSealOverhead;
    case MsgType::kAuthChallenge: return sizeof(AuthChallenge);
    case MsgType::kAuthProof: return sizeof(AuthProof);
    case MsgType::kPing:
    case MsgType::kPong: return kSealOverhead;  // empty, but sealed after the handshake
    case MsgType::kStreamJoin: return sizeof(StreamJoin);  // never sealed (streams 1..N-1)
    case MsgType::kStreamEnd: return sizeof(StreamEnd);
    case MsgType::kStreamJoined: return kMaxRegionTable;  // never sealed, as STREAM_JOIN
    default: return 0;
  }
}

absl::Status CheckHeader(const FrameHeader& h) {
  if (h.magic != kMagic) {
    return absl::DataLossError(absl::StrFormat(
        "corrupt stream: frame magic 0x%08x, want 0x%08x (not an lmig-rdma peer?)", h.magic,
        kMagic));
  }
  if (h.header_hash != HeaderHash(h)) {
    return absl::DataLossError(absl::StrFormat(
        "corrupt stream: header checksum mismatch on a %s frame",
        MsgTypeName(static_cast<MsgType>(h.type))));
  }
  if (h.type == 0 || h.type > kLastMsgType) {
    return absl::DataLossError(absl::StrFormat("corrupt stream: unknown message type %d", h.type));
  }
  const MsgType type = static_cast<MsgType>(h.type);
  if (h.length > MaxPayload(type)) {
    return absl::DataLossError(absl::StrFormat(
        "corrupt stream: %s payload of %d bytes, at most %d allowed", MsgTypeName(type),
        h.length, MaxPayload(type)));
  }
  if ((h.flags & ~static_cast<uint16_t>(kNoPayloadHash)) != 0 ||
      ((h.flags & kNoPayloadHash) && type != MsgType::kPages)) {
    return absl::DataLossError(absl::StrFormat("corrupt stream: %s frame with flags 0x%x",
                                               MsgTypeName(type), h.flags));
  }
  return absl::OkStatus();
}

absl::Status CheckPayload(const FrameHeader& h, std::span<const uint8_t> payload) {
  if (h.flags & kNoPayloadHash) {
    return absl::OkStatus();
  }
  const uint64_t got = XXH3_64bits(payload.data(), payload.size());
  if (got != h.payload_hash) {
    return absl::DataLossError(absl::StrFormat(
        "corrupt stream: %s payload checksum 0x%016x, header says 0x%016x",
        MsgTypeName(static_cast<MsgType>(h.type)), got, h.payload_hash));
  }
  return absl::OkStatus();
}

StatusMsg MakeStatusMsg(const absl::Status& s) {
  StatusMsg m{};
  m.code = static_cast<uint32_t>(s.code());
  std::snprintf(m.text, sizeof(m.text), "%s", std::string(s.message()).c_str());
  return m;
}

absl::Status StatusFromMsg(const StatusMsg& m) {
  if (m.code == 0) {
    return absl::OkStatus();
  }
  char text[sizeof(m.text) + 1];
  std::memcpy(text, m.text, sizeof(m.text));
  text[sizeof(m.text)] = 0;
  return absl::Status(static_cast<absl::StatusCode>(m.code), text);
}

uint64_t MemoryDigest(std::span<const uint8_t> mem) {
  return XXH3_64bits(mem.data(), mem.size());
}

const char* DstPhaseName(DstPhase p) {
  static constexpr const char* kGroups[] = {
      "cpuid", "mp_state", "regs", "sregs", "xsave", "xcrs", "lapic", "msrs",
      "debugregs", "vcpu_events", "irqchips", "pit2", "clock", "uart", "validate"};
  static_assert(std::size(kGroups) == static_cast<size_t>(DstPhase::kRestoreGroupLast) -
                                          static_cast<size_t>(DstPhase::kRestoreGroupFirst) + 1);
  switch (p) {
    case DstPhase::kStateReceived: return "state_received";
    case DstPhase::kStateValidated: return "state_validated";
    case DstPhase::kCompleteChecked: return "complete_checked";
    case DstPhase::kRemoteAccessRevoked: return "remote_access_revoked";
    case DstPhase::kRestoreVcpu: return "restore_vcpu";
    case DstPhase::kRestoreVm: return "restore_vm";
    case DstPhase::kResumed: return "vcpus_resumed";
    default: break;
  }
  const auto v = static_cast<uint16_t>(p);
  if (v >= static_cast<uint16_t>(DstPhase::kRestoreGroupFirst) &&
      v <= static_cast<uint16_t>(DstPhase::kRestoreGroupLast)) {
    return kGroups[v - static_cast<uint16_t>(DstPhase::kRestoreGroupFirst)];
  }
  return "invalid";
}

std::vector<uint8_t> HelloAckBytes(const absl::Status& s, const HelloAckTimes& times,
                                   std::span<const uint8_t> regions,
                                   const StreamKey& stream_key) {
  std::vector<uint8_t> out = Bytes(MakeStatusMsg(s));
  const std::vector<uint8_t> t = Bytes(times);
  out.insert(out.end(), t.begin(), t.end());
  const std::vector<uint8_t> k = Bytes(stream_key);
  out.insert(out.end(), k.begin(), k.end());
  out.insert(out.end(), regions.begin(), regions.end());
  return out;
}

absl::StatusOr<HelloAckMsg> ParseHelloAck(std::span<const uint8_t> payload) {
  HelloAckMsg m;
  ASSIGN_OR_RETURN(m.status, Parse<StatusMsg>(payload, MsgType::kHelloAck, /*prefix=*/true));
  ASSIGN_OR_RETURN(m.times, Parse<HelloAckTimes>(payload.subspan(sizeof(StatusMsg)),
                                                 MsgType::kHelloAck, /*prefix=*/true));
  if (m.times.setup_ns > kMaxPhaseNs || m.times.restore_ns > kMaxPhaseNs) {
    return absl::DataLossError(absl::StrFormat(
        "HELLO_ACK: setup %d ns, restore %d ns (at most %d)", m.times.setup_ns,
        m.times.restore_ns, kMaxPhaseNs));
  }
  ASSIGN_OR_RETURN(m.stream_key,
                   Parse<StreamKey>(payload.subspan(sizeof(StatusMsg) + sizeof(HelloAckTimes)),
                                    MsgType::kHelloAck, /*prefix=*/true));
  const auto rest =
      payload.subspan(sizeof(StatusMsg) + sizeof(HelloAckTimes) + sizeof(StreamKey));
  m.regions.assign(rest.begin(), rest.end());
  return m;
}

namespace {
// Little-endian fields of the region table, byte by byte: the layout does not depend on the
// host's byte order or on struct padding.
void PutLe(std::vector<uint8_t>& out, uint64_t v, int bytes) {
  for (int i = 0; i < bytes; ++i) {
    out.push_back(static_cast<uint8_t>(v >> (8 * i)));
  }
}
uint64_t GetLe(const uint8_t* p, int bytes) {
  uint64_t v = 0;
  for (int i = 0; i < bytes; ++i) {
    v |= uint64_t{p[i]} << (8 * i);
  }
  return v;
}
}  // namespace

absl::Status CheckRegionTable(std::span<const RegionWire> regions, uint64_t mem_size) {
  if (regions.empty() || regions.size() > kMaxRegions) {
    return absl::DataLossError(absl::StrFormat(
        "RDMA region table of %d entries (1 to %d allowed)", regions.size(), kMaxRegions));
  }
  uint64_t end = 0;  // where the entries so far end: the next one starts there
  for (size_t i = 0; i < regions.size(); ++i) {
    const RegionWire& r = regions[i];
    const std::string what =
        absl::StrFormat("RDMA region %d [offset 0x%x, length 0x%x]", i, r.offset, r.length);
    if (r.reserved != 0) {
      return absl::DataLossError(absl::StrFormat("%s: reserved 0x%x, want 0", what, r.reserved));
    }
    if (r.length == 0) {
      return absl::DataLossError(absl::StrCat(what, ": empty"));
    }
    if (r.offset % kPageSize != 0 || r.length % kPageSize != 0) {
      return absl::DataLossError(absl::StrFormat("%s: not aligned to %d-byte pages", what,
                                                 kPageSize));
    }
    if (r.offset + r.length < r.offset || r.addr + r.length < r.addr) {
      return absl::DataLossError(
          absl::StrFormat("%s at addr 0x%x: the end overflows 64 bits", what, r.addr));
    }
    if (r.offset != end) {
      return absl::DataLossError(absl::StrFormat(
          "%s: the regions before it end at 0x%x (they tile the guest memory in order, "
          "without gaps or overlaps)", what, end));
    }
    if (r.offset + r.length > mem_size) {
      return absl::DataLossError(absl::StrFormat(
          "%s: ends beyond the guest memory's 0x%x bytes", what, mem_size));
    }
    end = r.offset + r.length;
  }
  return absl::OkStatus();
}

absl::StatusOr<std::vector<uint8_t>> EncodeRegionTable(std::span<const RegionWire> regions) {
  RETURN_IF_ERROR(CheckRegionTable(regions, UINT64_MAX));
  std::vector<uint8_t> out;
  out.reserve(kRegionTableHeader + regions.size() * sizeof(RegionWire));
  PutLe(out, regions.size(), 4);
  PutLe(out, 0, 4);
  for (const RegionWire& r : regions) {
    PutLe(out, r.offset, 8);
    PutLe(out, r.length, 8);
    PutLe(out, r.addr, 8);
    PutLe(out, r.rkey, 4);
    PutLe(out, r.reserved, 4);
  }
  return out;
}

absl::StatusOr<std::vector<RegionWire>> DecodeRegionTable(std::span<const uint8_t> blob,
                                                          uint64_t mem_size) {
  if (blob.size() < kRegionTableHeader) {
    return absl::DataLossError(absl::StrFormat(
        "HELLO_ACK: RDMA region table of %d bytes, shorter than its %d-byte header",
        blob.size(), kRegionTableHeader));
  }
  const uint64_t count = GetLe(blob.data(), 4);
  const uint64_t reserved = GetLe(blob.data() + 4, 4);
  if (count == 0 || count > kMaxRegions || reserved != 0) {
    return absl::DataLossError(absl::StrFormat(
        "HELLO_ACK: RDMA region table of %d entries (1 to %d allowed), reserved 0x%x", count,
        kMaxRegions, reserved));
  }
  const uint64_t want = kRegionTableHeader + count * sizeof(RegionWire);
  if (blob.size() != want) {
    return absl::DataLossError(absl::StrFormat(
        "HELLO_ACK: RDMA region table of %d bytes, %d entries need %d", blob.size(), count,
        want));
  }
  std::vector<RegionWire> regions(count);
  const uint8_t* p = blob.data() + kRegionTableHeader;
  for (RegionWire& r : regions) {
    r.offset = GetLe(p, 8);
    r.length = GetLe(p + 8, 8);
    r.addr = GetLe(p + 16, 8);
    r.rkey = static_cast<uint32_t>(GetLe(p + 24, 4));
    r.reserved = static_cast<uint32_t>(GetLe(p + 28, 4));
    p += sizeof(RegionWire);
  }
  RETURN_IF_ERROR(Annotate(CheckRegionTable(regions, mem_size), "HELLO_ACK"));
  return regions;
}

std::vector<uint8_t> AckBytes(const Ack& ack, std::span<const PhaseTiming> phases) {
  Ack a = ack;
  const size_t n = std::min<size_t>(phases.size(), kMaxAckPhases);
  a.num_phases = static_cast<uint32_t>(n);
  a.reserved = 0;
  std::vector<uint8_t> out = Bytes(a);
  const auto* p = reinterpret_cast<const uint8_t*>(phases.data());
  out.insert(out.end(), p, p + n * sizeof(PhaseTiming));
  return out;
}

absl::StatusOr<AckMsg> ParseAck(std::span<const uint8_t> payload) {
  AckMsg m;
  ASSIGN_OR_RETURN(m.ack, Parse<Ack>(payload, MsgType::kAck, /*prefix=*/true));
  if (m.ack.num_phases > kMaxAckPhases || m.ack.reserved != 0) {
    return absl::DataLossError(absl::StrFormat(
        "ACK: %d phase entries (at most %d), reserved 0x%x", m.ack.num_phases, kMaxAckPhases,
        m.ack.reserved));
  }
  const uint64_t want = sizeof(Ack) + uint64_t{m.ack.num_phases} * sizeof(PhaseTiming);
  if (payload.size() != want) {
    return absl::DataLossError(absl::StrFormat(
        "ACK: payload of %d bytes, %d phase entries need %d", payload.size(),
        m.ack.num_phases, want));
  }
  m.phases.resize(m.ack.num_phases);
  if (!m.phases.empty()) {
    std::memcpy(m.phases.data(), payload.data() + sizeof(Ack),
                m.phases.size() * sizeof(PhaseTiming));
  }
  return m;
}

absl::Status CheckPhaseTimings(std::span<const PhaseTiming> phases, uint32_t num_cpus) {
  if (phases.size() > kMaxAckPhases) {
    return absl::DataLossError(absl::StrFormat("%d phase entries, at most %d", phases.size(),
                                               kMaxAckPhases));
  }
  // Seen: one bit per fixed phase and per vCPU of kRestoreVcpu.
  std::vector<bool> seen(static_cast<size_t>(DstPhase::kRestoreGroupLast) + 1, false);
  std::vector<bool> seen_vcpu(kMaxVcpus, false);
  for (size_t i = 0; i < phases.size(); ++i) {
    const PhaseTiming& e = phases[i];
    const DstPhase p = static_cast<DstPhase>(e.phase);
    if (e.phase >= seen.size() || std::string_view(DstPhaseName(p)) == "invalid") {
      return absl::DataLossError(absl::StrFormat("phase entry %d: unknown phase %d", i, e.phase));
    }
    if (e.reserved != 0 || e.ns > kMaxPhaseNs) {
      return absl::DataLossError(absl::StrFormat(
          "phase entry %d (%s): %d ns (at most %d), reserved 0x%x", i, DstPhaseName(p), e.ns,
          kMaxPhaseNs, e.reserved));
    }
    if (p == DstPhase::kRestoreVcpu) {
      if (e.vcpu >= num_cpus || e.vcpu >= kMaxVcpus) {
        return absl::DataLossError(absl::StrFormat(
            "phase entry %d (%s): vCPU %d, the guest has %d", i, DstPhaseName(p), e.vcpu,
            num_cpus));
      }
      if (seen_vcpu[e.vcpu]) {
        return absl::DataLossError(absl::StrFormat("phase entry %d: %s of vCPU %d twice", i,
                                                   DstPhaseName(p), e.vcpu));
      }
      seen_vcpu[e.vcpu] = true;
      continue;
    }
    if (e.vcpu != kVcpuNone) {
      return absl::DataLossError(absl::StrFormat(
          "phase entry %d (%s) is VM-wide but names vCPU %d", i, DstPhaseName(p), e.vcpu));
    }
    if (seen[e.phase]) {
      return absl::DataLossError(
          absl::StrFormat("phase entry %d: %s twice", i, DstPhaseName(p)));
    }
    seen[e.phase] = true;
  }
  return absl::OkStatus();
}

absl::Status AbortReason(const Message& m) {
  auto st = Parse<StatusMsg>(m.payload, m.type);
  if (!st.ok()) {
    return st.status();
  }
  absl::Status why = StatusFromMsg(*st);
  return why.ok() ? absl::AbortedError("no reason given") : why;
}

uint64_t RandomNonce() {
  uint64_t v = 0;
  auto* p = reinterpret_cast<uint8_t*>(&v);
  size_t got = 0;
  while (got < sizeof(v)) {
    const ssize_t n = ::getrandom(p + got, sizeof(v) - got, 0);
    if (n > 0) {
      got += static_cast<size_t>(n);
    } else if (errno != EINTR) {
      // getrandom(2) cannot fail on a kernel that has it once the pool is up.
      std::abort();
    }
  }
  return v;
}

absl::Status CheckHello(const Hello& h, const HelloLimits& limits) {
  if (h.version != kVersion) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "protocol version mismatch: source speaks %d, this destination %d", h.version, kVersion));
  }
  if (h.page_size != kPageSize) {
    return absl::FailedPreconditionError(
        absl::StrFormat("page size mismatch: source %d, destination 4096", h.page_size));
  }
  if (h.mem_size == 0 || h.mem_size % kPageSize != 0) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad memory size %d (not a positive multiple of 4 KiB)", h.mem_size));
  }
  if (h.mem_size > limits.max_mem) {
    return absl::ResourceExhaustedError(absl::StrFormat(
        "the source's guest has %d MiB of memory, this destination takes at most %d MiB "
        "(--max-mem)", h.mem_size >> 20, limits.max_mem >> 20));
  }
  if (h.num_cpus < 1 || h.num_cpus > kMaxVcpus) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad vCPU count %d (1..%d)", h.num_cpus, kMaxVcpus));
  }
  if ((h.features & ~static_cast<uint32_t>(kKnownFeatures)) != 0) {
    return absl::FailedPreconditionError(
        absl::StrFormat("unknown feature bits 0x%x in HELLO", h.features & ~kKnownFeatures));
  }
  if (h.dirty_mode != DirtyMode::kRing && h.dirty_mode != DirtyMode::kBitmap) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad dirty mode %d", static_cast<uint32_t>(h.dirty_mode)));
  }
  if (h.transport != static_cast<uint32_t>(TransportKind::kTcp) &&
      h.transport != static_cast<uint32_t>(TransportKind::kRdma)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad transport %d in HELLO (1: TCP, 2: RDMA)", h.transport));
  }
  if (limits.transport != TransportKind::kInvalid &&
      h.transport != static_cast<uint32_t>(limits.transport)) {
    return absl::FailedPreconditionError(absl::StrFormat(
        "transport mismatch: the source says %d, this destination listens on %d", h.transport,
        static_cast<uint32_t>(limits.transport)));
  }
  if (h.streams < 1 || h.streams > kMaxStreams) {
    return absl::InvalidArgumentError(
        absl::StrFormat("bad stream count %d in HELLO (1..%d)", h.streams, kMaxStreams));
  }
  if (h.auth > static_cast<uint32_t>(AuthMode::kPsk)) {
    return absl::InvalidArgumentError(absl::StrFormat("bad auth mode %d in HELLO", h.auth));
  }
  if (limits.auth == AuthMode::kPsk && h.auth != static_cast<uint32_t>(AuthMode::kPsk)) {
    return absl::UnauthenticatedError(
        "authentication failed (refused by the destination): the source offers none "
        "(this destination has --psk-file)");
  }
  if (limits.auth == AuthMode::kNone && h.auth != static_cast<uint32_t>(AuthMode::kNone)) {
    return absl::FailedPreconditionError(
        "the source authenticates with a --psk-file, this destination has none");
  }
  return absl::OkStatus();
}

}  // namespace lmig::proto
