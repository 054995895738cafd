#pragma once
// Direct (im2col-free) float32 convolution, forward and weight gradient, for layers
// with few output channels: LeNet's two layers, VGG's first layer. There the im2col +
// GEMM path spends more time writing the 25x-expanded column matrix than multiplying
// it (the GEMM has only 6-16 rows); see benchmarks/NOTES.md. AVX2 + FMA only; other
// CPUs, other dtypes, groups > 1 and the input gradient take the im2col path in
// conv2d.cpp.

#include <cstdint>

namespace cuconv {

// One convolution over NCHW-contiguous float planes, groups = 1:
//   out[n, o, oh, ow] = bias[o] + sum_{c,i,j} w[o, c, i, j] * in_padded[n, c, oh*sH + i*dH, ow*sW + j*dW]
// where in_padded is `in` with pad_h/pad_w zero rows/columns on each side.
struct DirectConv {
  int64_t batch, in_channels, height, width, out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
};

// Whether this CPU has the instructions and the layer suits the kernels
// (4..16 output channels, so one or two 8-float vectors are at least half used).
// CUCONV_CPU_DIRECT=0 in the environment turns the direct path off (for comparisons),
// and so does CUCONV_CPU_ISA=generic (gemm.h).
bool direct_conv_suits(int64_t out_channels);

// Forward pass; `weight` is [out_channels, in_channels, kH, kW], `bias` may be null.
void direct_conv_forward(const DirectConv& p, const float* in, const float* weight,
                         const float* bias, float* out);

// Weight gradient: grad_w[o, c, i, j] = sum_{n,oh,ow} grad_out[n, o, oh, ow] * in_padded[...]
// summed in a fixed order (deterministic for a given thread count).
void direct_conv_backward_weight(const DirectConv& p, const float* in, const float* grad_out,
                                 float* grad_weight);

}  // namespace cuconv
