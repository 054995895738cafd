// The AVX-512 register tiles of cuconv's CPU kernels (32 zmm registers):
// - GEMM (gemm.h): 8 rows x 3 vectors, i.e. 8 x 48 floats or 8 x 24 doubles, in 24
//   registers. Measured on a Zen 5 core, the float tile runs at ~283 GFLOP/s with its
//   panels in L2 (the core's FMA peak is ~276 at the clock it held).
// - direct convolution (direct_conv.h): Q pixels or T taps x NV channel vectors, 24
//   accumulators for NV = 2..4 (12 x 2, 8 x 3, 6 x 4), 12 x 1.
// - bfloat16 GEMM on pairs (gemm.h, PairMicrokernel): the GEMM's tiles with vdpbf16ps, for CPUs
//   with AVX512-BF16 as well; and the direct tiles on pairs, the float tiles' shapes with
//   vdpbf16ps (direct_conv.h: forward on pairs of input channels, weight gradient on pairs of
//   output pixels).

#include "direct_conv.h"
#include "gemm.h"
#include "simd.h"
#include "window.h"

#if CUCONV_X86_SIMD
#include <immintrin.h>

// Everything below is compiled for AVX-512; it is only called when the CPU has it. (And F16C,
// as simd_avx2.cpp.)
#pragma GCC push_options
#pragma GCC target("avx512f,f16c")

namespace cuconv {
namespace {

struct Avx512Float {
  using T = float;
  // plain GCC vector types of a register (V is may_alias, which keeps arrays of it in memory):
  // floats and lane indices for register_transpose.h, 16-bit lanes for bfloat16 bits (direct_tile.h)
  typedef float Floats __attribute__((vector_size(64)));
  typedef int32_t Ints __attribute__((vector_size(64)));
  typedef int16_t Shorts __attribute__((vector_size(32)));  // as many 16-bit lanes
  using V = __m512;
  static constexpr int kLanes = 16;
  static constexpr int kRegisters = 32;
  static V zero() { return _mm512_setzero_ps(); }
  static V load(const float* p) { return _mm512_loadu_ps(p); }
  static void store(float* p, V v) { _mm512_storeu_ps(p, v); }
  static V set1(float x) { return _mm512_set1_ps(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_ps(a, b, c); }
  static V add(V a, V b) { return _mm512_add_ps(a, b); }
  // the first n < 16 lanes (the others 0 / untouched)
  static V load_first(const float* p, int64_t n) { return _mm512_maskz_loadu_ps(static_cast<__mmask16>((1u << n) - 1), p); }
  static void store_first(float* p, V v, int64_t n) { _mm512_mask_storeu_ps(p, static_cast<__mmask16>((1u << n) - 1), v); }
  // 16-bit lanes sign-extended to 32 and 32-bit lanes truncated to 16, one instruction each
  // (GCC 12 splits __builtin_convertvector's into 128-bit halves and packs: 3-4x the work)
  static Ints widen_shorts(Shorts h) { return (Ints)_mm512_cvtepi16_epi32((__m256i)h); }
  static Shorts narrow_ints(Ints i) { return (Shorts)_mm512_cvtepi32_epi16((__m512i)i); }
};

struct Avx512Double {
  using T = double;
  using V = __m512d;
  static constexpr int kLanes = 8;
  static constexpr int kRegisters = 32;
  static V zero() { return _mm512_setzero_pd(); }
  static V load(const double* p) { return _mm512_loadu_pd(p); }
  static void store(double* p, V v) { _mm512_storeu_pd(p, v); }
  static V set1(double x) { return _mm512_set1_pd(x); }
  static V fma(V a, V b, V c) { return _mm512_fmadd_pd(a, b, c); }
  static V add(V a, V b) { return _mm512_add_pd(a, b); }
  static V load_first(const double* p, int64_t n) { return _mm512_maskz_loadu_pd(static_cast<__mmask8>((1u << n) - 1), p); }
  static void store_first(double* p, V v, int64_t n) { _mm512_mask_storeu_pd(p, static_cast<__mmask8>((1u << n) - 1), v); }
};

constexpr bool kCompiledForAvx512 = true;  // (for pool_tile.h)

#include "register_transpose.h"
#include "bfloat16_vector.h"
#include "direct_tile.h"
#include "gemm_tile.h"
#include "pool_tile.h"
#include "winograd_tile.h"
#include "depthwise_tile.h"
#include "column_sums_tile.h"

// GatherKernel<float> (gemm.h): 16 offsets at a time, the padding's (negative) masked off.
void gather_floats(float* dst, const float* src, const int32_t* offsets, int64_t count) {
  for (int64_t q = 0; q < count; q += 16) {
    const __mmask16 lanes = count - q >= 16 ? 0xffff : static_cast<__mmask16>((1u << (count - q)) - 1);
    const __m512i offset = _mm512_maskz_loadu_epi32(lanes, offsets + q);
    const __mmask16 inside = _mm512_mask_cmpge_epi32_mask(lanes, offset, _mm512_setzero_si512());
    _mm512_mask_storeu_ps(dst + q, lanes, _mm512_mask_i32gather_ps(_mm512_setzero_ps(), inside, offset, src, 4));
  }
}

}  // namespace

TransposeFloats avx512_transpose_floats() { return &transpose_floats<Avx512Float>; }

Microkernel<float> avx512_microkernel_float() {
  return {8, 48, 256, &register_tile<Avx512Float, 8, 3>, "avx512", &indirect_tile<Avx512Float, 8, 3>,
          &rows_b_tile<Avx512Float, 8, 3>, &gather_floats};
}
Microkernel<double> avx512_microkernel_double() {
  return {8, 24, 256, &register_tile<Avx512Double, 8, 3>, "avx512", &indirect_tile<Avx512Double, 8, 3>,
          &rows_b_tile<Avx512Double, 8, 3>};
}
// Four vectors wide (29 of the 32 registers): for products whose columns are multiples of
// 64 floats / 32 doubles, which the 3-vector tile would leave a third idle in its edge tile.
Microkernel<float> avx512_microkernel_float_wide() {
  return {6, 64, 256, &register_tile<Avx512Float, 6, 4>, "avx512", &indirect_tile<Avx512Float, 6, 4>,
          &rows_b_tile<Avx512Float, 6, 4>, &gather_floats};
}
Microkernel<double> avx512_microkernel_double_wide() {
  return {6, 32, 256, &register_tile<Avx512Double, 6, 4>, "avx512", &indirect_tile<Avx512Double, 6, 4>,
          &rows_b_tile<Avx512Double, 6, 4>};
}

PoolVectorKernels avx512_pool_vector_kernels() { return pool_vector_kernels_with_lanes<16>("avx512"); }

WinogradNhwcTransforms avx512_winograd_nhwc_transforms() {
  return {&winograd_patch_nhwc<16>, &winograd_sums_nhwc<16>, &winograd_gradient_nhwc<16>};
}

ColumnSums avx512_column_sums() { return &column_sums<Avx512Float>; }

DepthwiseKernels<float> avx512_depthwise_kernels_float() { return depthwise_kernels_of<Avx512Float>("avx512"); }
DepthwiseKernels<double> avx512_depthwise_kernels_double() { return depthwise_kernels_of<Avx512Double>("avx512"); }
DepthwiseKernels<float, uint16_t> avx512_depthwise_kernels_bfloat16() {
  return depthwise_kernels_of<Avx512Float, uint16_t>("avx512");
}

DirectTiles avx512_direct_tiles() {
  DirectTiles t;
  t.isa = "avx512";
  t.lanes = 16;
  t.max_vectors = 4;
  fill_direct_tiles<Avx512Float, 1, 12, 12>(t);
  fill_direct_tiles<Avx512Float, 2, 12, 12>(t);
  fill_direct_tiles<Avx512Float, 3, 8, 8>(t);
  fill_direct_tiles<Avx512Float, 4, 6, 6>(t);
  fill_row_tiles<Avx512Float, 4, 6>(t);  // 4 x 6: 24 accumulators, 4 loads and 6 broadcasts a tap
  fill_row_weight_tiles<Avx512Float, 6, 4, 5, 6, 8, 8, 8>(t);  // 6 x 4: 24 accumulators, 6 + 1 loads
  return t;
}

}  // namespace cuconv

// The bfloat16 pair tiles (gemm.h, PairMicrokernel), compiled for AVX512-BF16 as well; only
// called where the CPU has it (bf16_dot_products()).
#pragma GCC push_options
#pragma GCC target("avx512bf16")

namespace cuconv {
namespace {

// MR rows x NV vectors of 16 floats (gemm_tile.h's register tile, on pairs of k): per pair, NV
// loads of B's 16 lane pairs (32 bfloat16), MR broadcasts of A's row pair (one 32-bit value:
// k in the low half, k + 1 in the high half, as B's lanes hold them) and MR*NV vdpbf16ps.
template <int MR, int NV>
void pair_tile(int64_t pairs, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc, bool accumulate,
               const float* bias) {
  __m512 acc[MR][NV];
  zero_tile<Avx512Float, MR, NV>(acc);
  for (int64_t p = 0; p < pairs; ++p) {
    __m512bh bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = (__m512bh)_mm512_loadu_si512(b + v * 32);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      int32_t pair;
      __builtin_memcpy(&pair, a + 2 * r, sizeof pair);
      const __m512bh ar = (__m512bh)_mm512_set1_epi32(pair);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = _mm512_dpbf16_ps(acc[r][v], ar, bk[v]);
    }
    a += 2 * MR;
    b += 2 * NV * 16;
  }
  store_tile<Avx512Float, MR, NV>(acc, c, ldc, accumulate, bias, nullptr);
}

// direct_tile.h's tiles on pairs: every 32-bit value (a vector's lanes, a broadcast value) holds
// two bfloat16 (two input channels, or two output pixels), the first in the low half, and
// vdpbf16ps adds both products to a lane's float sum. The tile moves those values as floats
// (loads, broadcasts: bits only, no arithmetic), so the float tile's code runs them unchanged.
struct Avx512Bf16Pairs : Avx512Float {
  static V fma(V pairs_a, V pairs_b, V sums) {
    return _mm512_dpbf16_ps(sums, reinterpret_cast<__m512bh>(pairs_a), reinterpret_cast<__m512bh>(pairs_b));
  }
};

// direct_tile.h once more, its templates compiled for AVX512-BF16 here (instantiated from the copy
// above, compiled for AVX-512 alone, a tile could not inline vdpbf16ps: a call per product).
namespace with_bf16 {
#include "direct_tile.h"
}  // namespace with_bf16

}  // namespace

// The float tiles' shapes (avx512_direct_tiles), without the row tiles. The forward tiles take
// pairs of input channels, the weight tiles pairs of output pixels (direct_conv.h); the sums are
// float, which to_planes (the float tiles' arithmetic) writes.
DirectTiles avx512_bf16_direct_pair_tiles() {
  DirectTiles t;
  with_bf16::fill_direct_tiles<Avx512Bf16Pairs, 1, 12, 12>(t);
  with_bf16::fill_direct_tiles<Avx512Bf16Pairs, 2, 12, 12>(t);
  with_bf16::fill_direct_tiles<Avx512Bf16Pairs, 3, 8, 8>(t);
  with_bf16::fill_direct_tiles<Avx512Bf16Pairs, 4, 6, 6>(t);
  t.isa = "avx512_bf16";
  t.lanes = 16;
  t.max_vectors = 4;
  return t;
}

// The shapes of the float tiles above (8 x 3 and 6 x 4 vectors): the same panels, narrowed.
PairTileKernel avx512_bf16_pair_tile(int64_t mr, int64_t nr) {
  if (mr == 8 && nr == 48) return &pair_tile<8, 3>;
  if (mr == 6 && nr == 64) return &pair_tile<6, 4>;
  return nullptr;
}

}  // namespace cuconv

#pragma GCC pop_options

#endif
