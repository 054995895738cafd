// Vector kernels of pool2d.cpp, written once for every vector ISA: included by simd_avx512.cpp
// and simd_avx2.cpp after their `#pragma GCC target`, where GCC's vector types below compile to
// one AVX-512 register or two AVX2 ones.
//
// Max pooling of one NHWC output pixel in float32, 16 channels at a time (the channels_last
// kernel). (In pool2d.cpp's target_clones functions GCC 12 lowers
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

// Global average pooling's gradient in float32 over planes of `plane` <= 16 values, 16 planes at
// a time: their 16 shares dy / plane in one vector, and the planes' 16 * plane outputs as `plane`
// vectors, vector m holding share (16m + l) / plane in lane l: one permute and one full store
// each (the scalar kernel's stores straddle planes). Fast only where a 16-float permute is one
// instruction: AVX-512 (GCC emits scalar code for it on AVX2, whose file does not offer it).
[[maybe_unused]] void global_unpool_groups(const float* dy, int64_t groups, int64_t plane, float* dx) {
  PoolInts lanes[16];
  for (int64_t m = 0; m < plane; ++m)
    for (int l = 0; l < 16; ++l) lanes[m][l] = static_cast<int32_t>((16 * m + l) / plane);
  const PoolFloats count = PoolFloats{} + static_cast<float>(plane);
  for (int64_t q = 0; q < groups; ++q) {
    PoolFloats g;
    __builtin_memcpy(&g, dy + 16 * q, sizeof g);
    const PoolFloats shares = PoolFloats{} + g / count;  // (0 + x: -0 becomes +0, as the scalar kernel)
    float* out = dx + 16 * q * plane;
    for (int64_t m = 0; m < plane; ++m) {
      const PoolFloats v = __builtin_shuffle(shares, lanes[m]);
      __builtin_memcpy(out + 16 * m, &v, sizeof v);
    }
  }
}
