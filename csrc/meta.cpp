// Meta kernels: output shapes and dtypes without data, for torch.compile's fake
// tensors and for opcheck. They run the same checks as the real kernels
// (shape.h) on symbolic sizes, so a traced graph rejects what eager rejects.

#include <ATen/ops/empty.h>
#include <torch/library.h>

#include "ops.h"
#include "shape.h"

namespace cuconv {
namespace {

using c10::SymInt;
using c10::SymIntArrayRef;

at::Tensor conv2d_forward_meta(const at::Tensor& input, const at::Tensor& weight,
                               const std::optional<at::Tensor>& bias, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  auto s = check_conv2d<SymInt>("cuconv.conv2d", input, weight, bias, stride, padding, dilation, groups);
  return at::empty_symint({s.batch, s.out_channels, s.out_h, s.out_w}, input.options());
}

at::Tensor conv2d_backward_input_meta(const at::Tensor& grad_output, const at::Tensor& weight,
                                      SymIntArrayRef input_size, IntArrayRef stride,
                                      IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "cuconv.conv2d_backward_input";
  check_conv2d_backward_input<SymInt>(op, grad_output, weight, input_size, stride, padding, dilation, groups);
  return at::empty_symint(input_size, grad_output.options());
}

at::Tensor conv2d_backward_weight_meta(const at::Tensor& grad_output, const at::Tensor& input,
                                       SymIntArrayRef weight_size, IntArrayRef stride,
                                       IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "cuconv.conv2d_backward_weight";
  check_conv2d_backward_weight<SymInt>(op, grad_output, input, weight_size, stride, padding, dilation, groups);
  return at::empty_symint(weight_size, grad_output.options());
}

at::Tensor conv2d_backward_bias_meta(const at::Tensor& grad_output) {
  check_image_batch<SymInt>("cuconv.conv2d_backward_bias", "grad_output", grad_output.sym_sizes());
  return at::empty_symint({grad_output.sym_size(1)}, grad_output.options());
}

std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_meta(const at::Tensor& input,
                                                           IntArrayRef kernel_size,
                                                           IntArrayRef stride, IntArrayRef padding,
                                                           IntArrayRef dilation, bool ceil_mode) {
  const char* op = "cuconv.max_pool2d";
  auto s = check_max_pool2d<SymInt>(op, input, kernel_size, stride, padding, dilation, ceil_mode);
  std::vector<SymInt> out_size{s.batch, s.channels, s.out_h, s.out_w};
  return {at::empty_symint(out_size, input.options()),
          at::empty_symint(out_size, input.options().dtype(at::kLong))};
}

at::Tensor max_pool2d_backward_meta(const at::Tensor& grad_output, const at::Tensor& indices,
                                    SymIntArrayRef input_size, IntArrayRef kernel_size,
                                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                    bool ceil_mode) {
  const char* op = "cuconv.max_pool2d_backward";
  check_max_pool2d_backward<SymInt>(op, grad_output, indices, input_size, kernel_size, stride, padding,
                                    dilation, ceil_mode);
  return at::empty_symint(input_size, grad_output.options());
}

at::Tensor avg_pool2d_forward_meta(const at::Tensor& input, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
                                   bool count_include_pad, std::optional<int64_t> divisor_override) {
  const char* op = "cuconv.avg_pool2d";
  auto s = check_avg_pool2d<SymInt>(op, input, kernel_size, stride, padding, ceil_mode, divisor_override);
  return at::empty_symint({s.batch, s.channels, s.out_h, s.out_w}, input.options());
}

at::Tensor avg_pool2d_backward_meta(const at::Tensor& grad_output, SymIntArrayRef input_size,
                                    IntArrayRef kernel_size, IntArrayRef stride,
                                    IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                    std::optional<int64_t> divisor_override) {
  const char* op = "cuconv.avg_pool2d_backward";
  check_avg_pool2d_backward<SymInt>(op, grad_output, input_size, kernel_size, stride, padding, ceil_mode,
                                    divisor_override);
  return at::empty_symint(input_size, grad_output.options());
}

at::Tensor adaptive_avg_pool2d_forward_meta(const at::Tensor& input, IntArrayRef output_size) {
  const char* op = "cuconv.adaptive_avg_pool2d";
  check_adaptive_avg_pool2d<SymInt>(op, input, output_size);
  return at::empty_symint({input.sym_size(0), input.sym_size(1), output_size[0], output_size[1]},
                          input.options());
}

at::Tensor adaptive_avg_pool2d_backward_meta(const at::Tensor& grad_output, SymIntArrayRef input_size) {
  const char* op = "cuconv.adaptive_avg_pool2d_backward";
  check_adaptive_backward<SymInt>(op, grad_output.sym_sizes(), input_size);
  return at::empty_symint(input_size, grad_output.options());
}

}  // namespace

TORCH_LIBRARY_IMPL(cuconv, Meta, m) { CUCONV_REGISTER_KERNELS(m, meta); }

}  // namespace cuconv
