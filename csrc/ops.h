#pragma once
// Declarations of cuconv's kernels. The CPU (cpu/*.cpp) and CUDA (cuda/*.cu)
// files define the same functions with a _cpu or _cuda suffix; registration.cpp
// and the .cu files bind them to the schemas declared in registration.cpp.

#include <ATen/core/Tensor.h>

#include <optional>

namespace cuconv {

using c10::IntArrayRef;

#define CUCONV_DECLARE_KERNELS(SUFFIX)                                                          \
  at::Tensor conv2d_forward_##SUFFIX(const at::Tensor& input, const at::Tensor& weight,         \
                                     const std::optional<at::Tensor>& bias, IntArrayRef stride, \
                                     IntArrayRef padding, IntArrayRef dilation, int64_t groups); \
  at::Tensor conv2d_backward_input_##SUFFIX(const at::Tensor& grad_output,                      \
                                            const at::Tensor& weight, IntArrayRef input_size,   \
                                            IntArrayRef stride, IntArrayRef padding,            \
                                            IntArrayRef dilation, int64_t groups);              \
  at::Tensor conv2d_backward_weight_##SUFFIX(const at::Tensor& grad_output,                     \
                                             const at::Tensor& input, IntArrayRef weight_size,  \
                                             IntArrayRef stride, IntArrayRef padding,           \
                                             IntArrayRef dilation, int64_t groups);             \
  at::Tensor conv2d_backward_bias_##SUFFIX(const at::Tensor& grad_output);                      \
  std::tuple<at::Tensor, at::Tensor> max_pool2d_forward_##SUFFIX(                               \
      const at::Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,                     \
      IntArrayRef padding, IntArrayRef dilation, bool ceil_mode);                               \
  at::Tensor max_pool2d_backward_##SUFFIX(                                                      \
      const at::Tensor& grad_output, const at::Tensor& indices, IntArrayRef input_size,         \
      IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,   \
      bool ceil_mode);                                                                          \
  at::Tensor avg_pool2d_forward_##SUFFIX(const at::Tensor& input, IntArrayRef kernel_size,      \
                                         IntArrayRef stride, IntArrayRef padding,               \
                                         bool ceil_mode, bool count_include_pad,                \
                                         std::optional<int64_t> divisor_override);              \
  at::Tensor avg_pool2d_backward_##SUFFIX(                                                      \
      const at::Tensor& grad_output, IntArrayRef input_size, IntArrayRef kernel_size,           \
      IntArrayRef stride, IntArrayRef padding, bool ceil_mode, bool count_include_pad,          \
      std::optional<int64_t> divisor_override);                                                 \
  at::Tensor adaptive_avg_pool2d_forward_##SUFFIX(const at::Tensor& input,                      \
                                                  IntArrayRef output_size);                     \
  at::Tensor adaptive_avg_pool2d_backward_##SUFFIX(const at::Tensor& grad_output,               \
                                                   IntArrayRef input_size);

CUCONV_DECLARE_KERNELS(cpu)
CUCONV_DECLARE_KERNELS(cuda)

#undef CUCONV_DECLARE_KERNELS

// Bind every kernel of one backend (cpu or cuda) to its op, so that the CPU and
// CUDA registrations cannot drift apart.
#define CUCONV_REGISTER_KERNELS(m, SUFFIX)                                                  \
  do {                                                                                      \
    m.impl("conv2d", &cuconv::conv2d_forward_##SUFFIX);                                     \
    m.impl("conv2d_backward_input", &cuconv::conv2d_backward_input_##SUFFIX);               \
    m.impl("conv2d_backward_weight", &cuconv::conv2d_backward_weight_##SUFFIX);             \
    m.impl("conv2d_backward_bias", &cuconv::conv2d_backward_bias_##SUFFIX);                 \
    m.impl("max_pool2d", &cuconv::max_pool2d_forward_##SUFFIX);                             \
    m.impl("max_pool2d_backward", &cuconv::max_pool2d_backward_##SUFFIX);                   \
    m.impl("avg_pool2d", &cuconv::avg_pool2d_forward_##SUFFIX);                             \
    m.impl("avg_pool2d_backward", &cuconv::avg_pool2d_backward_##SUFFIX);                   \
    m.impl("adaptive_avg_pool2d", &cuconv::adaptive_avg_pool2d_forward_##SUFFIX);           \
    m.impl("adaptive_avg_pool2d_backward", &cuconv::adaptive_avg_pool2d_backward_##SUFFIX); \
  } while (0)

}  // namespace cuconv
