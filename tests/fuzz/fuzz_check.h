// What the fuzz targets share: an invariant check that is a crash for libFuzzer.
#pragma once

#include <cstdio>
#include <cstdlib>

// Aborts with the failed condition (libFuzzer reports a deadly signal and saves the input).
#define FUZZ_CHECK(cond)                                                              \
  do {                                                                                \
    if (!(cond)) {                                                                    \
      std::fprintf(stderr, "%s:%d: invariant failed: %s\n", __FILE__, __LINE__, #cond); \
      std::abort();                                                                   \
    }                                                                                 \
  } while (0)
