/* The nested guest's workload: the project's oracle that migration loses no write.
 *
 * Allocates MIB MiB, rewrites it at RATE MiB/s with a pattern derived from (page, generation),
 * continuously verifies every page it is not currently writing, and prints once a second
 *   tick <n> verified=<pages> errors=<count>
 * Any mismatch prints "CORRUPTION page=<p>". With THREADS > 1 every thread owns a slice of the
 * pages (so several vCPUs dirty memory at once); the main thread prints the ticks.
 *
 * With --marker TEXT it also fills 1 MiB with TEXT repeated, never rewrites it and checks it at
 * every tick (a page content a capture of the migration can look for: tests/lab/test_tls.py).
 *
 * usage: workload [--mib N] [--rate MIBPS] [--threads T] [--ticks N] [--marker TEXT]
 *        (0 ticks = run forever)
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdatomic.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define PAGE 4096u
#define WORDS (PAGE / 8u)

static uint64_t *mem;
static uint32_t *gen;
static size_t npages;
static double rate_pages_per_s;
static int nthreads = 1;
static atomic_ulong verified_total, errors_total;
static char *marker;        /* --marker: 1 MiB of the text repeated */
static const char *marker_text;
#define MARKER_BYTES (1u << 20)

static void fill_marker(void) {
  size_t n = strlen(marker_text);
  for (size_t i = 0; i < MARKER_BYTES; i++) marker[i] = marker_text[i % n];
}

static void check_marker(void) {
  size_t n = strlen(marker_text);
  for (size_t i = 0; i < MARKER_BYTES; i++) {
    if (marker[i] != marker_text[i % n]) {
      printf("CORRUPTION marker offset=%zu\n", i);
      atomic_fetch_add(&errors_total, 1);
      return;
    }
  }
}

static double now_s(void) {
  struct timespec ts;
  clock_gettime(CLOCK_MONOTONIC, &ts);
  return ts.tv_sec + ts.tv_nsec / 1e9;
}

static inline uint64_t pattern(uint64_t page, uint64_t g, uint64_t word) {
  uint64_t x = (page << 32) ^ g ^ (word * 0x9E3779B97F4A7C15ull);
  x ^= x >> 31;
  x *= 0xBF58476D1CE4E5B9ull;
  return x ^ (x >> 29) ^ 1; /* never all-zero pages: migration must move them */
}

static void write_page(size_t p) {
  uint32_t g = gen[p] + 1;
  uint64_t *w = mem + p * WORDS;
  for (uint64_t i = 0; i < WORDS; i++) w[i] = pattern(p, g, i);
  __atomic_store_n(&gen[p], g, __ATOMIC_RELEASE);
}

static int check_page(size_t p) {
  uint32_t g = __atomic_load_n(&gen[p], __ATOMIC_ACQUIRE);
  const uint64_t *w = mem + p * WORDS;
  for (uint64_t i = 0; i < WORDS; i++) {
    if (w[i] != pattern(p, g, i)) return 0;
  }
  return 1;
}

static void *worker(void *arg) {
  size_t id = (size_t)arg;
  size_t lo = npages * id / nthreads, hi = npages * (id + 1) / nthreads;
  size_t wcur = lo, vcur = lo;
  double start = now_s(), written = 0;
  double my_rate = rate_pages_per_s / nthreads;
  for (;;) {
    /* Write as many pages as the rate allows so far, then verify a batch of the others. */
    double due = (now_s() - start) * my_rate - written;
    for (int k = 0; k < (int)due && k < 4096; k++) {
      write_page(wcur);
      written += 1;
      if (++wcur == hi) wcur = lo;
    }
    for (int k = 0; k < 256; k++) {
      if (!check_page(vcur)) {
        printf("CORRUPTION page=%zu gen=%u\n", vcur, gen[vcur]);
        fflush(stdout);
        atomic_fetch_add(&errors_total, 1);
      }
      atomic_fetch_add(&verified_total, 1);
      if (++vcur == hi) vcur = lo;
    }
    if (my_rate == 0) usleep(1000);
  }
  return NULL;
}

int main(int argc, char **argv) {
  size_t mib = 64;
  double rate = 16;
  long ticks = 0;
  for (int i = 1; i + 1 < argc; i += 2) {
    if (!strcmp(argv[i], "--mib")) mib = strtoul(argv[i + 1], 0, 0);
    else if (!strcmp(argv[i], "--rate")) rate = strtod(argv[i + 1], 0);
    else if (!strcmp(argv[i], "--threads")) nthreads = atoi(argv[i + 1]);
    else if (!strcmp(argv[i], "--ticks")) ticks = strtol(argv[i + 1], 0, 0);
    else if (!strcmp(argv[i], "--marker")) marker_text = argv[i + 1];
    else { fprintf(stderr, "workload: unknown option %s\n", argv[i]); return 2; }
  }
  if (nthreads < 1 || nthreads > 64 || mib == 0 || (marker_text && !*marker_text)) {
    fprintf(stderr, "workload: bad --threads, --mib or --marker\n");
    return 2;
  }
  setvbuf(stdout, NULL, _IOLBF, 0);
  npages = mib * 1024 * 1024 / PAGE;
  rate_pages_per_s = rate * 1024 * 1024 / PAGE;
  mem = mmap(NULL, npages * PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
  gen = calloc(npages, sizeof(*gen));
  if (mem == MAP_FAILED || !gen) {
    fprintf(stderr, "workload: cannot allocate %zu MiB\n", mib);
    return 1;
  }
  for (size_t p = 0; p < npages; p++) write_page(p);
  if (marker_text) {
    marker = mmap(NULL, MARKER_BYTES, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (marker == MAP_FAILED) {
      fprintf(stderr, "workload: cannot allocate the marker\n");
      return 1;
    }
    fill_marker();
  }
  printf("workload: %zu MiB, %.1f MiB/s, %d threads, filled\n", mib, rate, nthreads);
  for (long t = 0; t < nthreads; t++) {
    pthread_t th;
    pthread_create(&th, NULL, worker, (void *)t);
  }
  double next = now_s() + 1;
  for (long n = 1; ticks == 0 || n <= ticks; n++) {
    double d;
    while ((d = next - now_s()) > 0) usleep(d > 0.05 ? 50000 : (useconds_t)(d * 1e6) + 1);
    next += 1;
    if (now_s() > next) next = now_s() + 1; /* after a long pause: one tick, not a burst */
    if (marker) check_marker();
    printf("tick %ld verified=%lu errors=%lu\n", n, atomic_load(&verified_total),
           atomic_load(&errors_total));
  }
  return atomic_load(&errors_total) ? 1 : 0;
}
