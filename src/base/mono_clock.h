// The monotonic clock every timing in the VMM is taken with (pauses, state save/restore, the
// migration's phases), and the one way to turn two of its readings into milliseconds.
#pragma once

#include <chrono>

namespace lmig {

using MonoClock = std::chrono::steady_clock;

inline double MsBetween(MonoClock::time_point from, MonoClock::time_point to) {
  return std::chrono::duration<double, std::milli>(to - from).count();
}

}  // namespace lmig
