// The machine's float32 FMA peak, a ceiling for the convolutions' GFLOP/s (not a kernel of
// cuconv's): every thread runs CHAINS independent chains of vector FMAs in registers, no memory
// traffic. CHAINS = 12 covers an FMA latency of 4-6 cycles times 2 FMA units, the most any
// current x86 core has, so the FMA units, not a chain's latency, set the pace. Compiled and run
// by benchmarks/ceilings.py (cc -O2 -shared), with as many threads as torch uses.
#include <immintrin.h>
#include <pthread.h>
#include <time.h>

#define CHAINS 12

__attribute__((target("avx512f"))) static float chains_avx512(long iterations) {
  __m512 acc[CHAINS];
  const __m512 scale = _mm512_set1_ps(0.999999f), step = _mm512_set1_ps(1e-6f);
  for (int k = 0; k < CHAINS; ++k) acc[k] = _mm512_set1_ps((float)k);
  for (long i = 0; i < iterations; ++i)
#pragma GCC unroll 12
    for (int k = 0; k < CHAINS; ++k) acc[k] = _mm512_fmadd_ps(acc[k], scale, step);
  float sum = 0.0f;
  for (int k = 0; k < CHAINS; ++k) sum += _mm512_reduce_add_ps(acc[k]);
  return sum;
}

__attribute__((target("avx2,fma"))) static float chains_avx2(long iterations) {
  __m256 acc[CHAINS];
  const __m256 scale = _mm256_set1_ps(0.999999f), step = _mm256_set1_ps(1e-6f);
  for (int k = 0; k < CHAINS; ++k) acc[k] = _mm256_set1_ps((float)k);
  for (long i = 0; i < iterations; ++i)
#pragma GCC unroll 12
    for (int k = 0; k < CHAINS; ++k) acc[k] = _mm256_fmadd_ps(acc[k], scale, step);
  float lanes[8], sum = 0.0f;
  for (int k = 0; k < CHAINS; ++k) {
    _mm256_storeu_ps(lanes, acc[k]);
    for (int j = 0; j < 8; ++j) sum += lanes[j];
  }
  return sum;
}

struct job {
  int lanes;
  long iterations;
  float sink;  // the chains' sum, so the compiler keeps them
};

static void* run_job(void* arg) {
  struct job* j = arg;
  j->sink = j->lanes == 16 ? chains_avx512(j->iterations) : chains_avx2(j->iterations);
  return 0;
}

// FMAs each chain runs per round: a round is CHAINS * lanes FMAs, 2 FLOPs each.
int fma_chains(void) { return CHAINS; }

// Floating-point operations a second of `threads` threads, each running `iterations` rounds of
// CHAINS FMAs `lanes` floats wide (16: AVX-512, 8: AVX2); -1 for bad arguments or no thread.
double fma_flops(int threads, int lanes, long iterations) {
  pthread_t ids[256];
  struct job jobs[256];
  if (threads < 1 || threads > 256 || (lanes != 8 && lanes != 16) || iterations < 1) return -1.0;
  struct timespec start, end;
  clock_gettime(CLOCK_MONOTONIC, &start);
  int started = 0;
  for (; started < threads; ++started) {
    jobs[started] = (struct job){lanes, iterations, 0.0f};
    if (pthread_create(&ids[started], 0, run_job, &jobs[started]) != 0) break;
  }
  for (int t = 0; t < started; ++t) pthread_join(ids[t], 0);
  clock_gettime(CLOCK_MONOTONIC, &end);
  if (started < threads) return -1.0;
  const double seconds = (double)(end.tv_sec - start.tv_sec) + 1e-9 * (double)(end.tv_nsec - start.tv_nsec);
  return 2.0 * lanes * CHAINS * (double)iterations * threads / seconds;
}
