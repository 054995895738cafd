#pragma once
// What the CUDA convolution kernels share (conv2d.cu, gemm_*.cu, depthwise.cu): the geometry
// of one convolution in 32-bit ints, the divisor-free index helpers, and the host interface of
// each kernel family, which conv2d.cu's entry points choose between. The index math and the
// GEMM formulation of the three passes are described at the top of conv2d.cu.

#include <algorithm>
#include <optional>

#include "../shape.h"
#include "kernel_choice.h"
#include "launch.cuh"

namespace cuconv::conv_cuda {

using cuda_detail::ceil_div;
using cuda_detail::check_int32_index;

// Geometry of one convolution in 32-bit ints, plus the 64-bit per-sample strides.
struct ConvParams {
  int batch, in_channels, in_h, in_w;
  int out_channels, out_h, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int in_per_group, out_per_group;  // C_g, O_g
  int in_plane, out_plane, taps;    // H*W, Ho*Wo, kH*kW
  int64_t in_sample, out_sample;    // C_in*H*W, C_out*Ho*Wo
};

inline ConvParams make_conv_params(const char* op, const Conv2dShape& s, IntArrayRef stride,
                            IntArrayRef padding, IntArrayRef dilation) {
  for (IntArrayRef pair : {stride, padding, dilation})
    for (int64_t v : pair) check_int32_index(op, "a stride/padding/dilation value", v);
  check_int32_index(op, "in_channels * height * width", s.in_channels * s.in_h * s.in_w);
  check_int32_index(op, "out_channels * out_height * out_width", s.out_channels * s.out_h * s.out_w);
  check_int32_index(op, "the weight's element count",
                    s.out_channels * (s.in_channels / s.groups) * s.kernel_h * s.kernel_w);
  check_int32_index(op, "batch * height * width", s.batch * s.in_h * s.in_w);
  check_int32_index(op, "batch * out_height * out_width", s.batch * s.out_h * s.out_w);
  // Index sums the kernels form in 32 bits: the padded input and the reach of the last window.
  check_int32_index(op, "padded height", s.in_h + 2 * padding[0]);
  check_int32_index(op, "padded width", s.in_w + 2 * padding[1]);
  check_int32_index(op, "the last window's reach in height",
                    (s.out_h - 1) * stride[0] + dilation[0] * (s.kernel_h - 1) + 1);
  check_int32_index(op, "the last window's reach in width",
                    (s.out_w - 1) * stride[1] + dilation[1] * (s.kernel_w - 1) + 1);
  ConvParams p;
  p.batch = static_cast<int>(s.batch);
  p.in_channels = static_cast<int>(s.in_channels);
  p.in_h = static_cast<int>(s.in_h);
  p.in_w = static_cast<int>(s.in_w);
  p.out_channels = static_cast<int>(s.out_channels);
  p.out_h = static_cast<int>(s.out_h);
  p.out_w = static_cast<int>(s.out_w);
  p.kernel_h = static_cast<int>(s.kernel_h);
  p.kernel_w = static_cast<int>(s.kernel_w);
  p.stride_h = static_cast<int>(stride[0]);
  p.stride_w = static_cast<int>(stride[1]);
  p.pad_h = static_cast<int>(padding[0]);
  p.pad_w = static_cast<int>(padding[1]);
  p.dilation_h = static_cast<int>(dilation[0]);
  p.dilation_w = static_cast<int>(dilation[1]);
  p.in_per_group = static_cast<int>(s.in_channels / s.groups);
  p.out_per_group = static_cast<int>(s.out_channels / s.groups);
  p.in_plane = p.in_h * p.in_w;
  p.out_plane = p.out_h * p.out_w;
  p.taps = p.kernel_h * p.kernel_w;
  p.in_sample = s.in_channels * s.in_h * s.in_w;
  p.out_sample = s.out_channels * s.out_h * s.out_w;
  return p;
}

// 1x1 kernel without padding: the forward input row of output pixel (oh, ow) is the single
// pixel (oh*sH, ow*sW) of every channel.
inline bool is_pointwise(const ConvParams& p) {
  return p.kernel_h == 1 && p.kernel_w == 1 && p.pad_h == 0 && p.pad_w == 0;
}

// A running index k = (outer * mid_size + mid) * inner_size + inner, stepped forward by a
// fixed increment without dividing: the increment is split the same way, so each digit
// carries at most once. (Two-digit indices use mid_size = 1.)
struct MixedRadix {
  int outer, mid, inner;

  __device__ __forceinline__ static MixedRadix split(int k, int mid_size, int inner_size) {
    const int rest = k / inner_size;
    return {rest / mid_size, rest - (rest / mid_size) * mid_size, k - rest * inner_size};
  }
  __device__ __forceinline__ void advance(const MixedRadix& step, int mid_size, int inner_size) {
    inner += step.inner;
    int carry = inner >= inner_size;
    if (carry) inner -= inner_size;
    mid += step.mid + carry;
    carry = mid >= mid_size;
    if (carry) mid -= mid_size;
    outer += step.outer + carry;
  }
};

// q = num / stride when num >= 0 and stride divides it exactly.
__device__ __forceinline__ bool exact_quotient(int num, int stride, int& q) {
  if (num < 0) return false;
  if (stride == 1) {
    q = num;
    return true;
  }
  q = num / stride;
  return q * stride == num;
}

// The taps of kernel dimension (size, stride, pad, dilation) that reach input rows of phase
// `phase` (the input gradient by stride phase, gemm_simt.cu's header): i = first + t*step for t < count, reading dy row a + offset - t*(dilation/g).
struct PhaseTaps {
  int first = 0, step = 1, count = 0, offset = 0, delta = 0;
};

__host__ __device__ inline int greatest_common_divisor(int a, int b) {
  while (b != 0) {
    const int rest = a % b;
    a = b;
    b = rest;
  }
  return a;
}

// (On the host for the GEMMs' phase launches, on the device for depthwise.cu's gather, a pixel at a time.)
__host__ __device__ inline PhaseTaps phase_taps(int phase, int size, int stride, int pad, int dilation) {
  const int g = greatest_common_divisor(stride, dilation);
  PhaseTaps t;
  t.step = stride / g;
  t.delta = -(dilation / g);
  for (int i = 0; i < size; ++i) {
    if ((phase + pad - i * dilation) % stride == 0) {  // C++ %: 0 for every exact multiple, negative ones too
      t.first = i;
      t.count = (size - 1 - i) / t.step + 1;
      t.offset = (phase + pad - i * dilation) / stride;
      break;
    }
  }
  return t;
}

// Whether some stride phase of the input gradient has no tap in it (3 of a 1x1 stride-2
// layer's 4): its rows of dx are zeros, filled once for all such phases before the phases with
// taps run, rather than a weight packing and a launch each (small layers are launch-bound).
inline bool has_tapless_phase(const ConvParams& p) {
  for (int ph = 0; ph < std::min(p.stride_h, p.in_h); ++ph)
    for (int pw = 0; pw < std::min(p.stride_w, p.in_w); ++pw)
      if (phase_taps(ph, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h).count == 0 ||
          phase_taps(pw, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w).count == 0)
        return true;
  return false;
}

// The longest K of the input gradient's stride phases: O_g x the most taps a phase gets.
inline int longest_phase_k(const ConvParams& p) {
  int longest = 0;
  for (int ph = 0; ph < std::min(p.stride_h, p.in_h); ++ph)
    for (int pw = 0; pw < std::min(p.stride_w, p.in_w); ++pw)
      longest = std::max(longest, p.out_per_group * phase_taps(ph, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h).count *
                                      phase_taps(pw, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w).count);
  return longest;
}

// Block reductions (bias and depthwise weight gradients): kReduceThreads threads a block.
constexpr int kReduceThreads = 256;

// Sum over the block (blockDim.x == kReduceThreads); the result is valid in thread 0.
template <typename T>
__device__ __forceinline__ T block_sum(T value) {
  // One partial per warp, read back by warp 0.
  CUCONV_SHARED(warp_totals, T[kReduceThreads / 32]);
  value = cuda_detail::warp_sum(value);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
  if (lane == 0) warp_totals[warp] = value;
  __syncthreads();  // every warp's total is in shared memory before warp 0 adds them
  if (warp == 0) value = cuda_detail::warp_sum(lane < kReduceThreads / 32 ? warp_totals[lane] : T(0));
  return value;
}

// ---------------------------------------------------------------------------
// The host interface of the kernel families. Tensors are contiguous NCHW (weights OIHW); each
// function dispatches on the dtype and launches on `call.stream`.

struct ConvCall {
  ConvParams p;
  int groups;
  cuda_detail::Stream stream;
  int sm_count;  // multiprocessors of the device, for the split heuristics
};

// The simple implicit GEMM (gemm_simple.cu): any shape and dtype. The oracle the faster
// kernels are tested against, and their fallback.
namespace simple {
void forward(const ConvCall& call, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, Tensor& y);
void backward_input(const ConvCall& call, const Tensor& dy, const Tensor& w, Tensor& dx);
void backward_weight(const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw);
}  // namespace simple

// The tensor-core implicit GEMM (gemm_tensor_core.cu) for float16, bfloat16 and, with
// allow_tf32, float32: takes_*() say whether it takes a pass (not other dtypes, nor channel
// counts that do not fill 16-byte chunks); the passes return false, having done nothing, for
// what it does not take.
namespace tensor_core {
bool takes_forward(const ConvParams& p, ScalarType dtype, bool allow_tf32);
bool takes_backward_input(const ConvParams& p, ScalarType dtype, bool allow_tf32);
bool takes_backward_weight(const ConvParams& p, ScalarType dtype, bool allow_tf32);
bool forward(const ConvCall& call, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, Tensor& y,
             bool allow_tf32);
bool backward_input(const ConvCall& call, const Tensor& dy, const Tensor& w, Tensor& dx, bool allow_tf32);
bool backward_weight(const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw, bool allow_tf32);
}  // namespace tensor_core

// The float32 GEMMs on the CUDA cores (gemm_simt.cu): the forward pass and the input gradient
// (by stride phase) as a gather convolution, and the weight gradient. Return false for other dtypes.
namespace simt {
bool forward(const ConvCall& call, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, Tensor& y);
bool backward_input(const ConvCall& call, const Tensor& dy, const Tensor& w, Tensor& dx);
bool backward_weight(const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw);
}  // namespace simt

// Depthwise-like convolutions, one input channel per group (depthwise.cu).
namespace depthwise {
void forward(const ConvCall& call, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, Tensor& y);
void backward_input(const ConvCall& call, const Tensor& dy, const Tensor& w, Tensor& dx);
void backward_weight(const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw);
}  // namespace depthwise

// Split reductions (conv2d.cu): how many slices, the buffer the slices write (`out` itself when
// there is one slice of out's own dtype, else [splits, out.numel()] in opmath), and the sum of
// the slices into `out` in a fixed order (sum_partials_kernel; nothing when the buffer is `out`).
// The longest chain of additions a split reduction leaves to one accumulator (products or
// values), where memory allows: reduction_splits' max_work is this in its own units of work.
constexpr int64_t kMaxChain = 4096;
int reduction_splits(int64_t blocks_per_split, int64_t work, int64_t min_work, int64_t max_work,
                     int64_t partial_per_split, int64_t max_z, int sm_count);
Tensor partial_buffer(const Tensor& out, int splits);
// Split-K for the forward pass and the input gradient (the tensor-core and float32 GEMMs): a
// layer whose `blocks` output tiles fill less than two waves of the GPU (blocks_per_sm resident
// blocks on each of sm_count multiprocessors) has its K split into slices, enough for about two
// waves, each of at least 4 K steps, at most 16, and at most 2^25 partial sums in all.
int split_k_slices(int64_t blocks, int64_t k_steps, int64_t out_numel, int sm_count, int blocks_per_sm);
void finish_partials(const Tensor& partial, Tensor& out, int splits, cuda_detail::Stream stream);
// Split-K shared by the stride phases of one input gradient (the GEMMs' backward_input), each of
// which writes only its own positions of dx: every phase's launch writes its slices into the same
// zeroed float [splits, dx] buffer, summed into dx once after the last phase. The first launch
// sizes it, by its tiles and the longest phase's K (a shorter phase leaves some slices zero).
struct PhaseSplits {
  int longest_k = 0;
  Tensor partial;
  int splits = 0;  // 0: not sized yet
};
// Where one gather launch's K slices go (`count` 1: straight into out): the phases' shared
// buffer, sized by the first launch to `wanted`, or without `phases`, when `wanted` > 1, a
// float buffer of its own (`own`), which the caller sums into out after the launch.
struct KSlices {
  int count = 1;
  Tensor own;
  float* partial = nullptr;
};
KSlices k_slices(PhaseSplits* phases, const Tensor& out, int wanted);

// The geometry of phase (ph, pw)'s gather, the same in every GEMM family's parameters (GatherConv,
// TensorCoreConv): its output pixels (the phase's rows and columns of dx, stride apart from
// (ph, pw)), the dy rows and columns its taps read, and its K = O_g x the phase's taps.
template <typename Gather>
void set_phase_geometry(Gather& q, const ConvParams& p, int ph, int pw, const PhaseTaps& th, const PhaseTaps& tw) {
  q.rows = ceil_div(p.in_h - ph, p.stride_h), q.cols = ceil_div(p.in_w - pw, p.stride_w);
  q.s_r = q.s_c = 1, q.r0 = th.offset, q.c0 = tw.offset, q.dr = th.delta, q.dc = tw.delta;
  q.taps_h = th.count, q.taps_w = tw.count;
  q.n = p.in_per_group, q.k = p.out_per_group * th.count * tw.count;
  q.row0 = ph, q.col0 = pw, q.row_step = p.stride_h, q.col_step = p.stride_w;
}

// The GEMMs' input gradient by stride phase (gemm_simt.cu's header): zero-fills dx where some
// phase has no tap (3 of a 1x1 stride-2 layer's 4; no launch for those), calls
// launch_phase(ph, pw, taps_h, taps_w, phases) for each phase with taps, `phases` being the
// shared K slices (nullptr with one phase, which splits its own), and sums those into dx at the end.
template <typename LaunchPhase>
void for_each_phase_with_taps(const ConvParams& p, Tensor& dx, cuda_detail::Stream stream, LaunchPhase launch_phase) {
  const bool one_phase = p.stride_h == 1 && p.stride_w == 1;
  PhaseSplits phases;
  phases.longest_k = longest_phase_k(p);
  if (has_tapless_phase(p)) torch::stable::fill_(dx, 0.0);  // (unless K is split: the sum writes them)
  for (int ph = 0; ph < std::min(p.stride_h, p.in_h); ++ph) {
    for (int pw = 0; pw < std::min(p.stride_w, p.in_w); ++pw) {
      const PhaseTaps th = phase_taps(ph, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
      const PhaseTaps tw = phase_taps(pw, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
      if (th.count == 0 || tw.count == 0) continue;  // (zeros: filled above)
      launch_phase(ph, pw, th, tw, one_phase ? nullptr : &phases);
    }
  }
  if (phases.splits > 1) finish_partials(phases.partial, dx, phases.splits, stream);
}

}  // namespace cuconv::conv_cuda
