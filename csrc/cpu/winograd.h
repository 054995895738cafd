#pragma once
// Winograd F(2x2, 3x3) float32 convolution on the CPU (Lavin & Gray, "Fast Algorithms for
// Convolutional Neural Networks", 2015): 3x3 kernel, stride 1, dilation 1, groups 1, any
// padding. Each 2x2 output tile costs 16 multiplies per input/output channel pair instead of
// 36, so the products do 2.25x fewer FLOPs than im2col's where the outputs tile evenly.
// conv2d.cpp offers it, beside the direct and GEMM kernels, for all three passes, and the
// measured choice (tuner.h) runs it where it is fastest.
// Its rounding differs from the direct sum's (the transforms add and subtract inputs before
// multiplying), within float32's tolerance of the exact result.

#include "direct_conv.h"

namespace cuconv {

// Whether the layer is one F(2x2, 3x3) computes.
bool winograd_suits(const DirectConv& p);

// Forward pass, NCHW float32; `bias` may be null.
void winograd_forward(const DirectConv& p, const float* in, const float* weight, const float* bias, float* out);

// Whether the input gradient can run as the Winograd forward pass of grad_output (the layer
// suits, and the padding is at most the kernel's reach of 2).
bool winograd_backward_input_suits(const DirectConv& p);

// Input gradient: the forward pass over grad_output padded by 2 - padding, with the kernel
// flipped and its channels swapped.
void winograd_backward_input(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in);

// Weight gradient, F(3x3, 2x2): each tile's 3x3 correlation of its input patch with its 2x2 of
// grad_output, summed over the tiles in 16 products; deterministic for a given thread count.
void winograd_backward_weight(const DirectConv& p, const float* in, const float* grad_out, float* grad_weight);

// The same passes on channels_last (NHWC) tensors: x, grad_out, y and grad_in NHWC, the weight
// and its gradient OIHW. (Both layouts run the same kernels, winograd.cpp: the transforms work
// on vectors of channels, NCHW through small NHWC strips.)
void winograd_channels_last_forward(const DirectConv& p, const float* x, const float* weight, const float* bias,
                                    float* y);
void winograd_channels_last_backward_input(const DirectConv& p, const float* grad_out, const float* weight,
                                           float* grad_in);
void winograd_channels_last_backward_weight(const DirectConv& p, const float* in, const float* grad_out,
                                            float* grad_weight);

}  // namespace cuconv
