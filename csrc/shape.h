#pragma once
// cuconv's argument checks and output sizes for the compiled kernels.
//
// The CPU and CUDA kernels both call these functions, so every entry point accepts the same
// inputs and rejects the rest with the same message. A failed check raises a Python
// ValueError (CUCONV_CHECK_VALUE) or, for a dtype or device mismatch, a RuntimeError, each
// naming the argument, the expected value and the one that came. The same checks, with the
// same messages, run in Python for torch.compile's fake tensors (cuconv/_shape.py: the stable
// ABI has no symbolic sizes); tests/test_shape_checks.py holds the two to each other. The
// Python wrappers (cuconv.functional) check dtypes first and raise TypeError.

#include <optional>
#include <vector>

#include "stable.h"

namespace cuconv {

// A pair argument such as stride or padding: exactly two ints, each >= min_value.
inline void check_pair(const char* op, const char* name, IntArrayRef values, int64_t min_value) {
  CUCONV_CHECK_VALUE(values.size() == 2, op, ": expected ", name,
                    " to be a pair of ints (height, width), but got ", values.size(),
                    " values ", values);
  CUCONV_CHECK_VALUE(values[0] >= min_value && values[1] >= min_value, op, ": expected every ",
                    name, " value to be >= ", min_value, ", but got ", name, "=", values);
}

// A batch of images: 4-D (N, C, H, W) with C, H and W non-zero (N may be 0).
inline void check_image_batch(const char* op, const char* name, IntArrayRef size) {
  CUCONV_CHECK_VALUE(size.size() == 4, op, ": expected ", name,
                    " to be 4-D (batch, channels, height, width), but got ", size.size(),
                    "-D with shape ", size);
  CUCONV_CHECK_VALUE(size[1] > 0 && size[2] > 0 && size[3] > 0, op, ": expected ", name,
                    " to have non-zero channels, height and width (only the batch may be 0),"
                    " but got shape ",
                    size);
}

// Two tensors that meet in one kernel must share dtype and device.
inline void check_same_dtype_device(const char* op, const char* name_a, const Tensor& a,
                                    const char* name_b, const Tensor& b) {
  CUCONV_CHECK(a.scalar_type() == b.scalar_type(), op, ": expected ", name_b,
                   " to have the dtype of ", name_a, " (", a.scalar_type(), "), but got ",
                   b.scalar_type());
  CUCONV_CHECK(a.device() == b.device(), op, ": expected ", name_b, " to be on the device of ",
              name_a, " (", device_name(a), "), but got ", device_name(b));
}

inline void check_floating(const char* op, const char* name, const Tensor& t) {
  CUCONV_CHECK(is_floating(t.scalar_type()), op, ": expected ", name,
                   " to be a floating-point tensor, but got ", t.scalar_type());
}

// Max pooling also takes integer tensors, as torch's CPU max pooling does (a label map, uint8 images).
inline void check_floating_or_integer(const char* op, const char* name, const Tensor& t) {
  CUCONV_CHECK(is_floating(t.scalar_type()) || is_integer(t.scalar_type()), op, ": expected ", name,
               " to be a floating-point or integer tensor, but got ", t.scalar_type());
}

// The integer dtypes an op takes besides the floating-point ones: torch's CPU convolution takes
// every integer type and its CPU average pooling int64; their CUDA twins take none, nor do
// cuconv's CUDA kernels (the CPU kernels pass kAll / kInt64, the CUDA ones kNone).
enum class Integers { kNone, kInt64, kAll };

inline void check_floating_or(const char* op, const char* name, const Tensor& t, Integers integers) {
  const ScalarType type = t.scalar_type();
  if (integers == Integers::kAll) {
    check_floating_or_integer(op, name, t);
    return;
  }
  if (integers == Integers::kInt64) {
    CUCONV_CHECK(is_floating(type) || type == ScalarType::Long, op, ": expected ", name,
                 " to be a floating-point or int64 tensor, but got ", type);
    return;
  }
  CUCONV_CHECK(is_floating(type), op, ": expected ", name, " to be a floating-point tensor, but got ", type,
               is_integer(type) ? " (integer tensors: on the CPU only, as torch's)" : "");
}

// ---------------------------------------------------------------------------
// Convolution
// out = floor((in + 2*padding - dilation*(kernel-1) - 1) / stride) + 1

struct Conv2dShape {
  int64_t batch, in_channels, in_h, in_w;
  int64_t out_channels, kernel_h, kernel_w;
  int64_t out_h, out_w;
  int64_t groups;
};

inline Conv2dShape conv2d_shape(const char* op, IntArrayRef input_size, IntArrayRef weight_size,
                            IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                            int64_t groups) {
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  CUCONV_CHECK_VALUE(groups >= 1, op, ": expected groups >= 1, but got groups=", groups);
  CUCONV_CHECK_VALUE(input_size.size() == 4, op,
                    ": expected input to be 4-D (batch, channels, height, width), but got ",
                    input_size.size(), "-D with shape ", input_size);
  CUCONV_CHECK_VALUE(weight_size.size() == 4, op,
                    ": expected weight to be 4-D (out_channels, in_channels/groups, kH, kW), but "
                    "got ",
                    weight_size.size(), "-D with shape ", weight_size);
  Conv2dShape s{input_size[0], input_size[1], input_size[2], input_size[3],
                   weight_size[0], weight_size[2], weight_size[3], 0, 0, groups};
  CUCONV_CHECK_VALUE(s.kernel_h > 0 && s.kernel_w > 0, op,
                    ": expected a kernel of at least 1x1, but got weight of shape ", weight_size);
  // torch returns an empty tensor with 0 channels here; a sum over no channels would be
  // the bias alone. Neither is a convolution anyone means, so it is refused.
  CUCONV_CHECK_VALUE(s.in_channels > 0, op, ": expected input to have at least one channel, but got shape ",
                    input_size);
  CUCONV_CHECK_VALUE(s.in_h > 0 && s.in_w > 0, op,
                    ": expected input to have a height and width of at least 1, but got shape ", input_size);
  CUCONV_CHECK_VALUE(s.out_channels >= groups, op, ": expected weight to have at least groups=", groups,
                    " output channels, but got weight of shape ", weight_size);
  CUCONV_CHECK_VALUE(s.out_channels % groups == 0, op, ": expected out_channels (weight.shape[0]=",
                    s.out_channels, ") to be divisible by groups=", groups);
  CUCONV_CHECK_VALUE(s.in_channels == weight_size[1] * groups, op, ": given groups=", groups,
                    " and weight of shape ", weight_size, ", expected input of shape ",
                    input_size, " to have ", weight_size[1] * groups, " channels, but got ",
                    s.in_channels);
  const int64_t padded_h = s.in_h + 2 * padding[0], padded_w = s.in_w + 2 * padding[1];
  const int64_t reach_h = dilation[0] * (s.kernel_h - 1) + 1, reach_w = dilation[1] * (s.kernel_w - 1) + 1;
  CUCONV_CHECK_VALUE(padded_h >= reach_h && padded_w >= reach_w, op,
                    ": expected the dilated kernel (", reach_h, " x ", reach_w,
                    ") to fit in the padded input (", padded_h, " x ", padded_w,
                    "), but it is larger (weight shape ", weight_size, ", input shape ",
                    input_size, ", padding ", padding, ", dilation ", dilation, ")");
  s.out_h = (padded_h - reach_h) / stride[0] + 1;
  s.out_w = (padded_w - reach_w) / stride[1] + 1;
  return s;
}

inline void check_conv2d_bias(const char* op, const std::optional<Tensor>& bias, int64_t out_channels) {
  if (!bias.has_value() || !bias->defined()) return;
  CUCONV_CHECK_VALUE(bias->dim() == 1 && bias->size(0) == out_channels, op,
                    ": expected bias of shape [", out_channels, "] (one value per output channel), "
                    "but got shape ",
                    bias->sizes());
}

// Every check of the forward convolution, from tensors. Backward ops pass the
// shapes they restore (input_size / weight_size) to conv2d_shape directly.
inline Conv2dShape check_conv2d(const char* op, const Tensor& input, const Tensor& weight,
                            const std::optional<Tensor>& bias, IntArrayRef stride,
                            IntArrayRef padding, IntArrayRef dilation, int64_t groups, Integers integers) {
  check_floating_or(op, "input", input, integers);
  check_same_dtype_device(op, "input", input, "weight", weight);
  if (bias.has_value() && bias->defined()) check_same_dtype_device(op, "input", input, "bias", *bias);
  auto s = conv2d_shape(op, input.sizes(), weight.sizes(), stride, padding, dilation,
                           groups);
  check_conv2d_bias(op, bias, s.out_channels);
  return s;
}

// grad_output must have exactly the shape the forward pass produced.
inline void check_grad_output(const char* op, IntArrayRef grad_size, IntArrayRef expected) {
  CUCONV_CHECK_VALUE(grad_size.equals(expected), op, ": expected grad_output of shape ", expected,
                    ", but got ", grad_size);
}

// ---------------------------------------------------------------------------
// Pooling
// out = ceil_or_floor((in + 2*padding - dilation*(kernel-1) - 1) / stride) + 1,
// and in ceil mode the last window must start inside the input or left padding.

inline int64_t pool_output_size(int64_t in, int64_t kernel, int64_t stride, int64_t pad, int64_t dilation, bool ceil_mode) {
  const int64_t span = in + 2 * pad - dilation * (kernel - 1) - 1 + (ceil_mode ? stride - 1 : 0);
  // span may be negative; round toward -inf as torch does.
  int64_t out = (span >= 0 ? span / stride : (span - stride + 1) / stride) + 1;
  if (ceil_mode && (out - 1) * stride >= in + pad) out = out - 1;
  return out;
}

// With dilation, a window that starts in the padding can step over the whole
// input (e.g. size 1, padding 1, dilation 3): it has no pixel to pool, and its
// max-pool index would point outside it. torch gives such windows undefined
// results (its own backward corrupts memory), so cuconv rejects them. Only
// windows starting in the left padding can miss: o < ceil(padding/stride)+1.
inline void check_windows_reach_input(const char* op, const char* axis, int64_t in, int64_t out, int64_t stride,
                               int64_t pad, int64_t dilation) {
  for (int64_t o = 0; o * stride < pad && o < out; ++o) {
    const int64_t start = o * stride - pad;  // < 0
    const int64_t first_inside = start + (-start + dilation - 1) / dilation * dilation;
    CUCONV_CHECK_VALUE(first_inside < in, op, ": the pooling window of output ", axis, " index ", o,
                      " lies entirely in the padding (input ", axis, " ", in, ", padding ", pad,
                      ", dilation ", dilation, ", stride ", stride,
                      "): use less padding or dilation so that every window covers the input");
  }
}

struct Pool2dShape {
  int64_t batch, channels, in_h, in_w, out_h, out_w;
};

inline Pool2dShape pool2d_shape(const char* op, IntArrayRef input_size, IntArrayRef kernel_size,
                            IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                            bool ceil_mode) {
  check_pair(op, "kernel_size", kernel_size, 1);
  check_pair(op, "stride", stride, 1);
  check_pair(op, "padding", padding, 0);
  check_pair(op, "dilation", dilation, 1);
  CUCONV_CHECK_VALUE(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
                    ": expected padding to be at most half of kernel_size ", kernel_size,
                    ", but got padding=", padding);
  check_image_batch(op, "input", input_size);
  Pool2dShape s{input_size[0], input_size[1], input_size[2], input_size[3], 0, 0};
  s.out_h = pool_output_size(s.in_h, kernel_size[0], stride[0], padding[0], dilation[0], ceil_mode);
  s.out_w = pool_output_size(s.in_w, kernel_size[1], stride[1], padding[1], dilation[1], ceil_mode);
  CUCONV_CHECK_VALUE(s.out_h >= 1 && s.out_w >= 1, op, ": input of shape ", input_size,
                    " is too small for kernel_size=", kernel_size, ", stride=", stride,
                    ", padding=", padding, ", dilation=", dilation, ": the output would be ",
                    s.out_h, " x ", s.out_w);
  check_windows_reach_input(op, "height", s.in_h, s.out_h, stride[0], padding[0], dilation[0]);
  check_windows_reach_input(op, "width", s.in_w, s.out_w, stride[1], padding[1], dilation[1]);
  return s;
}

inline void check_divisor_override(const char* op, std::optional<int64_t> divisor_override) {
  CUCONV_CHECK_VALUE(!divisor_override.has_value() || *divisor_override != 0, op,
                    ": expected divisor_override to be a non-zero int or None, but got 0");
}

// Adaptive pooling, like torch, also takes inputs with zero channels (only H and W must be > 0).
inline void check_adaptive_input(const char* op, const char* name, IntArrayRef input_size) {
  CUCONV_CHECK_VALUE(input_size.size() == 4 && input_size[2] > 0 && input_size[3] > 0, op, ": expected ",
                    name, " to be 4-D (batch, channels, height, width) with non-zero height and width, "
                    "but got ", input_size.size(), "-D with shape ", input_size);
}

inline void check_adaptive_avg_pool2d(const char* op, const Tensor& input, IntArrayRef output_size) {
  check_floating(op, "input", input);
  check_pair(op, "output_size", output_size, 0);
  check_adaptive_input(op, "input", input.sizes());
}

// The backward pass restores the input shape; grad_output is [N, C, any, any].
inline void check_adaptive_backward(const char* op, IntArrayRef grad_size, IntArrayRef input_size) {
  check_adaptive_input(op, "input_size", input_size);
  CUCONV_CHECK_VALUE(grad_size.size() == 4 && grad_size[0] == input_size[0] && grad_size[1] == input_size[1],
                    op, ": expected grad_output's batch and channels to match input_size ", input_size,
                    ", but got grad_output of shape ", grad_size);
}

// Adaptive pooling window of output cell i over an input of length `in` split
// into `out` cells: [floor(i*in/out), ceil((i+1)*in/out)).
inline int64_t adaptive_start(int64_t i, int64_t out, int64_t in) { return (i * in) / out; }
inline int64_t adaptive_end(int64_t i, int64_t out, int64_t in) { return ((i + 1) * in + out - 1) / out; }

// ---------------------------------------------------------------------------
// Whole-op checks: every entry point (CPU, CUDA, meta) starts with exactly one of
// these, so the ops accept and reject the same inputs on every backend.

inline Conv2dShape check_conv2d_backward_input(const char* op, const Tensor& grad_output,
                                           const Tensor& weight, IntArrayRef input_size,
                                           IntArrayRef stride, IntArrayRef padding,
                                           IntArrayRef dilation, int64_t groups) {
  check_same_dtype_device(op, "grad_output", grad_output, "weight", weight);
  auto s = conv2d_shape(op, input_size, weight.sizes(), stride, padding, dilation, groups);
  check_grad_output(op, grad_output.sizes(), {s.batch, s.out_channels, s.out_h, s.out_w});
  return s;
}

inline Conv2dShape check_conv2d_backward_weight(const char* op, const Tensor& grad_output,
                                            const Tensor& input, IntArrayRef weight_size,
                                            IntArrayRef stride, IntArrayRef padding,
                                            IntArrayRef dilation, int64_t groups) {
  check_same_dtype_device(op, "grad_output", grad_output, "input", input);
  auto s = conv2d_shape(op, input.sizes(), weight_size, stride, padding, dilation, groups);
  check_grad_output(op, grad_output.sizes(), {s.batch, s.out_channels, s.out_h, s.out_w});
  return s;
}

inline Pool2dShape check_max_pool2d(const char* op, const Tensor& input, IntArrayRef kernel_size,
                                IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                bool ceil_mode) {
  check_floating_or_integer(op, "input", input);
  return pool2d_shape(op, input.sizes(), kernel_size, stride, padding, dilation, ceil_mode);
}

inline Pool2dShape check_max_pool2d_backward(const char* op, const Tensor& grad_output,
                                         const Tensor& indices, IntArrayRef input_size,
                                         IntArrayRef kernel_size, IntArrayRef stride,
                                         IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  auto s = pool2d_shape(op, input_size, kernel_size, stride, padding, dilation, ceil_mode);
  const std::vector<int64_t> out_size{s.batch, s.channels, s.out_h, s.out_w};
  check_grad_output(op, grad_output.sizes(), out_size);
  CUCONV_CHECK_VALUE(indices.sizes().equals(out_size) && indices.scalar_type() == ScalarType::Long, op,
                    ": expected int64 indices of shape ", IntArrayRef(out_size), ", but got ",
                    indices.scalar_type(), " of shape ", indices.sizes());
  CUCONV_CHECK(indices.device() == grad_output.device(), op, ": expected indices on ",
              device_name(grad_output), " (the device of grad_output), but got ", device_name(indices));
  return s;
}

inline Pool2dShape check_avg_pool2d(const char* op, const Tensor& input, IntArrayRef kernel_size,
                                IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
                                std::optional<int64_t> divisor_override, Integers integers) {
  check_floating_or(op, "input", input, integers);
  check_divisor_override(op, divisor_override);
  return pool2d_shape(op, input.sizes(), kernel_size, stride, padding, {1, 1}, ceil_mode);
}

inline Pool2dShape check_avg_pool2d_backward(const char* op, const Tensor& grad_output,
                                         IntArrayRef input_size, IntArrayRef kernel_size,
                                         IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
                                         std::optional<int64_t> divisor_override) {
  check_divisor_override(op, divisor_override);
  auto s = pool2d_shape(op, input_size, kernel_size, stride, padding, {1, 1}, ceil_mode);
  check_grad_output(op, grad_output.sizes(), {s.batch, s.channels, s.out_h, s.out_w});
  return s;
}

}  // namespace cuconv
