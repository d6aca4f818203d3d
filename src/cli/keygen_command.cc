// `lmig-rdma keygen FILE`: writes a fresh pre-shared migration key (src/crypto/psk.h).
#include <climits>
#include <cstdio>
#include <cstdlib>
#include <string>

#include "include/lmig/status.h"
#include "src/cli/commands.h"
#include "src/crypto/psk.h"

namespace lmig {

absl::StatusOr<int> KeygenCommand(const std::string& path) {
  RETURN_IF_ERROR(crypto::WritePskFile(path));
  // Name the key by its absolute path, so the copy instruction works from any directory.
  std::string shown = path;
  char resolved[PATH_MAX];
  if (::realpath(path.c_str(), resolved) != nullptr) {
    shown = resolved;
  }
  std::printf(
      "lmig-rdma: wrote a new %zu-byte key to %s (mode 0600); copy it to the other host "
      "without widening its mode (e.g. scp -p %s HOST:%s) and pass that file to src and dst "
      "as --psk-file\n",
      crypto::kPskGeneratedBytes, shown.c_str(), shown.c_str(), shown.c_str());
  return 0;
}

}  // namespace lmig
