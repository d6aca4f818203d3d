// Command-line value parsing shared by the subcommands (pure, unit-tested).
#pragma once

#include <cstdint>
#include <string>

#include "absl/status/statusor.h"

namespace lmig {

// "512M", "4G", "4GiB", "1024" (MiB when no unit), "65536K". Error names FLAG and the value.
absl::StatusOr<uint64_t> ParseSize(const std::string& flag, const std::string& value);
// "100M" (bytes/s, decimal units as network rates: K=1e3), "1G", "0" = unlimited.
absl::StatusOr<uint64_t> ParseRate(const std::string& flag, const std::string& value);
// "HOST:PORT" -> host and port; error names FLAG.
struct HostPort {
  std::string host;
  uint16_t port;
};
absl::StatusOr<HostPort> ParseHostPort(const std::string& flag, const std::string& value);

}  // namespace lmig
