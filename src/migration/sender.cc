#include "src/migration/sender.h"

#include <sys/mman.h>

#include <cstring>
#include <thread>

#include "absl/strings/str_cat.h"
#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/crypto/aead.h"
#include "src/crypto/auth.h"
#include "src/migration/pause_phases.h"
#include "src/migration/secure_channel.h"

namespace lmig {
namespace {

constexpr uint64_t kPage = kPageSize;
constexpr uint64_t kBatchBytes = 8ull << 20;  // ranges handed to the transport per call
// Dry runs of the pause's first steps (one after each of the first rounds): their spread is
// part of the estimate's error.
constexpr int kDryRuns = 3;

double Ms(absl::Duration d) { return absl::ToDoubleMilliseconds(d); }

}  // namespace

MigrationSender::MigrationSender(Machine* machine, Transport* transport, SenderOptions opts,
                                 ProgressFn progress)
    : m_(machine), t_(transport), opts_(std::move(opts)), progress_(std::move(progress)) {}

std::vector<unsigned char> MigrationSender::ResidentPages() const {
  GuestMemory& mem = m_->memory();
  std::vector<unsigned char> resident(mem.num_pages(), 1);
  if (::mincore(mem.base(), mem.size(), resident.data()) != 0) {
    resident.clear();  // unknown: every page is scanned
  }
  return resident;
}

void MigrationSender::Pace(uint64_t bytes_sent, absl::Time since) {
  if (opts_.max_bandwidth == 0) {
    return;
  }
  const absl::Duration should_take =
      absl::Seconds(static_cast<double>(bytes_sent) / static_cast<double>(opts_.max_bandwidth));
  const absl::Duration took = absl::Now() - since;
  if (should_take > took) {
    absl::SleepFor(should_take - took);
  }
}

absl::Status MigrationSender::SendHello() {
  proto::Hello h{};
  h.version = proto::kVersion;
  h.page_size = kPage;
  h.mem_size = m_->memory().size();
  h.num_cpus = static_cast<uint32_t>(m_->num_vcpus());
  h.features = opts_.verify_memory ? static_cast<uint32_t>(proto::kFeatureVerifyMemory) : 0u;
  h.transport = static_cast<uint32_t>(t_->kind());
  h.dirty_mode = m_->config().dirty_mode;
  h.streams = static_cast<uint32_t>(opts_.streams);
  crypto::Nonce nonce{};
  if (opts_.psk != nullptr) {
    ASSIGN_OR_RETURN(nonce, crypto::NewNonce());
    h.auth = static_cast<uint32_t>(proto::AuthMode::kPsk);
    std::memcpy(h.nonce, nonce.data(), sizeof(h.nonce));
  }
  t_->SetDeadline(absl::Now() + opts_.phase_timeout, "the handshake");
  const std::vector<uint8_t> hello = proto::Bytes(h);
  RETURN_IF_ERROR(t_->Send(proto::MsgType::kHello, 0, hello));
  if (opts_.psk != nullptr) {
    // Nothing of the guest moves before the destination has proven the key, and the source
    // proves it only to a destination that has.
    ASSIGN_OR_RETURN(sealed_, AuthenticateAsSource(t_, *opts_.psk, nonce, hello));
    t_ = sealed_.get();
  }
  return absl::OkStatus();
}

absl::Status MigrationSender::AwaitHelloAck() {
  t_->SetDeadline(absl::Now() + opts_.phase_timeout, "the handshake");
  ASSIGN_OR_RETURN(proto::Message ack, t_->Receive());
  t_->SetDeadline(absl::InfiniteFuture(), "");
  if (ack.type == proto::MsgType::kAbort || ack.type == proto::MsgType::kHelloAck) {
    ASSIGN_OR_RETURN(auto st, proto::Parse<proto::StatusMsg>(
                                  ack.payload, ack.type, ack.type == proto::MsgType::kHelloAck));
    absl::Status s = proto::StatusFromMsg(st);
    if (!s.ok()) {
      return Annotate(s, "the destination refused the migration");
    }
    if (ack.type == proto::MsgType::kAbort) {
      return absl::AbortedError("the destination aborted the handshake");
    }
  } else {
    return absl::DataLossError(absl::StrFormat("handshake: expected HELLO_ACK, got %s",
                                               proto::MsgTypeName(ack.type)));
  }
  ASSIGN_OR_RETURN(proto::HelloAckMsg ha, proto::ParseHelloAck(ack.payload));
  if (ha.times.restore_ns > 0) {
    fixed_.dst_restore_ms = ha.times.restore_ns / 1e6;
  }
  stream_key_ = ha.stream_key;
  return t_->SetPeerMemory(ha.regions);
}

absl::Status MigrationSender::MeasureRoundTrip() {
  // One control message there and one back, as the pause's COMPLETE and ACK travel (the
  // destination answers a PING at once).
  const uint64_t seq = ++pings_;
  t_->SetDeadline(absl::Now() + opts_.phase_timeout, "the round-trip measurement");
  const MonoClock::time_point sent = MonoClock::now();
  RETURN_IF_ERROR(t_->Send(proto::MsgType::kPing, seq, {}));
  ASSIGN_OR_RETURN(proto::Message pong, t_->Receive());
  const double rtt_ms = MsBetween(sent, MonoClock::now());
  t_->SetDeadline(absl::InfiniteFuture(), "");
  if (pong.type == proto::MsgType::kAbort) {
    return Annotate(proto::AbortReason(pong), "the destination aborted");
  }
  if (pong.type != proto::MsgType::kPong || pong.arg != seq || !pong.payload.empty()) {
    return absl::DataLossError(absl::StrFormat(
        "expected PONG %d, got %s %d with %d payload bytes", seq, proto::MsgTypeName(pong.type),
        pong.arg, pong.payload.size()));
  }
  fixed_.round_trip_ms = std::max(fixed_.round_trip_ms, rtt_ms);
  return absl::OkStatus();
}

absl::Status MigrationSender::DryRunPause() {
  // The pause's fixed steps on this side, measured on the running guest: stop the vCPUs, save
  // their state, let them go (a pause of about what these take, during pre-copy).
  m_->Pause();
  absl::StatusOr<SavedState> saved = m_->SaveStateTimed();
  m_->Resume();
  RETURN_IF_ERROR(Annotate(saved.status(), "dry-run state save"));
  fixed_.AddDryRun(m_->last_pause().total_ms, saved->timing.total_ms, saved->blob.size());
  // What the blob's seal (under a throwaway key: the cost, not the session's counter) and its
  // frame checksum cost on this host; the guest runs meanwhile.
  const MonoClock::time_point start = MonoClock::now();
  std::vector<uint8_t> sealed;
  if (opts_.psk != nullptr) {
    ASSIGN_OR_RETURN(crypto::Nonce bytes, crypto::NewNonce());
    ASSIGN_OR_RETURN(crypto::AeadKey key, crypto::AeadKey::FromBytes(bytes));
    ASSIGN_OR_RETURN(crypto::RecordSealer sealer,
                     crypto::RecordSealer::Create(key, crypto::Direction::kSourceToDestination));
    ASSIGN_OR_RETURN(sealed, sealer.Seal({}, saved->blob));
  }
  (void)proto::MakeHeader(proto::MsgType::kDeviceState, 0,
                          opts_.psk != nullptr ? std::span<const uint8_t>(sealed)
                                               : std::span<const uint8_t>(saved->blob));
  fixed_.state_seal_ms = std::max(fixed_.state_seal_ms, MsBetween(start, MonoClock::now()));
  return absl::OkStatus();
}

absl::StatusOr<MonoClock::time_point> MigrationSender::SendRound(int round,
                                                                 const PageBitmap* pages,
                                                                 bool final_round, int throttle,
                                                                 MigrationStats& stats) {
  const absl::Time start = absl::Now();
  const uint64_t queued_before = streams_->queued_bytes();
  absl::Time last_alive = start;
  // After each batch: the pace, and now and then a sign of life on every stream.
  auto after_batch = [&]() -> absl::Status {
    const uint64_t sent = streams_->queued_bytes() - queued_before;
    Pace(sent, start);
    if (absl::Now() - last_alive >= opts_.alive_interval) {
      RETURN_IF_ERROR(t_->Send(proto::MsgType::kProgress, static_cast<uint32_t>(round),
                               proto::Bytes(sent)));
      streams_->Alive(static_cast<uint32_t>(round));
      last_alive = absl::Now();
    }
    return absl::OkStatus();
  };
  if (pages == nullptr) {
    // Round 1: all of memory, each chunk scanned for zero pages by the thread that sends it
    // (zero_scan.h), so the scan overlaps the sending.
    GuestMemory& mem = m_->memory();
    const ScanSource scan{mem.base(), resident_, opts_.max_run_bytes};
    for (uint64_t off = 0; off < mem.size(); off += kBatchBytes) {
      RETURN_IF_ERROR(
          streams_->ScanAndWrite({off, std::min<uint64_t>(kBatchBytes, mem.size() - off)}, scan));
      RETURN_IF_ERROR(after_batch());
    }
  } else if (final_round && pages->Count() * kPage <= SourceStreams::kFinalOnStream0Bytes) {
    RETURN_IF_ERROR(streams_->WriteFinal(CoalesceRuns(*pages, opts_.max_run_bytes)));
  } else {
    const std::vector<RamRange> runs = CoalesceRuns(*pages, opts_.max_run_bytes);
    uint64_t batch_bytes = 0;
    std::vector<RamRange> batch;
    for (const RamRange& r : runs) {
      batch.push_back({r.offset, r.length});
      batch_bytes += r.length;
      if (batch_bytes >= kBatchBytes) {
        RETURN_IF_ERROR(streams_->Write(batch));
        batch.clear();
        batch_bytes = 0;
        RETURN_IF_ERROR(after_batch());
      }
    }
    RETURN_IF_ERROR(streams_->Write(batch));
  }
  const MonoClock::time_point written = MonoClock::now();
  // Every stream flushed, and each further one's STREAM_END sent, before the END_ROUND.
  RETURN_IF_ERROR(streams_->EndRound(static_cast<uint32_t>(round), final_round));
  const uint64_t bytes = streams_->queued_bytes() - queued_before;
  proto::EndRound er{static_cast<uint32_t>(round), final_round ? 1u : 0u, bytes / kPage, bytes};
  const MonoClock::time_point marker = MonoClock::now();
  RETURN_IF_ERROR(t_->Send(proto::MsgType::kEndRound, 0, proto::Bytes(er)));
  if (!final_round) {
    fixed_.AddControlSend(MsBetween(marker, MonoClock::now()));
  }
  const double secs = absl::ToDoubleSeconds(absl::Now() - start);
  if (!final_round) {
    history_.push_back({bytes, secs});
    const double rate = MeasuredRate(history_);
    if (round > 1 && rate > 0) {  // round 1 is most of the rate: its excess says nothing
      fixed_.AddRoundOverhead(secs * 1000.0, bytes / rate * 1000.0);
    }
  }
  RoundStats rs;
  rs.round = round;
  rs.dirty_pages = bytes / kPage;
  rs.bytes = bytes;
  rs.ms = secs * 1000;
  rs.rate_mbps = secs > 0 ? bytes * 8 / secs / 1e6 : 0;
  rs.throttle_pct = throttle;
  rs.final_round = final_round;
  stats.per_round.push_back(rs);
  stats.pages_sent += bytes / kPage;
  stats.rounds = round;
  std::string line =
      absl::StrFormat("round %d%s: %d pages (%.1f MiB) in %.1f ms, %.1f Mbit/s", round,
                      final_round ? " (stop-and-copy)" : "", bytes / kPage, bytes / 1048576.0,
                      secs * 1000, rs.rate_mbps);
  if (final_round) {
    deferred_progress_ = std::move(line);  // no console output inside the pause
  } else {
    progress_(line);
  }
  return written;
}

void MigrationSender::ResumeIfPaused(MigrationStats& stats) {
  if (paused_) {
    m_->Resume();
    paused_ = false;
    EndPhase(stats, "source_vcpus_resumed");
    stats.downtime_ms = MsBetween(paused_mono_, MonoClock::now());
  }
}

Phase& MigrationSender::EndPhase(MigrationStats& stats, const char* name) {
  const MonoClock::time_point now = MonoClock::now();
  Phase p;
  p.name = name;
  p.side = "source";
  p.ms = MsBetween(phase_start_, now);
  phase_start_ = now;
  stats.phases.push_back(std::move(p));
  return stats.phases.back();
}

absl::Status MigrationSender::StopAndCopy(PageBitmap& dirty, MigrationStats& stats) {
  stats.phases.clear();
  stats.phases_note.clear();
  paused_mono_ = MonoClock::now();
  phase_start_ = paused_mono_;
  m_->Pause();
  paused_ = true;
  paused_at_ = absl::Now();
  {
    Phase& stop = EndPhase(stats, "vcpus_stopped");
    const PauseTiming pt = m_->last_pause();
    for (size_t i = 0; i < pt.vcpu_ms.size(); ++i) {
      Phase v = MakePhase(absl::StrCat("vcpu", i), "source", pt.vcpu_ms[i]);
      v.concurrent = true;  // all vCPUs stop at once: the slowest is the phase
      stop.parts.push_back(std::move(v));
    }
  }
  // Everything from here to the ACK is bounded: on a stall the guest resumes here. The throttle
  // is lifted after the pause (joining its thread is not the pause's work), or by Run's
  // failure path before the vCPUs resume.
  t_->SetDeadline(paused_at_ + opts_.phase_timeout, "stop-and-copy");
  streams_->SetDeadline(paused_at_ + opts_.phase_timeout, "stop-and-copy");
  RETURN_IF_ERROR(m_->dirty_log().Collect(dirty));
  EndPhase(stats, "dirty_harvest");
  {
    ASSIGN_OR_RETURN(MonoClock::time_point written,
                     SendRound(stats.rounds + 1, &dirty, true, 0, stats));
    // Split at the moment the last Write returned: queued, then flushed (RDMA: every WRITE
    // completed, so the pages are in the destination's memory) and the END_ROUND sent.
    const MonoClock::time_point now = MonoClock::now();
    const MonoClock::time_point start = phase_start_;
    stats.phases.push_back(MakePhase("final_pages_sent", "source", MsBetween(start, written)));
    stats.phases.push_back(MakePhase("final_pages_landed", "source", MsBetween(written, now)));
    phase_start_ = now;
  }
  ASSIGN_OR_RETURN(SavedState saved, m_->SaveStateTimed());
  AddStateParts(EndPhase(stats, "state_saved"), saved.timing);
  const std::vector<uint8_t>& state = saved.blob;
  stats.state_bytes = state.size();
  RETURN_IF_ERROR(t_->Send(proto::MsgType::kDeviceState, 0, state));
  EndPhase(stats, "state_sent");
  proto::Complete c{};
  c.total_pages = stats.pages_sent;
  c.state_bytes = state.size();
  c.nonce = proto::RandomNonce();
  if (opts_.verify_memory) {
    c.memory_digest = proto::MemoryDigest({m_->memory().base(), m_->memory().size()});
  }
  const MonoClock::time_point complete_send = MonoClock::now();
  RETURN_IF_ERROR(t_->Send(proto::MsgType::kComplete, 0, proto::Bytes(c)));
  EndPhase(stats, "complete_sent");
  const MonoClock::time_point ack_wait_start = phase_start_;
  // The one message the destination may send now is its answer to this COMPLETE.
  ASSIGN_OR_RETURN(proto::Message reply, t_->Receive());
  const MonoClock::time_point ack_at = MonoClock::now();
  if (reply.type == proto::MsgType::kAbort) {
    return Annotate(proto::AbortReason(reply), "the destination did not resume the guest");
  }
  if (reply.type != proto::MsgType::kAck) {
    return absl::DataLossError(absl::StrFormat("expected ACK after COMPLETE, got %s",
                                               proto::MsgTypeName(reply.type)));
  }
  ASSIGN_OR_RETURN(proto::AckMsg msg, proto::ParseAck(reply.payload));
  const proto::Ack& ack = msg.ack;
  if (ack.complete_nonce != c.nonce) {
    return absl::DataLossError(
        "the destination's ACK does not answer this COMPLETE (nonce mismatch): not trusted");
  }
  if (ack.total_pages != c.total_pages) {
    return absl::DataLossError(absl::StrFormat(
        "the destination's ACK counts %d pages, the source sent %d", ack.total_pages,
        c.total_pages));
  }
  RETURN_IF_ERROR(Annotate(proto::StatusFromMsg(ack.status),
                           "the destination did not resume the guest"));
  paused_ = false;  // the guest runs on the destination now
  stats.downtime_ms = MsBetween(paused_mono_, ack_at);
  m_->SetThrottle(0);
  // The guest runs there: a phase table that does not add up costs the report, not the guest.
  AddDestinationPhases(stats, msg.phases, m_->num_vcpus(), MsBetween(ack_wait_start, ack_at),
                       MsBetween(complete_send, ack_wait_start));
  return absl::OkStatus();
}

absl::Status MigrationSender::Run(MigrationStats& stats) {
  const absl::Time start = absl::Now();
  const CpuTime cpu_start = ThreadCpu();
  stats.role = "source";
  stats.transport = t_->kind() == proto::TransportKind::kRdma ? "rdma" : "tcp";
  stats.dirty_tracking = m_->config().dirty_mode == DirtyMode::kRing ? "ring" : "bitmap";
  stats.mem_bytes = m_->memory().size();
  int throttle = 0;
  absl::Status result = [&]() -> absl::Status {
    RETURN_IF_ERROR(Annotate(SendHello(), "handshake"));
    // While the destination creates its VM and registers its memory, this side does its own
    // setup; HELLO_ACK waits in the transport meanwhile.
    RETURN_IF_ERROR(Annotate(m_->dirty_log().Start(), "starting dirty logging"));
    // Which pages were ever touched, before registering memory for RDMA (which faults every
    // page in and so defeats mincore); the content scan runs inside round 1. A page written
    // after either is in the next dirty set anyway.
    resident_ = ResidentPages();
    RETURN_IF_ERROR(t_->AttachMemory(m_->memory().base(), m_->memory().size()).status());
    RETURN_IF_ERROR(Annotate(AwaitHelloAck(), "handshake"));
    streams_ = std::make_unique<SourceStreams>(t_);
    if (opts_.streams > 1) {
      // The further streams connect, register (RDMA) and join in parallel, each on its own
      // reactor.
      RETURN_IF_ERROR(Annotate(
          streams_->Start(opts_.streams, opts_.connect_stream, stream_key_,
                          {m_->memory().base(), m_->memory().size()}),
          "opening the streams"));
      RETURN_IF_ERROR(Annotate(streams_->AwaitJoined(), "opening the streams"));
    }
    // A few samples on the idle connection, once the streams' setup is over (measured beside
    // it, the RDMA streams' memory registration, CPU-heavy, inflated them past the downtime
    // target): the slowest is what the estimate counts (one sample under-read the pause's
    // round trip on a loaded host).
    const int samples = std::clamp<int>(opts_.round_trip_samples, 1, proto::kMaxPings);
    for (int i = 0; i < samples; ++i) {
      RETURN_IF_ERROR(Annotate(MeasureRoundTrip(), "handshake"));
    }
    stats.setup_time_ms = Ms(absl::Now() - start);
    stats.registration_ms = t_->stats().registration_ms;
    progress_(absl::StrFormat("connected, setup %.1f ms; round 1: all non-zero memory, "
                              "scanned for zero pages as it is sent%s",
                              stats.setup_time_ms,
                              opts_.streams > 1
                                  ? absl::StrFormat(" over %d streams", opts_.streams)
                                  : std::string()));
    RETURN_IF_ERROR(SendRound(1, nullptr, false, 0, stats).status());
    stats.zero_pages_skipped = streams_->zero_pages();
    resident_ = {};
    PageBitmap dirty(m_->memory().num_pages());
    for (int round = 2;; ++round) {
      if (fixed_.dry_runs < kDryRuns) {
        RETURN_IF_ERROR(DryRunPause());
      }
      dirty.Clear();
      RETURN_IF_ERROR(m_->dirty_log().Collect(dirty));
      const uint64_t pending = dirty.Count() * kPage;
      PolicyDecision d = DecideNextRound(opts_.policy, history_, pending, throttle, fixed_);
      if (d.stop_and_copy && fixed_.round_overheads.empty() &&
          static_cast<int>(history_.size()) < opts_.policy.max_rounds) {
        // What a round costs beyond its pages (the streams' hand-off, flushes and markers,
        // 10-20 ms in the lab) is measured from round 2 on: one more round first, or an idle
        // guest's estimate, made after round 1, would leave it out.
        d.stop_and_copy = false;
        d.reason = "one more round first, to measure a round's own cost";
      }
      stats.estimate.valid = true;
      stats.estimate.total_ms = d.expected_downtime_ms;
      stats.estimate.pages_ms = d.pages_ms;
      stats.estimate.fixed_ms = d.fixed_ms;
      stats.estimate.error_ms = d.error_ms;
      stats.estimate.target_met = d.target_met;
      stats.estimate.reason = d.reason;
      stats.estimate.stop_ms = fixed_.stop_ms;
      stats.estimate.save_ms = fixed_.save_ms;
      const double rate = MeasuredRate(history_);
      stats.estimate.state_ms = rate > 0 ? fixed_.state_bytes / rate * 1000.0 : 0;
      stats.estimate.round_trip_ms = fixed_.round_trip_ms;
      stats.estimate.dst_restore_ms = fixed_.dst_restore_ms;
      stats.estimate.control_ms = 3 * std::max(fixed_.control_send_ms, 0.0);
      stats.estimate.round_overhead_ms = fixed_.round_overhead_ms;
      stats.estimate.state_ms += 2 * fixed_.state_seal_ms;
      if (d.stop_and_copy) {
        // DIRTY (already re-protected) goes in the final round, with whatever the guest
        // dirties until it is paused.
        progress_("stop-and-copy: " + d.reason);
        break;
      }
      if (d.throttle_pct != throttle) {
        throttle = d.throttle_pct;
        stats.max_throttle_pct = std::max(stats.max_throttle_pct, throttle);
        m_->SetThrottle(throttle);
        progress_(d.reason);
      }
      RETURN_IF_ERROR(SendRound(round, &dirty, false, throttle, stats).status());
    }
    return StopAndCopy(dirty, stats);
  }();
  stats.total_time_ms = Ms(absl::Now() - start);
  const TransportStats ts = t_->stats();
  stats.transferred_bytes = ts.data_bytes + ts.control_bytes;
  // The further streams end here (their reactors joined; on failure cut first, after the
  // guest has resumed: a reactor stuck on a stalled connection must not hold it paused).
  auto close_streams = [&](bool abort) {
    if (streams_ == nullptr || streams_->count() < 2) {
      return;
    }
    streams_->Close(abort);
    stats.streams = streams_->stats();
    for (size_t i = 1; i < stats.streams.size(); ++i) {
      stats.transferred_bytes += stats.streams[i].bytes;
    }
    stats.src_cpu_ms += streams_->reactor_cpu_ms();
  };
  stats.zero_copy = ts.zero_copy;
  stats.registration_ms = ts.registration_ms;
  const CpuTime cpu_end = ThreadCpu();
  stats.src_cpu_ms = cpu_end.total() - cpu_start.total();
  stats.src_cpu_user_ms = cpu_end.user_ms - cpu_start.user_ms;
  if (!deferred_progress_.empty()) {
    progress_(deferred_progress_);
    deferred_progress_.clear();
  }
  if (result.ok()) {
    close_streams(false);
    stats.status = "completed";
    AddMissingPhases(stats.phases, kSourcePausePhases);
    return absl::OkStatus();
  }
  stats.status = "failed";
  stats.error = std::string(result.message());
  // Nothing is lost: the guest keeps running here. The real pause is what is reported.
  m_->SetThrottle(0);
  const bool was_paused = paused_;
  if (was_paused) {
    EndPhase(stats, "failed_step");  // from the last completed step to the failure
  }
  ResumeIfPaused(stats);
  if (was_paused) {
    // The pause ended early: the steps it did not reach are missing.
    AddMissingPhases(stats.phases, kSourcePausePhases);
    stats.phases_note = "the migration failed during stop-and-copy; the source resumed its guest";
  }
  (void)m_->dirty_log().Stop();
  // Best effort and short: the link may be what failed.
  t_->SetDeadline(absl::Now() + absl::Seconds(1), "sending ABORT");
  (void)t_->Send(proto::MsgType::kAbort, 0, proto::Bytes(proto::MakeStatusMsg(result)));
  close_streams(true);
  return result;
}

}  // namespace lmig
