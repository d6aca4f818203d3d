// Writes the seed corpus of every fuzz target: fuzz_corpus DIR writes DIR/<target>/<seed>.
// The seeds are built with the protocol's own functions (MakeHeader, Bytes, StateWriter), so
// they follow protocol.h; tests/fuzz/corpus/ holds the committed output, and
// tools/lib/sanitize.sh writes a fresh set beside each run.
#include <linux/kvm.h>

#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "include/lmig/protocol.h"
#include "src/devices/uart.h"
#include "src/machine/state_codec.h"

namespace lmig {
namespace {

using Bytes = std::vector<uint8_t>;
using proto::MsgType;

void Append(Bytes& out, const Bytes& b) { out.insert(out.end(), b.begin(), b.end()); }

// One frame as a transport sends it: header, then payload.
Bytes Frame(MsgType type, uint64_t arg, const Bytes& payload, uint16_t flags = 0) {
  Bytes out = proto::Bytes(proto::MakeHeader(type, arg, payload, flags));
  Append(out, payload);
  return out;
}

// A HELLO that a destination with default limits accepts (fields not set here stay 0).
proto::Hello ValidHello(uint32_t cpus, proto::TransportKind transport) {
  proto::Hello h{};
  h.version = proto::kVersion;
  h.page_size = proto::kPageSize;
  h.mem_size = 64ull << 20;
  h.num_cpus = cpus;
  h.features = proto::kFeatureVerifyMemory;
  h.transport = static_cast<uint32_t>(transport);
  h.dirty_mode = proto::DirtyMode::kRing;
  h.streams = 1;
  return h;
}

// A HELLO_ACK payload: status, then (RDMA) a region table of N chunks tiling 64 MiB.
Bytes HelloAck(const absl::Status& s, int regions) {
  proto::HelloAckTimes times{};
  if (s.ok()) {
    times.setup_ns = 2'000'000;
    times.restore_ns = 500'000;
  }
  Bytes out = proto::HelloAckBytes(s, times, {});
  if (regions > 0) {
    std::vector<proto::RegionWire> table;
    const uint64_t len = (64ull << 20) / regions;
    for (int i = 0; i < regions; ++i) {
      table.push_back({i * len, len, 0x7f0000000000ull + i * len, 0x1234u + i, 0});
    }
    Append(out, *proto::EncodeRegionTable(table));
  }
  return out;
}

// A machine state blob shaped like Machine::SaveState's for CPUS vCPUs.
Bytes MachineState(uint32_t cpus) {
  StateWriter w;
  for (uint32_t id = 0; id < cpus; ++id) {
    std::vector<kvm_cpuid_entry2> cpuid(2);
    cpuid[0].function = 0;
    cpuid[0].eax = 0xd;
    cpuid[1].function = 1;
    cpuid[1].ecx = 1u << 31;
    w.Add(StateTag::kCpuid, id, cpuid.data(), cpuid.size() * sizeof(kvm_cpuid_entry2));
    kvm_mp_state mp{};
    mp.mp_state = id == 0 ? KVM_MP_STATE_RUNNABLE : KVM_MP_STATE_INIT_RECEIVED;
    w.AddPod(StateTag::kMpState, id, mp);
    kvm_regs regs{};
    regs.rip = 0x100000;
    regs.rflags = 2;
    w.AddPod(StateTag::kRegs, id, regs);
    kvm_sregs sregs{};
    sregs.cr0 = 0x80050033;
    sregs.efer = 0xd01;
    w.AddPod(StateTag::kSregs, id, sregs);
    const Bytes xsave(4096, 0);
    w.Add(StateTag::kXsave, id, xsave.data(), xsave.size());
    kvm_xcrs xcrs{};
    xcrs.nr_xcrs = 1;
    xcrs.xcrs[0].value = 7;
    w.AddPod(StateTag::kXcrs, id, xcrs);
    kvm_lapic_state lapic{};
    w.AddPod(StateTag::kLapic, id, lapic);
    std::vector<kvm_msr_entry> msrs(3);
    msrs[0].index = 0x10;        // TSC
    msrs[1].index = 0x1b;        // APIC_BASE
    msrs[1].data = 0xfee00900;
    msrs[2].index = 0xc0000080;  // EFER
    msrs[2].data = 0xd01;
    w.Add(StateTag::kMsrs, id, msrs.data(), msrs.size() * sizeof(kvm_msr_entry));
    kvm_vcpu_events ev{};
    w.AddPod(StateTag::kVcpuEvents, id, ev);
    kvm_debugregs dr{};
    dr.dr6 = 0xffff0ff0;
    dr.dr7 = 0x400;
    w.AddPod(StateTag::kDebugRegs, id, dr);
  }
  for (uint32_t chip : {KVM_IRQCHIP_PIC_MASTER, KVM_IRQCHIP_PIC_SLAVE, KVM_IRQCHIP_IOAPIC}) {
    kvm_irqchip c{};
    c.chip_id = chip;
    w.AddPod(StateTag::kIrqchip, kVmWide, c);
  }
  kvm_pit_state2 pit{};
  w.AddPod(StateTag::kPit2, kVmWide, pit);
  kvm_clock_data clock{};
  clock.clock = 123456789;
  w.AddPod(StateTag::kClock, kVmWide, clock);
  UartState uart;
  uart.rx = {'o', 'k', '\n'};
  const Bytes u = uart.Serialize();
  w.Add(StateTag::kUart, kVmWide, u.data(), u.size());
  return w.Finish();
}

// A whole migration as the destination receives it (TCP: with PAGES frames).
Bytes Session(uint32_t cpus) {
  Bytes s = Frame(MsgType::kHello, 0, proto::Bytes(ValidHello(cpus, proto::TransportKind::kTcp)));
  Append(s, Frame(MsgType::kPages, 0, Bytes(4096, 0x5a), proto::kNoPayloadHash));
  const uint64_t sent = 4096;
  Append(s, Frame(MsgType::kProgress, 1, proto::Bytes(sent)));
  proto::EndRound er{};
  er.round = 1;
  er.pages = 1;
  er.bytes = 4096;
  Append(s, Frame(MsgType::kEndRound, 0, proto::Bytes(er)));
  er.round = 2;
  er.final_round = 1;
  er.pages = 0;
  er.bytes = 0;
  Append(s, Frame(MsgType::kEndRound, 0, proto::Bytes(er)));
  const Bytes state = MachineState(cpus);
  Append(s, Frame(MsgType::kDeviceState, 0, state));
  proto::Complete c{};
  c.total_pages = 1;
  c.state_bytes = state.size();
  Append(s, Frame(MsgType::kComplete, 0, proto::Bytes(c)));
  return s;
}

class Writer {
 public:
  explicit Writer(std::filesystem::path dir) : dir_(std::move(dir)) {}
  bool Put(const std::string& target, const std::string& name, const Bytes& data) {
    const std::filesystem::path d = dir_ / target;
    std::filesystem::create_directories(d);
    std::ofstream f(d / name, std::ios::binary | std::ios::trunc);
    f.write(reinterpret_cast<const char*>(data.data()), static_cast<std::streamsize>(data.size()));
    if (!f) {
      std::fprintf(stderr, "fuzz_corpus: cannot write %s\n", (d / name).c_str());
      ok_ = false;
    }
    return ok_;
  }
  bool ok() const { return ok_; }

 private:
  std::filesystem::path dir_;
  bool ok_ = true;
};

Bytes With(uint8_t first, const Bytes& rest) {
  Bytes out{first};
  Append(out, rest);
  return out;
}

void WriteFrames(Writer& w) {
  const proto::Hello hello = ValidHello(2, proto::TransportKind::kRdma);
  // Mode byte 0: taken as sent (valid checksums); 1: resealed by the target.
  for (uint8_t mode : {0, 1}) {
    const std::string m = mode ? "-resealed" : "";
    w.Put("frames", "session-1cpu" + m, With(mode, Session(1)));
    w.Put("frames", "session-2cpu" + m, With(mode, Session(2)));
  }
  w.Put("frames", "hello", With(0, Frame(MsgType::kHello, 0, proto::Bytes(hello))));
  // A further stream's first message and its end-of-round marker.
  proto::StreamJoin join{};
  join.stream = 1;
  w.Put("frames", "stream-join", With(0, Frame(MsgType::kStreamJoin, 0, proto::Bytes(join))));
  const proto::StreamEnd end{8192, 0, 0};
  w.Put("frames", "stream-end", With(0, Frame(MsgType::kStreamEnd, 1, proto::Bytes(end))));
  Bytes ack = Frame(MsgType::kHelloAck, 0, HelloAck(absl::OkStatus(), 2));
  w.Put("frames", "hello-ack-rdma", With(0, ack));
  w.Put("frames", "hello-ack-refused",
        With(0, Frame(MsgType::kHelloAck, 0,
                      HelloAck(absl::PermissionDeniedError("wrong key"), 0))));
  proto::Ack a{};
  a.status = proto::MakeStatusMsg(absl::OkStatus());
  Bytes answer = Frame(MsgType::kAck, 0, proto::AckBytes(a, {}));
  // An ACK with a destination's phase table (two vCPUs).
  std::vector<proto::PhaseTiming> phases;
  for (auto [p, vcpu] : std::vector<std::pair<proto::DstPhase, uint16_t>>{
           {proto::DstPhase::kStateReceived, proto::kVcpuNone},
           {proto::DstPhase::kCompleteChecked, proto::kVcpuNone},
           {proto::DstPhase::kRestoreVcpu, 0},
           {proto::DstPhase::kRestoreVcpu, 1},
           {proto::DstPhase::kRestoreVm, proto::kVcpuNone},
           {proto::DstPhase::kRestoreGroupFirst, proto::kVcpuNone},
           {proto::DstPhase::kResumed, proto::kVcpuNone}}) {
    phases.push_back({static_cast<uint16_t>(p), vcpu, 0, 123456});
  }
  w.Put("frames", "ack-phases", With(0, Frame(MsgType::kAck, 0, proto::AckBytes(a, phases))));
  Append(answer, Frame(MsgType::kAbort, 0,
                       proto::Bytes(proto::MakeStatusMsg(absl::DataLossError("digest")))));
  w.Put("frames", "ack-abort", With(0, answer));
}

void WriteHandshake(Writer& w) {
  struct Case {
    const char* name;
    uint8_t pick;
    proto::Hello hello;
    Bytes ack;
  };
  proto::Hello big = ValidHello(4, proto::TransportKind::kTcp);
  big.mem_size = 2ull << 30;
  const Case cases[] = {
      {"tcp", 2, ValidHello(1, proto::TransportKind::kTcp), HelloAck(absl::OkStatus(), 0)},
      {"rdma", 2 | 4, ValidHello(2, proto::TransportKind::kRdma),
       HelloAck(absl::OkStatus(), 4)},
      {"too-big", 1, big,
       HelloAck(absl::ResourceExhaustedError("at most 1024 MiB (--max-mem)"), 0)},
  };
  for (const Case& c : cases) {
    Bytes in{static_cast<uint8_t>(sizeof(proto::Hello)), c.pick};
    Append(in, proto::Bytes(c.hello));
    Append(in, c.ack);
    w.Put("handshake", c.name, in);
  }
}

// The seed blobs are whole machines: they must pass ValidateState, or the fuzzer would start
// outside the validator's deeper checks.
bool CheckValid(const Bytes& blob, uint32_t cpus) {
  StateLimits limits;
  limits.num_vcpus = cpus;
  limits.msr_indices = {0x10, 0x1b, 0xc0000080};
  absl::StatusOr<ValidatedState> s = ValidateState(blob, limits);
  if (!s.ok()) {
    std::fprintf(stderr, "fuzz_corpus: the %d-vCPU seed state is refused: %s\n", cpus,
                 std::string(s.status().message()).c_str());
  }
  return s.ok();
}

bool WriteState(Writer& w) {
  // First byte: the target's pick of destination limits (low bits: vCPU count - 1).
  const Bytes one = MachineState(1);
  const Bytes two = MachineState(2);
  w.Put("state", "machine-1cpu", With(0, one));
  w.Put("state", "machine-2cpu", With(1, two));
  return CheckValid(one, 1) && CheckValid(two, 2);
}

// fuzz_receiver's message encoding: u8 type, u32 arg, u32 length, payload.
void Msg(Bytes& out, MsgType type, uint32_t arg, const Bytes& payload) {
  out.push_back(static_cast<uint8_t>(type));
  const uint32_t len = static_cast<uint32_t>(payload.size());
  const auto* a = reinterpret_cast<const uint8_t*>(&arg);
  const auto* l = reinterpret_cast<const uint8_t*>(&len);
  out.insert(out.end(), a, a + 4);
  out.insert(out.end(), l, l + 4);
  Append(out, payload);
}

// A whole migration the receiver accepts: HELLO for 64 KiB, rounds (over TCP with their
// PAGES), the final round, DEVICE_STATE, COMPLETE with the totals and the memory digest.
Bytes ReceiverSession(proto::TransportKind kind, uint32_t cpus, bool abort_midway) {
  const bool tcp = kind == proto::TransportKind::kTcp;
  proto::Hello h = ValidHello(cpus, kind);
  h.mem_size = 64 << 10;
  Bytes s{static_cast<uint8_t>(tcp ? 0 : 1)};
  Msg(s, MsgType::kHello, 0, proto::Bytes(h));
  Msg(s, MsgType::kPing, 1, {});  // the source's round-trip measurement after HELLO_ACK
  Bytes mem(h.mem_size, 0);
  uint64_t total_pages = 0;
  for (uint32_t round = 1; round <= 2; ++round) {
    const std::vector<uint64_t> pages = round == 1 ? std::vector<uint64_t>{0, 2, 3}
                                                   : std::vector<uint64_t>{2};
    uint64_t sent = 0;
    for (uint64_t p : pages) {
      const Bytes data(proto::kPageSize, static_cast<uint8_t>(0x40 + round + p));
      if (tcp) {
        Msg(s, MsgType::kPages, static_cast<uint32_t>(p * proto::kPageSize), data);
        std::copy(data.begin(), data.end(), mem.begin() + p * proto::kPageSize);
      }
      sent += data.size();
      Msg(s, MsgType::kProgress, round, proto::Bytes(sent));
    }
    if (abort_midway && round == 2) {
      Msg(s, MsgType::kAbort, 0, proto::Bytes(proto::MakeStatusMsg(absl::CancelledError("stop"))));
    }
    proto::EndRound er{};
    er.round = round;
    er.pages = pages.size();
    er.bytes = sent;
    Msg(s, MsgType::kEndRound, 0, proto::Bytes(er));
    total_pages += pages.size();
  }
  proto::EndRound last{};
  last.round = 3;
  last.final_round = 1;
  Msg(s, MsgType::kEndRound, 0, proto::Bytes(last));
  const Bytes state = MachineState(cpus);
  Msg(s, MsgType::kDeviceState, 0, state);
  proto::Complete c{};
  c.total_pages = total_pages;
  c.memory_digest = proto::MemoryDigest(mem);
  c.state_bytes = state.size();
  Msg(s, MsgType::kComplete, 0, proto::Bytes(c));
  return s;
}

void WriteReceiver(Writer& w) {
  w.Put("receiver", "tcp-1cpu", ReceiverSession(proto::TransportKind::kTcp, 1, false));
  w.Put("receiver", "tcp-2cpu", ReceiverSession(proto::TransportKind::kTcp, 2, false));
  w.Put("receiver", "rdma-1cpu", ReceiverSession(proto::TransportKind::kRdma, 1, false));
  w.Put("receiver", "tcp-abort", ReceiverSession(proto::TransportKind::kTcp, 1, true));
  // A destination that requires the key, and a source that answers its challenge with a
  // proof it could not have computed, then carries on as if accepted.
  Bytes psk = ReceiverSession(proto::TransportKind::kTcp, 1, false);
  psk[0] = 2;
  Bytes hello_auth;
  proto::Hello h = ValidHello(1, proto::TransportKind::kTcp);
  h.mem_size = 64 << 10;
  h.auth = static_cast<uint32_t>(proto::AuthMode::kPsk);
  Msg(hello_auth, MsgType::kHello, 0, proto::Bytes(h));
  Msg(hello_auth, MsgType::kAuthProof, 0, Bytes(sizeof(proto::AuthProof), 0x22));
  Bytes out{2};
  Append(out, hello_auth);
  out.insert(out.end(), psk.begin() + 1 + 9 + sizeof(proto::Hello), psk.end());
  w.Put("receiver", "tcp-psk", out);
}

}  // namespace
}  // namespace lmig

int main(int argc, char** argv) {
  if (argc != 2) {
    std::fprintf(stderr, "usage: fuzz_corpus DIR (writes DIR/<target>/<seed>)\n");
    return 1;
  }
  lmig::Writer w{std::filesystem::path(argv[1])};
  lmig::WriteFrames(w);
  lmig::WriteHandshake(w);
  const bool valid = lmig::WriteState(w);
  lmig::WriteReceiver(w);
  return w.ok() && valid ? 0 : 1;
}
