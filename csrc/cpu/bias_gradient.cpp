// The bias gradient of a convolution on the CPU: one sum per output channel,
//
//   db[c] = sum over n, h, w of dy[n, c, h, w]
//
// accumulated in double whatever dy's dtype (VGG's first layer sums 6.4 million float32 values
// per channel; one float accumulator would lose digits) and rounded to dy's dtype at the end.
// Values reach the double sums kRowsAtOnce at a time, summed in opmath first (float32 for the
// float types: a few roundings), so that the double sums are loaded and stored once per that
// many values. Three shapes of work, each a sum down the columns of a row-major matrix:
//
//   NHWC dy                rows: the pixels, [N*H*W, C]       column j: channel j
//   NCHW dy, small planes  rows: the samples, in groups of    column j: channel c0 + j / (H*W)
//                          channels c0.. [N, g*H*W] (row
//                          stride C*H*W), a thread a group
//   NCHW dy, large planes  each (n, c) plane summed along its length (kPlaneLanes partial sums,
//                          a thread a run of planes), then the N planes of a channel in order of n
//
// The NHWC rows are taken in a fixed number of runs (set by the shape, not the thread count),
// each summed on one thread into a row of partial sums of its own, the runs added in order; the
// NCHW groups and planes are one thread's each. So the result has the same bits on any number
// of threads. Rows of fewer than kWideRow values (LeNet's 6 channels, ResNet's 3x3 planes) are
// read several at a time as one longer row and folded back, so that the inner loop is long
// enough for vector adds. Rows of exactly 64 floats (64, 32, 16 NHWC channels; the ISA's vector
// kernels, column_sums_tile.h) are read row by row in address order, the same sums in the same
// order: the portable loop reads a block's rows column by column, which the prefetchers lose.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "../shape.h"
#include "gemm.h"  // cpu_isa
#include "simd.h"

namespace cuconv {
namespace {

constexpr int64_t kWideRow = 64;            // values a row of the column sums should have, at least
constexpr int64_t kRowsAtOnce = 8;          // values summed in opmath before one double add
constexpr int64_t kRunValues = 1 << 16;     // NHWC: values a run of rows should have, at least
constexpr int64_t kMaxRuns = 64;            // NHWC: runs of rows, at most
constexpr int64_t kLargePlane = 1024;       // NCHW: planes of this many values are summed along their length
constexpr int64_t kPlaneLanes = 16;         // independent partial sums along one such plane

template <typename scalar_t>
CUCONV_INLINE_INTO_CLONES double as_double(scalar_t v) {
  return static_cast<double>(static_cast<opmath_t<scalar_t>>(v));
}

// sums[j] += x[r * stride + j] for j < width and rows r in [0, rows).
template <typename scalar_t>
CUCONV_VECTOR_CLONES void add_rows(const scalar_t* x, int64_t rows, int64_t width, int64_t stride, double* sums) {
  using acc_t = opmath_t<scalar_t>;
  int64_t r = 0;
  for (; r + kRowsAtOnce <= rows; r += kRowsAtOnce) {
    const scalar_t* row = x + r * stride;
    for (int64_t j = 0; j < width; ++j) {
      acc_t sum = static_cast<acc_t>(row[j]);
      for (int64_t i = 1; i < kRowsAtOnce; ++i) sum += static_cast<acc_t>(row[i * stride + j]);
      sums[j] += static_cast<double>(sum);
    }
  }
  for (; r < rows; ++r)
    for (int64_t j = 0; j < width; ++j) sums[j] += as_double(x[r * stride + j]);
}

// The ISA's column sums (simd.h, column_sums_tile.h) where the CPU has them: they read float rows
// of kColumnSumsWidth in address order, row by row (the loop above reads a block's rows column by
// column, which the hardware prefetchers lose: benchmarks/NOTES.md, forty-first session).
ColumnSums column_sums_for_this_cpu() {
#if CUCONV_X86_SIMD
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return avx512_column_sums();
    case CpuIsa::kAvx2: return avx2_column_sums();
    default: break;
  }
#endif
  return nullptr;
}

// add_rows, its whole blocks by the ISA's column sums where they suit (float rows of their width,
// `column_sums` not null): the same operations in the same order, so the same bits.
template <typename scalar_t>
void add_rows_by_rows(const scalar_t* x, int64_t rows, int64_t width, int64_t stride, double* sums,
                      ColumnSums column_sums) {
  static_assert(kColumnSumsRows == kRowsAtOnce);
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (column_sums != nullptr && width == kColumnSumsWidth) {
      const int64_t blocks = rows / kRowsAtOnce;
      column_sums(x, blocks, stride, sums);
      x += blocks * kRowsAtOnce * stride;
      rows -= blocks * kRowsAtOnce;
    }
  }
  add_rows(x, rows, width, stride, sums);
}

// The sum of plane[0, length) in kPlaneLanes partial sums (independent adds, a vector register or two).
template <typename scalar_t>
CUCONV_VECTOR_CLONES double sum_plane(const scalar_t* plane, int64_t length) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int64_t kStep = kPlaneLanes * kRowsAtOnce;
  double lanes[kPlaneLanes] = {};
  int64_t i = 0;
  for (; i + kStep <= length; i += kStep)
    for (int64_t l = 0; l < kPlaneLanes; ++l) {
      acc_t sum = static_cast<acc_t>(plane[i + l]);
      for (int64_t k = 1; k < kRowsAtOnce; ++k) sum += static_cast<acc_t>(plane[i + k * kPlaneLanes + l]);
      lanes[l] += static_cast<double>(sum);
    }
  for (int64_t l = 0; i < length; ++i, l = (l + 1) % kPlaneLanes) lanes[l] += as_double(plane[i]);
  double sum = 0.0;
  for (int64_t l = 0; l < kPlaneLanes; ++l) sum += lanes[l];
  return sum;
}

// NHWC: the column sums of the pixels' rows [P, C], into sums[C].
template <typename scalar_t>
void sum_pixels(const scalar_t* dy, int64_t P, int64_t C, double* sums) {
  const int64_t k = std::max<int64_t>(1, std::min(P, kWideRow / std::max<int64_t>(C, 1)));  // pixels per row read
  const int64_t width = k * C, rows = P / k;
  const int64_t runs = std::clamp<int64_t>(std::min((P * C + kRunValues - 1) / kRunValues, kMaxRuns), 1,
                                           std::max<int64_t>(rows, 1));
  const int64_t per_run = (rows + runs - 1) / runs;
  std::vector<double> partial(static_cast<size_t>(runs * width), 0.0);
  const ColumnSums column_sums = column_sums_for_this_cpu();
  torch::stable::parallel_for(0, runs, 1, [&](int64_t first, int64_t last) {
    for (int64_t run = first; run < last; ++run) {
      const int64_t begin = std::min(rows, run * per_run), end = std::min(rows, begin + per_run);
      add_rows_by_rows(dy + begin * width, end - begin, width, width, partial.data() + run * width, column_sums);
    }
  });
  for (int64_t run = 0; run < runs; ++run)
    for (int64_t j = 0; j < width; ++j) sums[j % C] += partial[run * width + j];
  add_rows(dy + rows * width, P - rows * k, C, C, sums);  // the pixels left over (fewer than k)
}

// NCHW, planes of fewer than kLargePlane values: groups of channels whose planes together make
// a row of at least kWideRow values, down the batch.
template <typename scalar_t>
void sum_small_planes(const scalar_t* dy, int64_t N, int64_t C, int64_t plane, double* sums) {
  const int64_t per_group = std::min(C, (kWideRow + plane - 1) / plane);
  const int64_t groups = (C + per_group - 1) / per_group;
  const ColumnSums column_sums = column_sums_for_this_cpu();
  torch::stable::parallel_for(0, groups, 1, [&](int64_t first, int64_t last) {
    std::vector<double> columns(static_cast<size_t>(per_group * plane));
    for (int64_t group = first; group < last; ++group) {
      const int64_t c0 = group * per_group, channels = std::min(per_group, C - c0);
      std::fill(columns.begin(), columns.end(), 0.0);
      add_rows_by_rows(dy + c0 * plane, N, channels * plane, C * plane, columns.data(), column_sums);
      for (int64_t j = 0; j < channels * plane; ++j) sums[c0 + j / plane] += columns[j];
    }
  });
}

// NCHW, planes of kLargePlane values or more: each plane along its length.
template <typename scalar_t>
void sum_large_planes(const scalar_t* dy, int64_t N, int64_t C, int64_t plane, double* sums) {
  std::vector<double> plane_sums(static_cast<size_t>(N * C));
  torch::stable::parallel_for(0, N * C, std::max<int64_t>(1, 32768 / plane), [&](int64_t begin, int64_t end) {
    for (int64_t p = begin; p < end; ++p) plane_sums[p] = sum_plane(dy + p * plane, plane);
  });
  for (int64_t n = 0; n < N; ++n)
    for (int64_t c = 0; c < C; ++c) sums[c] += plane_sums[n * C + c];
}

}  // namespace

Tensor conv2d_backward_bias_cpu(const Tensor& grad_output) {
  check_image_batch("cuconv.conv2d_backward_bias", "grad_output", grad_output.sizes());
  const bool nhwc = is_channels_last(grad_output);
  const Tensor dy = nhwc ? grad_output : contiguous_or_self(grad_output);
  const int64_t N = dy.size(0), C = dy.size(1), plane = dy.size(2) * dy.size(3);
  Tensor db = empty_like_with(dy, {C});
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_bias_cpu", [&] {
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    std::vector<double> sums(static_cast<size_t>(C), 0.0);
    if (N == 0) {
      // an empty batch (the only empty size the check lets through): every sum is 0
    } else if (nhwc) {
      sum_pixels(dy_data, N * plane, C, sums.data());
    } else if (plane < kLargePlane) {
      sum_small_planes(dy_data, N, C, plane, sums.data());
    } else {
      sum_large_planes(dy_data, N, C, plane, sums.data());
    }
    scalar_t* db_data = db.mutable_data_ptr<scalar_t>();
    for (int64_t c = 0; c < C; ++c) db_data[c] = static_cast<scalar_t>(sums[c]);
  });
  return db;
}

}  // namespace cuconv
