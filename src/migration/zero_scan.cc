#include "src/migration/zero_scan.h"

#include <algorithm>

#include "include/lmig/limits.h"

namespace lmig {

bool PageIsZero(const uint8_t* p) {
  const auto* w = reinterpret_cast<const uint64_t*>(p);
  uint64_t acc = 0;
  for (size_t i = 0; i < kPageSize / 8; i += 8) {
    acc |= w[i] | w[i + 1] | w[i + 2] | w[i + 3] | w[i + 4] | w[i + 5] | w[i + 6] | w[i + 7];
    if (acc != 0) {
      return false;
    }
  }
  return true;
}

uint64_t ScanChunk(const uint8_t* base, uint64_t offset, uint64_t length,
                   std::span<const unsigned char> resident, uint64_t max_run,
                   std::vector<RamRange>& runs) {
  const uint64_t max_len = std::max<uint64_t>(kPageSize, max_run / kPageSize * kPageSize);
  uint64_t zero = 0, run_start = 0, run_len = 0;
  auto flush = [&] {
    if (run_len > 0) {
      runs.push_back({run_start, run_len});
      run_len = 0;
    }
  };
  for (uint64_t off = offset; off < offset + length; off += kPageSize) {
    const uint64_t page = off / kPageSize;
    const bool touched = resident.empty() || page >= resident.size() || (resident[page] & 1);
    if (!touched || PageIsZero(base + off)) {
      ++zero;
      flush();
      continue;
    }
    if (run_len > 0 && run_start + run_len == off && run_len < max_len) {
      run_len += kPageSize;
    } else {
      flush();
      run_start = off;
      run_len = kPageSize;
    }
  }
  flush();
  return zero;
}

}  // namespace lmig
