#pragma once
// Declarations of cuconv's kernels. The CPU (cpu/*.cpp) and CUDA (cuda/*.cu) files
// define the same functions with a _cpu or _cuda suffix; registration.cpp and
// cuda/registration.cpp bind them to the schemas of schemas.h. Stable-ABI types only
// (stable.h): int[] arguments arrive as IntArrayRef, SymInt[] ones as concrete ints.

#include <optional>
#include <tuple>

#include "stable.h"

namespace cuconv {


#define CUCONV_DECLARE_KERNELS(SUFFIX)                                                          \
  Tensor conv2d_forward_##SUFFIX(const Tensor& input, const Tensor& weight,         \
                                     const std::optional<Tensor>& bias, IntArrayRef stride, \
                                     IntArrayRef padding, IntArrayRef dilation, int64_t groups, bool allow_tf32, bool benchmark); \
  Tensor conv2d_backward_input_##SUFFIX(const Tensor& grad_output,                      \
                                            const Tensor& weight, IntArrayRef input_size,   \
                                            IntArrayRef stride, IntArrayRef padding,            \
                                            IntArrayRef dilation, int64_t groups, bool allow_tf32, bool benchmark); \
  Tensor conv2d_backward_weight_##SUFFIX(const Tensor& grad_output,                     \
                                             const Tensor& input, IntArrayRef weight_size,  \
                                             IntArrayRef stride, IntArrayRef padding,           \
                                             IntArrayRef dilation, int64_t groups, bool allow_tf32, bool benchmark); \
  Tensor conv2d_backward_bias_##SUFFIX(const Tensor& grad_output);                      \
  std::tuple<Tensor, Tensor> max_pool2d_forward_##SUFFIX(                               \
      const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,                     \
      IntArrayRef padding, IntArrayRef dilation, bool ceil_mode);                               \
  Tensor max_pool2d_backward_##SUFFIX(                                                      \
      const Tensor& grad_output, const Tensor& indices, IntArrayRef input_size,         \
      IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,   \
      bool ceil_mode);                                                                          \
  Tensor avg_pool2d_forward_##SUFFIX(const Tensor& input, IntArrayRef kernel_size,      \
                                         IntArrayRef stride, IntArrayRef padding,               \
                                         bool ceil_mode, bool count_include_pad,                \
                                         std::optional<int64_t> divisor_override);              \
  Tensor avg_pool2d_backward_##SUFFIX(                                                      \
      const Tensor& grad_output, IntArrayRef input_size, IntArrayRef kernel_size,           \
      IntArrayRef stride, IntArrayRef padding, bool ceil_mode, bool count_include_pad,          \
      std::optional<int64_t> divisor_override);                                                 \
  Tensor adaptive_avg_pool2d_forward_##SUFFIX(const Tensor& input,                      \
                                                  IntArrayRef output_size);                     \
  Tensor adaptive_avg_pool2d_backward_##SUFFIX(const Tensor& grad_output,               \
                                                   IntArrayRef input_size);

CUCONV_DECLARE_KERNELS(cpu)
CUCONV_DECLARE_KERNELS(cuda)

#undef CUCONV_DECLARE_KERNELS

// Bind every kernel of one backend (cpu or cuda) to its op, inside a
// STABLE_TORCH_LIBRARY_IMPL block, so that the CPU and CUDA registrations cannot drift
// apart. (TORCH_BOX, from torch/csrc/stable/library.h, adapts each to the boxed calling
// convention of the stable ABI.)
#define CUCONV_REGISTER_KERNELS(m, SUFFIX)                                                  \
  do {                                                                                      \
    m.impl("conv2d", TORCH_BOX(&cuconv::conv2d_forward_##SUFFIX));                                     \
    m.impl("conv2d_backward_input", TORCH_BOX(&cuconv::conv2d_backward_input_##SUFFIX));               \
    m.impl("conv2d_backward_weight", TORCH_BOX(&cuconv::conv2d_backward_weight_##SUFFIX));             \
    m.impl("conv2d_backward_bias", TORCH_BOX(&cuconv::conv2d_backward_bias_##SUFFIX));                 \
    m.impl("max_pool2d", TORCH_BOX(&cuconv::max_pool2d_forward_##SUFFIX));                             \
    m.impl("max_pool2d_backward", TORCH_BOX(&cuconv::max_pool2d_backward_##SUFFIX));                   \
    m.impl("avg_pool2d", TORCH_BOX(&cuconv::avg_pool2d_forward_##SUFFIX));                             \
    m.impl("avg_pool2d_backward", TORCH_BOX(&cuconv::avg_pool2d_backward_##SUFFIX));                   \
    m.impl("adaptive_avg_pool2d", TORCH_BOX(&cuconv::adaptive_avg_pool2d_forward_##SUFFIX));           \
    m.impl("adaptive_avg_pool2d_backward", TORCH_BOX(&cuconv::adaptive_avg_pool2d_backward_##SUFFIX)); \
  } while (0)

}  // namespace cuconv
