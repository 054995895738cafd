#pragma once
// Convolution of small images as matrix products per pixel, over the batch (float32, groups 1,
// any stride, padding and dilation). On a 3x3 image a 3x3 kernel with padding 1 has 32 of its
// 81 taps in the padding, and im2col's product multiplies those zeros; these products skip
// them, and read no column matrix: every operand is a whole pixel of the batch.
//
// With N the batch, tap t = (i, j) of the kernel, W_t = w[:, :, i, j] (O x C), and s(p, t) the
// input pixel (oh*sH - pH + i*dH, ow*sW - pW + j*dW) that tap t of output pixel p = (oh, ow)
// reads, where it lies inside the image:
//
//   forward          y[:, :, p]  (O x N)  = sum_{t: s(p, t) inside}     W_t   @ x[:, :, s(p, t)]
//   input gradient   dx[:, :, s] (C x N)  = sum_{(p, t): s(p, t) = s}   W_t^T @ dy[:, :, p]
//   weight gradient  dW_t        (O x C)  = sum_{p: s(p, t) inside}     dy[:, :, p] @ x[:, :, s(p, t)]^T
//
// (x[:, :, s] is the C x N matrix of pixel s over the batch.) The products run on cuconv's
// GEMM (gemm.h); conv2d.cpp offers them beside the direct, GEMM and Winograd kernels on small
// images, and the measured choice (tuner.h) runs them where they are fastest.

#include "direct_conv.h"

namespace cuconv {

// Whether the layer is one the per-pixel products may suit: small output images (<= 64
// pixels, where the padding holds a sizeable share of the taps: 23% on an 8x8 output of a 3x3
// kernel) and a batch that fills at least half of the register tile's columns.
bool pixel_gemm_suits(const DirectConv& p);

// The products skip the taps in the padding, where im2col (and torch) multiply zeros: 0 * Inf
// and 0 * NaN would be NaN there. So the forward pass and the weight gradient return false,
// having written nothing, when an operand that meets the padding (the weights; grad_output)
// holds an Inf or NaN, and the caller runs another kernel. (The input gradient drops the
// padding's terms on every path.)

// Forward pass, NCHW float32; `bias` may be null.
bool pixel_gemm_forward(const DirectConv& p, const float* in, const float* weight, const float* bias, float* out);

// Input gradient (any stride): writes every element of grad_in.
void pixel_gemm_backward_input(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in);

// Weight gradient: each tap's sum in a fixed order, deterministic at any thread count.
bool pixel_gemm_backward_weight(const DirectConv& p, const float* in, const float* grad_out, float* grad_weight);

}  // namespace cuconv
