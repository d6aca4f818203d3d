#include "src/migration/source_streams.h"

#include <time.h>

#include <algorithm>
#include <chrono>
#include <thread>

#include "absl/strings/str_format.h"
#include "include/lmig/status.h"
#include "src/base/mono_clock.h"
#include "src/base/thread_model.h"
#include "src/migration/stream_join.h"
#include "src/migration/stream_split.h"
#include "src/migration/zero_scan.h"

namespace lmig {
namespace {

double ThreadCpuMs() {
  timespec ts{};
  ::clock_gettime(CLOCK_THREAD_CPUTIME_ID, &ts);
  return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}


}  // namespace

// What the migration thread asks of a stream reactor.
struct StreamCommand {
  enum Kind { kNone, kWrite, kScan, kEndRound, kAlive, kDeadline, kStop } kind = kNone;
  std::vector<RamRange> ranges;   // kWrite; kScan: the chunks to scan, then send
  ScanSource scan;                // kScan
  uint32_t round = 0;             // kEndRound, kAlive
  bool final_round = false;       // kEndRound
  absl::Time deadline;            // kDeadline
  std::string what;               // kDeadline
};

// One further stream: its connection, and the thread that owns it.
class StreamReactor {
 public:
  StreamReactor(int index, int cpu) : index_(index), cpu_(cpu) {}
  ~StreamReactor() { Stop(); }

  void Start(const ConnectStreamFn& connect, const proto::StreamKey& key, uint32_t streams,
             std::span<uint8_t> mem) {
    thread_ = std::thread(
        [this, connect, key, streams, mem] { Main(connect, key, streams, mem); });
  }
  void Post(StreamCommand c) { inbox_.Push(std::move(c)); }
  // Posts C unless the reactor's inbox is full.
  bool TryPost(StreamCommand& c) { return inbox_.TryPush(c); }
  // Any thread: ends the connection's waits at once (once it is connected).
  void Shutdown() {
    if (Transport* t = live_.load(std::memory_order_acquire)) {
      t->Shutdown();
    }
  }
  void Stop() {
    if (thread_.joinable()) {
      StreamCommand c;
      c.kind = StreamCommand::kStop;
      inbox_.Push(std::move(c));
      thread_.join();
    }
  }
  // Answers (the join, each END_ROUND) so far; every command that answers bumps it once,
  // failed or not, after storing its error: waiting for it never outlives the reactor's work.
  uint64_t answers() const { return answers_.load(std::memory_order_acquire); }
  void AwaitAnswers(uint64_t n) const {
    for (uint64_t a = answers(); a < n; a = answers()) {
      answers_.wait(a, std::memory_order_acquire);
    }
  }
  bool failed() const { return failed_.load(std::memory_order_acquire); }
  // Only once failed() (the store happened before it).
  const absl::Status& error() const { return error_; }
  // Only after an answer (read after AwaitAnswers).
  // Any time (relaxed: for pacing and progress): bytes queued so far, zero pages found.
  uint64_t sent() const { return sent_.load(std::memory_order_relaxed); }
  uint64_t zero_pages() const { return zero_.load(std::memory_order_relaxed); }
  StreamStats stats() const {
    StreamStats s;
    s.index = index_;
    s.cpu = cpu_;
    s.bytes = sent();
    s.busy_ms = busy_ms_;
    s.cpu_ms = cpu_ms_;
    return s;
  }

 private:
  void Main(const ConnectStreamFn& connect, const proto::StreamKey& key, uint32_t streams,
            std::span<uint8_t> mem) {
    NameThisThread(absl::StrFormat("stream%d", index_));
    PinThisThread(cpu_);
    const double cpu0 = ThreadCpuMs();
    absl::Status s = [&]() -> absl::Status {
      ASSIGN_OR_RETURN(t_, connect());
      live_.store(t_.get(), std::memory_order_release);
      // RDMA: this stream's own registration of guest memory (its own protection domain),
      // in parallel with the other streams'.
      RETURN_IF_ERROR(t_->AttachMemory(mem.data(), mem.size()).status());
      ASSIGN_OR_RETURN(proto::StreamJoin j,
                       MakeStreamJoin(key, static_cast<uint32_t>(index_), streams));
      RETURN_IF_ERROR(t_->Send(proto::MsgType::kStreamJoin, 0, proto::Bytes(j)));
      // Nothing goes out on the stream until the destination has taken the join and opened
      // the stream to pages; over RDMA its answer is where this stream's WRITEs go.
      ASSIGN_OR_RETURN(proto::Message m, t_->Receive());
      if (m.type != proto::MsgType::kStreamJoined) {
        return absl::DataLossError(absl::StrFormat("expected STREAM_JOINED, got %s",
                                                   proto::MsgTypeName(m.type)));
      }
      return Annotate(t_->SetPeerMemory(m.payload), "STREAM_JOINED");
    }();
    Answer(s);
    uint64_t round_bytes = 0;
    for (;;) {
      StreamCommand c = inbox_.Pop();
      if (c.kind == StreamCommand::kStop) {
        break;
      }
      if (failed()) {
        if (c.kind == StreamCommand::kEndRound) {
          Answer(error_);
        }
        continue;  // the migration fails; nothing more goes out on this stream
      }
      const MonoClock::time_point start = MonoClock::now();
      absl::Status r;
      switch (c.kind) {
        case StreamCommand::kScan: {
          // Round 1: this stream's chunks, scanned for zero pages here, then sent.
          std::vector<RamRange> runs;
          uint64_t zero = 0;
          for (const RamRange& chunk : c.ranges) {
            zero += ScanChunk(c.scan.base, chunk.offset, chunk.length, c.scan.resident,
                              c.scan.max_run, runs);
          }
          zero_.fetch_add(zero, std::memory_order_relaxed);
          c.ranges = std::move(runs);
          [[fallthrough]];
        }
        case StreamCommand::kWrite:
          r = t_->Write(c.ranges);
          for (const RamRange& x : c.ranges) {
            round_bytes += x.length;
            sent_.fetch_add(x.length, std::memory_order_relaxed);
          }
          break;
        case StreamCommand::kEndRound: {
          r = t_->Flush();
          if (r.ok()) {
            proto::StreamEnd e{round_bytes, c.final_round ? 1u : 0u, 0};
            r = t_->Send(proto::MsgType::kStreamEnd, c.round, proto::Bytes(e));
          }
          round_bytes = 0;
          break;
        }
        case StreamCommand::kAlive:
          r = t_->Send(proto::MsgType::kProgress, c.round, proto::Bytes(round_bytes));
          break;
        case StreamCommand::kDeadline:
          t_->SetDeadline(c.deadline, c.what);
          break;
        default:
          break;
      }
      busy_ms_ += MsBetween(start, MonoClock::now());
      cpu_ms_ = ThreadCpuMs() - cpu0;
      if (!r.ok()) {
        Fail(r);
      }
      if (c.kind == StreamCommand::kEndRound) {
        Answer(r);
      }
    }
    live_.store(nullptr, std::memory_order_release);
    t_.reset();  // the connection closes on its own thread
  }

  void Fail(const absl::Status& s) {
    if (!failed()) {
      error_ = Annotate(s, absl::StrFormat("stream %d", index_));
      failed_.store(true, std::memory_order_release);
    }
  }
  void Answer(const absl::Status& s) {
    if (!s.ok()) {
      Fail(s);
    }
    answers_.fetch_add(1, std::memory_order_release);
    answers_.notify_all();
  }

  const int index_;
  const int cpu_;
  std::thread thread_;
  std::unique_ptr<Transport> t_;  // the reactor thread's alone
  // T_ for Shutdown from the migration thread: set once connected, cleared before T_ goes
  // (which happens only on kStop, after any Shutdown that Close makes).
  std::atomic<Transport*> live_{nullptr};
  Mailbox<StreamCommand, 32> inbox_;
  mutable std::atomic<uint64_t> answers_{0};
  std::atomic<bool> failed_{false};
  absl::Status error_;
  std::atomic<uint64_t> sent_{0}, zero_{0};
  double busy_ms_ = 0, cpu_ms_ = 0;
};

SourceStreams::SourceStreams(Transport* stream0) : stream0_(stream0) {}

SourceStreams::~SourceStreams() { Close(); }

void SourceStreams::Close(bool abort) {
  if (abort) {
    for (auto& r : reactors_) {
      r->Shutdown();
    }
  }
  for (auto& r : reactors_) {
    r->Stop();
  }
}

absl::Status SourceStreams::Start(int n, const ConnectStreamFn& connect,
                                  const proto::StreamKey& key, std::span<uint8_t> mem) {
  if (n < 2 || n > static_cast<int>(proto::kMaxStreams) || !reactors_.empty() || !connect) {
    return absl::InvalidArgumentError(absl::StrFormat(
        "streams: %d (2..%d, once, with a way to connect)", n, proto::kMaxStreams));
  }
  for (int i = 1; i < n; ++i) {
    reactors_.push_back(std::make_unique<StreamReactor>(i, StreamCpu(i)));
    reactors_.back()->Start(connect, key, static_cast<uint32_t>(n), mem);
  }
  return absl::OkStatus();
}

absl::Status SourceStreams::AwaitJoined() { return AwaitAll(); }

void SourceStreams::Alive(uint32_t round) {
  StreamCommand c;
  c.kind = StreamCommand::kAlive;
  c.round = round;
  Broadcast(c);
}

absl::Status SourceStreams::AwaitAll() {
  // Every reactor answers each join and END_ROUND once: N answers are the N-th's.
  for (auto& r : reactors_) {
    r->AwaitAnswers(answers_expected_);
  }
  ++answers_expected_;
  return FirstError();
}

absl::Status SourceStreams::FirstError() const {
  for (const auto& r : reactors_) {
    if (r->failed()) {
      return r->error();
    }
  }
  return absl::OkStatus();
}

void SourceStreams::Broadcast(const StreamCommand& c) {
  for (auto& r : reactors_) {
    r->Post(c);
  }
}

void SourceStreams::SetDeadline(absl::Time deadline, std::string what) {
  StreamCommand c;
  c.kind = StreamCommand::kDeadline;
  c.deadline = deadline;
  c.what = std::move(what);
  Broadcast(c);
}

absl::Status SourceStreams::PostWork(StreamReactor& r, StreamCommand c) {
  // A full inbox is a stream that cannot keep up, or one stalled on its peer: wait for room,
  // but give up as soon as any stream has failed (the migration has, then), instead of
  // waiting for this one's own timeout.
  while (!r.TryPost(c)) {
    RETURN_IF_ERROR(FirstError());
    std::this_thread::sleep_for(std::chrono::milliseconds(1));
  }
  return absl::OkStatus();
}

absl::Status SourceStreams::WriteFinal(std::span<const RamRange> ranges) {
  return WriteOnStream0(ranges);
}

absl::Status SourceStreams::WriteOnStream0(std::span<const RamRange> ranges) {
  const MonoClock::time_point start = MonoClock::now();
  absl::Status s = stream0_->Write(ranges);
  stream0_busy_ms_ += MsBetween(start, MonoClock::now());
  for (const RamRange& r : ranges) {
    stream0_bytes_ += r.length;
  }
  return s;
}

absl::Status SourceStreams::Write(std::span<const RamRange> ranges) {
  if (reactors_.empty()) {
    return WriteOnStream0(ranges);
  }
  RETURN_IF_ERROR(FirstError());
  std::vector<std::vector<RamRange>> shares = SplitByChunk(ranges, count());
  for (size_t i = 1; i < shares.size(); ++i) {
    if (!shares[i].empty()) {
      StreamCommand c;
      c.kind = StreamCommand::kWrite;
      c.ranges = std::move(shares[i]);
      RETURN_IF_ERROR(PostWork(*reactors_[i - 1], std::move(c)));
    }
  }
  return WriteOnStream0(shares[0]);
}

absl::Status SourceStreams::ScanAndWrite(const RamRange& range, const ScanSource& scan) {
  RETURN_IF_ERROR(FirstError());
  const RamRange one[] = {range};
  std::vector<std::vector<RamRange>> shares = SplitByChunk(one, count());
  for (size_t i = 1; i < shares.size(); ++i) {
    if (!shares[i].empty()) {
      StreamCommand c;
      c.kind = StreamCommand::kScan;
      c.ranges = std::move(shares[i]);
      c.scan = scan;
      RETURN_IF_ERROR(PostWork(*reactors_[i - 1], std::move(c)));
    }
  }
  std::vector<RamRange> runs;
  for (const RamRange& chunk : shares[0]) {
    stream0_zero_ += ScanChunk(scan.base, chunk.offset, chunk.length, scan.resident,
                               scan.max_run, runs);
  }
  return WriteOnStream0(runs);
}

uint64_t SourceStreams::queued_bytes() const {
  uint64_t b = stream0_bytes_;
  for (const auto& r : reactors_) {
    b += r->sent();
  }
  return b;
}

uint64_t SourceStreams::zero_pages() const {
  uint64_t z = stream0_zero_;
  for (const auto& r : reactors_) {
    z += r->zero_pages();
  }
  return z;
}

absl::Status SourceStreams::EndRound(uint32_t round, bool final_round) {
  StreamCommand c;
  c.kind = StreamCommand::kEndRound;
  c.round = round;
  c.final_round = final_round;
  Broadcast(c);
  const MonoClock::time_point start = MonoClock::now();
  absl::Status s = stream0_->Flush();
  stream0_busy_ms_ += MsBetween(start, MonoClock::now());
  absl::Status others = AwaitAll();
  RETURN_IF_ERROR(s);
  return others;
}

std::vector<StreamStats> SourceStreams::stats() const {
  std::vector<StreamStats> out;
  StreamStats s0;
  s0.index = 0;
  s0.bytes = stream0_bytes_;
  s0.busy_ms = stream0_busy_ms_;
  s0.cpu_ms = -1;
  out.push_back(s0);
  for (const auto& r : reactors_) {
    out.push_back(r->stats());
  }
  return out;
}

double SourceStreams::reactor_cpu_ms() const {
  double ms = 0;
  for (const auto& r : reactors_) {
    ms += r->stats().cpu_ms;
  }
  return ms;
}

}  // namespace lmig
