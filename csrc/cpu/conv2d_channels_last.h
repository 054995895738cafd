#pragma once
// channels_last (NHWC) convolution on the CPU, groups = 1, float and double: im2col along
// channels into cuconv's GEMM (gemm.h), reading and writing NHWC in place. conv2d.cpp calls
// these for channels_last tensors instead of converting them to NCHW and back.

#include "direct_conv.h"  // DirectConv: the geometry of one groups = 1 convolution

namespace cuconv {

// y[n, oh, ow, :] = bias + sum_{i,j,c} x[n, ih, iw, c] * w[:, c, i, j]; x, y NHWC, w OIHW.
template <typename T>
void conv_channels_last_forward(const DirectConv& p, const T* x, const T* w, const T* bias, T* y);

// dx (NHWC, every element written) from dy (NHWC) and w (OIHW).
template <typename T>
void conv_channels_last_backward_input(const DirectConv& p, const T* dy, const T* w, T* dx);

// dw (OIHW) from dy and x (both NHWC), summed in a fixed order.
template <typename T>
void conv_channels_last_backward_weight(const DirectConv& p, const T* dy, const T* x, T* dw);

}  // namespace cuconv
