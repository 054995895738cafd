#pragma once
// Depthwise convolution on the CPU: one input channel per group, groups > 1 (MobileNet's
// layers), with any channel multiplier M = out_channels / in_channels. Every floating dtype,
// NCHW and channels_last, forward and backward (depthwise.cpp). conv2d.cpp sends these layers
// here: a GEMM per group would have one row.

#include "../stable.h"
#include "direct_conv.h"  // DirectConv: the geometry (in_channels = groups, out_channels = M * groups)

namespace cuconv {

// y (channels_last when the input is, as torch) = bias + the depthwise convolution of input.
Tensor depthwise_conv2d_forward(const DirectConv& p, const Tensor& input, const Tensor& weight, const Tensor& bias);

// grad_input (channels_last when grad_output is), every element written.
Tensor depthwise_conv2d_backward_input(const DirectConv& p, const Tensor& grad_output, const Tensor& weight,
                                       IntArrayRef input_size);

// grad_weight (contiguous), summed in an order fixed by the shape (not the thread count).
Tensor depthwise_conv2d_backward_weight(const DirectConv& p, const Tensor& grad_output, const Tensor& input,
                                        IntArrayRef weight_size);

}  // namespace cuconv
