// 2-D convolution (cross-correlation) on the CPU: im2col + GEMM in bounded blocks.
//
// Index math, for sample n, group g (C_g = C_in/groups input channels, O_g =
// C_out/groups output channels), K = C_g*kH*kW rows and P = H_out*W_out columns:
//
//   columns[(c*kH + i)*kW + j, oh*W_out + ow]
//       = x[n, g*C_g + c, oh*sH - pH + i*dH, ow*sW - pW + j*dW]   (0 in the padding)
//   y[n, g*O_g + o, :] = bias[g*O_g + o] + sum_k W_g[o, k] * columns[k, :]
//
// so the forward pass is one matrix product W_g [O_g, K] @ columns [K, P] per
// sample and group. Backward runs the same products transposed:
//
//   grad_columns = W_g^T @ grad_y[n, g]          then col2im adds them back: grad_x
//   grad_W_g    += grad_y[n, g] @ columns^T
//
// Blocking: columns are built for a block of output rows at a time, counted
// across samples (row = n*H_out + oh), at most kColumnsBudget elements, so the
// workspace per thread stays ~512 KB however large the image (im2col of a whole
// VGG layer would take gigabytes), and small images (ResNet's 3x3 layers) still
// give the GEMM wide matrices. A 1x1 kernel with stride 1 and no padding needs no
// columns at all: the input planes already are the [C_g, H*W] matrix (the book's
// corr2d_multi_in_out_1x1).
//
// Threads: at::parallel_for gives each thread whole samples, so no two threads
// write the same output or input-gradient pixel. The weight gradient is summed
// per thread over a fixed split of the batch and the partial sums are added in
// a fixed order, so results are deterministic.
// parallel_workers_note: worker threads do not inherit the caller's dispatch
// state, so each one steps below autograd itself before calling at::mm on
// tensors (weights) that require grad.
// The matrix products are BLAS calls through at::mm / addmm_ (the one place
// cuconv's CPU path uses a library kernel; im2col/col2im are our own).
//
// Two layer kinds skip im2col: depthwise layers (direct row loops below) and float32
// layers with 4..16 output channels, whose forward pass and weight gradient run the
// AVX2 register-tiled kernels of direct_conv.cpp.

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/core/LegacyTypeDispatch.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/mm.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "../shape.h"
#include "direct_conv.h"
#include "window.h"

namespace cuconv {
namespace {

// Elements of the columns workspace: 512 KB of float, so a block stays in L2 between
// im2col writing it and the GEMM reading it (measured best of 32K..1M on LeNet/VGG/ResNet).
constexpr int64_t kColumnsBudget = int64_t{1} << 17;

// Geometry of one convolution, in plain int64 for the loops below.
struct ConvGeometry {
  int64_t batch, channels_per_group, height, width;
  int64_t out_channels_per_group, kernel_h, kernel_w, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;

  ConvGeometry(const Conv2dShape<int64_t>& s, IntArrayRef stride, IntArrayRef padding,
               IntArrayRef dilation)
      : batch(s.batch), channels_per_group(s.in_channels / s.groups), height(s.in_h),
        width(s.in_w), out_channels_per_group(s.out_channels / s.groups), kernel_h(s.kernel_h),
        kernel_w(s.kernel_w), out_h(s.out_h), out_w(s.out_w), stride_h(stride[0]),
        stride_w(stride[1]), pad_h(padding[0]), pad_w(padding[1]), dilation_h(dilation[0]),
        dilation_w(dilation[1]), groups(s.groups) {}

  int64_t column_rows() const { return channels_per_group * kernel_h * kernel_w; }
  // 1x1, stride 1, no padding: the input plane is its own column matrix.
  bool is_pointwise() const {
    return kernel_h == 1 && kernel_w == 1 && stride_h == 1 && stride_w == 1 && pad_h == 0 &&
           pad_w == 0;
  }
  // Output rows per block (counted across samples) so the columns fit the budget.
  int64_t rows_per_block() const {
    return std::clamp<int64_t>(kColumnsBudget / std::max<int64_t>(1, column_rows() * out_w), 1,
                               std::max<int64_t>(1, batch * out_h));
  }
};

// Walks the valid (ih, iw) of column row (c, i, j) for output rows [row_begin, row_end),
// calling visit(column_offset, input_offset, count) for each run of valid pixels
// and pad(column_offset, count) for the padding. With stride 1 a run is a whole row.
template <typename Visit, typename Pad>
void for_each_column_row(const ConvGeometry& g, int64_t c, int64_t i, int64_t j, int64_t row_begin,
                         int64_t row_end, Visit visit, Pad pad) {
  const int64_t iw_offset = j * g.dilation_w - g.pad_w;
  // Output columns whose input column lies inside [0, width).
  const auto [ow_lo, ow_hi] = in_bounds_outputs(iw_offset, g.stride_w, g.width, g.out_w);
  for (int64_t oh = row_begin; oh < row_end; ++oh) {
    const int64_t col = (oh - row_begin) * g.out_w;
    const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
    if (ih < 0 || ih >= g.height) {
      pad(col, g.out_w);
      continue;
    }
    const int64_t in_row = (c * g.height + ih) * g.width;
    pad(col, ow_lo);
    if (g.stride_w == 1) {
      visit(col + ow_lo, in_row + ow_lo + iw_offset, ow_hi - ow_lo, int64_t{1});
    } else {
      visit(col + ow_lo, in_row + ow_lo * g.stride_w + iw_offset, ow_hi - ow_lo, g.stride_w);
    }
    pad(col + ow_hi, g.out_w - ow_hi);
  }
}

// columns[:, col0 : col0 + rows*W_out] <- the input pixels that output rows
// [row_begin, row_end) of one sample see. `x` points at the group's first input
// channel of that sample; `columns` at column col0 of row 0; `ld` is the row stride.
template <typename scalar_t>
void im2col(const ConvGeometry& g, const scalar_t* x, int64_t row_begin, int64_t row_end,
            scalar_t* columns, int64_t ld) {
  for (int64_t c = 0; c < g.channels_per_group; ++c)
    for (int64_t i = 0; i < g.kernel_h; ++i)
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        scalar_t* dst = columns + ((c * g.kernel_h + i) * g.kernel_w + j) * ld;
        for_each_column_row(
            g, c, i, j, row_begin, row_end,
            [&](int64_t col, int64_t src, int64_t count, int64_t step) {
              // A plain loop, not memcpy: LeNet-sized rows are 10-28 values, where the
              // call costs more than the copy.
              scalar_t* __restrict__ d = dst + col;
              const scalar_t* __restrict__ s = x + src;
              if (step == 1) {
                for (int64_t k = 0; k < count; ++k) d[k] = s[k];
              } else {
                for (int64_t k = 0; k < count; ++k) d[k] = s[k * step];
              }
            },
            [&](int64_t col, int64_t count) { std::fill_n(dst + col, count, scalar_t(0)); });
      }
}

// grad_x += col2im(grad_columns): each column entry goes back to the pixel it came from.
// Same layout arguments as im2col.
template <typename scalar_t>
void col2im_add(const ConvGeometry& g, const scalar_t* columns, int64_t ld, int64_t row_begin,
                int64_t row_end, scalar_t* grad_x) {
  for (int64_t c = 0; c < g.channels_per_group; ++c)
    for (int64_t i = 0; i < g.kernel_h; ++i)
      for (int64_t j = 0; j < g.kernel_w; ++j) {
        const scalar_t* src = columns + ((c * g.kernel_h + i) * g.kernel_w + j) * ld;
        for_each_column_row(
            g, c, i, j, row_begin, row_end,
            [&](int64_t col, int64_t dst, int64_t count, int64_t step) {
              scalar_t* __restrict__ d = grad_x + dst;
              const scalar_t* __restrict__ s = src + col;
              if (step == 1) {  // the common case, kept separate so it vectorises
                for (int64_t k = 0; k < count; ++k) d[k] += s[k];
              } else {
                for (int64_t k = 0; k < count; ++k) d[k * step] += s[k];
              }
            },
            [](int64_t, int64_t) {});
      }
}

// A block is a run of output rows counted across samples, [row_begin, row_end)
// with row = n*H_out + oh, so that small images (ResNet's 3x3 and 6x6 layers)
// still give the GEMM wide matrices. Its columns are [K, (row_end-row_begin)*W_out].
// A segment is the part of a block inside one sample. Segment loops use raw
// pointers: with 10x10 images a block holds dozens of samples, and a tensor
// view per segment would cost more than the copy it describes.
struct Segment {
  int64_t n, oh_begin, oh_end, column;  // sample, its output rows, first column in the block
  int64_t length(int64_t out_w) const { return (oh_end - oh_begin) * out_w; }
};

template <typename F>
void for_each_segment(const ConvGeometry& g, int64_t row_begin, int64_t row_end, F f) {
  for (int64_t r = row_begin; r < row_end;) {
    const int64_t n = r / g.out_h, oh = r % g.out_h;
    const int64_t oh_end = std::min(g.out_h, oh + (row_end - r));
    f(Segment{n, oh, oh_end, (r - row_begin) * g.out_w});
    r += oh_end - oh;
  }
}

bool single_sample(const ConvGeometry& g, int64_t row_begin, int64_t row_end) {
  return row_begin / g.out_h == (row_end - 1) / g.out_h;
}

// Calls f(row_begin, row_end) for the blocks of samples [n_begin, n_end).
template <typename F>
void for_each_block(const ConvGeometry& g, int64_t n_begin, int64_t n_end, F f) {
  const int64_t last = n_end * g.out_h;
  for (int64_t r = n_begin * g.out_h; r < last; r += g.rows_per_block()) {
    f(r, std::min(r + g.rows_per_block(), last));
  }
}

// Offsets into NCHW-contiguous tensors: the group's first input channel of
// sample n, and output channel o of the group at row oh.
int64_t input_offset(const ConvGeometry& g, int64_t n, int64_t gi) {
  return (n * g.groups + gi) * g.channels_per_group * g.height * g.width;
}
int64_t output_offset(const ConvGeometry& g, int64_t n, int64_t gi, int64_t o, int64_t oh) {
  return (((n * g.groups + gi) * g.out_channels_per_group + o) * g.out_h + oh) * g.out_w;
}

// Per-thread scratch: the column matrix, and an [O_g, width] matrix for blocks
// that span samples (whose output is not one strided matrix in NCHW).
struct Workspace {
  at::Tensor columns, matrix;
  Workspace(const ConvGeometry& g, const at::Tensor& like)
      : columns(at::empty({g.column_rows() * g.rows_per_block() * g.out_w}, like.options())),
        matrix(at::empty({g.out_channels_per_group * g.rows_per_block() * g.out_w}, like.options())) {}
};

at::Tensor as_matrix(const at::Tensor& buffer, int64_t rows, int64_t cols) {
  return buffer.narrow(0, 0, rows * cols).view({rows, cols});
}

// The block's [O_g, width] rows of an NCHW tensor when the block lies in one sample.
at::Tensor output_view(const ConvGeometry& g, const at::Tensor& y, int64_t gi, int64_t row_begin,
                       int64_t row_end) {
  const int64_t n = row_begin / g.out_h, oh = row_begin % g.out_h;
  return y[n]
      .narrow(0, gi * g.out_channels_per_group, g.out_channels_per_group)
      .view({g.out_channels_per_group, g.out_h * g.out_w})
      .narrow(1, oh * g.out_w, (row_end - row_begin) * g.out_w);
}

// The [K, width] column matrix of a block for group gi: for a pointwise kernel
// within one sample, a view of the input itself; else im2col into the workspace.
template <typename scalar_t>
at::Tensor block_columns(const ConvGeometry& g, const at::Tensor& x, int64_t gi, int64_t row_begin,
                         int64_t row_end, Workspace& ws) {
  const int64_t width = (row_end - row_begin) * g.out_w;
  if (g.is_pointwise() && single_sample(g, row_begin, row_end)) {
    const int64_t n = row_begin / g.out_h, oh = row_begin % g.out_h;
    return x[n]
        .narrow(0, gi * g.channels_per_group, g.channels_per_group)
        .view({g.channels_per_group, g.height * g.width})
        .narrow(1, oh * g.out_w, width);
  }
  at::Tensor columns = as_matrix(ws.columns, g.column_rows(), width);
  scalar_t* dst = columns.mutable_data_ptr<scalar_t>();
  const scalar_t* x_data = x.const_data_ptr<scalar_t>();
  for_each_segment(g, row_begin, row_end, [&](const Segment& s) {
    im2col<scalar_t>(g, x_data + input_offset(g, s.n, gi), s.oh_begin, s.oh_end, dst + s.column, width);
  });
  return columns;
}

// grad_output of a block for group gi as one [O_g, width] matrix: a view within
// one sample, gathered into the workspace across samples.
template <typename scalar_t>
at::Tensor block_grad_output(const ConvGeometry& g, const at::Tensor& dy, int64_t gi,
                             int64_t row_begin, int64_t row_end, Workspace& ws) {
  if (single_sample(g, row_begin, row_end)) return output_view(g, dy, gi, row_begin, row_end);
  const int64_t width = (row_end - row_begin) * g.out_w;
  at::Tensor matrix = as_matrix(ws.matrix, g.out_channels_per_group, width);
  scalar_t* dst = matrix.mutable_data_ptr<scalar_t>();
  const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
  for_each_segment(g, row_begin, row_end, [&](const Segment& s) {
    for (int64_t o = 0; o < g.out_channels_per_group; ++o) {
      std::memcpy(dst + o * width + s.column, dy_data + output_offset(g, s.n, gi, o, s.oh_begin),
                  s.length(g.out_w) * sizeof(scalar_t));
    }
  });
  return matrix;
}

// ---------------------------------------------------------------------------
// Depthwise convolution (one input channel per group, groups > 1: MobileNet's
// layers). Here a GEMM per group would have a single row, so each plane is
// convolved directly, one output row at a time:
//
//   y[n, o, oh, :] = bias[o] + sum_{i,j} w[o, 0, i, j] * x[n, gi, oh*sH - pH + i*dH, (:)*sW - pW + j*dW]
//
// for the O_g outputs o of group gi, with the output column innermost (an axpy
// over a row, which the compiler vectorises). Backward input scatters the same
// taps back into the group's plane; backward weight reduces each tap over
// (n, oh, ow) in a fixed order. Work items are (sample, group) planes, or groups
// for the weight gradient, so no two threads write the same memory.

bool is_depthwise(const ConvGeometry& g) { return g.channels_per_group == 1 && g.groups > 1; }

// The direct float32 kernels (direct_conv.h) for groups = 1 and few output channels.
DirectConv direct_problem(const ConvGeometry& g) {
  return DirectConv{g.batch,    g.channels_per_group,     g.height,   g.width,    g.out_channels_per_group,
                    g.out_h,    g.out_w,                  g.kernel_h, g.kernel_w, g.stride_h,
                    g.stride_w, g.pad_h,                  g.pad_w,    g.dilation_h, g.dilation_w};
}

template <typename scalar_t>
void depthwise_forward(const ConvGeometry& g, const scalar_t* x, const scalar_t* w, const scalar_t* bias,
                       scalar_t* y) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.kernel_h * g.kernel_w, plane_out = g.out_h * g.out_w;
  at::parallel_for(0, g.batch * g.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(plane_out);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.groups, gi = item % g.groups;
      const scalar_t* xp = x + input_offset(g, n, gi);
      for (int64_t m = 0; m < g.out_channels_per_group; ++m) {
        const int64_t o = gi * g.out_channels_per_group + m;
        std::fill(acc.begin(), acc.end(), bias ? static_cast<acc_t>(bias[o]) : acc_t(0));
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          acc_t* __restrict__ a = acc.data() + oh * g.out_w;
          for (int64_t i = 0; i < g.kernel_h; ++i) {
            const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            if (ih < 0 || ih >= g.height) continue;
            const scalar_t* row = xp + ih * g.width;
            for (int64_t j = 0; j < g.kernel_w; ++j) {
              const int64_t offset = j * g.dilation_w - g.pad_w;
              const auto [lo, hi] = in_bounds_outputs(offset, g.stride_w, g.width, g.out_w);
              const acc_t wv = static_cast<acc_t>(w[o * taps + i * g.kernel_w + j]);
              for (int64_t ow = lo; ow < hi; ++ow) a[ow] += wv * static_cast<acc_t>(row[ow * g.stride_w + offset]);
            }
          }
        }
        scalar_t* yp = y + output_offset(g, n, gi, m, 0);
        for (int64_t k = 0; k < plane_out; ++k) yp[k] = static_cast<scalar_t>(acc[k]);
      }
    }
  });
}

template <typename scalar_t>
void depthwise_backward_input(const ConvGeometry& g, const scalar_t* dy, const scalar_t* w, scalar_t* dx) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.kernel_h * g.kernel_w, plane_in = g.height * g.width;
  at::parallel_for(0, g.batch * g.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(plane_in);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / g.groups, gi = item % g.groups;
      std::fill(acc.begin(), acc.end(), acc_t(0));
      const int64_t o0 = gi * g.out_channels_per_group;
      for (int64_t m = 0; m < g.out_channels_per_group; ++m) {
        const scalar_t* dyp = dy + output_offset(g, n, gi, m, 0);
        for (int64_t oh = 0; oh < g.out_h; ++oh) {
          const scalar_t* dy_row = dyp + oh * g.out_w;
          for (int64_t i = 0; i < g.kernel_h; ++i) {
            const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
            if (ih < 0 || ih >= g.height) continue;
            acc_t* __restrict__ row = acc.data() + ih * g.width;
            for (int64_t j = 0; j < g.kernel_w; ++j) {
              const int64_t offset = j * g.dilation_w - g.pad_w;
              const auto [lo, hi] = in_bounds_outputs(offset, g.stride_w, g.width, g.out_w);
              const acc_t wv = static_cast<acc_t>(w[(o0 + m) * taps + i * g.kernel_w + j]);
              // For a fixed tap the columns ow*sW + offset are distinct: no conflicts.
              for (int64_t ow = lo; ow < hi; ++ow) row[ow * g.stride_w + offset] += wv * static_cast<acc_t>(dy_row[ow]);
            }
          }
        }
      }
      scalar_t* dxp = dx + input_offset(g, n, gi);
      for (int64_t k = 0; k < plane_in; ++k) dxp[k] = static_cast<scalar_t>(acc[k]);
    }
  });
}

template <typename scalar_t>
void depthwise_backward_weight(const ConvGeometry& g, const scalar_t* dy, const scalar_t* x, scalar_t* dw) {
  using acc_t = at::opmath_type<scalar_t>;
  const int64_t taps = g.kernel_h * g.kernel_w;
  // Threads take whole groups; each sums its taps over the batch in order.
  at::parallel_for(0, g.groups, 1, [&](int64_t begin, int64_t end) {
    std::vector<acc_t> acc(g.out_channels_per_group * taps);
    for (int64_t gi = begin; gi < end; ++gi) {
      std::fill(acc.begin(), acc.end(), acc_t(0));
      for (int64_t n = 0; n < g.batch; ++n) {
        const scalar_t* xp = x + input_offset(g, n, gi);
        for (int64_t m = 0; m < g.out_channels_per_group; ++m) {
          const scalar_t* dyp = dy + output_offset(g, n, gi, m, 0);
          for (int64_t oh = 0; oh < g.out_h; ++oh) {
            const scalar_t* dy_row = dyp + oh * g.out_w;
            for (int64_t i = 0; i < g.kernel_h; ++i) {
              const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
              if (ih < 0 || ih >= g.height) continue;
              const scalar_t* row = xp + ih * g.width;
              for (int64_t j = 0; j < g.kernel_w; ++j) {
                const int64_t offset = j * g.dilation_w - g.pad_w;
                const auto [lo, hi] = in_bounds_outputs(offset, g.stride_w, g.width, g.out_w);
                acc_t sum = 0;
                for (int64_t ow = lo; ow < hi; ++ow) sum += static_cast<acc_t>(dy_row[ow]) * static_cast<acc_t>(row[ow * g.stride_w + offset]);
                acc[m * taps + i * g.kernel_w + j] += sum;
              }
            }
          }
        }
      }
      for (int64_t k = 0; k < g.out_channels_per_group * taps; ++k) {
        dw[gi * g.out_channels_per_group * taps + k] = static_cast<scalar_t>(acc[k]);
      }
    }
  });
}

#define CUCONV_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

}  // namespace

at::Tensor conv2d_forward_cpu(const at::Tensor& input, const at::Tensor& weight,
                              const std::optional<at::Tensor>& bias, IntArrayRef stride,
                              IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const auto shape = check_conv2d<int64_t>("cuconv.conv2d", input, weight, bias, stride, padding,
                                           dilation, groups);
  const ConvGeometry g(shape, stride, padding, dilation);
  const at::Tensor x = input.contiguous();
  // W_g as [groups, O_g, K]
  const at::Tensor w = weight.contiguous().view({groups, g.out_channels_per_group, g.column_rows()});
  const at::Tensor b = bias.has_value() && bias->defined() ? bias->contiguous() : at::Tensor();
  at::Tensor y = at::empty({shape.batch, shape.out_channels, g.out_h, g.out_w}, input.options());

  CUCONV_DISPATCH_FLOATING(x.scalar_type(), "conv2d_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* b_data = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    if (is_depthwise(g)) {
      depthwise_forward<scalar_t>(g, x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), b_data, y_data);
      return;
    }
    if (std::is_same_v<scalar_t, float>) {
      if (groups == 1 && direct_conv_suits(g.out_channels_per_group)) {
        direct_conv_forward(direct_problem(g), x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                            b.defined() ? b.const_data_ptr<float>() : nullptr,
                            y.mutable_data_ptr<float>());
        return;
      }
    }
    // Threads take whole samples, so no two write the same output.
    at::parallel_for(0, g.batch, 1, [&](int64_t n_begin, int64_t n_end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // see parallel_workers_note
      Workspace ws(g, x);
      for_each_block(g, n_begin, n_end, [&](int64_t r0, int64_t r1) {
        for (int64_t gi = 0; gi < groups; ++gi) {
          const at::Tensor columns = block_columns<scalar_t>(g, x, gi, r0, r1, ws);
          const int64_t width = columns.size(1);
          // Within one sample the product goes straight into the output; across
          // samples into the workspace, then out to each sample's rows.
          const bool direct = single_sample(g, r0, r1);
          at::Tensor product = direct ? output_view(g, y, gi, r0, r1)
                                      : as_matrix(ws.matrix, g.out_channels_per_group, width);
          at::mm_out(product, w[gi], columns);
          const scalar_t* p_data = product.const_data_ptr<scalar_t>();
          const int64_t p_stride = product.stride(0);
          for_each_segment(g, r0, r1, [&](const Segment& s) {
            for (int64_t o = 0; o < g.out_channels_per_group; ++o) {
              const acc_t bias_o = b_data ? static_cast<acc_t>(b_data[gi * g.out_channels_per_group + o]) : acc_t(0);
              const scalar_t* src = p_data + o * p_stride + s.column;
              scalar_t* dst = y_data + output_offset(g, s.n, gi, o, s.oh_begin);
              const int64_t len = s.length(g.out_w);
              if (direct && !b_data) continue;  // already in place
              for (int64_t k = 0; k < len; ++k) dst[k] = static_cast<scalar_t>(static_cast<acc_t>(src[k]) + bias_o);
            }
          });
        }
      });
    });
  });
  return y;
}

at::Tensor conv2d_backward_input_cpu(const at::Tensor& grad_output, const at::Tensor& weight,
                                     IntArrayRef input_size, IntArrayRef stride,
                                     IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "cuconv.conv2d_backward_input";
  const auto shape = check_conv2d_backward_input<int64_t>(op, grad_output, weight, input_size, stride,
                                                         padding, dilation, groups);
  const ConvGeometry g(shape, stride, padding, dilation);
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor w = weight.contiguous();
  // W_g^T as [groups, K, O_g]
  const at::Tensor w_t = w.view({groups, g.out_channels_per_group, g.column_rows()}).transpose(1, 2);
  at::Tensor dx = at::zeros(input_size, grad_output.options());

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_input_cpu", [&] {
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    if (is_depthwise(g)) {
      depthwise_backward_input<scalar_t>(g, dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx_data);
      return;
    }
    // Threads take whole samples: col2im of neighbouring rows adds into the same pixels.
    at::parallel_for(0, g.batch, 1, [&](int64_t n_begin, int64_t n_end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // see parallel_workers_note
      Workspace ws(g, dy);
      for_each_block(g, n_begin, n_end, [&](int64_t r0, int64_t r1) {
        for (int64_t gi = 0; gi < groups; ++gi) {
          const at::Tensor dy_block = block_grad_output<scalar_t>(g, dy, gi, r0, r1, ws);
          if (g.is_pointwise() && single_sample(g, r0, r1)) {
            // The gradient columns are the input gradient itself.
            at::Tensor dx_block = block_columns<scalar_t>(g, dx, gi, r0, r1, ws);
            at::mm_out(dx_block, w_t[gi], dy_block);
            continue;
          }
          at::Tensor grad_columns = as_matrix(ws.columns, g.column_rows(), dy_block.size(1));
          at::mm_out(grad_columns, w_t[gi], dy_block);
          const scalar_t* src = grad_columns.const_data_ptr<scalar_t>();
          for_each_segment(g, r0, r1, [&](const Segment& s) {
            col2im_add<scalar_t>(g, src + s.column, grad_columns.size(1), s.oh_begin, s.oh_end,
                                 dx_data + input_offset(g, s.n, gi));
          });
        }
      });
    });
  });
  return dx;
}

at::Tensor conv2d_backward_weight_cpu(const at::Tensor& grad_output, const at::Tensor& input,
                                      IntArrayRef weight_size, IntArrayRef stride,
                                      IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "cuconv.conv2d_backward_weight";
  const auto shape = check_conv2d_backward_weight<int64_t>(op, grad_output, input, weight_size, stride,
                                                          padding, dilation, groups);
  const ConvGeometry g(shape, stride, padding, dilation);
  const at::Tensor x = input.contiguous();
  const at::Tensor dy = grad_output.contiguous();

  if (is_depthwise(g)) {
    at::Tensor dw = at::empty(weight_size, dy.options());
    CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_weight_cpu", [&] {
      depthwise_backward_weight<scalar_t>(g, dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(),
                                          dw.mutable_data_ptr<scalar_t>());
    });
    return dw;
  }
  if (dy.scalar_type() == at::kFloat && groups == 1 && direct_conv_suits(g.out_channels_per_group)) {
    at::Tensor dw = at::empty(weight_size, dy.options());
    direct_conv_backward_weight(direct_problem(g), x.const_data_ptr<float>(), dy.const_data_ptr<float>(),
                                dw.mutable_data_ptr<float>());
    return dw;
  }
  // A fixed split of the batch into `parts`, one partial gradient each, summed in order.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), g.batch));
  at::Tensor partial = at::zeros({parts, groups, g.out_channels_per_group, g.column_rows()}, dy.options());
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_weight_cpu", [&] {
    at::parallel_for(0, parts, 1, [&](int64_t p_begin, int64_t p_end) {
      at::AutoDispatchBelowADInplaceOrView below_autograd;  // see parallel_workers_note
      Workspace ws(g, x);
      for (int64_t p = p_begin; p < p_end; ++p) {
        for_each_block(g, p * g.batch / parts, (p + 1) * g.batch / parts, [&](int64_t r0, int64_t r1) {
          for (int64_t gi = 0; gi < groups; ++gi) {
            const at::Tensor dy_block = block_grad_output<scalar_t>(g, dy, gi, r0, r1, ws);
            partial[p][gi].addmm_(dy_block, block_columns<scalar_t>(g, x, gi, r0, r1, ws).t());
          }
        });
      }
    });
  });
  return partial.sum(0).view(weight_size);
}

at::Tensor conv2d_backward_bias_cpu(const at::Tensor& grad_output) {
  check_image_batch<int64_t>("cuconv.conv2d_backward_bias", "grad_output", grad_output.sizes());
  return grad_output.sum({0, 2, 3});
}

}  // namespace cuconv
