// Max, average and adaptive average pooling on CUDA.
//
// Index math (as cpu/pool2d.cpp): output cell (oh, ow) of a plane sees the window
//   rows  oh*sH - pH + i*dH, i in [0, kH)      (dH = 1 for average pooling)
//   cols  ow*sW - pW + j*dW, j in [0, kW)
// clipped to the input; adaptive pooling uses rows [floor(oh*H/Ho), ceil((oh+1)*H/Ho)),
// likewise for columns. Planes are the N*C (n, c) pairs of the NCHW-contiguous tensors.
//
// Threads: forward kernels give each thread one output element, backward
// kernels one input element (grid-stride loops, 64-bit linear indices, 32-bit
// offsets within a plane). Backward passes GATHER: input pixel ih is covered by
// the outputs oh in
//   [ih + pH < reach ? 0 : (ih + pH - reach) / sH + 1,  min((ih + pH) / sH + 1, Ho))
// where reach = (kH-1)*dH + 1 is the window's extent, and the input element
// sums the gradients of exactly those outputs (for max pooling: those whose
// index is this pixel) in a fixed order. No atomics, so results are
// deterministic. Accumulation is in opmath_t (float for half/bfloat16).
// max_pool2d_backward takes any indices, as the CPU's scatter does: the gather covers
// every index inside its own window (all that max_pool2d produces), and two small kernels
// add the others ("strays", e.g. indices a user built), in output order, without a host sync.
// No shared memory and no __syncthreads() except the warp shuffles of the
// global-average kernel.


#include <limits>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "../shape.h"
#include "launch.cuh"

namespace cuconv {
namespace {

using cuda_detail::ceil_div;
using cuda_detail::check_int32_index;
using cuda_detail::grid_stride_blocks;
using cuda_detail::kThreadsPerBlock;

// Geometry of one pooling op; planes are indexed in 64 bits, pixels in 32.
struct PoolParams {
  int in_h, in_w, out_h, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int in_plane, out_plane;  // H*W, Ho*Wo
};

PoolParams make_pool_params(const char* op, int64_t in_h, int64_t in_w, int64_t out_h,
                            int64_t out_w, IntArrayRef kernel_size, IntArrayRef stride,
                            IntArrayRef padding, IntArrayRef dilation) {
  check_int32_index(op, "input height * width", in_h * in_w);
  check_int32_index(op, "output height * width", out_h * out_w);
  for (IntArrayRef pair : {kernel_size, stride, padding, dilation})
    for (int64_t v : pair) check_int32_index(op, "a kernel_size/stride/padding/dilation value", v);
  // Index sums formed in 32 bits: the reach of the last window in each direction.
  check_int32_index(op, "the last window's reach in height",
                    (out_h - 1) * stride[0] + dilation[0] * (kernel_size[0] - 1) + 1);
  check_int32_index(op, "the last window's reach in width",
                    (out_w - 1) * stride[1] + dilation[1] * (kernel_size[1] - 1) + 1);
  return PoolParams{static_cast<int>(in_h),           static_cast<int>(in_w),
                    static_cast<int>(out_h),          static_cast<int>(out_w),
                    static_cast<int>(kernel_size[0]), static_cast<int>(kernel_size[1]),
                    static_cast<int>(stride[0]),      static_cast<int>(stride[1]),
                    static_cast<int>(padding[0]),     static_cast<int>(padding[1]),
                    static_cast<int>(dilation[0]),    static_cast<int>(dilation[1]),
                    static_cast<int>(in_h * in_w),    static_cast<int>(out_h * out_w)};
}

// Outputs [begin, end) along one axis whose window (start o*stride - pad, extent
// `reach`) covers input index `in`.
struct CoveringRange {
  int begin, end;
};
__device__ __forceinline__ CoveringRange covering_outputs(int in, int pad, int reach, int stride,
                                                          int out_size) {
  const int shifted = in + pad;
  const int begin = shifted < reach ? 0 : (shifted - reach) / stride + 1;
  const int end = min(shifted / stride + 1, out_size);
  return {begin, end};
}

// ---------------------------------------------------------------------------
// Max pooling

// Where a running maximum starts: -inf, or an integer type's lowest value (as torch).
template <typename T>
__host__ __device__ constexpr T lowest_for_max() {
  return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
}

// NaN test for the floating types; integers are never NaN.
template <typename T>
__device__ __forceinline__ bool is_nan(T v) {
  if constexpr (std::is_floating_point_v<T>) {
    return isnan(v);
  } else {
    return false;
  }
}

template <typename scalar_t>
__global__ void max_pool_forward_kernel(const scalar_t* __restrict__ input,
                                        scalar_t* __restrict__ output,
                                        int64_t* __restrict__ indices, const PoolParams p,
                                        int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t plane = index / p.out_plane;
    const int pixel = static_cast<int>(index - plane * p.out_plane);
    const int oh = pixel / p.out_w, ow = pixel - oh * p.out_w;
    // First in-bounds row/column of the window (stepping by the dilation), and one past the last.
    int h0 = oh * p.stride_h - p.pad_h;
    const int h1 = min(h0 + (p.kernel_h - 1) * p.dilation_h + 1, p.in_h);
    if (h0 < 0) h0 += ceil_div(-h0, p.dilation_h) * p.dilation_h;
    int w0 = ow * p.stride_w - p.pad_w;
    const int w1 = min(w0 + (p.kernel_w - 1) * p.dilation_w + 1, p.in_w);
    if (w0 < 0) w0 += ceil_div(-w0, p.dilation_w) * p.dilation_w;

    const scalar_t* plane_input = input + plane * p.in_plane;
    // As torch and the CPU kernel: the first in-bounds pixel wins ties and all -inf windows, NaN wins always.
    int best = h0 * p.in_w + w0;
    acc_t best_value = lowest_for_max<acc_t>();
    for (int ih = h0; ih < h1; ih += p.dilation_h) {
      for (int iw = w0; iw < w1; iw += p.dilation_w) {
        const acc_t v = static_cast<acc_t>(plane_input[ih * p.in_w + iw]);
        if (v > best_value || is_nan(v)) {
          best_value = v;
          best = ih * p.in_w + iw;
        }
      }
    }
    output[index] = static_cast<scalar_t>(best_value);
    indices[index] = best;
  }
}

// dx[plane, ih, iw] = sum of dy over the outputs whose window holds (ih, iw) (its span covers the
// pixel, on its dilation grid: index_in_window's rule, so that the strays below are the others)
// and whose index is it.
template <typename scalar_t>
__global__ void max_pool_backward_kernel(const scalar_t* __restrict__ grad_output,
                                         const int64_t* __restrict__ indices,
                                         scalar_t* __restrict__ grad_input, const PoolParams p,
                                         int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  const int reach_h = (p.kernel_h - 1) * p.dilation_h + 1;
  const int reach_w = (p.kernel_w - 1) * p.dilation_w + 1;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t plane = index / p.in_plane;
    const int pixel = static_cast<int>(index - plane * p.in_plane);
    const int ih = pixel / p.in_w, iw = pixel - ih * p.in_w;
    const CoveringRange rows = covering_outputs(ih, p.pad_h, reach_h, p.stride_h, p.out_h);
    const CoveringRange cols = covering_outputs(iw, p.pad_w, reach_w, p.stride_w, p.out_w);
    const scalar_t* plane_grad = grad_output + plane * p.out_plane;
    const int64_t* plane_indices = indices + plane * p.out_plane;
    acc_t sum = 0;
    for (int oh = rows.begin; oh < rows.end; ++oh) {
      for (int ow = cols.begin; ow < cols.end; ++ow) {
        const int o = oh * p.out_w + ow;
        // (the grid's remainders only for a matching index: no division in the loop's common path)
        if (plane_indices[o] == pixel && (ih + p.pad_h - oh * p.stride_h) % p.dilation_h == 0 &&
            (iw + p.pad_w - ow * p.stride_w) % p.dilation_w == 0)
          sum += static_cast<acc_t>(plane_grad[o]);
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// Whether output o's index is a pixel of its own window (the gather above sees it only then).
__device__ __forceinline__ bool index_in_window(int64_t index, int o, const PoolParams& p) {
  if (index < 0 || index >= p.in_plane) return false;
  const int oh = o / p.out_w, ow = o - oh * p.out_w;
  const int ih = static_cast<int>(index / p.in_w), iw = static_cast<int>(index - static_cast<int64_t>(ih) * p.in_w);
  const int dh = ih - (oh * p.stride_h - p.pad_h), dw = iw - (ow * p.stride_w - p.pad_w);
  return dh >= 0 && dw >= 0 && dh % p.dilation_h == 0 && dw % p.dilation_w == 0 && dh / p.dilation_h < p.kernel_h &&
         dw / p.dilation_w < p.kernel_w;
}

// strays[0] = 1 if any output's index lies outside its window (all threads write the same value).
__global__ void max_pool_find_strays_kernel(const int64_t* __restrict__ indices, int* __restrict__ strays,
                                            const PoolParams p, int64_t total) {
  CUCONV_KERNEL_LOOP(index, total) {
    const int o = static_cast<int>(index % p.out_plane);
    if (!index_in_window(indices[index], o, p)) strays[0] = 1;
  }
}

// Adds the stray gradients, only when there are any: one thread per plane, outputs in order,
// so that the sums are deterministic. Indices outside the plane are skipped (the CPU raises
// an IndexError for them; a kernel cannot without a host sync).
template <typename scalar_t>
__global__ void max_pool_add_strays_kernel(const scalar_t* __restrict__ grad_output,
                                           const int64_t* __restrict__ indices, scalar_t* __restrict__ grad_input,
                                           const int* __restrict__ strays, const PoolParams p, int64_t planes) {
  using acc_t = opmath_t<scalar_t>;
  if (strays[0] == 0) return;
  CUCONV_KERNEL_LOOP(plane, planes) {
    for (int o = 0; o < p.out_plane; ++o) {
      const int64_t index = indices[plane * p.out_plane + o];
      if (index_in_window(index, o, p) || index < 0 || index >= p.in_plane) continue;
      scalar_t& target = grad_input[plane * p.in_plane + index];
      target = static_cast<scalar_t>(static_cast<acc_t>(target) +
                                     static_cast<acc_t>(grad_output[plane * p.out_plane + o]));
    }
  }
}

// ---------------------------------------------------------------------------
// Average pooling

// Clipped window [start, end) of output o along one axis, and its length counted
// with the padding (for count_include_pad): cpu/pool2d.cpp's avg_window.
struct AvgWindow {
  int start, end, padded_size;
};
__device__ __forceinline__ AvgWindow avg_window(int o, int kernel, int stride, int pad, int in) {
  const int start = o * stride - pad;
  const int end = min(start + kernel, in + pad);
  return {max(start, 0), min(end, in), end - start};
}

// 0 encodes "no divisor_override" (check_divisor_override rejects 0).
__device__ __forceinline__ int64_t avg_divisor(const AvgWindow& h, const AvgWindow& w,
                                               bool count_include_pad, int64_t divisor_override) {
  if (divisor_override != 0) return divisor_override;
  if (count_include_pad) return static_cast<int64_t>(h.padded_size) * w.padded_size;
  return static_cast<int64_t>(h.end - h.start) * (w.end - w.start);
}

template <typename scalar_t>
__global__ void avg_pool_forward_kernel(const scalar_t* __restrict__ input,
                                        scalar_t* __restrict__ output, const PoolParams p,
                                        bool count_include_pad, int64_t divisor_override,
                                        int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t plane = index / p.out_plane;
    const int pixel = static_cast<int>(index - plane * p.out_plane);
    const int oh = pixel / p.out_w, ow = pixel - oh * p.out_w;
    const AvgWindow wh = avg_window(oh, p.kernel_h, p.stride_h, p.pad_h, p.in_h);
    const AvgWindow ww = avg_window(ow, p.kernel_w, p.stride_w, p.pad_w, p.in_w);
    // A window wholly in the ceil-mode overhang averages nothing: 0, as torch.
    if (wh.start >= wh.end || ww.start >= ww.end) {
      output[index] = scalar_t(0);
      continue;
    }
    const scalar_t* plane_input = input + plane * p.in_plane;
    acc_t sum = 0;
    for (int ih = wh.start; ih < wh.end; ++ih)
      for (int iw = ww.start; iw < ww.end; ++iw) sum += static_cast<acc_t>(plane_input[ih * p.in_w + iw]);
    output[index] = static_cast<scalar_t>(
        sum / static_cast<acc_t>(avg_divisor(wh, ww, count_include_pad, divisor_override)));
  }
}

// dx[plane, ih, iw] = sum over the windows covering (ih, iw) of dy / that window's divisor.
template <typename scalar_t>
__global__ void avg_pool_backward_kernel(const scalar_t* __restrict__ grad_output,
                                         scalar_t* __restrict__ grad_input, const PoolParams p,
                                         bool count_include_pad, int64_t divisor_override,
                                         int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t plane = index / p.in_plane;
    const int pixel = static_cast<int>(index - plane * p.in_plane);
    const int ih = pixel / p.in_w, iw = pixel - ih * p.in_w;
    const CoveringRange rows = covering_outputs(ih, p.pad_h, p.kernel_h, p.stride_h, p.out_h);
    const CoveringRange cols = covering_outputs(iw, p.pad_w, p.kernel_w, p.stride_w, p.out_w);
    const scalar_t* plane_grad = grad_output + plane * p.out_plane;
    acc_t sum = 0;
    for (int oh = rows.begin; oh < rows.end; ++oh) {
      const AvgWindow wh = avg_window(oh, p.kernel_h, p.stride_h, p.pad_h, p.in_h);
      for (int ow = cols.begin; ow < cols.end; ++ow) {
        // A window covering an in-bounds pixel is never empty, so the divisor is the forward one.
        const AvgWindow ww = avg_window(ow, p.kernel_w, p.stride_w, p.pad_w, p.in_w);
        sum += static_cast<acc_t>(plane_grad[oh * p.out_w + ow]) /
               static_cast<acc_t>(avg_divisor(wh, ww, count_include_pad, divisor_override));
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// ---------------------------------------------------------------------------
// Adaptive average pooling

__device__ __forceinline__ int adaptive_begin(int i, int out, int in) {
  return static_cast<int>((static_cast<int64_t>(i) * in) / out);
}
__device__ __forceinline__ int adaptive_finish(int i, int out, int in) {
  return static_cast<int>(((static_cast<int64_t>(i) + 1) * in + out - 1) / out);
}

template <typename scalar_t>
__global__ void adaptive_avg_pool_forward_kernel(const scalar_t* __restrict__ input,
                                                 scalar_t* __restrict__ output,
                                                 const PoolParams p, int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t plane = index / p.out_plane;
    const int pixel = static_cast<int>(index - plane * p.out_plane);
    const int oh = pixel / p.out_w, ow = pixel - oh * p.out_w;
    const int h0 = adaptive_begin(oh, p.out_h, p.in_h), h1 = adaptive_finish(oh, p.out_h, p.in_h);
    const int w0 = adaptive_begin(ow, p.out_w, p.in_w), w1 = adaptive_finish(ow, p.out_w, p.in_w);
    const scalar_t* plane_input = input + plane * p.in_plane;
    acc_t sum = 0;
    for (int ih = h0; ih < h1; ++ih)
      for (int iw = w0; iw < w1; ++iw) sum += static_cast<acc_t>(plane_input[ih * p.in_w + iw]);
    output[index] = static_cast<scalar_t>(sum / static_cast<acc_t>((h1 - h0) * (w1 - w0)));
  }
}

// Output 1x1: one warp per plane reads it coalesced and reduces with shuffles.
template <typename scalar_t>
__global__ void global_avg_pool_forward_kernel(const scalar_t* __restrict__ input,
                                               scalar_t* __restrict__ output, int plane_size,
                                               int64_t planes) {
  using acc_t = opmath_t<scalar_t>;
  const int lane = threadIdx.x % 32;
  const int64_t warps_per_grid = static_cast<int64_t>(gridDim.x) * (blockDim.x / 32);
  for (int64_t plane = static_cast<int64_t>(blockIdx.x) * (blockDim.x / 32) + threadIdx.x / 32;
       plane < planes; plane += warps_per_grid) {
    const scalar_t* plane_input = input + plane * plane_size;
    acc_t sum = 0;
    for (int i = lane; i < plane_size; i += 32) sum += static_cast<acc_t>(plane_input[i]);
    sum = cuda_detail::warp_sum(sum);  // the whole warp is in the loop: `plane` is warp-uniform
    if (lane == 0) output[plane] = static_cast<scalar_t>(sum / static_cast<acc_t>(plane_size));
  }
}

// dx[plane, ih, iw] = sum over the adaptive windows covering (ih, iw) of dy / window size.
// Output oh covers ih exactly when oh in [floor(ih*Ho/H), ceil((ih+1)*Ho/H)).
template <typename scalar_t>
__global__ void adaptive_avg_pool_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                  scalar_t* __restrict__ grad_input,
                                                  const PoolParams p, int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t plane = index / p.in_plane;
    const int pixel = static_cast<int>(index - plane * p.in_plane);
    const int ih = pixel / p.in_w, iw = pixel - ih * p.in_w;
    const int oh0 = adaptive_begin(ih, p.in_h, p.out_h), oh1 = adaptive_finish(ih, p.in_h, p.out_h);
    const int ow0 = adaptive_begin(iw, p.in_w, p.out_w), ow1 = adaptive_finish(iw, p.in_w, p.out_w);
    const scalar_t* plane_grad = grad_output + plane * p.out_plane;
    acc_t sum = 0;
    for (int oh = oh0; oh < oh1; ++oh) {
      const int rows = adaptive_finish(oh, p.out_h, p.in_h) - adaptive_begin(oh, p.out_h, p.in_h);
      for (int ow = ow0; ow < ow1; ++ow) {
        const int cols = adaptive_finish(ow, p.out_w, p.in_w) - adaptive_begin(ow, p.out_w, p.in_w);
        sum += static_cast<acc_t>(plane_grad[oh * p.out_w + ow]) / static_cast<acc_t>(rows * cols);
      }
    }
    grad_input[index] = static_cast<scalar_t>(sum);
  }
}

// Output 1x1: every pixel of a plane gets dy[plane] / (H*W).
template <typename scalar_t>
__global__ void global_avg_pool_backward_kernel(const scalar_t* __restrict__ grad_output,
                                                scalar_t* __restrict__ grad_input,
                                                int plane_size, int64_t total) {
  using acc_t = opmath_t<scalar_t>;
  CUCONV_KERNEL_LOOP(index, total) {
    grad_input[index] = static_cast<scalar_t>(static_cast<acc_t>(grad_output[index / plane_size]) /
                                              static_cast<acc_t>(plane_size));
  }
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points: the checks and output shapes of cpu/pool2d.cpp.

std::tuple<Tensor, Tensor> max_pool2d_forward_cuda(const Tensor& input,
                                                           IntArrayRef kernel_size,
                                                           IntArrayRef stride, IntArrayRef padding,
                                                           IntArrayRef dilation, bool ceil_mode) {
  const char* op = "cuconv.max_pool2d";
  const auto s = check_max_pool2d(op, input, kernel_size, stride, padding, dilation, ceil_mode);
  cuda_detail::DeviceGuard guard(input);
  const Tensor x = contiguous_or_self(input);
  Tensor y = cuda_detail::new_output(input, {s.batch, s.channels, s.out_h, s.out_w});
  Tensor indices = cuda_detail::new_output(input, {s.batch, s.channels, s.out_h, s.out_w}, ScalarType::Long);
  const int64_t total = y.numel();
  if (total == 0) return {in_layout_of(input, y), in_layout_of(input, indices)};
  const PoolParams p = make_pool_params(op, s.in_h, s.in_w, s.out_h, s.out_w, kernel_size, stride, padding, dilation);
  const cuda_detail::Stream stream = cuda_detail::current_stream(input);
  CUCONV_DISPATCH_FLOATING_AND_INTEGER(input.scalar_type(), "max_pool2d_forward_cuda", [&] {
    cuda_detail::launch(max_pool_forward_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0, stream,
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
        indices.mutable_data_ptr<int64_t>(), p, total);
  });
  return {in_layout_of(input, y), in_layout_of(input, indices)};
}

Tensor max_pool2d_backward_cuda(const Tensor& grad_output, const Tensor& indices,
                                    IntArrayRef input_size, IntArrayRef kernel_size,
                                    IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                    bool ceil_mode) {
  const char* op = "cuconv.max_pool2d_backward";
  const auto s = check_max_pool2d_backward(op, grad_output, indices, input_size, kernel_size,
                                                    stride, padding, dilation, ceil_mode);
  cuda_detail::DeviceGuard guard(grad_output);
  const Tensor dy = contiguous_or_self(grad_output);
  const Tensor idx = contiguous_or_self(indices);
  // Every element is written by the gather kernel, so no zero fill is needed.
  Tensor dx = cuda_detail::new_output(grad_output, input_size);
  const int64_t total = dx.numel();
  if (total == 0) return in_layout_of(grad_output, dx);
  const PoolParams p = make_pool_params(op, s.in_h, s.in_w, s.out_h, s.out_w, kernel_size, stride, padding, dilation);
  const cuda_detail::Stream stream = cuda_detail::current_stream(grad_output);
  const Tensor strays = zeros_like_with(idx, {1}, ScalarType::Int);
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "max_pool2d_backward_cuda", [&] {
    cuda_detail::launch(max_pool_backward_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0, stream,
        dy.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
        dx.mutable_data_ptr<scalar_t>(), p, total);
    const int64_t outputs = idx.numel(), planes = s.batch * s.channels;
    cuda_detail::launch(max_pool_find_strays_kernel, grid_stride_blocks(outputs), kThreadsPerBlock, 0, stream,
                        idx.const_data_ptr<int64_t>(), strays.mutable_data_ptr<int>(), p, outputs);
    cuda_detail::launch(max_pool_add_strays_kernel<scalar_t>, grid_stride_blocks(planes), kThreadsPerBlock, 0, stream,
                        dy.const_data_ptr<scalar_t>(), idx.const_data_ptr<int64_t>(),
                        dx.mutable_data_ptr<scalar_t>(), strays.const_data_ptr<int>(), p, planes);
  });
  return in_layout_of(grad_output, dx);
}

Tensor avg_pool2d_forward_cuda(const Tensor& input, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
                                   bool count_include_pad, std::optional<int64_t> divisor_override) {
  const char* op = "cuconv.avg_pool2d";
  const auto s = check_avg_pool2d(op, input, kernel_size, stride, padding, ceil_mode, divisor_override, Integers::kNone);
  cuda_detail::DeviceGuard guard(input);
  const Tensor x = contiguous_or_self(input);
  Tensor y = cuda_detail::new_output(input, {s.batch, s.channels, s.out_h, s.out_w});
  const int64_t total = y.numel();
  if (total == 0) return in_layout_of(input, y);
  const PoolParams p = make_pool_params(op, s.in_h, s.in_w, s.out_h, s.out_w, kernel_size, stride, padding, {1, 1});
  const int64_t divisor = divisor_override.value_or(0);
  const cuda_detail::Stream stream = cuda_detail::current_stream(input);
  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "avg_pool2d_forward_cuda", [&] {
    cuda_detail::launch(avg_pool_forward_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0, stream,
        x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), p, count_include_pad,
        divisor, total);
  });
  return in_layout_of(input, y);
}

Tensor avg_pool2d_backward_cuda(const Tensor& grad_output, IntArrayRef input_size,
                                    IntArrayRef kernel_size, IntArrayRef stride,
                                    IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                    std::optional<int64_t> divisor_override) {
  const char* op = "cuconv.avg_pool2d_backward";
  const auto s = check_avg_pool2d_backward(op, grad_output, input_size, kernel_size, stride, padding,
                                                    ceil_mode, divisor_override);
  cuda_detail::DeviceGuard guard(grad_output);
  const Tensor dy = contiguous_or_self(grad_output);
  Tensor dx = cuda_detail::new_output(grad_output, input_size);  // fully written by the gather
  const int64_t total = dx.numel();
  if (total == 0) return in_layout_of(grad_output, dx);
  const PoolParams p = make_pool_params(op, s.in_h, s.in_w, s.out_h, s.out_w, kernel_size, stride, padding, {1, 1});
  const int64_t divisor = divisor_override.value_or(0);
  const cuda_detail::Stream stream = cuda_detail::current_stream(grad_output);
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "avg_pool2d_backward_cuda", [&] {
    cuda_detail::launch(avg_pool_backward_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0, stream,
        dy.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), p, count_include_pad,
        divisor, total);
  });
  return in_layout_of(grad_output, dx);
}

Tensor adaptive_avg_pool2d_forward_cuda(const Tensor& input, IntArrayRef output_size) {
  const char* op = "cuconv.adaptive_avg_pool2d";
  check_adaptive_avg_pool2d(op, input, output_size);
  cuda_detail::DeviceGuard guard(input);
  const Tensor x = contiguous_or_self(input);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = output_size[0], Wo = output_size[1];
  Tensor y = cuda_detail::new_output(input, {N, C, Ho, Wo});
  const int64_t total = y.numel();
  if (total == 0) return in_layout_of(input, y);
  const PoolParams p = make_pool_params(op, H, W, Ho, Wo, {1, 1}, {1, 1}, {0, 0}, {1, 1});
  const cuda_detail::Stream stream = cuda_detail::current_stream(input);
  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "adaptive_avg_pool2d_forward_cuda", [&] {
    if (Ho == 1 && Wo == 1) {
      constexpr int kWarpsPerBlock = kThreadsPerBlock / 32;
      const unsigned int blocks = grid_stride_blocks(total, kWarpsPerBlock);
      cuda_detail::launch(global_avg_pool_forward_kernel<scalar_t>, blocks, kThreadsPerBlock, 0, stream,
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), p.in_plane, total);
    } else {
      cuda_detail::launch(adaptive_avg_pool_forward_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0, stream,
          x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(), p, total);
    }
  });
  return in_layout_of(input, y);
}

Tensor adaptive_avg_pool2d_backward_cuda(const Tensor& grad_output, IntArrayRef input_size) {
  const char* op = "cuconv.adaptive_avg_pool2d_backward";
  check_adaptive_backward(op, grad_output.sizes(), input_size);
  cuda_detail::DeviceGuard guard(grad_output);
  const Tensor dy = contiguous_or_self(grad_output);
  const int64_t H = input_size[2], W = input_size[3];
  const int64_t Ho = dy.size(2), Wo = dy.size(3);
  Tensor dx = cuda_detail::new_output(grad_output, input_size);  // fully written by the gather
  const int64_t total = dx.numel();
  if (total == 0) return in_layout_of(grad_output, dx);
  const PoolParams p = make_pool_params(op, H, W, Ho, Wo, {1, 1}, {1, 1}, {0, 0}, {1, 1});
  const cuda_detail::Stream stream = cuda_detail::current_stream(grad_output);
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "adaptive_avg_pool2d_backward_cuda", [&] {
    if (Ho == 1 && Wo == 1) {
      cuda_detail::launch(global_avg_pool_backward_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0, stream,
          dy.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), p.in_plane, total);
    } else {
      // With Ho or Wo == 0 no output covers any pixel and the gather writes zeros.
      cuda_detail::launch(adaptive_avg_pool_backward_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0, stream,
          dy.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), p, total);
    }
  });
  return in_layout_of(grad_output, dx);
}

}  // namespace cuconv
