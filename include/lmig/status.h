// Error plumbing shared by every layer: errno -> absl::Status with context, and the two
// propagation macros Abseil does not export publicly.
#pragma once

#include <cerrno>
#include <cstring>
#include <string>
#include "absl/strings/string_view.h"

#include "absl/status/status.h"
#include "absl/status/statusor.h"
#include "absl/strings/str_cat.h"

namespace lmig {

// Status for a failed system call: "<what>: <strerror(errno)>", with a code chosen from errno.
inline absl::Status ErrnoStatus(absl::string_view what, int err = errno) {
  return absl::ErrnoToStatus(err, what);
}

// Prepends context to a non-OK status ("while X: <original>"), keeping its code.
inline absl::Status Annotate(const absl::Status& s, absl::string_view context) {
  if (s.ok()) {
    return s;
  }
  return absl::Status(s.code(), absl::StrCat(context, ": ", s.message()));
}

// The same for a StatusOr: its value when OK, else its status with CONTEXT prepended.
template <typename T>
absl::StatusOr<T> Annotate(absl::StatusOr<T> s, absl::string_view context) {
  if (s.ok()) {
    return s;
  }
  return Annotate(s.status(), context);
}

}  // namespace lmig

#define LMIG_CONCAT_INNER(a, b) a##b
#define LMIG_CONCAT(a, b) LMIG_CONCAT_INNER(a, b)

// Returns from the current function if EXPR yields a non-OK absl::Status.
#define RETURN_IF_ERROR(expr)                \
  do {                                       \
    if (absl::Status _st = (expr); !_st.ok()) { \
      return _st;                            \
    }                                        \
  } while (0)

// `ASSIGN_OR_RETURN(auto x, F());` declares x from a StatusOr or returns its error.
#define ASSIGN_OR_RETURN(lhs, expr) \
  ASSIGN_OR_RETURN_IMPL(LMIG_CONCAT(_statusor_, __LINE__), lhs, expr)
#define ASSIGN_OR_RETURN_IMPL(tmp, lhs, expr) \
  auto tmp = (expr);                          \
  if (!tmp.ok()) {                            \
    return std::move(tmp).status();           \
  }                                           \
  lhs = std::move(tmp).value()
