// The source side of a live migration (runs on its own thread while the vCPUs keep running):
// handshake, round 1 (all non-zero memory), dirty rounds until the policy says stop, then
// pause, last dirty pages, device state, completion, and the destination's acknowledgement.
//
// Failure semantics: any error before the destination acknowledges resumes the vCPUs (if they
// were paused), lifts the throttle and stops dirty logging: the guest keeps running here.
#pragma once

#include <functional>
#include <string>

#include "absl/status/statusor.h"
#include "include/lmig/transport.h"
#include "src/machine/machine.h"
#include "src/migration/policy.h"
#include "src/migration/source_streams.h"
#include "src/migration/stats.h"
#include "src/crypto/psk.h"

namespace lmig {

struct SenderOptions {
  PolicyConfig policy;
  uint64_t max_bandwidth = 0;  // bytes/s, 0 = unlimited
  bool verify_memory = false;
  // The pre-shared key (not owned; null: unauthenticated, for loopback or --insecure peers).
  const crypto::Psk* psk = nullptr;
  uint64_t max_run_bytes = 1 << 20;  // coalesced run cap
  // PING/PONG round trips after HELLO_ACK, on the idle connection (1..proto::kMaxPings): the
  // slowest is the round trip the pause's estimate counts.
  int round_trip_samples = 3;
  // During a round, a PROGRESS message at least this often (the destination's silence
  // timeout must not end a long RDMA round, whose writes it cannot see).
  absl::Duration alive_interval = absl::Seconds(5);
  // The handshake, and the whole pause (stop-and-copy up to the ACK), end by this long after
  // they start: a destination that stalls or trickles bytes cannot hold the guest paused.
  absl::Duration phase_timeout = absl::Seconds(30);
  // Parallel streams, stream 0 (this transport) included: 1..proto::kMaxStreams. Streams
  // 1..N-1 are opened with connect_stream after HELLO_ACK (source_streams.h).
  int streams = 1;
  ConnectStreamFn connect_stream;
};

class MigrationSender {
 public:
  using ProgressFn = std::function<void(const std::string&)>;
  MigrationSender(Machine* machine, Transport* transport, SenderOptions opts,
                  ProgressFn progress);

  // Migrates. STATS is filled in either way. On success the guest runs on the destination and
  // this machine's vCPUs stay paused.
  absl::Status Run(MigrationStats& stats);

 private:
  // The handshake in two halves, so that the source's own setup (the zero-page scan, its
  // memory registration) overlaps the destination's: HELLO (and, with a key, the proofs),
  // then, after that setup, HELLO_ACK and a PING's round trip.
  absl::Status SendHello();
  absl::Status AwaitHelloAck();
  absl::Status MeasureRoundTrip();
  // Sends one round, PAGES (null: round 1, all of memory but its zero pages, found as it is
  // sent); returns when its last Write returned (the round's end and END_ROUND follow).
  // The final round's progress line waits for the end of the pause (deferred_progress_).
  absl::StatusOr<MonoClock::time_point> SendRound(int round, const PageBitmap* pages,
                                                  bool final_round, int throttle,
                                                  MigrationStats& stats);
  absl::Status StopAndCopy(PageBitmap& dirty, MigrationStats& stats);
  // mincore's answer for guest memory (empty: unknown, every page is scanned).
  std::vector<unsigned char> ResidentPages() const;
  // Pauses the guest briefly, saves its state and resumes it: the measured fixed costs of the
  // pause's first steps, for the policy (fixed_).
  absl::Status DryRunPause();
  void Pace(uint64_t bytes_sent, absl::Time since);

  // Resumes the vCPUs if paused, recording the real pause in STATS.
  void ResumeIfPaused(MigrationStats& stats);

  Machine* m_;
  Transport* t_;                        // the sealed channel once authenticated
  std::unique_ptr<Transport> sealed_;
  std::unique_ptr<SourceStreams> streams_;  // after HELLO_ACK: every page goes through it
  proto::StreamKey stream_key_{};
  std::vector<unsigned char> resident_;     // until round 1 has been sent
  SenderOptions opts_;
  ProgressFn progress_;
  std::vector<RoundSample> history_;
  FixedCosts fixed_;
  uint32_t pings_ = 0;
  absl::Time paused_at_;
  MonoClock::time_point paused_mono_;   // the pause's start, for its phases and downtime
  MonoClock::time_point phase_start_;   // where the current pause phase began
  bool paused_ = false;
  std::string deferred_progress_;
  // Ends the pause phase NAME now (it began where the previous one ended) and returns it.
  Phase& EndPhase(MigrationStats& stats, const char* name);
};

}  // namespace lmig
