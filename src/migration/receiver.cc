#include "src/migration/receiver.h"

#include <algorithm>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"

namespace lmig {

const char* MigrationReceiver::StateName(State s) {
  switch (s) {
    case State::kAwaitHello: return "awaiting HELLO";
    case State::kReceiving: return "receiving memory";
    case State::kHaveState: return "holding device state";
    case State::kDone: return "done";
    case State::kFailed: return "failed";
    default: return "invalid";
  }
}

MigrationReceiver::MigrationReceiver(Transport* t, std::string key, CreateMachineFn create,
                                     ResumeFn resume, ProgressFn progress)
    : t_(t), key_(std::move(key)), create_(std::move(create)), resume_(std::move(resume)),
      progress_(std::move(progress)) {}

absl::Status MigrationReceiver::OnHello(const proto::Message& m) {
  ASSIGN_OR_RETURN(hello_, proto::Parse<proto::Hello>(m.payload, m.type));
  absl::Status s = proto::CheckHello(hello_, proto::KeyHash(key_));
  if (s.ok() && hello_.transport != static_cast<uint32_t>(t_->kind())) {
    s = absl::FailedPreconditionError("transport mismatch");
  }
  std::vector<uint8_t> blob;
  if (s.ok()) {
    auto machine = create_(hello_);
    s = machine.status();
    if (s.ok()) {
      machine_ = *machine;
      auto b = t_->AttachMemory(machine_->memory().base(), machine_->memory().size());
      s = b.status();
      if (s.ok()) {
        blob = std::move(*b);
      }
    }
  }
  std::vector<uint8_t> ack = proto::Bytes(proto::MakeStatusMsg(s));
  ack.insert(ack.end(), blob.begin(), blob.end());
  RETURN_IF_ERROR(t_->Send(proto::MsgType::kHelloAck, 0, ack));
  if (!s.ok()) {
    return Annotate(s, "refused the migration");
  }
  progress_(absl::StrFormat("incoming migration: %d MiB, %d vCPUs", hello_.mem_size >> 20,
                            hello_.num_cpus));
  state_ = State::kReceiving;
  return absl::OkStatus();
}

absl::Status MigrationReceiver::OnComplete(const proto::Message& m, MigrationStats& stats) {
  ASSIGN_OR_RETURN(proto::Complete c, proto::Parse<proto::Complete>(m.payload, m.type));
  if (c.state_bytes != device_state_.size()) {
    return absl::DataLossError(absl::StrFormat(
        "COMPLETE announces %d bytes of device state, received %d", c.state_bytes,
        device_state_.size()));
  }
  if (c.total_pages != pages_announced_) {
    return absl::DataLossError(absl::StrFormat(
        "COMPLETE announces %d pages, the rounds announced %d", c.total_pages, pages_announced_));
  }
  if (hello_.features & proto::kFeatureVerifyMemory) {
    const uint64_t digest =
        proto::MemoryDigest({machine_->memory().base(), machine_->memory().size()});
    if (digest != c.memory_digest) {
      return absl::DataLossError(absl::StrFormat(
          "memory digest mismatch: source 0x%016x, destination 0x%016x", c.memory_digest,
          digest));
    }
    progress_("memory digest verified");
  }
  t_->RevokeRemoteAccess();
  RETURN_IF_ERROR(Annotate(machine_->RestoreState(device_state_), "restoring device state"));
  RETURN_IF_ERROR(Annotate(resume_(machine_), "resuming the guest"));
  state_ = State::kDone;
  stats.state_bytes = device_state_.size();
  RETURN_IF_ERROR(
      t_->Send(proto::MsgType::kAck, 0, proto::Bytes(proto::MakeStatusMsg(absl::OkStatus()))));
  return absl::OkStatus();
}

absl::Status MigrationReceiver::Handle(const proto::Message& m, MigrationStats& stats) {
  using proto::MsgType;
  if (m.type == MsgType::kAbort) {
    auto st = proto::Parse<proto::StatusMsg>(m.payload, m.type);
    return Annotate(st.ok() ? proto::StatusFromMsg(*st) : st.status(), "the source aborted");
  }
  switch (state_) {
    case State::kAwaitHello:
      if (m.type == MsgType::kHello) {
        return OnHello(m);
      }
      break;
    case State::kReceiving:
      if (m.type == MsgType::kEndRound) {
        ASSIGN_OR_RETURN(proto::EndRound er, proto::Parse<proto::EndRound>(m.payload, m.type));
        pages_announced_ += er.pages;
        stats.rounds = static_cast<int>(er.round);
        stats.pages_sent = pages_announced_;
        RoundStats rs;
        rs.round = static_cast<int>(er.round);
        rs.dirty_pages = er.pages;
        rs.bytes = er.bytes;
        rs.final_round = er.final_round != 0;
        stats.per_round.push_back(rs);
        progress_(absl::StrFormat("round %d%s received: %d pages", er.round,
                                  er.final_round ? " (final)" : "", er.pages));
        return absl::OkStatus();
      }
      if (m.type == MsgType::kProgress) {
        return absl::OkStatus();  // receiving it was the point: the source is alive
      }
      if (m.type == MsgType::kDeviceState) {
        device_state_ = m.payload;
        state_ = State::kHaveState;
        return absl::OkStatus();
      }
      break;
    case State::kHaveState:
      if (m.type == MsgType::kComplete) {
        return OnComplete(m, stats);
      }
      break;
    default:
      break;
  }
  return absl::DataLossError(absl::StrFormat("unexpected %s while %s",
                                             proto::MsgTypeName(m.type), StateName(state_)));
}

absl::Status MigrationReceiver::Run(MigrationStats& stats) {
  const absl::Time start = absl::Now();
  stats.role = "destination";
  stats.transport = t_->kind() == proto::TransportKind::kRdma ? "rdma" : "tcp";
  absl::Status s;
  while (state_ != State::kDone) {
    auto m = t_->Receive();
    if (!m.ok()) {
      s = Annotate(m.status(), absl::StrCat("while ", StateName(state_)));
      break;
    }
    s = Handle(*m, stats);
    if (!s.ok()) {
      break;
    }
  }
  stats.total_time_ms = absl::ToDoubleMilliseconds(absl::Now() - start);
  const TransportStats ts = t_->stats();
  // RDMA WRITEs land without the destination seeing them: count the pages announced.
  stats.transferred_bytes =
      std::max<uint64_t>(ts.data_bytes, stats.pages_sent * GuestMemory::kPageSize) + ts.control_bytes;
  stats.registration_ms = ts.registration_ms;
  if (s.ok()) {
    stats.status = "completed";
    return s;
  }
  state_ = State::kFailed;
  stats.status = "failed";
  stats.error = std::string(s.message());
  (void)t_->Send(proto::MsgType::kAbort, 0, proto::Bytes(proto::MakeStatusMsg(s)));
  return s;
}

}  // namespace lmig
