#include "src/cli/options.h"

#include <cctype>

#include "absl/strings/ascii.h"
#include "absl/strings/numbers.h"
#include "absl/strings/str_format.h"

namespace lmig {
namespace {

absl::StatusOr<uint64_t> ParseScaled(const std::string& flag, const std::string& value,
                                     uint64_t k, uint64_t default_unit, const char* example) {
  std::string v = absl::AsciiStrToUpper(value);
  size_t i = 0;
  while (i < v.size() && std::isdigit(static_cast<unsigned char>(v[i]))) {
    ++i;
  }
  uint64_t n = 0;
  std::string unit = v.substr(i);
  if (i == 0 || !absl::SimpleAtoi(v.substr(0, i), &n)) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s '%s': not a size (use e.g. %s)", flag, value, example));
  }
  if (unit.size() > 1 && (unit.substr(1) == "IB" || unit.substr(1) == "B")) {
    unit = unit.substr(0, 1);
  }
  uint64_t mult;
  if (unit.empty()) {
    mult = default_unit;
  } else if (unit == "B") {
    mult = 1;
  } else if (unit == "K") {
    mult = k;
  } else if (unit == "M") {
    mult = k * k;
  } else if (unit == "G") {
    mult = k * k * k;
  } else if (unit == "T") {
    mult = k * k * k * k;
  } else {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s '%s': unknown unit '%s' (use e.g. %s)", flag, value, unit, example));
  }
  if (n > UINT64_MAX / mult) {
    return absl::InvalidArgumentError(absl::StrFormat("%s '%s': too large", flag, value));
  }
  return n * mult;
}

}  // namespace

absl::StatusOr<uint64_t> ParseSize(const std::string& flag, const std::string& value) {
  return ParseScaled(flag, value, 1024, 1024 * 1024, "512M or 4G");
}

absl::StatusOr<uint64_t> ParseRate(const std::string& flag, const std::string& value) {
  return ParseScaled(flag, value, 1000, 1, "100M for 100 MB/s");
}

absl::StatusOr<HostPort> ParseHostPort(const std::string& flag, const std::string& value) {
  const size_t colon = value.rfind(':');
  uint32_t port = 0;
  if (colon == std::string::npos || colon == 0 ||
      !absl::SimpleAtoi(value.substr(colon + 1), &port) || port == 0 || port > 65535) {
    return absl::InvalidArgumentError(
        absl::StrFormat("%s '%s': expected HOST:PORT, e.g. 10.0.2.15:4444", flag, value));
  }
  return HostPort{value.substr(0, colon), static_cast<uint16_t>(port)};
}

}  // namespace lmig
