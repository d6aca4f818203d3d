// The destination side: an explicit state machine over the control messages. It trusts
// nothing from the wire: each message is accepted only in the state that allows it, with every
// count and total checked against what actually arrived, and every phase has a deadline.
//
//   kAwaitHello --HELLO--> (check limits; with a PSK: AUTH_CHALLENGE, AUTH_PROOF checked;
//                          then create the VM, attach memory, HELLO_ACK; with N streams,
//                          streams 1..N-1 join: incoming_streams.h) --> kRound
//   kRound      --PROGRESS (this round)--> kRound;  --PING--> (PONG) kRound
//               --END_ROUND n (n = expected round; with N streams, once every further
//                 stream's STREAM_END for n is in)--> kRound, or kAwaitState if final
//   kAwaitState --DEVICE_STATE (validated at once)--> kHaveState
//   kHaveState  --COMPLETE--> (totals, digest, restore, resume vCPUs, ACK) --> kDone
//   any state   --ABORT--> failed;  anything else --> failed, naming the message and the state
//
// Deadlines: HELLO within ReceiverOptions::hello_timeout of the connection; the whole
// migration within max_time (PROGRESS cannot stretch it); from the final END_ROUND to
// COMPLETE within phase_timeout. The guest is resumed only from a complete, validated state;
// otherwise the destination exits non-zero and the source keeps its guest.
#pragma once

#include <functional>
#include <optional>
#include <span>
#include <string>

#include "absl/status/statusor.h"
#include "absl/time/time.h"
#include "include/lmig/protocol.h"
#include "include/lmig/transport.h"
#include "src/machine/state_timing.h"
#include "src/migration/incoming_streams.h"
#include "src/migration/stats.h"
#include "src/crypto/psk.h"

namespace lmig {

// How long the destination's restore and resume took (monotonic clock); an unset field was
// not measured and is reported as missing.
struct RestoreTimings {
  std::optional<StateTiming> restore;
  std::optional<double> resume_ms;  // vCPU threads and console started
};

// What the receiver needs of the machine it fills (a Machine in the VMM; a plain buffer in
// the fuzzer and the unit tests).
class IncomingVm {
 public:
  virtual ~IncomingVm() = default;
  // The guest's RAM, which the transport fills.
  virtual std::span<uint8_t> memory() = 0;
  // Validates a device-state blob without touching the VM. Error names the record.
  virtual absl::Status CheckState(std::span<const uint8_t> blob) = 0;
  // Before any state arrives, what can be done ahead of the pause: a dry-run restore of the
  // fresh VM's own state (so the source's policy knows this side's share of the pause, and the
  // first restore's one-time costs are paid outside it) and the vCPU threads created, parked.
  // Returns the dry-run restore's duration in ms (0: not measured). An error means the VM
  // cannot take a state at all.
  virtual absl::StatusOr<double> Prepare() = 0;
  // Loads the (validated) state and makes the guest ready to run (everything that can fail is
  // done); returns how long each step took. The vCPUs run from Release on.
  virtual absl::StatusOr<RestoreTimings> RestoreAndResume(std::span<const uint8_t> blob) = 0;
  // Lets the resumed guest run: after the ACK is sent (cannot fail).
  virtual void Release() = 0;
};

struct ReceiverOptions {
  // The pre-shared key (not owned; null: unauthenticated, for loopback or --insecure).
  const crypto::Psk* psk = nullptr;
  uint64_t max_mem = kMaxGuestMemory;                 // --max-mem
  absl::Duration hello_timeout = absl::Seconds(10);
  absl::Duration phase_timeout = absl::Seconds(30);  // final round -> COMPLETE
  // The whole migration; zero: derived from the announced memory (MaxTimeFor).
  absl::Duration max_time = absl::ZeroDuration();
  // Asked once, just before the ACK that hands the guest over: false (the destination is
  // being stopped) ends the migration there, with no ACK sent and the guest never run, so
  // the source keeps it. Null: always go ahead.
  std::function<bool()> commit;
  // Further streams (Hello::streams > 1) come from here: the next connection to the same
  // address. Null: this destination takes one stream, and refuses a HELLO asking for more.
  AcceptStreamFn accept_stream;
  // How long one stream connection may take to send its STREAM_JOIN (all of them must have
  // joined within hello_timeout of HELLO_ACK).
  absl::Duration join_wait = absl::Seconds(2);
};

// The default bound on a whole incoming migration of MEM_BYTES: 5 minutes plus one second
// per 16 MiB (a link slower than 128 Mbit/s on average needs --max-time).
absl::Duration MaxTimeFor(uint64_t mem_bytes);

class MigrationReceiver {
 public:
  enum class State {
    kInvalid = 0, kAwaitHello, kRound, kAwaitState, kHaveState, kDone, kFailed
  };
  static const char* StateName(State s);

  // Creates the VM for a validated Hello (memory and vCPUs as the source has them).
  using CreateVmFn = std::function<absl::StatusOr<IncomingVm*>(const proto::Hello&)>;
  using ProgressFn = std::function<void(const std::string&)>;

  MigrationReceiver(Transport* t, ReceiverOptions opts, CreateVmFn create, ProgressFn progress);

  // Waits for a valid HELLO (by hello_timeout) and answers it. After an error the connection
  // is worthless (an ABORT was sent when the link still works); the VM was not created unless
  // the HELLO was valid.
  absl::Status Handshake(MigrationStats& stats);
  // Called once a HELLO has passed its checks, before the VM is created and HELLO_ACK is sent
  // (with one stream the destination stops listening there, one migration at a time; with N,
  // once Handshake has returned and the further streams have joined).
  void set_on_accepted(std::function<void(const proto::Hello&)> f) {
    on_accepted_ = std::move(f);
  }
  // After Handshake: runs the state machine to kDone (the guest runs here) or an error.
  absl::Status Run(MigrationStats& stats);
  State state() const { return state_; }

 private:
  absl::Status Handle(const proto::Message& m, MigrationStats& stats);
  absl::Status OnHello(const proto::Message& m);
  absl::Status OnEndRound(const proto::Message& m, MigrationStats& stats);
  absl::Status OnProgress(const proto::Message& m);
  absl::Status OnPing(const proto::Message& m);
  absl::Status OnDeviceState(const proto::Message& m);
  absl::Status OnComplete(const proto::Message& m, MigrationStats& stats);
  absl::Status Fail(absl::Status s, MigrationStats& stats);
  void Finish(MigrationStats& stats);

  Transport* t_;                        // the sealed channel once authenticated
  std::unique_ptr<Transport> sealed_;
  ReceiverOptions opts_;
  CreateVmFn create_;
  ProgressFn progress_;
  std::function<void(const proto::Hello&)> on_accepted_;
  std::unique_ptr<IncomingStreams> streams_;  // with Hello::streams > 1
  State state_ = State::kAwaitHello;
  IncomingVm* vm_ = nullptr;
  proto::Hello hello_{};
  std::vector<uint8_t> device_state_;
  uint32_t next_round_ = 1;
  uint64_t pages_announced_ = 0;
  uint64_t round_data_start_ = 0;     // transport data bytes when the round began (TCP)
  uint64_t round_progress_ = 0;       // bytes the last PROGRESS of this round claimed
  uint32_t pings_ = 0;
  absl::Time start_;
  // Stop-and-copy steps, for the ACK (and this side's report).
  MonoClock::time_point final_round_at_;
  MonoClock::time_point hello_at_;  // HELLO in hand
  std::vector<proto::PhaseTiming> phases_;
  void AddPhase(proto::DstPhase p, double ms, uint16_t vcpu = proto::kVcpuNone);
  absl::Time migration_deadline_ = absl::InfiniteFuture();
};

}  // namespace lmig
