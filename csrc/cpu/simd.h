#pragma once
// Whether cuconv's x86 vector code is compiled: the register tiles in simd_avx512.cpp and
// simd_avx2.cpp (`#pragma GCC target` regions) and the per-ISA clones of the pooling
// kernels (`target_clones` on templates). Both need GCC on x86-64: Clang ignores the
// pragma and rejects target_clones on templates, and other compilers know neither.
// Elsewhere the portable kernels run.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CUCONV_X86_SIMD 1
#else
#define CUCONV_X86_SIMD 0
#endif

// Clones of a function for wider vector units, chosen when the library loads (pooling, the
// bias gradient).
#if CUCONV_X86_SIMD
#define CUCONV_VECTOR_CLONES __attribute__((target_clones("avx512f", "avx2", "default")))
#else
#define CUCONV_VECTOR_CLONES
#endif
// For helpers, lambdas included, that a clone calls: a helper left out of line is compiled
// once, for the baseline x86-64 (SSE2), whichever clone calls it.
#define CUCONV_INLINE_INTO_CLONES inline __attribute__((always_inline))

#include <algorithm>
#include <cstdint>

#include "window.h"

namespace cuconv {

// float16 as its bits, a type of its own (bfloat16's bits are plain uint16_t).
enum class Float16Bits : uint16_t {};

// The vector kernels of pooling (pool_tile.h). channels_last pooling of one output pixel,
// registers of channels at a time (16 with AVX-512, 8 with AVX2), returning the channels done
// (all of them, or none where C is less than a register): max pooling's maxima and their indices
// (pixels of the window listed in `window`, the first standing for an all -inf window), average
// pooling's sums of the window's pixels (a rectangle) divided by `divisor`. Max pooling for float32 and
// bfloat16 (as its bits), average pooling for float16 (as its bits, converted by F16C, so set
// only on CPUs that have it); computed in float. The other dtypes' loops in pool2d.cpp measured as
// fast or faster (float16's max pooling compares the values' bits, 16 to a register; float32's
// and bfloat16's average pooling sums blocks of channels). Each ISA's set: PoolVectorKernels below.
// An average-pooling window: rows [row_begin, row_end) and columns [col_begin, col_end) of a
// plane `width` pixels wide.
struct PoolRectangle {
  int64_t row_begin, row_end, col_begin, col_end, width;
};
template <typename Element>
struct PoolPixelNhwc {
  int64_t (*max)(const Element* x, int64_t C, const int32_t* window, int64_t taps, Element* y,
                 int64_t* indices) = nullptr;
  int64_t (*avg)(const Element* x, int64_t C, const PoolRectangle& window, float divisor, Element* y) = nullptr;
  int64_t lanes = 0;  // channels in a register
};

// Global average pooling's gradient, float32, planes of <= 16 values in groups of `planes`
// planes, a register's lanes (pool_tile.h): 16 with AVX-512, 8 with AVX2, or 4 (the quads).
struct GlobalUnpoolGroups {
  void (*run)(const float* dy, int64_t groups, int64_t plane, float divisor, float* dx) = nullptr;
  int64_t planes = 0;
};

// Global average pooling sums a plane along the plane in 16 partial sums, blocks of this many
// values at a time (pool_tile.h, pool2d.cpp): one float32 sum over a large plane loses accuracy.
// A plane of at most this many values goes to the vector kernel that takes a register's lanes of
// planes at once.
constexpr int64_t kGlobalSumBlock = 256;

// That sum of one large plane, float32, compiled for the ISA (pool_tile.h).
using GlobalSumAlongPlane = float (*)(const float* x, int64_t plane);

// Global average pooling of planes of at most kGlobalSumBlock values, a register's lanes of
// planes at a time (pool_tile.h): the sums of the planes of x[0, planes * plane), divided by
// `divisor`, into y, reading no further than x[readable - 1]; returns the planes done (the caller
// does the rest). For float32, float64, and bfloat16 and float16 as their bits (summed in float;
// float16's kernel converts with F16C, so it is set only on CPUs that have it).
template <typename Element>
using GlobalPoolGroups = int64_t (*)(const Element* x, int64_t planes, int64_t plane, double divisor,
                                     int64_t readable, Element* y);

// Max pooling over whole planes (global max pooling), float32, likewise: maxima into y, their
// indices within the plane into `indices`; planes of < 2^31 values.
using GlobalMaxGroups = int64_t (*)(const float* x, int64_t planes, int64_t plane, int64_t readable, float* y,
                                    int64_t* indices);

// 2x2 average pooling with stride 2 over planes of at most kShortPoolPlane values whose output
// rows are at most kShortPoolRow long, float32, in groups of `planes` planes, a register's lanes
// (pool_tile.h): `groups` groups of planes H x W from x into planes Ho x Wo of y, each window's
// sum divided by `divisor`; the gradient likewise, dy's share into each pixel of its window (0 in
// an odd last row or column). Planes of at least `planes` outputs. (The plane kernel vectorises
// along a row; rows of up to 6 outputs are all its loop's remainder. On a Zen 3 the groups took
// 0.42-0.89 of its time on 8x8 to 12x12 planes, and 1.06-1.3 on 14x14 and 16x16 ones.)
constexpr int64_t kShortPoolPlane = 256;
constexpr int64_t kShortPoolRow = 6;
struct AvgPool2x2Groups {
  void (*pool)(const float* x, int64_t groups, int64_t H, int64_t W, int64_t Ho, int64_t Wo, float divisor,
               float* y) = nullptr;
  void (*unpool)(const float* dy, int64_t groups, int64_t H, int64_t W, int64_t Ho, int64_t Wo, float divisor,
                 float* dx) = nullptr;
  int64_t planes = 0;
};

// Along the rows instead (pool_tile.h, avg_pool_2x2_rows): `planes` planes of tiled 2x2 windows,
// L outputs of a row at a time, reading x (dy) only within `readable` floats; the gradient where
// the windows tile the plane exactly (H = 2 Ho, W = 2 Wo).
struct AvgPool2x2Rows {
  void (*pool)(const float* x, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo, float divisor,
               int64_t readable, float* y) = nullptr;
  void (*unpool)(const float* dy, int64_t planes, int64_t Ho, int64_t Wo, float divisor, int64_t readable,
                 float* dx) = nullptr;
};

// Max pooling's gradient along the rows where 2x2 windows with stride 2 tile the plane exactly
// (pool_tile.h, max_unpool_2x2_rows): `planes` planes of dx from dy and the flat indices, each
// window's four pixels written once; false when an index is none of its window's pixels (then
// nothing is promised of dx). Reads dy and indices only within `readable` values; planes of
// fewer than 2^31 pixels.
using MaxUnpool2x2Rows = bool (*)(const float* dy, const int64_t* indices, int64_t planes, int64_t Ho, int64_t Wo,
                                  int64_t readable, float* dx);

// Pooling's vector kernels above, compiled for one ISA (simd_avx512.cpp, simd_avx2.cpp; all of
// them written once, pool_tile.h); pool2d.cpp takes those of the CPU's ISA (none for the generic
// one). The AVX2 file also has a set with AVX-512's 16 lanes (CUCONV_CPU_POOL_LANES=16), which
// runs the AVX-512 kernels' code paths on a CPU without AVX-512 (for the tests: slower).
struct PoolVectorKernels {
  const char* isa = "generic";  // their name: "avx512", "avx2", "avx2_16_lanes"
  PoolPixelNhwc<float> nhwc;
  PoolPixelNhwc<uint16_t> nhwc_bf16;
  PoolPixelNhwc<Float16Bits> nhwc_half;
  GlobalUnpoolGroups global_unpool;
  GlobalPoolGroups<float> global_pool = nullptr;
  // float32 global pooling and its gradient in 128-bit registers, 4 planes at a time: faster
  // than the register-wide kernels above on some CPUs, slower on others (pool2d.cpp measures)
  GlobalUnpoolGroups global_unpool_quads;
  GlobalPoolGroups<float> global_pool_quads = nullptr;
  GlobalPoolGroups<double> global_pool_double = nullptr;
  GlobalPoolGroups<uint16_t> global_pool_bf16 = nullptr;
  GlobalPoolGroups<Float16Bits> global_pool_half = nullptr;
  GlobalMaxGroups global_max = nullptr;
  GlobalSumAlongPlane global_sum_along_plane = nullptr;
  AvgPool2x2Groups avg_2x2;
  AvgPool2x2Rows avg_2x2_rows;
  MaxUnpool2x2Rows max_unpool_2x2_rows = nullptr;
};
PoolVectorKernels avx512_pool_vector_kernels();
PoolVectorKernels avx2_pool_vector_kernels();
PoolVectorKernels avx2_pool_vector_kernels_16_lanes();

// The transforms of the Winograd convolution (winograd_tile.h), compiled for each ISA: the input
// patch's V = B^T d B, the output tile's A^T m A + bias and grad_output's H e H^T, over
// `channels` channels (innermost).
struct WinogradNhwcTransforms {
  void (*patch)(const float* const* d, int64_t channels, float* v, int64_t v_stride);
  void (*sums)(const float* m, int64_t m_stride, int64_t channels, const float* bias, float* const* y);
  void (*gradient)(const float* const* e, int64_t channels, float* d, int64_t d_stride);
};
WinogradNhwcTransforms avx512_winograd_nhwc_transforms();
WinogradNhwcTransforms avx2_winograd_nhwc_transforms();

// One row of a depthwise convolution for the row kernels (depthwise_tile.h), channels innermost:
// `taps` taps, tap k reading its source row at column u*source_step + offsets[k] for output pixel
// u < count (skipped outside [0, source_width)), `source_stride` elements from pixel to pixel,
// `channels` channels from each pixel's first. Tap k's column 0 is base + origins[k] (elements;
// before its row's start where the tap's offset is negative), so a tap's source is one load and
// an add. The forward-type kernel reads each tap's weights at weights[k] (one per channel), the
// weight-type kernel adds each tap's sums into sums[k]. Weights and sums are T (float, double),
// the rows S: T, or uint16_t for bfloat16's bits (read and written as they are, computed in float).
template <typename T, typename S = T>
struct DepthwiseTaps {
  int64_t taps = 0;
  const T* const* weights = nullptr;
  T* const* sums = nullptr;
  const S* base = nullptr;
  const int64_t* origins = nullptr;
  const int64_t* offsets = nullptr;
  int64_t source_step = 1, source_width = 0, source_stride = 1, channels = 0, count = 0;
  // the output pixels whose every tap reads inside [0, source_width) (depthwise_interior)
  OutputRange interior;
  // forward-type rows: the interior's whole vectors written past the caches (non-temporal
  // stores, where DepthwiseKernels::streams; every such vector aligned to its size)
  bool stream = false;
};

// The interior of a row whose taps read at columns u*step + offsets[k], k < taps.
inline OutputRange depthwise_interior(const int64_t* offsets, int64_t taps, int64_t step, int64_t width, int64_t count) {
  int64_t first = 0, last = count;
  for (int64_t k = 0; k < taps; ++k) {
    const OutputRange in = in_bounds_outputs(offsets[k], step, width, count);
    first = std::max(first, in.begin);
    last = std::min(last, in.end);
  }
  return {first, std::max(first, last)};
}

// The depthwise row kernels of one ISA and dtype (depthwise_tile.h): `forward_row` writes
// out[u*out_step + c] = bias[c] (0 without) + the taps' products, `weight_row` adds
// sum_u dy[u*dy_step + c] * (the tap's source) into each tap's sums; `lanes` per vector. Rows
// (source, out, dy) of S, as DepthwiseTaps.
template <typename T, typename S = T>
struct DepthwiseKernels {
  void (*forward_row)(const DepthwiseTaps<T, S>& row, const T* bias, S* out, int64_t out_step) = nullptr;
  void (*weight_row)(const DepthwiseTaps<T, S>& row, const S* dy, int64_t dy_step) = nullptr;
  int64_t lanes = 1;
  const char* isa = "generic";
  bool streams = false;  // whether forward_row honours DepthwiseTaps::stream
};
// The bias gradient's column sums (column_sums_tile.h): for `blocks` blocks of kColumnSumsRows
// rows of kColumnSumsWidth floats, `stride` apart, sums[j] += the block's column j summed in
// float, row by row, in order. Null: none for this CPU (bias_gradient.cpp's portable loop).
constexpr int64_t kColumnSumsWidth = 64, kColumnSumsRows = 8;
using ColumnSums = void (*)(const float* x, int64_t blocks, int64_t stride, double* sums);
ColumnSums avx512_column_sums();
ColumnSums avx2_column_sums();

DepthwiseKernels<float> avx512_depthwise_kernels_float();
DepthwiseKernels<double> avx512_depthwise_kernels_double();
DepthwiseKernels<float, uint16_t> avx512_depthwise_kernels_bfloat16();
DepthwiseKernels<float> avx2_depthwise_kernels_float();
DepthwiseKernels<double> avx2_depthwise_kernels_double();
DepthwiseKernels<float, uint16_t> avx2_depthwise_kernels_bfloat16();

}  // namespace cuconv
