// Throughput of the control-message record layer (src/crypto/aead.h): AES-256-GCM Seal and
// Open on 64 KiB and 4 MiB buffers, allocation of the output included. It answers whether
// sealing page data as well would cost the link its speed. Not a test: run
// build/tests/aead_bench.
#include <benchmark/benchmark.h>

#include <cstdint>
#include <vector>

#include "src/crypto/aead.h"

namespace lmig::crypto {
namespace {

AeadKey BenchKey() { return *AeadKey::FromBytes(std::vector<uint8_t>(kAeadKeyBytes, 0x42)); }

void BM_Seal(benchmark::State& state) {
  const std::vector<uint8_t> plaintext(static_cast<size_t>(state.range(0)), 0xa5);
  const uint8_t aad[40] = {};
  RecordSealer sealer = *RecordSealer::Create(BenchKey(), Direction::kSourceToDestination);
  for (auto _ : state) {
    auto rec = sealer.Seal(aad, plaintext);
    benchmark::DoNotOptimize(rec->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Seal)->Arg(64 << 10)->Arg(4 << 20);

void BM_Open(benchmark::State& state) {
  const std::vector<uint8_t> plaintext(static_cast<size_t>(state.range(0)), 0xa5);
  const uint8_t aad[40] = {};
  AeadKey key = BenchKey();
  RecordSealer sealer = *RecordSealer::Create(key, Direction::kSourceToDestination);
  const std::vector<uint8_t> rec = *sealer.Seal(aad, plaintext);
  // An opener expects each record once, so each iteration opens record 0 with a fresh opener
  // (made outside the timing).
  for (auto _ : state) {
    state.PauseTiming();
    RecordOpener opener = *RecordOpener::Create(key, Direction::kSourceToDestination);
    state.ResumeTiming();
    auto pt = opener.Open(aad, rec);
    benchmark::DoNotOptimize(pt->data());
  }
  state.SetBytesProcessed(static_cast<int64_t>(state.iterations()) * state.range(0));
}
BENCHMARK(BM_Open)->Arg(64 << 10)->Arg(4 << 20);

}  // namespace
}  // namespace lmig::crypto

BENCHMARK_MAIN();
