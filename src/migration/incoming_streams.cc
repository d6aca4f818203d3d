#include "src/migration/incoming_streams.h"

#include <time.h>

#include "absl/strings/str_format.h"
#include "absl/strings/str_join.h"
#include "include/lmig/status.h"
#include "src/base/mono_clock.h"
#include "src/base/thread_model.h"
#include "src/migration/stream_join.h"

namespace lmig {

struct IncomingStreams::Stream {
  uint32_t index = 0;
  int cpu = -1;                  // its reader's pin (StreamCpu)
  std::unique_ptr<Transport> t;  // used by its reader only; Shutdown from Close
  std::thread reader;
  double busy_ms = 0, cpu_ms = 0;  // written by the reader; read after it is joined
  uint64_t bytes = 0;
};

IncomingStreams::IncomingStreams(int streams) : n_(streams), barrier_(streams) {}

IncomingStreams::~IncomingStreams() { Close(); }

absl::Status IncomingStreams::Join(const AcceptStreamFn& accept, const proto::StreamKey& key,
                                   absl::Time join_deadline, absl::Duration join_wait,
                                   absl::Time migration_deadline, std::span<uint8_t> mem,
                                   const std::function<void(const std::string&)>& say) {
  std::vector<std::unique_ptr<Transport>> joined(static_cast<size_t>(n_));
  int missing = n_ - 1;
  while (missing > 0) {
    absl::StatusOr<std::unique_ptr<Transport>> a = accept(join_deadline);
    if (!a.ok() && (absl::IsDeadlineExceeded(a.status()) || absl::IsCancelled(a.status()) ||
                    absl::Now() >= join_deadline)) {
      return Annotate(a.status(), absl::StrFormat("waiting for %d of %d further streams to join",
                                                  missing, n_ - 1));
    }
    if (!a.ok()) {
      say(absl::StrFormat("a stream connection failed: %s", a.status().message()));
      continue;
    }
    std::unique_ptr<Transport> t = std::move(*a);
    // One connection may hold the join loop for JOIN_WAIT at most.
    t->SetDeadline(std::min(join_deadline, absl::Now() + join_wait), "the STREAM_JOIN");
    absl::StatusOr<uint32_t> index = [&]() -> absl::StatusOr<uint32_t> {
      ASSIGN_OR_RETURN(proto::Message m, t->Receive());
      if (m.type != proto::MsgType::kStreamJoin) {
        return absl::DataLossError(absl::StrFormat("expected STREAM_JOIN, got %s",
                                                   proto::MsgTypeName(m.type)));
      }
      ASSIGN_OR_RETURN(uint32_t i, CheckStreamJoin(m.payload, key, static_cast<uint32_t>(n_)));
      if (joined[i] != nullptr) {
        return absl::AlreadyExistsError(
            absl::StrFormat("STREAM_JOIN for stream %d, which has joined already", i));
      }
      return i;
    }();
    if (!index.ok()) {
      say(absl::StrFormat("refused a stream connection from %s: %s", t->peer(),
                          index.status().message()));
      continue;
    }
    say(absl::StrFormat("stream %d joined from %s", *index, t->peer()));
    joined[*index] = std::move(t);
    --missing;
  }
  migration_deadline_ = migration_deadline;
  for (uint32_t i = 1; i < static_cast<uint32_t>(n_); ++i) {
    auto s = std::make_unique<Stream>();
    s->index = i;
    s->cpu = StreamCpu(static_cast<int>(i));
    s->t = std::move(joined[i]);
    s->t->SetDeadline(migration_deadline, "the migration");
    streams_.push_back(std::move(s));
  }
  // Each reader opens its stream (RDMA: registers the memory for its own protection domain,
  // the streams in parallel) and then reads it.
  for (auto& s : streams_) {
    Stream* p = s.get();
    p->reader = std::thread([this, p, mem] {
      NameThisThread(absl::StrFormat("stream%d", p->index));
      PinThisThread(p->cpu);
      if (absl::Status st = Open(*p, mem); !st.ok()) {
        Fail(*p, st);
        return;
      }
      Read(*p);
    });
  }
  return absl::OkStatus();
}

absl::Status IncomingStreams::Open(Stream& s, std::span<uint8_t> mem) {
  ASSIGN_OR_RETURN(std::vector<uint8_t> blob, s.t->AttachMemory(mem.data(), mem.size()));
  // Pages may come from the moment the source has STREAM_JOINED.
  s.t->AllowIncomingPages(true);
  return Annotate(s.t->Send(proto::MsgType::kStreamJoined, 0, blob), "sending STREAM_JOINED");
}

void IncomingStreams::Fail(Stream& s, absl::Status why) {
  {
    std::lock_guard<std::mutex> lock(mu_);
    if (error_.ok()) {
      error_ = Annotate(why, absl::StrFormat("stream %d from %s", s.index, s.t->peer()));
    }
  }
  cv_.notify_all();
  s.t->AllowIncomingPages(false);
  s.t->Shutdown();  // the source's writes on this stream fail
}

void IncomingStreams::Read(Stream& s) {
  // RDMA WRITEs land unseen: a stream's bytes are what its markers announce (bounded by the
  // memory its table exposes), TCP's are counted as they arrive.
  const bool counted = s.t->kind() == proto::TransportKind::kTcp;
  uint64_t announced = 0;
  timespec c0{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c0);
  const MonoClock::time_point start = MonoClock::now();
  uint64_t round_start = s.t->stats().data_bytes;
  for (;;) {
    absl::StatusOr<proto::Message> m = s.t->Receive();
    if (!m.ok()) {
      Fail(s, m.status());
      break;
    }
    absl::Status st;
    bool final_round = false;
    if (m->type == proto::MsgType::kStreamEnd) {
      st = [&]() -> absl::Status {
        ASSIGN_OR_RETURN(proto::StreamEnd e, proto::Parse<proto::StreamEnd>(m->payload, m->type));
        const uint64_t got = counted ? s.t->stats().data_bytes - round_start : e.bytes;
        if (e.reserved != 0 || e.final_round > 1 || e.bytes != got) {
          return absl::DataLossError(absl::StrFormat(
              "STREAM_END for round %d announces %d bytes of pages (final=%d), %d arrived",
              m->arg, e.bytes, e.final_round, got));
        }
        round_start += got;
        announced += got;
        final_round = e.final_round == 1;
        if (final_round) {
          s.t->AllowIncomingPages(false);  // nothing more from the wire into guest memory
        }
        // A stream may run ahead of the receiver (its next round's share and marker arrive
        // before END_ROUND has completed this one): it waits here, reading nothing more,
        // until the barrier reaches its round. A page always travels on the stream of its
        // chunk, so the rounds of one page stay in order.
        std::unique_lock<std::mutex> lock(mu_);
        while (barrier_.round() < m->arg && !barrier_.finished() && error_.ok() && !closing_) {
          if (absl::Now() >= migration_deadline_) {
            return absl::DeadlineExceededError(absl::StrFormat(
                "STREAM_END for round %d waited past the migration's deadline", m->arg));
          }
          cv_.wait_for(lock, std::chrono::milliseconds(200));
        }
        if (closing_) {
          return absl::CancelledError("closed");
        }
        return barrier_.Mark(static_cast<int>(s.index), static_cast<uint32_t>(m->arg), e.bytes,
                             final_round);
      }();
      cv_.notify_all();
    } else if (m->type == proto::MsgType::kProgress) {
      // The source is alive on this stream mid-round (a round may give it no chunk for long).
      st = proto::Parse<uint64_t>(m->payload, m->type).status();
    } else {
      st = absl::DataLossError(absl::StrFormat("unexpected %s on a further stream",
                                               proto::MsgTypeName(m->type)));
    }
    if (!st.ok()) {
      Fail(s, st);
      break;
    }
    if (final_round) {
      break;
    }
  }
  s.bytes = counted ? s.t->stats().data_bytes : announced;
  s.busy_ms = MsBetween(start, MonoClock::now());
  timespec c1{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &c1);
  s.cpu_ms = (c1.tv_sec - c0.tv_sec) * 1e3 + (c1.tv_nsec - c0.tv_nsec) / 1e6;
}

absl::StatusOr<uint64_t> IncomingStreams::AwaitRound(uint32_t round, bool final_round,
                                                     absl::Time deadline) {
  std::unique_lock<std::mutex> lock(mu_);
  for (;;) {
    RETURN_IF_ERROR(error_);
    if (barrier_.round() != round) {
      return absl::InternalError(absl::StrFormat(
          "round barrier at round %d, the receiver at round %d", barrier_.round(), round));
    }
    if (barrier_.complete()) {
      break;
    }
    const absl::Duration left = deadline - absl::Now();
    if (left <= absl::ZeroDuration()) {
      return absl::DeadlineExceededError(absl::StrFormat(
          "round %d: the further streams' STREAM_END markers did not all arrive in time",
          round));
    }
    cv_.wait_for(lock, absl::ToChronoMilliseconds(std::min(left, absl::Seconds(1))));
  }
  const bool was_final = final_round;
  ASSIGN_OR_RETURN(uint64_t bytes, barrier_.Advance());
  cv_.notify_all();  // streams that ran ahead wait for this round
  if (barrier_.finished() != was_final) {
    return absl::DataLossError(absl::StrFormat(
        "round %d: END_ROUND says final=%d, the streams' markers say final=%d", round,
        was_final ? 1 : 0, barrier_.finished() ? 1 : 0));
  }
  return bytes;
}

absl::Status IncomingStreams::status() const {
  std::lock_guard<std::mutex> lock(mu_);
  return error_;
}

void IncomingStreams::Close() {
  {
    std::lock_guard<std::mutex> lock(mu_);
    closing_ = true;
  }
  cv_.notify_all();
  for (auto& s : streams_) {
    if (s->reader.joinable()) {
      s->t->Shutdown();
      s->reader.join();
    }
  }
}

std::vector<StreamStats> IncomingStreams::stats() const {
  std::vector<StreamStats> out;
  for (const auto& s : streams_) {
    StreamStats st;
    st.index = static_cast<int>(s->index);
    st.bytes = s->bytes;
    st.busy_ms = s->busy_ms;
    st.cpu_ms = s->cpu_ms;
    st.cpu = s->cpu;
    out.push_back(st);
  }
  return out;
}

}  // namespace lmig
