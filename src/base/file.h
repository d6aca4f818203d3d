// Whole-file reads for the VMM's inputs (kernel, initramfs, key files).
#pragma once

#include <cstdint>
#include <string>
#include <vector>

#include "absl/status/statusor.h"

namespace lmig {

// Reads a whole regular file; errors name WHAT and the path ("kernel /x: No such file or
// directory", "initrd /dev/zero: not a regular file").
absl::StatusOr<std::vector<uint8_t>> ReadFile(const std::string& path, const char* what);

}  // namespace lmig
