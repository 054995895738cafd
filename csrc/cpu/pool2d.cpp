// Max, average and adaptive average pooling on the CPU.
//
// Index math: output cell (oh, ow) of a plane sees the input window
//   rows  oh*sH - pH + i*dH, i in [0, kH)      (dH = 1 for average pooling)
//   cols  ow*sW - pW + j*dW, j in [0, kW)
// clipped to the input. Adaptive pooling uses the window
//   rows [floor(oh*H/H_out), ceil((oh+1)*H/H_out)), likewise for columns.
//
// Layout and threads: the input is made NCHW-contiguous and the N*C planes are
// split across threads; each plane is read once, row by row. Backward passes
// scatter each output gradient into its window within the same plane, so no two
// threads touch the same memory and the sums are deterministic.
// Accumulation is in at::opmath_type (float for bfloat16/half).

#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <ATen/Parallel.h>
#include <ATen/ops/empty.h>
#include <ATen/ops/zeros.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "../ops.h"
#include "../shape.h"

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
  check_floating(op, "input", input);
  const auto s = pool2d_shape<int64_t>(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  at::Tensor indices = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options().dtype(at::kLong));
  const int64_t H = s.in_h, W = s.in_w, Ho = s.out_h, Wo = s.out_w;
  const int64_t kH = kernel_size[0], kW = kernel_size[1], sH = stride[0], sW = stride[1];
  const int64_t pH = padding[0], pW = padding[1], dH = dilation[0], dW = dilation[1];

  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "max_pool2d_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    int64_t* idx_data = indices.mutable_data_ptr<int64_t>();
    at::parallel_for(0, s.batch * s.channels, plane_grain(H * W), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* xp = x_data + plane * H * W;
        for (int64_t oh = 0; oh < Ho; ++oh) {
          // First in-bounds row of the window, and one past the last.
          int64_t h0 = oh * sH - pH;
          const int64_t h1 = std::min(h0 + (kH - 1) * dH + 1, H);
          while (h0 < 0) h0 += dH;
          for (int64_t ow = 0; ow < Wo; ++ow) {
            int64_t w0 = ow * sW - pW;
            const int64_t w1 = std::min(w0 + (kW - 1) * dW + 1, W);
            while (w0 < 0) w0 += dW;
            // As torch: the first in-bounds pixel wins ties and all -inf windows, NaN wins always.
            int64_t best = h0 * W + w0;
            acc_t best_value = -std::numeric_limits<acc_t>::infinity();
            for (int64_t ih = h0; ih < h1; ih += dH)
              for (int64_t iw = w0; iw < w1; iw += dW) {
                const acc_t v = static_cast<acc_t>(xp[ih * W + iw]);
                if (v > best_value || std::isnan(v)) {
                  best_value = v;
                  best = ih * W + iw;
                }
              }
            const int64_t o = plane * Ho * Wo + oh * Wo + ow;
            y_data[o] = static_cast<scalar_t>(best_value);
            idx_data[o] = best;
          }
        }
      }
    });
  });
  return {y, indices};
}

at::Tensor max_pool2d_backward_cpu(const at::Tensor& grad_output, const at::Tensor& indices,
                                   IntArrayRef input_size, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                   bool ceil_mode) {
  const char* op = "cuconv.max_pool2d_backward";
  const auto s = pool2d_shape<int64_t>(op, input_size, kernel_size, stride, padding, dilation, ceil_mode);
  const std::vector<int64_t> out_size{s.batch, s.channels, s.out_h, s.out_w};
  check_grad_output<int64_t>(op, grad_output.sizes(), out_size);
  TORCH_CHECK_VALUE(indices.sizes().equals(out_size) && indices.scalar_type() == at::kLong, op,
                    ": expected int64 indices of shape ", out_size, ", but got ",
                    indices.scalar_type(), " of shape ", indices.sizes());
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
  check_floating(op, "input", input);
  check_divisor_override(op, divisor_override);
  const auto s = pool2d_shape<int64_t>(op, input.sizes(), kernel_size, stride, padding, {1, 1}, ceil_mode);
  const at::Tensor x = input.contiguous();
  at::Tensor y = at::empty({s.batch, s.channels, s.out_h, s.out_w}, input.options());
  const int64_t H = s.in_h, W = s.in_w, Ho = s.out_h, Wo = s.out_w;

  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "avg_pool2d_forward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.batch * s.channels, plane_grain(H * W), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* xp = x_data + plane * H * W;
        scalar_t* yp = y_data + plane * Ho * Wo;
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const AvgWindow wh = avg_window(oh, kernel_size[0], stride[0], padding[0], H);
          for (int64_t ow = 0; ow < Wo; ++ow) {
            const AvgWindow ww = avg_window(ow, kernel_size[1], stride[1], padding[1], W);
            acc_t sum = 0;
            for (int64_t ih = wh.start; ih < wh.end; ++ih)
              for (int64_t iw = ww.start; iw < ww.end; ++iw) sum += static_cast<acc_t>(xp[ih * W + iw]);
            // A window wholly in the ceil-mode overhang averages nothing: 0, as torch.
            const bool empty = wh.start >= wh.end || ww.start >= ww.end;
            yp[oh * Wo + ow] = empty ? scalar_t(0)
                                     : static_cast<scalar_t>(sum / static_cast<acc_t>(avg_divisor(
                                                                        wh, ww, count_include_pad,
                                                                        divisor_override)));
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
  check_divisor_override(op, divisor_override);
  const auto s = pool2d_shape<int64_t>(op, input_size, kernel_size, stride, padding, {1, 1}, ceil_mode);
  check_grad_output<int64_t>(op, grad_output.sizes(), {s.batch, s.channels, s.out_h, s.out_w});
  const at::Tensor dy = grad_output.contiguous();
  at::Tensor dx = at::zeros(input_size, grad_output.options());
  const int64_t H = s.in_h, W = s.in_w, Ho = s.out_h, Wo = s.out_w;

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "avg_pool2d_backward_cpu", [&] {
    using acc_t = at::opmath_type<scalar_t>;
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    at::parallel_for(0, s.batch * s.channels, plane_grain(H * W), [&](int64_t begin, int64_t end) {
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* dyp = dy_data + plane * Ho * Wo;
        scalar_t* dxp = dx_data + plane * H * W;
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const AvgWindow wh = avg_window(oh, kernel_size[0], stride[0], padding[0], H);
          for (int64_t ow = 0; ow < Wo; ++ow) {
            const AvgWindow ww = avg_window(ow, kernel_size[1], stride[1], padding[1], W);
            if (wh.start >= wh.end || ww.start >= ww.end) continue;
            const acc_t share = static_cast<acc_t>(dyp[oh * Wo + ow]) /
                                static_cast<acc_t>(avg_divisor(wh, ww, count_include_pad, divisor_override));
            for (int64_t ih = wh.start; ih < wh.end; ++ih)
              for (int64_t iw = ww.start; iw < ww.end; ++iw)
                dxp[ih * W + iw] = static_cast<scalar_t>(static_cast<acc_t>(dxp[ih * W + iw]) + share);
          }
        }
      }
    });
  });
  return dx;
}

at::Tensor adaptive_avg_pool2d_forward_cpu(const at::Tensor& input, IntArrayRef output_size) {
  const char* op = "cuconv.adaptive_avg_pool2d";
  check_floating(op, "input", input);
  check_adaptive_output_size<int64_t>(op, input.sizes(), output_size);
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
  check_image_batch<int64_t>(op, "input_size", input_size);
  TORCH_CHECK_VALUE(grad_output.dim() == 4 && grad_output.size(0) == input_size[0] &&
                        grad_output.size(1) == input_size[1],
                    op, ": expected grad_output's batch and channels to match input_size ",
                    input_size, ", but got grad_output of shape ", grad_output.sizes());
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
