// libFuzzer target: the destination's state machine (MigrationReceiver) fed whole message
// sequences, through a transport and a VM that live in memory: no KVM, no socket. What must
// hold whatever the source sends (issue 12):
//   - a VM is created at most once, only for a HELLO within the destination's limits;
//   - guest memory is written from the wire only while the receiver allows it, and only
//     inside the VM's memory; the destination never sends memory or takes the peer's;
//   - the guest is resumed at most once, only from the very state blob the validator
//     accepted, and only then is an ACK sent and the migration reported done;
//   - a migration that fails ends with no resumed guest and no ACK;
//   - a destination that requires the pre-shared key creates no VM for a source that cannot
//     prove it (the fuzzer has no key, and the destination's nonce is fresh every run).
//
// Input: byte 0 bit 0 = transport (0 TCP, 1 RDMA), bit 1 = the destination requires a PSK;
// then messages, each u8 type, u32 arg,
// u32 length (little endian), then that many payload bytes (cut short at the end of input).
// The fake transport checks each as CheckHeader would a real frame's header; PAGES frames
// (arg = RAM offset) go into guest memory as TcpTransport puts them, never to the receiver.
#include <algorithm>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <optional>
#include <span>
#include <string>
#include <vector>

#include "absl/strings/str_format.h"
#include "include/lmig/protocol.h"
#include "include/lmig/status.h"
#include "include/lmig/transport.h"
#include "src/crypto/psk.h"
#include "src/machine/state_codec.h"
#include "src/migration/receiver.h"
#include "tests/fuzz/fuzz_check.h"

namespace lmig {
namespace {

// The destination's --max-mem here: small, so that any accepted HELLO is cheap to map.
constexpr uint64_t kMaxMem = 1ull << 20;
// The MSRs the fake VM's KVM restores (the seed states of make_corpus.cc carry these).
const std::vector<uint32_t> kMsrs = {0x10, 0x1b, 0x3b, 0xc0000080};

class FakeVm : public IncomingVm {
 public:
  explicit FakeVm(const proto::Hello& h) : hello_(h), mem_(h.mem_size) {}
  std::span<uint8_t> memory() override { return mem_; }
  absl::Status CheckState(std::span<const uint8_t> blob) override {
    StateLimits limits;
    limits.num_vcpus = hello_.num_cpus;
    limits.msr_indices = kMsrs;
    absl::Status s = ValidateState(blob, limits).status();
    if (s.ok()) {
      accepted_ = std::vector<uint8_t>(blob.begin(), blob.end());
    }
    return s;
  }
  absl::StatusOr<double> Prepare() override {
    FUZZ_CHECK(!resumed_ && !accepted_.has_value());  // only before any state
    return 0.0;  // nothing to time here
  }
  absl::StatusOr<RestoreTimings> RestoreAndResume(std::span<const uint8_t> blob) override {
    FUZZ_CHECK(!resumed_);
    FUZZ_CHECK(accepted_.has_value());
    FUZZ_CHECK(blob.size() == accepted_->size() &&
               std::equal(blob.begin(), blob.end(), accepted_->begin()));
    resumed_ = true;
    return RestoreTimings{};  // nothing timed: the ACK's restore phases are missing
  }
  void Release() override {
    FUZZ_CHECK(resumed_ && !released_);
    released_ = true;
  }
  bool resumed() const { return resumed_; }

 private:
  proto::Hello hello_;
  std::vector<uint8_t> mem_;
  std::optional<std::vector<uint8_t>> accepted_;
  bool resumed_ = false;
  bool released_ = false;
};

class FakeTransport : public Transport {
 public:
  FakeTransport(proto::TransportKind kind, std::span<const uint8_t> in) : kind_(kind), in_(in) {}

  proto::TransportKind kind() const override { return kind_; }
  const std::string& peer() const override { return peer_; }

  absl::Status Send(proto::MsgType type, uint64_t arg,
                    std::span<const uint8_t> payload) override {
    // What the receiver sends must pass the peer's header check too.
    FUZZ_CHECK(proto::CheckHeader(proto::MakeHeader(type, arg, payload)).ok());
    sent_.push_back(type);
    stats_.control_bytes += sizeof(proto::FrameHeader) + payload.size();
    return absl::OkStatus();
  }

  absl::StatusOr<proto::Message> Receive() override {
    for (;;) {
      if (in_.size() < 9) {
        return absl::UnavailableError("the source closed the connection");
      }
      const auto type = static_cast<proto::MsgType>(in_[0]);
      uint32_t arg, len;
      std::memcpy(&arg, in_.data() + 1, 4);
      std::memcpy(&len, in_.data() + 5, 4);
      in_ = in_.subspan(9);
      const size_t n = std::min<size_t>(len, in_.size());
      const std::span<const uint8_t> payload = in_.first(n);
      in_ = in_.subspan(n);
      const uint16_t flags = type == proto::MsgType::kPages ? proto::kNoPayloadHash : 0;
      RETURN_IF_ERROR(proto::CheckHeader(proto::MakeHeader(type, arg, payload, flags)));
      if (type != proto::MsgType::kPages) {
        proto::Message m;
        m.type = type;
        m.arg = arg;
        m.payload.assign(payload.begin(), payload.end());
        return m;
      }
      // As TcpTransport::Receive: only while allowed, only whole pages inside guest memory.
      if (kind_ != proto::TransportKind::kTcp || !allow_pages_ || mem_ == nullptr) {
        return absl::DataLossError("PAGES frame refused");
      }
      if (arg % proto::kPageSize != 0 || n % proto::kPageSize != 0 || arg > mem_size_ ||
          n > mem_size_ - arg) {
        return absl::DataLossError(absl::StrFormat("PAGES [0x%x, +0x%x) outside guest memory",
                                                   arg, n));
      }
      std::memcpy(mem_ + arg, payload.data(), n);
      stats_.data_bytes += n;
    }
  }

  void SetDeadline(absl::Time, std::string) override {}
  void AllowIncomingPages(bool allow) override {
    FUZZ_CHECK(!allow || mem_ != nullptr);  // never before the VM's memory is attached
    allow_pages_ = allow;
  }
  absl::StatusOr<std::vector<uint8_t>> AttachMemory(uint8_t* base, uint64_t size) override {
    FUZZ_CHECK(mem_ == nullptr);
    mem_ = base;
    mem_size_ = size;
    return std::vector<uint8_t>();
  }
  absl::Status SetPeerMemory(std::span<const uint8_t>) override {
    FUZZ_CHECK(false);  // a destination never takes the peer's memory layout
    return absl::OkStatus();
  }
  absl::Status Write(std::span<const RamRange>) override {
    FUZZ_CHECK(false);  // nor sends guest memory
    return absl::OkStatus();
  }
  absl::Status Flush() override { return absl::OkStatus(); }
  TransportStats stats() const override { return stats_; }

  const std::vector<proto::MsgType>& sent() const { return sent_; }

 private:
  proto::TransportKind kind_;
  std::span<const uint8_t> in_;
  std::string peer_ = "fuzz";
  uint8_t* mem_ = nullptr;
  uint64_t mem_size_ = 0;
  bool allow_pages_ = false;
  TransportStats stats_;
  std::vector<proto::MsgType> sent_;
};

void RunOne(std::span<const uint8_t> data) {
  const proto::TransportKind kind =
      (data[0] & 1) ? proto::TransportKind::kRdma : proto::TransportKind::kTcp;
  FakeTransport t(kind, data.subspan(1));
  std::unique_ptr<FakeVm> vm;
  int created = 0;
  ReceiverOptions opts;
  opts.max_mem = kMaxMem;
  static const crypto::Psk* const psk = [] {
    absl::StatusOr<crypto::Psk> k = crypto::Psk::FromBytes(std::vector<uint8_t>(32, 0x11));
    FUZZ_CHECK(k.ok());
    return new crypto::Psk(std::move(*k));
  }();
  const bool with_psk = data[0] & 2;
  if (with_psk) {
    opts.psk = psk;
  }
  MigrationReceiver r(
      &t, opts,
      [&](const proto::Hello& h) -> absl::StatusOr<IncomingVm*> {
        ++created;
        FUZZ_CHECK(created == 1);
        FUZZ_CHECK(!with_psk);
        proto::HelloLimits limits;
        limits.max_mem = kMaxMem;
        limits.transport = kind;
        FUZZ_CHECK(proto::CheckHello(h, limits).ok());
        vm = std::make_unique<FakeVm>(h);
        return vm.get();
      },
      [](const std::string&) {});
  MigrationStats stats;
  absl::Status s = r.Handshake(stats);
  if (s.ok()) {
    FUZZ_CHECK(created == 1);
    s = r.Run(stats);
  }
  if (std::getenv("LMIG_FUZZ_VERBOSE") != nullptr) {  // to see where a seed ends
    std::fprintf(stderr, "receiver: %s, state %s\n", s.ToString().c_str(),
                 MigrationReceiver::StateName(r.state()));
  }
  const bool resumed = vm != nullptr && vm->resumed();
  const bool acked = std::find(t.sent().begin(), t.sent().end(), proto::MsgType::kAck) !=
                     t.sent().end();
  if (s.ok()) {
    FUZZ_CHECK(r.state() == MigrationReceiver::State::kDone);
    FUZZ_CHECK(resumed && acked);
    FUZZ_CHECK(t.sent().back() == proto::MsgType::kAck);
  } else {
    FUZZ_CHECK(r.state() != MigrationReceiver::State::kDone);
    FUZZ_CHECK(!resumed && !acked);
    FUZZ_CHECK(!s.message().empty());
  }
}

}  // namespace
}  // namespace lmig

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) {
    return 0;
  }
  lmig::RunOne(std::span<const uint8_t>(data, size));
  return 0;
}
