// Max, average and adaptive average pooling on the CPU.
//
// Index math: output cell (oh, ow) of a plane sees the input window
//   rows  oh*sH - pH + i*dH, i in [0, kH)      (dH = 1 for average pooling)
//   cols  ow*sW - pW + j*dW, j in [0, kW)
// clipped to the input. Adaptive pooling uses the window
//   rows [floor(oh*H/H_out), ceil((oh+1)*H/H_out)), likewise for columns.
//
// Layout and threads: the input is made NCHW-contiguous and the N*C planes are
// split across threads. Within a plane, each output row is computed for all
// its columns at once: for every kernel offset (i, j) the loop runs over the
// output columns ow, reading input row ih = oh*sH - pH + i*dH at
// ow*sW - pW + j*dW. That inner loop streams memory and vectorises, where a
// loop over one window at a time would not. Backward passes scatter each
// output gradient into its window within the same plane, so no two threads
// touch the same memory and the sums are deterministic.
// Accumulation is in at::opmath_type (float for bfloat16/half).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>
#include <vector>

#include "../ops.h"
#include "../shape.h"
#include "window.h"

namespace cuconv {
namespace {

// Grain for at::parallel_for over planes: enough work per task to pay for a thread.
int64_t plane_grain(int64_t plane_elements) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, plane_elements));
}

#define CUCONV_DISPATCH_FLOATING(TYPE, NAME, ...) \
  AT_DISPATCH_FLOATING_TYPES_AND2(at::kBFloat16, at::kHalf, TYPE, NAME, __VA_ARGS__)

// Clipped window [start, end) of one output index along one axis (dilation 1),
// and the window length counted with the padding (for count_include_pad).
struct AvgWindow {
  int64_t start, end, padded_size;
};
inline AvgWindow avg_window(int64_t o, int64_t kernel, int64_t stride, int64_t pad, int64_t in) {
  int64_t start = o * stride - pad;
  int64_t end = std::min(start + kernel, in + pad);
  const int64_t padded_size = end - start;
  return {std::max<int64_t>(start, 0), std::min(end, in), padded_size};
}

std::vector<AvgWindow> avg_windows(int64_t out, int64_t kernel, int64_t stride, int64_t pad, int64_t in) {
  std::vector<AvgWindow> windows;
  windows.reserve(out);
  for (int64_t o = 0; o < out; ++o) windows.push_back(avg_window(o, kernel, stride, pad, in));
  return windows;
}

// The divisor torch.nn.functional.avg_pool2d uses for one window.
inline int64_t avg_divisor(const AvgWindow& h, const AvgWindow& w, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  if (divisor_override.has_value()) return *divisor_override;
  if (count_include_pad) return h.padded_size * w.padded_size;
  return (h.end - h.start) * (w.end - w.start);
}

}  // namespace

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_cpu(const at::Tensor& input,
                                                          IntArrayRef kernel_size,
                                                          IntArrayRef stride, IntArrayRef padding,
                                                          IntArrayRef dilation, bool ceil_mode) {
  const char* op = "cuconv.max_pool2d";
  const auto s = check_max_pool2d<int64_t>(op, input, kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  at::Tensor indices = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options().dtype(at::kLong));
  const int64_t H = s.in_h, W = s.in_w, Ho = s.out_h, Wo = s.out_w;
  const int64_t kH = kernel_size[0], kW = kernel_size[1], sH = stride[0], sW = stride[1];
  const int64_t pH = padding[0], pW = padding[1], dH = dilation[0], dW = dilation[1];

  // As torch, a window whose values are all -inf reports its first in-bounds pixel:
  // first_w[ow] is that column (the window start, moved right past the padding).
  std::vector<int64_t> first_w(Wo);
  for (int64_t ow = 0; ow < Wo; ++ow) {
    int64_t w0 = ow * sW - pW;
    while (w0 < 0) w0 += dW;
    first_w[ow] = w0;
  }
  // The running argmax is kept in 32 bits when the plane allows: a float value and an
  // int32 index share a vector lane width, so the select below vectorises.
  const bool small_plane = H * W <= std::numeric_limits<int32_t>::max();

  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "max_pool2d_forward_cpu", [&] {
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    int64_t* idx_data = indices.mutable_data_ptr<int64_t>();
    auto run = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      using acc_t = at::opmath_type<scalar_t>;
      at::parallel_for(0, s.batch * s.channels, plane_grain(H * W), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> best(Wo);
        std::vector<index_t> best_index(Wo);
        for (int64_t plane = begin; plane < end; ++plane) {
          const scalar_t* xp = x_data + plane * H * W;
          for (int64_t oh = 0; oh < Ho; ++oh) {
            int64_t h0 = oh * sH - pH;
            while (h0 < 0) h0 += dH;
            std::fill(best.begin(), best.end(), -std::numeric_limits<acc_t>::infinity());
            for (int64_t ow = 0; ow < Wo; ++ow) best_index[ow] = static_cast<index_t>(h0 * W + first_w[ow]);
            // Window pixels in torch's order (rows, then columns): the first maximum
            // wins, and NaN always wins, so it propagates. Branch-free for vectorising.
            for (int64_t ih = h0; ih < std::min(oh * sH - pH + (kH - 1) * dH + 1, H); ih += dH) {
              const scalar_t* row = xp + ih * W;
              for (int64_t j = 0; j < kW; ++j) {
                const int64_t offset = j * dW - pW;
                const auto [ow_begin, ow_end] = in_bounds_outputs(offset, sW, W, Wo);
                const index_t base = static_cast<index_t>(ih * W + offset);
                acc_t* __restrict__ b = best.data();
                index_t* __restrict__ bi = best_index.data();
                for (int64_t ow = ow_begin; ow < ow_end; ++ow) {
                  const acc_t v = static_cast<acc_t>(row[ow * sW + offset]);
                  const bool take = v > b[ow] || v != v;
                  b[ow] = take ? v : b[ow];
                  bi[ow] = take ? static_cast<index_t>(base + ow * sW) : bi[ow];
                }
              }
            }
            const int64_t o = (plane * Ho + oh) * Wo;
            for (int64_t ow = 0; ow < Wo; ++ow) {
              y_data[o + ow] = static_cast<scalar_t>(best[ow]);
              idx_data[o + ow] = best_index[ow];
            }
          }
        }
      });
    };
    small_plane ? run(int32_t{0}) : run(int64_t{0});
  });
  return {y, indices};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   IntArrayRef input_size, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                   bool ceil_mode) {
  const char* op = "cuconv.max_pool2d_backward";
  const auto s = check_max_pool2d_backward<int64_t>(op, grad_output, indices, input_size, kernel_size,
                                                    stride, padding, dilation, ceil_mode);
  const at::Tensor dy = grad_output.contiguous();
  const at::Tensor idx = indices.contiguous();
  at::Tensor dx = at::zeros(input_size, grad_output.options());
  const int64_t plane_in = s.in_h * s.in_w, plane_out = s.out_h * s.out_w;

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "max_pool2d_backward_cpu", [&] {
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    const int64_t* idx_data = idx.const_data_ptr<int64_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.batch * s.channels, plane_grain(plane_out), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        scalar_t* dxp = dx_data + plane * plane_in;
        for (int64_t o = plane * plane_out; o < (plane + 1) * plane_out; ++o) {
          const int64_t target = idx_data[o];
          TORCH_CHECK_INDEX(target >= 0 && target < plane_in, op, ": index ", target,
                            " in indices is outside the input plane of ", plane_in, " pixels");
          dxp[target] += dy_data[o];
        }
      }
    });
  });
  return dx;
}

at::Tensor avg_pool2d_forward_cpu(const at::Tensor& input, IntArrayRef kernel_size,
                                  IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
                                  bool count_include_pad, std::optional<int64_t> divisor_override) {
  const char* op = "cuconv.avg_pool2d";
  const auto s = check_avg_pool2d<int64_t>(op, input, kernel_size, stride, padding, ceil_mode, divisor_override);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  const int64_t H = s.in_h, W = s.in_w, Ho = s.out_h, Wo = s.out_w;

  const std::vector<AvgWindow> col_windows = avg_windows(Wo, kernel_size[1], stride[1], padding[1], W);

  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "avg_pool2d_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.batch * s.channels, plane_grain(H * W), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> sum(Wo);
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* xp = x_data + plane * H * W;
        scalar_t* yp = y_data + plane * Ho * Wo;
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const AvgWindow wh = avg_window(oh, kernel_size[0], stride[0], padding[0], H);
          std::fill(sum.begin(), sum.end(), acc_t(0));
          for (int64_t ih = wh.start; ih < wh.end; ++ih) {
            const scalar_t* row = xp + ih * W;
            for (int64_t j = 0; j < kernel_size[1]; ++j) {
              const int64_t offset = j - padding[1];
              const auto [ow_begin, ow_end] = in_bounds_outputs(offset, stride[1], W, Wo);
              for (int64_t ow = ow_begin; ow < ow_end; ++ow) sum[ow] += static_cast<acc_t>(row[ow * stride[1] + offset]);
            }
          }
          for (int64_t ow = 0; ow < Wo; ++ow) {
            const AvgWindow& ww = col_windows[ow];
            // A window wholly in the ceil-mode overhang averages nothing: 0, as torch.
            const bool empty = wh.start >= wh.end || ww.start >= ww.end;
            const acc_t divisor = static_cast<acc_t>(avg_divisor(wh, ww, count_include_pad, divisor_override));
            yp[oh * Wo + ow] = empty ? scalar_t(0) : static_cast<scalar_t>(sum[ow] / divisor);
          }
        }
      }
    });
  });
  return y;
}

at::Tensor avg_pool2d_backward_cpu(const at::Tensor& grad_output, IntArrayRef input_size,
                                   IntArrayRef kernel_size, IntArrayRef stride,
                                   IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override) {
  const char* op = "cuconv.avg_pool2d_backward";
  const auto s = check_avg_pool2d_backward<int64_t>(op, grad_output, input_size, kernel_size, stride, padding,
                                                    ceil_mode, divisor_override);
  const at::Tensor dy = grad_output.contiguous();
  at::Tensor dx = at::zeros(input_size, grad_output.options());
  const int64_t H = s.in_h, W = s.in_w, Ho = s.out_h, Wo = s.out_w;

  const std::vector<AvgWindow> col_windows = avg_windows(Wo, kernel_size[1], stride[1], padding[1], W);

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "avg_pool2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.batch * s.channels, plane_grain(H * W), [&](int64_t begin, int64_t end) {
      std::vector<acc_t> share(Wo);
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* dyp = dy_data + plane * Ho * Wo;
        scalar_t* dxp = dx_data + plane * H * W;
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const AvgWindow wh = avg_window(oh, kernel_size[0], stride[0], padding[0], H);
          for (int64_t ow = 0; ow < Wo; ++ow) {
            const AvgWindow& ww = col_windows[ow];
            share[ow] = static_cast<acc_t>(dyp[oh * Wo + ow]) /
                        static_cast<acc_t>(avg_divisor(wh, ww, count_include_pad, divisor_override));
          }
          // Each pixel of the window gets the output's share; for a fixed j the
          // columns ow*sW + j - pW are distinct, so the inner loop has no conflicts.
          for (int64_t ih = wh.start; ih < wh.end; ++ih) {
            scalar_t* row = dxp + ih * W;
            for (int64_t j = 0; j < kernel_size[1]; ++j) {
              const int64_t offset = j - padding[1];
              const auto [ow_begin, ow_end] = in_bounds_outputs(offset, stride[1], W, Wo);
              for (int64_t ow = ow_begin; ow < ow_end; ++ow) {
                scalar_t& target = row[ow * stride[1] + offset];
                target = static_cast<scalar_t>(static_cast<acc_t>(target) + share[ow]);
              }
            }
          }
        }
      }
    });
  });
  return dx;
}

at::Tensor adaptive_avg_pool2d_forward_cpu(const at::Tensor& input, IntArrayRef output_size) {
  const char* op = "cuconv.adaptive_avg_pool2d";
  check_adaptive_avg_pool2d<int64_t>(op, input, output_size);
  const at::Tensor x = input.contiguous();
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = output_size[0], Wo = output_size[1];
  at::Tensor y = at::empty({N, C, Ho, Wo}, input.options());

  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "adaptive_avg_pool2d_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, plane_grain(H * W), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* xp = x_data + plane * H * W;
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const int64_t h0 = adaptive_start(oh, Ho, H), h1 = adaptive_end(oh, Ho, H);
          for (int64_t ow = 0; ow < Wo; ++ow) {
            const int64_t w0 = adaptive_start(ow, Wo, W), w1 = adaptive_end(ow, Wo, W);
            acc_t sum = 0;
            for (int64_t ih = h0; ih < h1; ++ih)
              for (int64_t iw = w0; iw < w1; ++iw) sum += static_cast<acc_t>(xp[ih * W + iw]);
            y_data[(plane * Ho + oh) * Wo + ow] = static_cast<scalar_t>(sum / static_cast<acc_t>((h1 - h0) * (w1 - w0)));
          }
        }
      }
    });
  });
  return y;
}

at::Tensor adaptive_avg_pool2d_backward_cpu(const at::Tensor& grad_output, IntArrayRef input_size) {
  const char* op = "cuconv.adaptive_avg_pool2d_backward";
  check_adaptive_backward<int64_t>(op, grad_output.sizes(), input_size);
  const at::Tensor dy = grad_output.contiguous();
  const int64_t N = input_size[0], C = input_size[1], H = input_size[2], W = input_size[3];
  const int64_t Ho = dy.size(2), Wo = dy.size(3);
  at::Tensor dx = at::zeros(input_size, grad_output.options());

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "adaptive_avg_pool2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, N * C, plane_grain(H * W), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        scalar_t* dxp = dx_data + plane * H * W;
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const int64_t h0 = adaptive_start(oh, Ho, H), h1 = adaptive_end(oh, Ho, H);
          for (int64_t ow = 0; ow < Wo; ++ow) {
            const int64_t w0 = adaptive_start(ow, Wo, W), w1 = adaptive_end(ow, Wo, W);
            const acc_t share = static_cast<acc_t>(dy_data[(plane * Ho + oh) * Wo + ow]) /
                                static_cast<acc_t>((h1 - h0) * (w1 - w0));
            for (int64_t ih = h0; ih < h1; ++ih)
              for (int64_t iw = w0; iw < w1; ++iw)
                dxp[ih * W + iw] = static_cast<scalar_t>(static_cast<acc_t>(dxp[ih * W + iw]) + share);
          }
        }
      }
    });
  });
  return dx;
}

}  // namespace cuconv
