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

#include <cstdint>

namespace cuconv {

// The vector kernels of pooling (pool_tile.h). channels_last float32 max pooling, one output
// pixel a register of channels at a time (16 with AVX-512, 8 with AVX2), returning the channels
// done (C rounded down to whole registers). Each ISA's set: PoolVectorKernels below.
using MaxPoolPixelNhwc = int64_t (*)(const float* x, int64_t C, const int32_t* window, int64_t taps, float* y,
                                     int64_t* indices);

// Global average pooling's gradient, float32, planes of <= 16 values in groups of `planes`
// planes, a register's lanes (pool_tile.h): 16 with AVX-512, 8 with AVX2.
struct GlobalUnpoolGroups {
  void (*run)(const float* dy, int64_t groups, int64_t plane, float divisor, float* dx) = nullptr;
  int64_t planes = 0;
};

// Global average pooling sums a plane of at most this many values in order, a larger one along
// the plane in 16 partial sums, blocks of this many at a time (pool_tile.h, pool2d.cpp): one
// float32 sum over a large plane loses accuracy.
constexpr int64_t kGlobalSumBlock = 256;

// That sum of one large plane, float32, compiled for the ISA (pool_tile.h).
using GlobalSumAlongPlane = float (*)(const float* x, int64_t plane);

// Global average pooling, float32, a register's lanes of planes at a time (pool_tile.h): the
// sums of the planes of x[0, planes * plane), divided by `divisor`, into y, reading no further
// than x[readable - 1]; returns the planes done (the caller does the rest).
using GlobalPoolGroups = int64_t (*)(const float* x, int64_t planes, int64_t plane, float divisor, int64_t readable,
                                     float* y);

// Max pooling over whole planes (global max pooling), float32, likewise: maxima into y, their
// indices within the plane into `indices`; planes of < 2^31 values.
using GlobalMaxGroups = int64_t (*)(const float* x, int64_t planes, int64_t plane, int64_t readable, float* y,
                                    int64_t* indices);

// Pooling's vector kernels above, compiled for one ISA (simd_avx512.cpp, simd_avx2.cpp);
// pool2d.cpp takes those of the CPU's ISA (none for the generic one).
struct PoolVectorKernels {
  MaxPoolPixelNhwc max_pixel_nhwc = nullptr;
  GlobalUnpoolGroups global_unpool;
  GlobalPoolGroups global_pool = nullptr;
  GlobalMaxGroups global_max = nullptr;
  GlobalSumAlongPlane global_sum_along_plane = nullptr;
};
PoolVectorKernels avx512_pool_vector_kernels();
PoolVectorKernels avx2_pool_vector_kernels();

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

}  // namespace cuconv
