#pragma once
// Integer convolution on the CPU (conv2d_integer.cpp): forward only, arithmetic modulo 2^bits as torch's.

#include "../shape.h"

namespace cuconv {

// The convolution of an integer input (checked by check_conv2d: `shape`), in the input's layout.
Tensor integer_conv2d_forward(const Conv2dShape& shape, const Tensor& input, const Tensor& weight, const Tensor& bias,
                              IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation);

}  // namespace cuconv
