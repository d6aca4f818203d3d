#include "src/migration/receiver.h"

#include <algorithm>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/migration/secure_channel.h"
#include "src/migration/stream_join.h"

namespace lmig {

using proto::MsgType;

const char* MigrationReceiver::StateName(State s) {
  switch (s) {
    case State::kAwaitHello: return "awaiting HELLO";
    case State::kRound: return "receiving memory";
    case State::kAwaitState: return "awaiting DEVICE_STATE after the final round";
    case State::kHaveState: return "holding device state";
    case State::kDone: return "done";
    case State::kFailed: return "failed";
    default: return "invalid";
  }
}

absl::Duration MaxTimeFor(uint64_t mem_bytes) {
  return absl::Minutes(5) + absl::Seconds(static_cast<double>(mem_bytes >> 24));
}

MigrationReceiver::MigrationReceiver(Transport* t, ReceiverOptions opts, CreateVmFn create,
                                     ProgressFn progress)
    : t_(t), opts_(std::move(opts)), create_(std::move(create)),
      progress_(std::move(progress)) {}

absl::Status MigrationReceiver::OnHello(const proto::Message& m) {
  hello_at_ = MonoClock::now();
  ASSIGN_OR_RETURN(hello_, proto::Parse<proto::Hello>(m.payload, m.type));
  proto::HelloLimits limits;
  limits.max_mem = opts_.max_mem;
  limits.auth = opts_.psk != nullptr ? proto::AuthMode::kPsk : proto::AuthMode::kNone;
  limits.transport = t_->kind();
  absl::Status s = proto::CheckHello(hello_, limits);
  if (s.ok() && hello_.streams > 1 && !opts_.accept_stream) {
    s = absl::UnimplementedError(absl::StrFormat(
        "the source asks for %d streams, this destination takes one (--streams 1)",
        hello_.streams));
  }
  if (s.ok() && opts_.psk != nullptr) {
    // Before anything is created, registered or disclosed: the source proves the key.
    auto sealed = AuthenticateAsDestination(t_, *opts_.psk, m.payload);
    if (!sealed.ok()) {
      return sealed.status();  // the caller's ABORT goes out in the clear
    }
    sealed_ = std::move(*sealed);
    t_ = sealed_.get();
    hello_at_ = MonoClock::now();  // AUTH_PROOF in hand (and checked): the last message
  }
  std::vector<uint8_t> blob;
  proto::HelloAckTimes times{};
  if (s.ok() && on_accepted_) {
    on_accepted_(hello_);
  }
  proto::StreamKey stream_key{};
  if (s.ok() && hello_.streams > 1) {
    auto k = NewStreamKey();
    s = k.status();
    if (s.ok()) {
      stream_key = *k;
    }
  }
  if (s.ok()) {
    auto vm = create_(hello_);
    s = vm.status();
    if (s.ok()) {
      vm_ = *vm;
      auto b = t_->AttachMemory(vm_->memory().data(), vm_->memory().size());
      s = b.status();
      if (s.ok()) {
        blob = std::move(*b);
      }
    }
  }
  if (s.ok()) {
    absl::StatusOr<double> restore_ms = vm_->Prepare();
    s = restore_ms.status();
    if (s.ok()) {
      times.restore_ns = static_cast<uint64_t>(
          std::clamp(*restore_ms, 0.0, proto::kMaxPhaseNs / 1e6) * 1e6);
    }
  }
  if (s.ok()) {
    times.setup_ns = static_cast<uint64_t>(
        std::clamp(MsBetween(hello_at_, MonoClock::now()), 0.0, proto::kMaxPhaseNs / 1e6) *
        1e6);
  } else {
    times = {};
  }
  if (s.ok()) {
    // Stream 0 takes pages once the source has HELLO_ACK (over RDMA its QP opens to remote
    // writes now, before the source can have the region table; the source's further streams
    // join after this, and it may write on stream 0 before Join below returns).
    t_->AllowIncomingPages(true);
  }
  RETURN_IF_ERROR(
      t_->Send(MsgType::kHelloAck, 0, proto::HelloAckBytes(s, times, blob, stream_key)));
  if (!s.ok()) {
    return Annotate(s, "refused the migration");
  }
  const absl::Duration max_time =
      opts_.max_time > absl::ZeroDuration() ? opts_.max_time : MaxTimeFor(hello_.mem_size);
  migration_deadline_ = start_ + max_time;
  if (hello_.streams > 1) {
    streams_ = std::make_unique<IncomingStreams>(static_cast<int>(hello_.streams));
    RETURN_IF_ERROR(streams_->Join(opts_.accept_stream, stream_key,
                                   absl::Now() + opts_.hello_timeout, opts_.join_wait,
                                   migration_deadline_, vm_->memory(), progress_));
  }
  progress_(absl::StrFormat("incoming migration: %d MiB, %d vCPUs%s", hello_.mem_size >> 20,
                            hello_.num_cpus,
                            hello_.streams > 1
                                ? absl::StrFormat(", %d streams", hello_.streams)
                                : std::string()));
  t_->SetDeadline(migration_deadline_, "the migration");
  round_data_start_ = t_->stats().data_bytes;
  state_ = State::kRound;
  return absl::OkStatus();
}

absl::Status MigrationReceiver::OnProgress(const proto::Message& m) {
  ASSIGN_OR_RETURN(uint64_t bytes, proto::Parse<uint64_t>(m.payload, m.type));
  if (m.arg != next_round_) {
    return absl::DataLossError(absl::StrFormat(
        "PROGRESS for round %d while receiving round %d", m.arg, next_round_));
  }
  if (bytes < round_progress_ || bytes > hello_.mem_size) {
    return absl::DataLossError(absl::StrFormat(
        "PROGRESS of round %d claims %d bytes (before: %d, guest memory %d)", next_round_,
        bytes, round_progress_, hello_.mem_size));
  }
  round_progress_ = bytes;
  return absl::OkStatus();  // receiving it was the point: the source is alive
}

absl::Status MigrationReceiver::OnEndRound(const proto::Message& m, MigrationStats& stats) {
  ASSIGN_OR_RETURN(proto::EndRound er, proto::Parse<proto::EndRound>(m.payload, m.type));
  const uint64_t num_pages = hello_.mem_size / proto::kPageSize;
  if (er.round != next_round_ || er.round > proto::kMaxRounds) {
    return absl::DataLossError(absl::StrFormat(
        "END_ROUND for round %d, expected round %d (at most %d)", er.round, next_round_,
        proto::kMaxRounds));
  }
  if (er.final_round > 1 || er.pages > num_pages || er.bytes != er.pages * proto::kPageSize) {
    return absl::DataLossError(absl::StrFormat(
        "END_ROUND %d is inconsistent: %d pages, %d bytes, final=%d, guest has %d pages",
        er.round, er.pages, er.bytes, er.final_round, num_pages));
  }
  if (er.bytes < round_progress_) {
    return absl::DataLossError(absl::StrFormat(
        "END_ROUND %d announces %d bytes, its PROGRESS claimed %d", er.round, er.bytes,
        round_progress_));
  }
  uint64_t others = 0;  // what the further streams carried in the round
  if (streams_ != nullptr) {
    const absl::Time by =
        er.final_round ? std::min(migration_deadline_, absl::Now() + opts_.phase_timeout)
                       : migration_deadline_;
    ASSIGN_OR_RETURN(others, streams_->AwaitRound(er.round, er.final_round != 0, by));
  }
  if (t_->kind() == proto::TransportKind::kTcp) {
    // Over TCP every byte of the round came through the streams: the marker must match them.
    const uint64_t got = t_->stats().data_bytes - round_data_start_ + others;
    if (got != er.bytes) {
      return absl::DataLossError(absl::StrFormat(
          "END_ROUND %d announces %d bytes of pages, %d arrived", er.round, er.bytes, got));
    }
  }
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
  ++next_round_;
  round_progress_ = 0;
  round_data_start_ = t_->stats().data_bytes;
  if (er.final_round) {
    final_round_at_ = MonoClock::now();
    phases_.clear();
    // No guest memory from the wire any more; state and completion follow promptly.
    t_->AllowIncomingPages(false);
    t_->SetDeadline(std::min(migration_deadline_, absl::Now() + opts_.phase_timeout),
                    "stop-and-copy");
    state_ = State::kAwaitState;
  }
  return absl::OkStatus();
}

void MigrationReceiver::AddPhase(proto::DstPhase p, double ms, uint16_t vcpu) {
  proto::PhaseTiming e{};
  e.phase = static_cast<uint16_t>(p);
  e.vcpu = vcpu;
  e.ns = static_cast<uint64_t>(std::clamp(ms, 0.0, proto::kMaxPhaseNs / 1e6) * 1e6);
  phases_.push_back(e);
}

absl::Status MigrationReceiver::OnDeviceState(const proto::Message& m) {
  const MonoClock::time_point start = MonoClock::now();
  AddPhase(proto::DstPhase::kStateReceived, MsBetween(final_round_at_, start));
  RETURN_IF_ERROR(Annotate(vm_->CheckState(m.payload), "DEVICE_STATE refused"));
  AddPhase(proto::DstPhase::kStateValidated, MsBetween(start, MonoClock::now()));
  device_state_ = m.payload;
  state_ = State::kHaveState;
  return absl::OkStatus();
}

absl::Status MigrationReceiver::OnComplete(const proto::Message& m, MigrationStats& stats) {
  MonoClock::time_point lap = MonoClock::now();
  auto since_lap = [&lap] {
    const MonoClock::time_point now = MonoClock::now();
    const double ms = MsBetween(lap, now);
    lap = now;
    return ms;
  };
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
    const uint64_t digest = proto::MemoryDigest(vm_->memory());
    if (digest != c.memory_digest) {
      return absl::DataLossError(absl::StrFormat(
          "memory digest mismatch: source 0x%016x, destination 0x%016x", c.memory_digest,
          digest));
    }
    progress_("memory digest verified");
  }
  AddPhase(proto::DstPhase::kCompleteChecked, since_lap());
  t_->RevokeRemoteAccess();
  AddPhase(proto::DstPhase::kRemoteAccessRevoked, since_lap());
  ASSIGN_OR_RETURN(RestoreTimings rt,
                   Annotate(vm_->RestoreAndResume(device_state_), "resuming the guest"));
  state_ = State::kDone;
  stats.state_bytes = device_state_.size();
  if (rt.restore.has_value()) {
    const StateTiming& t = *rt.restore;
    for (size_t i = 0; i < t.vcpu_ms.size() && i < hello_.num_cpus; ++i) {
      AddPhase(proto::DstPhase::kRestoreVcpu, t.vcpu_ms[i], static_cast<uint16_t>(i));
    }
    AddPhase(proto::DstPhase::kRestoreVm, t.vm_ms);
    static_assert(static_cast<int>(proto::DstPhase::kRestoreGroupLast) -
                      static_cast<int>(proto::DstPhase::kRestoreGroupFirst) + 1 ==
                  kNumStateCalls);
    for (int c = 0; c < kNumStateCalls; ++c) {
      AddPhase(static_cast<proto::DstPhase>(
                   static_cast<int>(proto::DstPhase::kRestoreGroupFirst) + c),
               t.call_ms[c]);
    }
  }
  if (rt.resume_ms.has_value()) {
    AddPhase(proto::DstPhase::kResumed, *rt.resume_ms);
  }
  proto::Ack ack{};
  ack.status = proto::MakeStatusMsg(absl::OkStatus());
  ack.complete_nonce = c.nonce;
  ack.total_pages = pages_announced_;
  // The guest runs here only once the ACK is out: a destination that cannot tell the source
  // never runs it (the source then keeps its own), and the vCPUs do not compete with the ACK.
  if (opts_.commit && !opts_.commit()) {
    return absl::CancelledError("stopped before the guest was handed over (no ACK sent)");
  }
  RETURN_IF_ERROR(t_->Send(MsgType::kAck, 0, proto::AckBytes(ack, phases_)));
  // The vCPUs start once the ACK has left (RDMA: its SEND completed, acknowledged by the
  // source's adapter), not while it still waits in the send queue: on a host short of CPUs
  // (the lab's two) the resumed guest otherwise delays the ACK's own processing. The guest
  // is handed over either way: a failure here changes nothing but the order.
  (void)t_->Flush();
  vm_->Release();
  // This side's report: the same steps, as the source will show them.
  DestinationPhases d = PhasesFromTable(phases_, static_cast<int>(hello_.num_cpus));
  stats.phases = std::move(d.concurrent);
  for (Phase& p : d.in_pause) {
    stats.phases.push_back(std::move(p));
  }
  return absl::OkStatus();
}

absl::Status MigrationReceiver::Handle(const proto::Message& m, MigrationStats& stats) {
  if (streams_ != nullptr) {
    RETURN_IF_ERROR(streams_->status());  // a failed stream fails the migration
  }
  if (m.type == MsgType::kAbort) {
    return Annotate(proto::AbortReason(m), "the source aborted");
  }
  switch (state_) {
    case State::kAwaitHello:
      if (m.type == MsgType::kHello) {
        return OnHello(m);
      }
      break;
    case State::kRound:
      if (m.type == MsgType::kEndRound) {
        return OnEndRound(m, stats);
      }
      if (m.type == MsgType::kProgress) {
        return OnProgress(m);
      }
      if (m.type == MsgType::kPing) {
        return OnPing(m);
      }
      break;
    case State::kAwaitState:
      if (m.type == MsgType::kDeviceState) {
        return OnDeviceState(m);
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

absl::Status MigrationReceiver::OnPing(const proto::Message& m) {
  if (!m.payload.empty()) {
    return absl::DataLossError(absl::StrFormat("PING with %d payload bytes", m.payload.size()));
  }
  if (++pings_ > proto::kMaxPings) {
    return absl::ResourceExhaustedError(
        absl::StrFormat("more than %d PINGs in one migration", proto::kMaxPings));
  }
  return t_->Send(MsgType::kPong, m.arg, {});
}

void MigrationReceiver::Finish(MigrationStats& stats) {
  stats.total_time_ms = absl::ToDoubleMilliseconds(absl::Now() - start_);
  const TransportStats ts = t_->stats();
  uint64_t data = ts.data_bytes;
  stats.streams.clear();
  if (streams_ != nullptr) {
    streams_->Close();
    StreamStats s0;
    s0.bytes = ts.data_bytes;
    s0.busy_ms = stats.total_time_ms;
    stats.streams.push_back(s0);
    for (const StreamStats& st : streams_->stats()) {
      data += st.bytes;
      stats.streams.push_back(st);
    }
  }
  // RDMA WRITEs land without the destination seeing them: count the pages announced.
  stats.transferred_bytes =
      std::max<uint64_t>(data, stats.pages_sent * proto::kPageSize) + ts.control_bytes;
  stats.registration_ms = ts.registration_ms;
}

absl::Status MigrationReceiver::Fail(absl::Status s, MigrationStats& stats) {
  state_ = State::kFailed;
  t_->AllowIncomingPages(false);
  Finish(stats);
  stats.status = "failed";
  stats.error = std::string(s.message());
  // Best effort and short: the link may be what failed.
  t_->SetDeadline(absl::Now() + absl::Seconds(1), "sending ABORT");
  (void)t_->Send(MsgType::kAbort, 0, proto::Bytes(proto::MakeStatusMsg(s)));
  if (streams_ != nullptr) {
    streams_->Close();
  }
  return s;
}

absl::Status MigrationReceiver::Handshake(MigrationStats& stats) {
  start_ = absl::Now();
  stats.role = "destination";
  stats.transport = t_->kind() == proto::TransportKind::kRdma ? "rdma" : "tcp";
  if (state_ != State::kAwaitHello) {
    return absl::FailedPreconditionError("handshake: already done");
  }
  // The whole HELLO must arrive by then, however it is trickled.
  t_->SetDeadline(start_ + opts_.hello_timeout, "the HELLO");
  auto m = t_->Receive();
  if (!m.ok()) {
    return Fail(Annotate(m.status(), "while awaiting HELLO"), stats);
  }
  if (m->type != MsgType::kHello) {
    return Fail(absl::DataLossError(absl::StrFormat("expected HELLO, got %s",
                                                    proto::MsgTypeName(m->type))),
                stats);
  }
  if (absl::Status s = OnHello(*m); !s.ok()) {
    return Fail(s, stats);
  }
  return absl::OkStatus();
}

absl::Status MigrationReceiver::Run(MigrationStats& stats) {
  if (state_ != State::kRound) {
    return absl::FailedPreconditionError("receiving: no handshake");
  }
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
  if (!s.ok()) {
    return Fail(s, stats);
  }
  t_->SetDeadline(absl::InfiniteFuture(), "");
  Finish(stats);
  stats.status = "completed";
  return s;
}

}  // namespace lmig
