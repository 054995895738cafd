#pragma once
// Depthwise convolution on the CPU: one input channel per group, groups > 1 (MobileNet's
// layers), with any channel multiplier M = out_channels / in_channels. Every floating dtype,
// NCHW and channels_last, forward and backward (depthwise.cpp). conv2d.cpp sends these layers
// here: a GEMM per group would have one row.

#include "../stable.h"
#include "direct_conv.h"  // DirectConv: the geometry (in_channels = groups, out_channels = M * groups)

namespace cuconv {

// How the forward pass and the input gradient bring the rows they read in place (channels_last,
// whole pixels a work item) into cache: by the hardware prefetchers alone, or also by software
// prefetches a few rows ahead. Which is faster depends on the pixel's width and the CPU (256
// channels: 0.88 of the time limited to AVX2 on a Zen 4, 0.95 at AVX-512; 64 channels: 1.09),
// so conv2d.cpp measures both where depthwise_rows_fetchable (tuner.h). Same values either way.
enum class RowFetch { kHardware, kSoftware };
// Whether a pass reading `source` (input, or grad_output) could fetch its rows: read in place.
bool depthwise_rows_fetchable(const DirectConv& p, const Tensor& source);

// y (channels_last when the input is, as torch) = bias + the depthwise convolution of input.
Tensor depthwise_conv2d_forward(const DirectConv& p, const Tensor& input, const Tensor& weight, const Tensor& bias,
                                RowFetch fetch = RowFetch::kHardware);

// grad_input (channels_last when grad_output is), every element written.
Tensor depthwise_conv2d_backward_input(const DirectConv& p, const Tensor& grad_output, const Tensor& weight,
                                       IntArrayRef input_size, RowFetch fetch = RowFetch::kHardware);

// grad_weight (contiguous), summed in an order fixed by the shape (not the thread count).
Tensor depthwise_conv2d_backward_weight(const DirectConv& p, const Tensor& grad_output, const Tensor& input,
                                        IntArrayRef weight_size);

}  // namespace cuconv
