#include "src/cli/commands.h"

namespace lmig {
absl::StatusOr<int> SourceCommand(const VmFlags&, const SourceFlags&) {
  return absl::UnimplementedError("src: migration engine not built yet");
}
absl::StatusOr<int> DestCommand(const DestFlags&) {
  return absl::UnimplementedError("dst: migration engine not built yet");
}
}  // namespace lmig
