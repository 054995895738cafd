// The AVX2 + FMA register tiles of cuconv's CPU kernels (16 ymm registers):
// - GEMM (gemm.h): 6 rows x 2 vectors, i.e. 6 x 16 floats or 6 x 8 doubles, in 12
//   registers (the B row and the broadcast take 3 more).
// - direct convolution (direct_conv.h): 6 pixels or 6 taps x NV = 1 or 2 channel vectors.

#include "direct_conv.h"
#include "gemm.h"
#include "simd.h"
#include "window.h"

#if CUCONV_X86_SIMD
#include <immintrin.h>

// Everything below is compiled for AVX2 + FMA; it is only called when the CPU has them. (And
// F16C, which only float16's global pooling uses, set where the CPU has it: pool2d.cpp.)
#pragma GCC push_options
#pragma GCC target("avx2,fma,f16c")

namespace cuconv {
namespace {

struct Avx2Float {
  using T = float;
  // plain GCC vector types of a register (V is may_alias, which keeps arrays of it in memory):
  // floats and lane indices for register_transpose.h, 16-bit lanes for bfloat16 bits (direct_tile.h)
  typedef float Floats __attribute__((vector_size(32)));
  typedef int32_t Ints __attribute__((vector_size(32)));
  typedef int16_t Shorts __attribute__((vector_size(16)));  // as many 16-bit lanes
  using V = __m256;
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 16;
  static V zero() { return _mm256_setzero_ps(); }
  static V load(const float* p) { return _mm256_loadu_ps(p); }
  static void store(float* p, V v) { _mm256_storeu_ps(p, v); }
  static void stream(float* p, V v) { _mm256_stream_ps(p, v); }  // past the caches; p 32-byte aligned
  static V set1(float x) { return _mm256_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm256_add_ps(a, b); }
  // the first n < 8 lanes (the others 0 / untouched)
  static __m256i first(int64_t n) {
    return _mm256_cmpgt_epi32(_mm256_set1_epi32(static_cast<int>(n)), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  }
  static V load_first(const float* p, int64_t n) { return _mm256_maskload_ps(p, first(n)); }
  static void store_first(float* p, V v, int64_t n) { _mm256_maskstore_ps(p, first(n), v); }
  // 16-bit lanes sign-extended to 32 (one instruction: GCC 12's __builtin_convertvector splits it
  // in halves), and 32-bit lanes that fit in 16 packed to 16 (saturating, exact for them)
  static Ints widen_shorts(Shorts h) { return (Ints)_mm256_cvtepi16_epi32((__m128i)h); }
  static Shorts narrow_ints(Ints i) {
    return (Shorts)_mm_packs_epi32(_mm256_castsi256_si128((__m256i)i), _mm256_extracti128_si256((__m256i)i, 1));
  }
};

struct Avx2Double {
  using T = double;
  using V = __m256d;
  static constexpr int kLanes = 4;
  static constexpr int kRegisters = 16;
  static V zero() { return _mm256_setzero_pd(); }
  static V load(const double* p) { return _mm256_loadu_pd(p); }
  static void store(double* p, V v) { _mm256_storeu_pd(p, v); }
  static void stream(double* p, V v) { _mm256_stream_pd(p, v); }  // past the caches; p 32-byte aligned
  static V set1(double x) { return _mm256_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm256_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm256_add_pd(a, b); }
  static __m256i first(int64_t n) { return _mm256_cmpgt_epi64(_mm256_set1_epi64x(n), _mm256_setr_epi64x(0, 1, 2, 3)); }
  static V load_first(const double* p, int64_t n) { return _mm256_maskload_pd(p, first(n)); }
  static void store_first(double* p, V v, int64_t n) { _mm256_maskstore_pd(p, first(n), v); }
};

constexpr bool kCompiledForAvx512 = false;  // (for pool_tile.h)

#include "register_transpose.h"
#include "bfloat16_vector.h"
#include "direct_tile.h"
#include "gemm_tile.h"
#include "pool_tile.h"
#include "winograd_tile.h"
#include "depthwise_tile.h"
#include "column_sums_tile.h"

}  // namespace

TransposeFloats avx2_transpose_floats() { return &transpose_floats<Avx2Float>; }

Microkernel<float> avx2_microkernel_float() {
  return {6, 16, 256, &register_tile<Avx2Float, 6, 2>, "avx2", &indirect_tile<Avx2Float, 6, 2>,
          &rows_b_tile<Avx2Float, 6, 2>};
}
Microkernel<double> avx2_microkernel_double() {
  return {6, 8, 256, &register_tile<Avx2Double, 6, 2>, "avx2", &indirect_tile<Avx2Double, 6, 2>,
          &rows_b_tile<Avx2Double, 6, 2>};
}

PoolVectorKernels avx2_pool_vector_kernels() { return pool_vector_kernels_with_lanes<8>("avx2"); }
PoolVectorKernels avx2_pool_vector_kernels_16_lanes() { return pool_vector_kernels_with_lanes<16>("avx2_16_lanes"); }

WinogradNhwcTransforms avx2_winograd_nhwc_transforms() {
  return {&winograd_patch_nhwc<8>, &winograd_sums_nhwc<8>, &winograd_gradient_nhwc<8>};
}

ColumnSums avx2_column_sums() { return &column_sums<Avx2Float>; }

DepthwiseKernels<float> avx2_depthwise_kernels_float() { return depthwise_kernels_of<Avx2Float>("avx2"); }
DepthwiseKernels<double> avx2_depthwise_kernels_double() { return depthwise_kernels_of<Avx2Double>("avx2"); }
DepthwiseKernels<float, uint16_t> avx2_depthwise_kernels_bfloat16() {
  return depthwise_kernels_of<Avx2Float, uint16_t>("avx2");
}

DirectTiles avx2_direct_tiles() {
  DirectTiles t;
  t.isa = "avx2";
  t.lanes = 8;
  t.max_vectors = 2;
  fill_direct_tiles<Avx2Float, 1, 6, 6>(t);
  fill_direct_tiles<Avx2Float, 2, 6, 6>(t);
  fill_row_tiles<Avx2Float, 2, 6>(t);  // 2 x 6: 12 accumulators, 2 loads and 6 broadcasts a tap
  fill_row_weight_tiles<Avx2Float, 3, 4, 6, 8>(t);  // 3 x 4: 12 accumulators, 3 + 1 loads
  return t;
}

}  // namespace cuconv

#pragma GCC pop_options

#endif
