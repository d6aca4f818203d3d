// The destination side: an explicit state machine over the control messages.
//
//   kAwaitHello --HELLO--> (create the VM, attach memory, HELLO_ACK) --> kReceiving
//   kReceiving  --END_ROUND--> kReceiving    --DEVICE_STATE--> kHaveState
//   kHaveState  --COMPLETE--> (verify, restore, resume vCPUs, ACK) --> kDone
//   any state   --ABORT--> failed;  anything else --> failed, naming the message and the state
//
// The guest is resumed only from a complete, verified state; otherwise the destination exits
// non-zero and the source keeps its guest.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "include/lmig/protocol.h"
#include "include/lmig/transport.h"
#include "src/machine/machine.h"
#include "src/migration/stats.h"

namespace lmig {

class MigrationReceiver {
 public:
  enum class State { kInvalid = 0, kAwaitHello, kReceiving, kHaveState, kDone, kFailed };
  static const char* StateName(State s);

  // Creates the machine for a validated Hello (memory and vCPUs as the source has them).
  using CreateMachineFn = std::function<absl::StatusOr<Machine*>(const proto::Hello&)>;
  // Starts the restored machine (console session, vCPU threads).
  using ResumeFn = std::function<absl::Status(Machine*)>;
  using ProgressFn = std::function<void(const std::string&)>;

  MigrationReceiver(Transport* t, std::string key, CreateMachineFn create, ResumeFn resume,
                    ProgressFn progress);

  // Runs the state machine to kDone (the guest runs here) or an error (an ABORT was sent when
  // the link still works).
  absl::Status Run(MigrationStats& stats);
  State state() const { return state_; }

 private:
  absl::Status Handle(const proto::Message& m, MigrationStats& stats);
  absl::Status OnHello(const proto::Message& m);
  absl::Status OnComplete(const proto::Message& m, MigrationStats& stats);

  Transport* t_;
  std::string key_;
  CreateMachineFn create_;
  ResumeFn resume_;
  ProgressFn progress_;
  State state_ = State::kAwaitHello;
  Machine* machine_ = nullptr;
  proto::Hello hello_{};
  std::vector<uint8_t> device_state_;
  uint64_t pages_announced_ = 0;
  absl::Time last_round_at_;
};

}  // namespace lmig
