// libFuzzer target: the machine state blob the destination receives in DEVICE_STATE.
// lmig::ParseState splits it into records (each lies inside the blob, and writing them again
// gives back the same bytes); lmig::ValidateState decides whether it is a complete, consistent
// machine state for the destination, and what it accepts must hold what its limits promise.
//
// Input: byte 0 picks the destination's limits (bits 0-1: vCPUs - 1; bit 2: an 8 KiB
// KVM_CAP_XSAVE2 size instead of 4 KiB), then the blob.
#include <algorithm>
#include <cstdint>
#include <span>
#include <vector>

#include "src/machine/state_codec.h"
#include "tests/fuzz/fuzz_check.h"

namespace lmig {
namespace {

// The MSRs the seed blobs (make_corpus.cc) carry, and one more.
const std::vector<uint32_t> kMsrs = {0x10, 0x1b, 0x3b, 0xc0000080};

void CheckSplit(std::span<const uint8_t> blob) {
  absl::StatusOr<std::vector<StateRecord>> records = ParseState(blob);
  if (!records.ok()) {
    FUZZ_CHECK(!records.status().message().empty());
    return;
  }
  StateWriter w;
  for (const StateRecord& r : *records) {
    FUZZ_CHECK(r.data.data() >= blob.data() &&
               r.data.data() + r.data.size() <= blob.data() + blob.size());
    FUZZ_CHECK(r.tag != StateTag::kInvalid);
    w.Add(r.tag, r.vcpu, r.data.data(), r.data.size());
  }
  const std::vector<uint8_t> again = w.Finish();
  FUZZ_CHECK(again.size() == blob.size() && std::equal(again.begin(), again.end(), blob.begin()));
}

void CheckValidate(std::span<const uint8_t> blob, uint8_t pick) {
  StateLimits limits;
  limits.num_vcpus = (pick & 3) + 1;
  limits.xsave_size = (pick & 4) ? 8192 : 4096;
  limits.msr_indices = kMsrs;
  absl::StatusOr<ValidatedState> s = ValidateState(blob, limits);
  if (!s.ok()) {
    FUZZ_CHECK(!s.status().message().empty());
    return;
  }
  FUZZ_CHECK(ParseState(blob).ok());
  FUZZ_CHECK(s->vcpus.size() == limits.num_vcpus);
  for (const VcpuState& v : s->vcpus) {
    FUZZ_CHECK(v.xsave.size() == limits.xsave_size);
    FUZZ_CHECK(!v.cpuid.empty() && v.cpuid.size() <= limits.max_cpuid_entries);
    std::vector<uint32_t> seen;
    for (const kvm_msr_entry& e : v.msrs) {
      FUZZ_CHECK(std::find(kMsrs.begin(), kMsrs.end(), e.index) != kMsrs.end());
      seen.push_back(e.index);
    }
    std::sort(seen.begin(), seen.end());
    FUZZ_CHECK(std::adjacent_find(seen.begin(), seen.end()) == seen.end());
  }
  for (size_t chip = 0; chip < s->irqchips.size(); ++chip) {
    FUZZ_CHECK(s->irqchips[chip].chip_id == chip);
  }
}

}  // namespace
}  // namespace lmig

extern "C" int LLVMFuzzerTestOneInput(const uint8_t* data, size_t size) {
  if (size < 1) {
    return 0;
  }
  const std::span<const uint8_t> blob(data + 1, size - 1);
  lmig::CheckSplit(blob);
  lmig::CheckValidate(blob, data[0]);
  return 0;
}
