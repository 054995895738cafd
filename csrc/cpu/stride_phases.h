#pragma once
// The input gradient of a strided convolution by stride phase (float32, NCHW, groups = 1).
//
// Input position h = ph + sH*i of phase ph (0 <= ph < sH) gets kernel tap k from grad_output
// row (h + pH - k*dH) / sH, where that divides exactly: only the taps with
// k*dH = ph + pH (mod sH), every (sH / gcd(sH, dH))-th of the kernel's rows. Over those taps the
// phase's gradient is a stride-1 correlation of grad_output with the phase's taps, flipped, in
// and out channels swapped (as the stride-1 input gradient, direct_conv.h), the same in width.
// So a layer of stride 2 gives 4 forward passes of a quarter of the work each, on windows of
// grad_output zero-padded as each phase needs, and their outputs interleaved into grad_input;
// the positions no tap reaches (a 1x1 kernel's odd rows) are zero. The GEMM path instead builds a
// column matrix of every tap and adds it back (col2im): conv2d.cpp measures both.
// (The CUDA tensor-core kernels decompose the strided input gradient the same way.)

#include <cstdint>
#include <functional>

#include "direct_conv.h"

namespace cuconv {

// Runs one phase: a stride-1, unpadded forward pass `phase` (grad_output's O channels in, the
// layer's C out, the phase's taps for the kernel, its dilation) over the contiguous `window`,
// with `weight` [C][O][taps_h][taps_w], into the contiguous `out`.
using PhaseForward = std::function<void(const DirectConv& phase, const float* window, const float* weight, float* out)>;

// grad_in (every element written) of layer `p` (stride > 1 in either dimension, contiguous
// NCHW tensors), each phase run by `forward`.
void input_gradient_by_phase(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in,
                             const PhaseForward& forward);

}  // namespace cuconv
