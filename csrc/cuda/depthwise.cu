// Depthwise-like convolutions on CUDA (C_g == 1: one input channel per group, groups == C_in
// for depthwise proper): direct kernels, no GEMM.
// - forward: a thread a strip of 4 outputs of a row, the taps and the input row segments in
//   registers (square 3, 5, 7 kernels without dilation, column stride 1 or 2); else one thread an
//   output;
// - input gradient: one thread an input element, a gather over the outputs and the taps of its
//   stride phase;
// - weight gradient: one block per (output channel, split) that reads each dy element once and
//   accumulates every tap in registers (3x3, 5x5, 7x7 kernels; other sizes one block per weight
//   element), the split slices summed in fixed order (conv2d.cu's finish_partials):
//   deterministic, no atomics.
// One-input-channel layers without groups (the book's first layers) come here too, except the
// float32 forward pass of those with many output channels and taps, which conv2d.cu gives the
// float32 GEMM.

#include "conv2d_common.cuh"

namespace cuconv::conv_cuda::depthwise {
namespace {

using cuda_detail::grid_stride_blocks;
using cuda_detail::kThreadsPerBlock;

// y[n, o, oh, ow] = bias[o] + sum_{i,j} x[n, o / O_g, ih, iw] * w[o, 0, i, j].
// kFixedKernel > 0 fixes kH = kW at compile time (unrolled taps); 0 reads them from p.
template <typename scalar_t, int kFixedKernel>
__global__ void depthwise_forward_kernel(const scalar_t* __restrict__ input,
                                         const scalar_t* __restrict__ weight,
                                         const scalar_t* __restrict__ bias,
                                         scalar_t* __restrict__ output, const ConvParams p,
                                         int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  const int kernel_h = kFixedKernel > 0 ? kFixedKernel : p.kernel_h;
  const int kernel_w = kFixedKernel > 0 ? kFixedKernel : p.kernel_w;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t plane = index / p.out_plane;  // n * C_out + o
    const int pixel = static_cast<int>(index - plane * p.out_plane);
    const int oh = pixel / p.out_w, ow = pixel - oh * p.out_w;
    const int o = static_cast<int>(plane % p.out_channels);
    const int64_t n = plane / p.out_channels;
    const scalar_t* x = input + n * p.in_sample + static_cast<int64_t>(o / p.out_per_group) * p.in_plane;
    const scalar_t* w = weight + o * kernel_h * kernel_w;
    const int ih0 = oh * p.stride_h - p.pad_h, iw0 = ow * p.stride_w - p.pad_w;
    acc_t sum = bias != nullptr ? static_cast<acc_t>(bias[o]) : acc_t(0);
#pragma unroll
    for (int i = 0; i < kernel_h; ++i) {
      const int ih = ih0 + i * p.dilation_h;
      if (static_cast<unsigned>(ih) >= static_cast<unsigned>(p.in_h)) continue;
#pragma unroll
      for (int j = 0; j < kernel_w; ++j) {
        const int iw = iw0 + j * p.dilation_w;
        if (static_cast<unsigned>(iw) >= static_cast<unsigned>(p.in_w)) continue;
        sum += static_cast<acc_t>(x[ih * p.in_w + iw]) * static_cast<acc_t>(w[i * kernel_w + j]);
      }
    }
    output[index] = static_cast<scalar_t>(sum);
  }
}

// The same forward pass register-blocked, for kH = kW = kKernel, column stride kStride and no
// dilation: a thread computes kStrip consecutive outputs of one row, (n, o, oh, ow0 .. ow0 +
// kStrip), with the channel's taps held in registers and, per tap row, the input row segment those
// outputs read ((kStrip - 1)*kStride + kKernel values) loaded once and reused by every output and
// tap. The index math is per strip, so the FMAs run without bounds checks or divisions.
constexpr int kStrip = 4;
template <typename scalar_t, int kKernel, int kStride>
__global__ void depthwise_forward_strip_kernel(const scalar_t* __restrict__ input, const scalar_t* __restrict__ weight,
                                               const scalar_t* __restrict__ bias, scalar_t* __restrict__ output,
                                               const ConvParams p, int64_t strips) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int kSegment = (kStrip - 1) * kStride + kKernel;
  const int strips_per_row = (p.out_w + kStrip - 1) / kStrip;
  CUCONV_KERNEL_LOOP(strip, strips) {
    const int64_t row = strip / strips_per_row;  // (n * C_out + o) * Ho + oh
    const int ow0 = static_cast<int>(strip - row * strips_per_row) * kStrip;
    const int64_t plane = row / p.out_h;
    const int oh = static_cast<int>(row - plane * p.out_h);
    const int o = static_cast<int>(plane % p.out_channels);
    const int64_t n = plane / p.out_channels;
    const scalar_t* x = input + n * p.in_sample + static_cast<int64_t>(o / p.out_per_group) * p.in_plane;
    acc_t w[kKernel * kKernel];
#pragma unroll
    for (int t = 0; t < kKernel * kKernel; ++t) w[t] = static_cast<acc_t>(weight[o * kKernel * kKernel + t]);
    acc_t acc[kStrip];
    const acc_t b = bias != nullptr ? static_cast<acc_t>(bias[o]) : acc_t(0);
#pragma unroll
    for (int t = 0; t < kStrip; ++t) acc[t] = b;
    const int iw_first = ow0 * kStride - p.pad_w;
#pragma unroll
    for (int i = 0; i < kKernel; ++i) {
      const int ih = oh * p.stride_h - p.pad_h + i;
      if (static_cast<unsigned>(ih) >= static_cast<unsigned>(p.in_h)) continue;
      acc_t row_values[kSegment];  // the input row from iw_first, zero outside the image
#pragma unroll
      for (int v = 0; v < kSegment; ++v) {
        const int iw = iw_first + v;
        row_values[v] = static_cast<unsigned>(iw) < static_cast<unsigned>(p.in_w) ? static_cast<acc_t>(x[ih * p.in_w + iw])
                                                                                 : acc_t(0);
      }
#pragma unroll
      for (int t = 0; t < kStrip; ++t)
#pragma unroll
        for (int j = 0; j < kKernel; ++j) acc[t] += row_values[t * kStride + j] * w[i * kKernel + j];
    }
    scalar_t* y = output + row * p.out_w;
#pragma unroll
    for (int t = 0; t < kStrip; ++t)
      if (ow0 + t < p.out_w) y[ow0 + t] = static_cast<scalar_t>(acc[t]);
  }
}

// dx[n, c, ih, iw] = sum over the O_g channels o of group c, taps (i, j) and the output pixel
// (oh, ow) that tap maps onto (ih, iw) of dy[n, o, oh, ow] * w[o, 0, i, j]: a gather, one thread
// an input pixel. The taps that reach a pixel are its stride phase's (gemm_simt.cu's header,
// phase_taps): i = first + t*step, reading dy row ih / sH + offset + t*delta, and the same in
// columns. Found once a pixel, they let the loops walk only those taps (a 7x7 stride-2 kernel
// reaches a pixel with 9-16 of its 49), without a division; the channels come innermost, so a
// tap's bounds are checked once for all O_g of them.
template <typename scalar_t>
__global__ void depthwise_backward_input_kernel(const scalar_t* __restrict__ grad_output,
                                                const scalar_t* __restrict__ weight,
                                                scalar_t* __restrict__ grad_input,
                                                const ConvParams p, int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t plane = index / p.in_plane;  // n * C_in + c
    const int pixel = static_cast<int>(index - plane * p.in_plane);
    const int ih = pixel / p.in_w, iw = pixel - ih * p.in_w;
    const int c = static_cast<int>(plane % p.in_channels);
    const int64_t n = plane / p.in_channels;
    const PhaseTaps rows = phase_taps(ih % p.stride_h, p.kernel_h, p.stride_h, p.pad_h, p.dilation_h);
    const PhaseTaps cols = phase_taps(iw % p.stride_w, p.kernel_w, p.stride_w, p.pad_w, p.dilation_w);
    const int oh0 = ih / p.stride_h + rows.offset, ow0 = iw / p.stride_w + cols.offset;
    const scalar_t* dy = grad_output + n * p.out_sample + static_cast<int64_t>(c) * p.out_per_group * p.out_plane;
    const scalar_t* w = weight + c * p.out_per_group * p.taps;
    acc_t sum = 0;
    for (int t = 0; t < rows.count; ++t) {
      const int oh = oh0 + t * rows.delta;
      if (static_cast<unsigned>(oh) >= static_cast<unsigned>(p.out_h)) continue;
      const int i = rows.first + t * rows.step;
      for (int u = 0; u < cols.count; ++u) {
        const int ow = ow0 + u * cols.delta;
        if (static_cast<unsigned>(ow) >= static_cast<unsigned>(p.out_w)) continue;
        const scalar_t* dy_tap = dy + oh * p.out_w + ow;
        const scalar_t* w_tap = w + i * p.kernel_w + cols.first + u * cols.step;
        for (int m = 0; m < p.out_per_group; ++m, dy_tap += p.out_plane, w_tap += p.taps)
          sum += static_cast<acc_t>(*dy_tap) * static_cast<acc_t>(*w_tap);
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// partial[split, o*taps + tap] = sum over this split's (n, oh, ow) of dy[n, o, oh, ow] * x[n, o / O_g, ih, iw]
// for the block's weight element (o, 0, i, j) = blockIdx.x.
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads)
    depthwise_weight_grad_kernel(const scalar_t* __restrict__ grad_output,
                                 const scalar_t* __restrict__ input,
                                 opmath_t<scalar_t>* __restrict__ partial, const ConvParams p,
                                 int positions) {
  using acc_t = opmath_t<scalar_t>;
  const int element = blockIdx.x, split = blockIdx.y;
  const int o = element / p.taps, tap = element - o * p.taps;
  const int i = tap / p.kernel_w, j = tap - i * p.kernel_w;
  const int row_offset = i * p.dilation_h - p.pad_h, col_offset = j * p.dilation_w - p.pad_w;
  const scalar_t* dy = grad_output + static_cast<int64_t>(o) * p.out_plane;
  const scalar_t* x = input + static_cast<int64_t>(o / p.out_per_group) * p.in_plane;
  const int first = split * kReduceThreads + threadIdx.x;
  const int stride = gridDim.y * kReduceThreads;
  MixedRadix position = MixedRadix::split(first, p.out_h, p.out_w);  // (n, oh, ow)
  const MixedRadix step = MixedRadix::split(stride, p.out_h, p.out_w);
  acc_t sum = 0;
  for (int q = first; q < positions; q += stride) {
    const int ih = position.mid * p.stride_h + row_offset, iw = position.inner * p.stride_w + col_offset;
    if (static_cast<unsigned>(ih) < static_cast<unsigned>(p.in_h) &&
        static_cast<unsigned>(iw) < static_cast<unsigned>(p.in_w)) {
      sum += static_cast<acc_t>(dy[position.outer * p.out_sample + position.mid * p.out_w + position.inner]) *
             static_cast<acc_t>(x[position.outer * p.in_sample + ih * p.in_w + iw]);
    }
    position.advance(step, p.out_h, p.out_w);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[static_cast<int64_t>(split) * gridDim.x + element] = sum;
}

// The same gradient with every tap of output channel o = blockIdx.x in one block: each (n, oh, ow)
// of the block's share reads dy once and accumulates all kH*kW taps in registers (the input
// window comes from the L1 cache), so dy is read once instead of once a tap. kKernelH x kKernelW
// fixed at compile time (the register array). The taps are then summed over the block: per warp
// by shuffles, then the warps' totals in warp order. partial[split, o*taps + tap].
template <typename scalar_t, int kKernelH, int kKernelW>
__global__ void __launch_bounds__(kReduceThreads)
    depthwise_weight_grad_taps_kernel(const scalar_t* __restrict__ grad_output, const scalar_t* __restrict__ input,
                                      opmath_t<scalar_t>* __restrict__ partial, const ConvParams p, int positions) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int kTaps = kKernelH * kKernelW;
  constexpr int kWarps = kReduceThreads / 32;
  CUCONV_SHARED(warp_totals, acc_t[kTaps][kWarps]);
  const int o = blockIdx.x, split = blockIdx.y;
  const scalar_t* dy = grad_output + static_cast<int64_t>(o) * p.out_plane;
  const scalar_t* x = input + static_cast<int64_t>(o / p.out_per_group) * p.in_plane;
  const int first = split * kReduceThreads + threadIdx.x;
  const int stride = gridDim.y * kReduceThreads;
  MixedRadix position = MixedRadix::split(first, p.out_h, p.out_w);  // (n, oh, ow)
  const MixedRadix step = MixedRadix::split(stride, p.out_h, p.out_w);
  acc_t acc[kTaps];
#pragma unroll
  for (int t = 0; t < kTaps; ++t) acc[t] = acc_t(0);
  for (int q = first; q < positions; q += stride) {
    const acc_t g = static_cast<acc_t>(dy[position.outer * p.out_sample + position.mid * p.out_w + position.inner]);
    const scalar_t* sample = x + position.outer * p.in_sample;
    const int ih0 = position.mid * p.stride_h - p.pad_h, iw0 = position.inner * p.stride_w - p.pad_w;
#pragma unroll
    for (int i = 0; i < kKernelH; ++i) {
      const int ih = ih0 + i * p.dilation_h;
      if (static_cast<unsigned>(ih) >= static_cast<unsigned>(p.in_h)) continue;
#pragma unroll
      for (int j = 0; j < kKernelW; ++j) {
        const int iw = iw0 + j * p.dilation_w;
        if (static_cast<unsigned>(iw) < static_cast<unsigned>(p.in_w))
          acc[i * kKernelW + j] += g * static_cast<acc_t>(sample[ih * p.in_w + iw]);
      }
    }
    position.advance(step, p.out_h, p.out_w);
  }
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32;
#pragma unroll
  for (int t = 0; t < kTaps; ++t) {
    const acc_t total = cuda_detail::warp_sum(acc[t]);
    if (lane == 0) warp_totals[t][warp] = total;
  }
  __syncthreads();  // every warp's totals are in shared memory
  for (int t = threadIdx.x; t < kTaps; t += kReduceThreads) {
    acc_t sum = 0;
    for (int w = 0; w < kWarps; ++w) sum += warp_totals[t][w];
    partial[static_cast<int64_t>(split) * gridDim.x * kTaps + o * kTaps + t] = sum;
  }
}
}  // namespace

void forward(const ConvCall& call, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, Tensor& y) {
  const ConvParams& p = call.p;
  const int64_t total = y.numel();
  const unsigned int blocks = grid_stride_blocks(total);
  // Square 3, 5 and 7 kernels, no dilation, column stride 1 or 2: register-blocked strips.
  const bool strips = p.kernel_h == p.kernel_w && (p.kernel_h == 3 || p.kernel_h == 5 || p.kernel_h == 7) &&
                      p.dilation_h == 1 && p.dilation_w == 1 && (p.stride_w == 1 || p.stride_w == 2);
  const bool stride_2 = p.stride_w == 2;
  const int64_t strip_count = static_cast<int64_t>(p.batch) * p.out_channels * p.out_h * ((p.out_w + kStrip - 1) / kStrip);
  CUCONV_DISPATCH_FLOATING(x.scalar_type(), "conv2d_forward_cuda", [&] {
    const scalar_t* bias_data = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    auto strip_kernel = [&](auto kernel) {
      cuda_detail::launch(kernel, grid_stride_blocks(strip_count), kThreadsPerBlock, 0, call.stream,
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data, y.mutable_data_ptr<scalar_t>(), p,
          strip_count);
    };
    if (strips && p.kernel_h == 3) {
      stride_2 ? strip_kernel(depthwise_forward_strip_kernel<scalar_t, 3, 2>)
               : strip_kernel(depthwise_forward_strip_kernel<scalar_t, 3, 1>);
    } else if (strips && p.kernel_h == 5) {
      stride_2 ? strip_kernel(depthwise_forward_strip_kernel<scalar_t, 5, 2>)
               : strip_kernel(depthwise_forward_strip_kernel<scalar_t, 5, 1>);
    } else if (strips && p.kernel_h == 7) {
      stride_2 ? strip_kernel(depthwise_forward_strip_kernel<scalar_t, 7, 2>)
               : strip_kernel(depthwise_forward_strip_kernel<scalar_t, 7, 1>);
    } else if (p.kernel_h == 3 && p.kernel_w == 3) {
      cuda_detail::launch(depthwise_forward_kernel<scalar_t, 3>, blocks, kThreadsPerBlock, 0, call.stream,
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data, y.mutable_data_ptr<scalar_t>(), p, total);
    } else {
      cuda_detail::launch(depthwise_forward_kernel<scalar_t, 0>, blocks, kThreadsPerBlock, 0, call.stream,
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data, y.mutable_data_ptr<scalar_t>(), p, total);
    }
  });
}

void backward_input(const ConvCall& call, const Tensor& dy, const Tensor& w, Tensor& dx) {
  const int64_t total = dx.numel();
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_input_cuda", [&] {
    cuda_detail::launch(depthwise_backward_input_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0,
        call.stream, dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(),
        call.p, total);
  });
}

void backward_weight(const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw) {
  const ConvParams& p = call.p;
  const int positions = p.batch * p.out_plane;  // the reduction length N*Ho*Wo (may be 0)
  const int64_t elements = dw.numel();          // C_out * kH * kW
  CUCONV_CHECK(elements <= cuda_detail::kMaxInt32Index, "cuconv.conv2d_backward_weight: too many weight elements");
  const bool taps_in_registers = p.kernel_h == p.kernel_w && (p.kernel_h == 3 || p.kernel_h == 5 || p.kernel_h == 7);
  const int64_t blocks_per_split = taps_in_registers ? p.out_channels : elements;
  const int splits = reduction_splits(blocks_per_split, positions, 16 * kReduceThreads, kMaxChain * kReduceThreads, elements,
                                      cuda_detail::max_grid_yz(), call.sm_count);
  Tensor partial = partial_buffer(dw, splits);
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_weight_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    // The common kernel sizes accumulate every tap of a channel in one block; the rest one block a tap.
    auto taps_kernel = [&](auto kernel) {
      const dim3 grid(static_cast<unsigned int>(p.out_channels), static_cast<unsigned int>(splits));
      cuda_detail::launch(kernel, grid, kReduceThreads, 0, call.stream, dy.const_data_ptr<scalar_t>(),
                          x.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), p, positions);
    };
    if (p.kernel_h == 3 && p.kernel_w == 3) {
      taps_kernel(depthwise_weight_grad_taps_kernel<scalar_t, 3, 3>);
    } else if (p.kernel_h == 5 && p.kernel_w == 5) {
      taps_kernel(depthwise_weight_grad_taps_kernel<scalar_t, 5, 5>);
    } else if (p.kernel_h == 7 && p.kernel_w == 7) {
      taps_kernel(depthwise_weight_grad_taps_kernel<scalar_t, 7, 7>);
    } else {
      const dim3 grid(static_cast<unsigned int>(elements), static_cast<unsigned int>(splits));
      cuda_detail::launch(depthwise_weight_grad_kernel<scalar_t>, grid, kReduceThreads, 0, call.stream,
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), p, positions);
    }
  });
  finish_partials(partial, dw, splits, call.stream);
}

}  // namespace cuconv::conv_cuda::depthwise
