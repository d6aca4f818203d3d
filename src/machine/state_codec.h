// Tag-length-value records: the machine state blob sent at the end of a migration.
// Layout per record: u32 tag, u32 vcpu (or kVmWide), u32 length, then LENGTH bytes; little endian.
#pragma once

#include <cstdint>
#include <cstring>
#include <span>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lmig {

enum class StateTag : uint32_t {
  kInvalid = 0,
  kCpuid = 1,
  kMpState,
  kRegs,
  kSregs,
  kXsave,
  kXcrs,
  kLapic,
  kMsrs,
  kVcpuEvents,
  kDebugRegs,
  kIrqchip,
  kPit2,
  kClock,
  kUart,
};

inline constexpr uint32_t kVmWide = 0xffffffff;

struct StateRecord {
  StateTag tag;
  uint32_t vcpu;
  std::span<const uint8_t> data;
};

class StateWriter {
 public:
  void Add(StateTag tag, uint32_t vcpu, const void* data, size_t len);
  template <typename T>
  void AddPod(StateTag tag, uint32_t vcpu, const T& v) {
    Add(tag, vcpu, &v, sizeof(T));
  }
  std::vector<uint8_t> Finish() { return std::move(buf_); }

 private:
  std::vector<uint8_t> buf_;
};

// Splits BLOB into records; error on a truncated record or an unknown tag.
absl::StatusOr<std::vector<StateRecord>> ParseState(std::span<const uint8_t> blob);

// Copies REC into a POD of exactly its size; error names the tag on a size mismatch.
template <typename T>
absl::StatusOr<T> RecordAs(const StateRecord& rec) {
  if (rec.data.size() != sizeof(T)) {
    return absl::InvalidArgumentError("state record " + std::to_string(uint32_t(rec.tag)) +
                                      " has " + std::to_string(rec.data.size()) +
                                      " bytes, want " + std::to_string(sizeof(T)));
  }
  T v;
  std::memcpy(&v, rec.data.data(), sizeof(T));
  return v;
}

}  // namespace lmig
