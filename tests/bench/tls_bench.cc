// Throughput of the TCP transport over loopback on this host, page data from one buffer into
// another, with and without TLS (transport/tcp/tls.h): what TLS costs on a real CPU, where the
// lab's emulated one makes any cipher ~150x slower (docs/benchmarks.md). On a kernel without
// TLS, as here, that is OpenSSL in user space; the lab's kernel does it as kernel TLS. Not a
// test: run build/tests/tls_bench.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <random>
#include <thread>
#include <vector>

#include "include/lmig/transport.h"
#include "transport/tcp/tls.h"

namespace lmig {
namespace {

constexpr uint64_t kBytes = 256ull << 20;  // per iteration
constexpr uint64_t kRun = 1ull << 20;      // one range: the sender's coalesced-run cap over TCP

void BM_TcpPages(benchmark::State& state) {
  const bool tls = state.range(0) != 0;
  TransportOptions o;
  if (tls) {
    o.tls = *TlsConfig::WithPsk(std::vector<uint8_t>(32, 7));
  }
  std::mt19937 rng(std::random_device{}());
  const uint16_t port = static_cast<uint16_t>(30000 + rng() % 20000);
  auto listener = ListenTransport(proto::TransportKind::kTcp, "127.0.0.1", port, o);
  if (!listener.ok()) {
    state.SkipWithError("no listener");
    return;
  }
  std::unique_ptr<Transport> dst;
  std::thread accept([&] {
    auto t = (*listener)->Accept(absl::Now() + absl::Seconds(10));
    if (t.ok()) {
      dst = std::move(*t);
    }
  });
  auto src = ConnectTransport(proto::TransportKind::kTcp, "127.0.0.1", port, o);
  accept.join();
  if (!src.ok() || dst == nullptr) {
    state.SkipWithError("no connection");
    return;
  }
  std::vector<uint8_t> a(kBytes, 0x5a), b(kBytes, 0);
  (void)(*src)->AttachMemory(a.data(), a.size());
  (void)dst->AttachMemory(b.data(), b.size());
  dst->AllowIncomingPages(true);
  std::vector<RamRange> ranges;
  for (uint64_t off = 0; off < kBytes; off += kRun) {
    ranges.push_back({off, kRun});
  }
  for (auto _ : state) {
    absl::Status got;
    std::thread d([&] { got = dst->Receive().status(); });
    absl::Status sent = (*src)->Write(ranges);
    if (sent.ok()) {
      sent = (*src)->Send(proto::MsgType::kEndRound, 0, std::vector<uint8_t>(24, 1));
    }
    d.join();
    if (!sent.ok() || !got.ok()) {
      state.SkipWithError("transfer failed");
      return;
    }
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations() * kBytes));
  state.SetLabel((*src)->stats().security.empty() ? "plain TCP" : (*src)->stats().security);
}
BENCHMARK(BM_TcpPages)->Arg(0)->Arg(1)->Unit(benchmark::kMillisecond)->UseRealTime();

}  // namespace
}  // namespace lmig

BENCHMARK_MAIN();
