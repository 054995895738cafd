// Max pooling of one NHWC output pixel in float32, 16 channels at a time (pool2d.cpp's
// channels_last kernel), written once for every vector ISA: included by simd_avx512.cpp and
// simd_avx2.cpp after their `#pragma GCC target`, where GCC's vector types below compile to
// one AVX-512 register or two AVX2 ones. (In pool2d.cpp's target_clones functions GCC 12 lowers
// them to scalar code, 10x slower; so do plain loops over 16 channels, which it unrolls before
// vectorising.) As gemm_tile.h: no #include here.
//
// For channels [16q, 16q + 16) of each chunk q < chunks: the maximum over the window's pixels
// x + window[t] * C (t < taps), by torch's rule (v replaces the best when v > best or v is NaN;
// the first pixel stands for an all -inf window), and its pixel index.

typedef float PoolFloats __attribute__((vector_size(64)));
typedef int32_t PoolInts __attribute__((vector_size(64)));
typedef int64_t PoolLongs __attribute__((vector_size(128)));

void max_pool_pixel_nhwc(const float* x, int64_t C, const int32_t* window, int64_t taps, int64_t chunks, float* y,
                         int64_t* indices) {
  for (int64_t c0 = 0; c0 < chunks * 16; c0 += 16) {
    PoolFloats best;
    __builtin_memcpy(&best, x + window[0] * C + c0, sizeof best);
    PoolInts best_index = PoolInts{} + window[0];
    for (int64_t t = 1; t < taps; ++t) {
      PoolFloats v;
      __builtin_memcpy(&v, x + window[t] * C + c0, sizeof v);
      const PoolInts takes = (v > best) | (v != v);
      best = takes ? v : best;
      best_index = takes ? PoolInts{} + window[t] : best_index;
    }
    const PoolLongs wide = __builtin_convertvector(best_index, PoolLongs);
    __builtin_memcpy(y + c0, &best, sizeof best);
    __builtin_memcpy(indices + c0, &wide, sizeof wide);
  }
}
