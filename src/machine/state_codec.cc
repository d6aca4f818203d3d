#include "src/machine/state_codec.h"

#include "absl/strings/str_format.h"

namespace lmig {

void StateWriter::Add(StateTag tag, uint32_t vcpu, const void* data, size_t len) {
  const uint32_t hdr[3] = {static_cast<uint32_t>(tag), vcpu, static_cast<uint32_t>(len)};
  const auto* h = reinterpret_cast<const uint8_t*>(hdr);
  buf_.insert(buf_.end(), h, h + sizeof(hdr));
  const auto* d = static_cast<const uint8_t*>(data);
  buf_.insert(buf_.end(), d, d + len);
}

absl::StatusOr<std::vector<StateRecord>> ParseState(std::span<const uint8_t> blob) {
  std::vector<StateRecord> out;
  size_t pos = 0;
  while (pos < blob.size()) {
    uint32_t hdr[3];
    if (blob.size() - pos < sizeof(hdr)) {
      return absl::DataLossError(absl::StrFormat("state: truncated record header at %d", pos));
    }
    std::memcpy(hdr, blob.data() + pos, sizeof(hdr));
    pos += sizeof(hdr);
    if (hdr[0] == 0 || hdr[0] > static_cast<uint32_t>(StateTag::kUart)) {
      return absl::DataLossError(absl::StrFormat("state: unknown tag %d at %d", hdr[0], pos));
    }
    if (blob.size() - pos < hdr[2]) {
      return absl::DataLossError(absl::StrFormat("state: record tag %d of %d bytes truncated",
                                                 hdr[0], hdr[2]));
    }
    out.push_back({static_cast<StateTag>(hdr[0]), hdr[1], blob.subspan(pos, hdr[2])});
    pos += hdr[2];
  }
  return out;
}

}  // namespace lmig
