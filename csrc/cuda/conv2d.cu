// 2-D convolution (cross-correlation) on CUDA: implicit GEMM, no im2col buffer.
//
// Notation (all tensors NCHW-contiguous): x [N, C_in, H, W], w [C_out, C_g, kH, kW],
// y [N, C_out, Ho, Wo]; G groups of C_g = C_in/G input and O_g = C_out/G output
// channels. Output pixel (oh, ow) and kernel tap (i, j) read input pixel
//     ih = oh*sH - pH + i*dH,   iw = ow*sW - pW + j*dW       (zero outside [0,H) x [0,W)).
//
// Each pass is, per group g, a matrix product C[M, Ncol] = A[M, K] B[K, Ncol] whose
// operands are read straight from the tensors by the index math below:
//
//   forward          rows m = (n, oh, ow)  M = N*Ho*Wo   cols o        K = C_g*kH*kW, k = (c, i, j)
//                    A[m, k] = x[n, g*C_g + c, ih, iw]   B[k, o] = w[g*O_g + o, c, i, j]
//                    y[n, g*O_g + o, oh, ow] = C[m, o] + bias[g*O_g + o]
//   backward input   rows m = (n, ih, iw)  M = N*H*W     cols c        K = O_g*kH*kW, k = (o, i, j)
//                    A[m, k] = dy[n, g*O_g + o, oh, ow] where oh = (ih + pH - i*dH) / sH and
//                              ow = (iw + pW - j*dW) / sW divide exactly and lie in range, else 0
//                    B[k, c] = w[g*O_g + o, c, i, j]      dx[n, g*C_g + c, ih, iw] = C[m, c]
//   backward weight  rows o                M = O_g       cols (c,i,j)  K = N*Ho*Wo, k = (n, oh, ow)
//                    A[o, k] = dy[n, g*O_g + o, oh, ow]   B[k, (c,i,j)] = x[n, g*C_g + c, ih, iw]
//                    K is split into S slices (split-K) written to partial[S, C_out, C_g*kH*kW],
//                    then summed in a fixed order: deterministic, no atomics.
//
// The kernels, one file per family, each with its tiling at the top:
//   gemm_simple.cu   the simple implicit GEMM: every pass, shape and dtype (the oracle and fallback)
//   gemm_tensor_core.cu  NHWC implicit GEMM on the tensor cores: float16, bfloat16, TF32
//   gemm_simt.cu     float32 on the CUDA cores: all three passes (the input gradient by stride phase)
//   depthwise.cu     direct kernels for one input channel per group (depthwise convolutions)
// The entry points below check the arguments (shape.h, as the CPU kernels do) and choose a
// family among those that can run the call: by rule, or (torch.backends.cudnn.benchmark, or
// CUCONV_CUDA_TUNE=1) by measurement the first time a shape is seen (tuning/measured_choice.h),
// each family making its operands contiguous as it needs them. Split reductions (the weight and bias gradients)
// write opmath-typed partial slices summed in a fixed order by sum_partials_kernel, so every
// pass is deterministic (no atomics, whatever torch.use_deterministic_algorithms says).

#include <algorithm>
#include <cstdio>
#include <string>
#include <vector>

#include "../ops.h"
#include "../tuning/measured_choice.h"
#include "conv2d_common.cuh"

namespace cuconv {
namespace conv_cuda {
namespace {

using cuda_detail::grid_stride_blocks;
using cuda_detail::kThreadsPerBlock;

// out[e] = sum over s of partial[s, e]. A block takes 32 consecutive elements at a time (a
// warp's lanes: coalesced loads) and its W = blockDim.x / 32 warps (W = min(8, splits)) the
// slices: warp w sums s = w, w + W, w + 2W, ... in that order, then warp 0 adds the W sums in warp
// order. A fixed order (deterministic), and each thread's chain is splits / W loads long: a small
// weight gradient's 2,400 elements in 64 slices were 10 blocks of 64 loads in sequence a thread.
constexpr int kMostSliceWarps = 8;
template <typename scalar_t, typename acc_t>
__global__ void __launch_bounds__(32 * kMostSliceWarps)
    sum_partials_kernel(const acc_t* __restrict__ partial, scalar_t* __restrict__ out, int64_t count, int splits) {
  CUCONV_SHARED(sums, acc_t[kMostSliceWarps][32]);
  const int lane = threadIdx.x % 32, warp = threadIdx.x / 32, warps = blockDim.x / 32;
  for (int64_t first = static_cast<int64_t>(blockIdx.x) * 32; first < count; first += static_cast<int64_t>(gridDim.x) * 32) {
    const int64_t e = first + lane;
    acc_t sum = 0;
    if (e < count)
      for (int s = warp; s < splits; s += warps) sum += partial[s * count + e];
    sums[warp][lane] = sum;
    __syncthreads();  // every warp's sums are in shared memory
    if (warp == 0 && e < count) {
      acc_t total = sums[0][lane];
      for (int w = 1; w < warps; ++w) total += sums[w][lane];
      out[e] = static_cast<scalar_t>(total);
    }
    __syncthreads();  // read before the next elements' sums overwrite them
  }
}

// partial[split, o] = sum of dy[n, o, p] over this split's share of the N*Ho*Wo (n, p)
// positions: split s, thread t takes positions s*blockDim + t, stepping by splits*blockDim.
template <typename scalar_t>
__global__ void __launch_bounds__(kReduceThreads)
    bias_grad_kernel(const scalar_t* __restrict__ grad_output, opmath_t<scalar_t>* __restrict__ partial,
                     int channels, int plane, int positions, int64_t sample_stride) {
  using acc_t = opmath_t<scalar_t>;
  const int o = blockIdx.x, split = blockIdx.y;
  const int first = split * kReduceThreads + threadIdx.x;
  const int stride = gridDim.y * kReduceThreads;
  MixedRadix position = MixedRadix::split(first, 1, plane);  // (n, -, p)
  const MixedRadix step = MixedRadix::split(stride, 1, plane);
  const scalar_t* channel = grad_output + static_cast<int64_t>(o) * plane;
  acc_t sum = 0;
  for (int q = first; q < positions; q += stride) {
    sum += static_cast<acc_t>(channel[position.outer * sample_stride + position.inner]);
    position.advance(step, 1, plane);
  }
  sum = block_sum(sum);
  if (threadIdx.x == 0) partial[static_cast<int64_t>(split) * channels + o] = sum;
}
}  // namespace

// How many slices to split a reduction into: enough blocks for ~4 per SM (at least `min_work`
// items a slice, at most 256 slices), and more where a slice would exceed `max_work` items, as
// far as 2^24 partial values and 1024 slices allow. Each slice's sum is one chain of float
// additions whose rounding error grows with its length; the slices are then summed in a fixed
// order (sum_partials_kernel). (On an H200, a 6.4M-product weight gradient: 5.3e-6 of its largest
// value from float64 in 64 slices, 1.9e-6 in slices of 4,096, and 15% faster, as more blocks kept
// the GPU busy: benchmarks/RESULTS.md, 2026-12-04. The cap for filling the GPU was 64 slices then,
// which left a reduction of one or two tiles (a first layer's weight gradient as a GEMM) 64-128
// blocks on 132 SMs; 256 since, the slices' final sum being shared by 8 warps a block.)
int reduction_splits(int64_t blocks_per_split, int64_t work, int64_t min_work, int64_t max_work,
                     int64_t partial_per_split, int64_t max_z, int sm_count) {
  const int64_t wanted = ceil_div<int64_t>(4 * static_cast<int64_t>(sm_count), std::max<int64_t>(blocks_per_split, 1));
  const int64_t by_work = std::max<int64_t>(1, work / std::max<int64_t>(min_work, 1));
  const int64_t by_chain = ceil_div<int64_t>(work, std::max<int64_t>(max_work, 1));
  const int64_t by_memory = std::max<int64_t>(1, (int64_t{1} << 24) / std::max<int64_t>(partial_per_split, 1));
  const int64_t splits = std::max(std::min({wanted, by_work, int64_t{256}}), by_chain);
  const int chosen = static_cast<int>(std::clamp<int64_t>(std::min({splits, by_memory, max_z, int64_t{1024}}), 1, 1024));
  last_kernels().splits = chosen;
  return chosen;
}

std::atomic<KernelChoice>& kernel_choice() {
  static std::atomic<KernelChoice> choice{KernelChoice::kFastest};
  return choice;
}

LastKernels& last_kernels() {
  static LastKernels last;
  return last;
}

int split_k_slices(int64_t blocks, int64_t k_steps, int64_t out_numel, int sm_count, int blocks_per_sm) {
  const int64_t two_waves = 2 * static_cast<int64_t>(sm_count) * blocks_per_sm;
  if (blocks >= two_waves || blocks == 0) return 1;
  const int64_t wanted = ceil_div<int64_t>(two_waves, blocks);
  const int64_t by_steps = k_steps / 4;
  const int64_t by_memory = (int64_t{1} << 25) / std::max<int64_t>(out_numel, 1);
  return static_cast<int>(std::clamp<int64_t>(std::min({wanted, by_steps, by_memory, int64_t{16}}), 1, 16));
}

Tensor partial_buffer(const Tensor& out, int splits) {
  const ScalarType dtype = out.scalar_type();
  const ScalarType opmath = dtype == ScalarType::Double ? ScalarType::Double : ScalarType::Float;
  if (splits == 1 && dtype == opmath) return out;
  return cuda_detail::new_output(out, {splits, out.numel()}, opmath);
}

void finish_partials(const Tensor& partial, Tensor& out, int splits, cuda_detail::Stream stream) {
  if (partial.data_ptr() == out.data_ptr()) return;
  const int64_t count = out.numel();
  CUCONV_DISPATCH_FLOATING(out.scalar_type(), "finish_partials", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int warps = std::clamp(splits, 1, kMostSliceWarps);
    cuda_detail::launch(sum_partials_kernel<scalar_t, acc_t>, grid_stride_blocks(count, 32), 32 * warps, 0, stream,
        partial.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), count, splits);
  });
}

KSlices k_slices(PhaseSplits* phases, const Tensor& out, int wanted) {
  KSlices slices;
  if (phases != nullptr) {
    if (phases->splits == 0) {
      phases->splits = std::max(wanted, 1);
      if (phases->splits > 1) {
        phases->partial = cuda_detail::new_output(out, {phases->splits, out.numel()}, ScalarType::Float);
        torch::stable::fill_(phases->partial, 0.0);  // (a phase writes only its own positions)
      }
    }
    slices.count = phases->splits;
    if (slices.count > 1) slices.partial = phases->partial.mutable_data_ptr<float>();
  } else if (wanted > 1) {
    slices.count = wanted;
    slices.own = cuda_detail::new_output(out, {wanted, out.numel()}, ScalarType::Float);
    slices.partial = slices.own.mutable_data_ptr<float>();
  }
  last_kernels().splits = slices.count;
  return slices;
}

}  // namespace conv_cuda

// ---------------------------------------------------------------------------
// Entry points: the checks and output shapes of cpu/conv2d.cpp, then the choice (by rule, or
// measured) among the kernel families that can run the call.

using conv_cuda::ConvCall;
using conv_cuda::ConvParams;
using conv_cuda::make_conv_params;

namespace {
bool fastest() { return conv_cuda::kernel_choice() == conv_cuda::KernelChoice::kFastest; }

// By rule, one input channel a group runs on the depthwise kernels, except the
// float32 forward pass of a layer with at least 32 output channels a group and 16 taps (ResNet's
// 7x7 stem: 64 and 49): a GEMM with K = the taps that fills most of the float32 GEMM's tiles (the
// stem: 49 of K's 64, all 64 columns, 18 tiles a sample). The depthwise forward re-reads every
// output's window from the L1 cache: on an H200 the stem's ran at 6% of the FP32 peak, 3.9x
// cuDNN's time (benchmarks/RESULTS.md, 2026-12-04). For the weight gradient the rule keeps the
// depthwise kernels: as a GEMM it is one tile of 49 of 128 columns (a measured candidate,
// cudnn.benchmark). (The input gradient's GEMM would have one column, C_g: not a candidate.)
bool forward_rule_is_the_gemm(const ConvParams& p) { return p.out_per_group >= 32 && p.taps >= 16; }

const char* dtype_name(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    case ScalarType::BFloat16: return "bfloat16";
    default: return "other";
  }
}

const char* layout_name(const Tensor& t) {
  return is_channels_last(t) ? "channels_last" : t.is_contiguous() ? "nchw" : "strided";
}

// The measured choice's key: everything the families' speed depends on (the pass's two operands
// a and b: their layouts decide which copies a family makes).
std::string tuning_key(const char* pass, const ConvCall& call, const Tensor& a, const Tensor& b, bool bias,
                       bool allow_tf32) {
  const ConvParams& p = call.p;
  char key[448];
  std::snprintf(key, sizeof key,
                "%s %s%s%s layouts=%s,%s N=%d C=%d H=%d W=%d O=%d k=%dx%d s=%dx%d p=%dx%d d=%dx%d groups=%d gpu=%s",
                pass, dtype_name(a.scalar_type()), allow_tf32 && a.scalar_type() == ScalarType::Float ? " tf32" : "",
                bias ? " bias" : "", layout_name(a), layout_name(b), p.batch, p.in_channels, p.in_h, p.in_w,
                p.out_channels, p.kernel_h, p.kernel_w, p.stride_h, p.stride_w, p.pad_h, p.pad_w, p.dilation_h,
                p.dilation_w, call.groups, cuda_detail::device_name(a).c_str());
  return key;
}

// Runs one of `candidates` (each computes the whole result; candidates[0] is the rule's choice)
// and records its name in `ran` (last_kernels()). The rule decides unless `benchmark` (torch's
// cudnn.benchmark, passed by cuconv.functional; off by default: the same family, so the same bits,
// in every run); CUCONV_CUDA_TUNE=1 / 0, where set, overrides it. Measuring, with more than one
// candidate, the first call of each key measures them
// (tuning/measured_choice.h), waiting for the stream before and after each timed run; while the
// stream captures a CUDA graph (when nothing may wait for it) a recorded choice or the rule
// decides, unmeasured.
void run_chosen(const char* pass, const ConvCall& call, const Tensor& a, const Tensor& b, bool bias, bool allow_tf32,
                bool benchmark, const std::vector<Candidate>& candidates, std::atomic<const char*>& ran) {
  size_t chosen = 0;
  if (candidates.size() == 1 || !env_flag("CUCONV_CUDA_TUNE", benchmark)) {
    candidates[0].run();
  } else if (cuda_detail::capturing(call.stream)) {
    chosen = run_recorded_or_first(tuning_key(pass, call, a, b, bias, allow_tf32), candidates);
  } else {
    chosen = run_tuned(tuning_key(pass, call, a, b, bias, allow_tf32), candidates,
                       [&] { cuda_detail::synchronize(call.stream); });
  }
  ran = candidates[chosen].name;
}

// Runs `family` on contiguous NCHW operands (every family but the tensor cores' computes so),
// copying the result (of `sizes`) into `result` where that is channels_last.
template <typename Family>
void in_nchw(const Tensor& a, const Tensor& b, Tensor& result, IntArrayRef sizes, Family family) {
  const Tensor a_nchw = contiguous_or_self(a), b_nchw = contiguous_or_self(b);
  Tensor out = result.is_contiguous() ? result : cuda_detail::new_output(a, sizes);
  family(a_nchw, b_nchw, out);
  if (!result.is_contiguous()) torch::stable::copy_(result, out);
}
}  // namespace

// The tensor-core family reads NCHW or channels_last as it comes and writes the output in the
// input's layout; the others compute in contiguous NCHW (in_nchw). The families each pass may
// choose from, the rule's first:
//   one input channel a group  forward: depthwise, simt (float32; first where forward_rule_is_the_gemm)
//                              input gradient: depthwise    weight gradient: depthwise, simt (float32)
//   otherwise                  tensor_core (16-bit types, float32 with allow_tf32), simt (float32);
//                              simple where neither takes it, and everywhere under kernels("simple")

Tensor conv2d_forward_cuda(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                           IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                           bool allow_tf32, bool benchmark) {
  const char* op = "cuconv.conv2d";
  const auto shape = check_conv2d(op, input, weight, bias, stride, padding, dilation, groups, Integers::kNone);
  cuda_detail::DeviceGuard guard(input);
  const std::vector<int64_t> sizes{shape.batch, shape.out_channels, shape.out_h, shape.out_w};
  Tensor y = cuda_detail::new_output(input, sizes, std::nullopt, is_channels_last(input));
  if (y.numel() == 0) return y;
  const ConvCall call{make_conv_params(op, shape, stride, padding, dilation), static_cast<int>(groups),
                      cuda_detail::current_stream(input), cuda_detail::multiprocessor_count(input)};
  std::optional<Tensor> b;
  if (bias.has_value() && bias->defined()) b = contiguous_or_self(*bias);
  const ConvParams& p = call.p;
  const ScalarType dtype = input.scalar_type();
  auto nchw = [&](const char* name, auto family) {
    return Candidate{name, [&, family] {
      in_nchw(input, weight, y, sizes, [&](const Tensor& x, const Tensor& w, Tensor& out) { family(call, x, w, b, out); });
    }};
  };
  std::vector<Candidate> candidates;
  if (p.in_per_group == 1) {
    candidates = {nchw("depthwise", conv_cuda::depthwise::forward)};
    if (fastest() && dtype == ScalarType::Float)
      candidates.insert(forward_rule_is_the_gemm(p) ? candidates.begin() : candidates.end(),
                        nchw("simt", conv_cuda::simt::forward));
  } else if (fastest()) {
    if (conv_cuda::tensor_core::takes_forward(p, dtype, allow_tf32))
      candidates.push_back({"tensor_core", [&] { conv_cuda::tensor_core::forward(call, input, weight, b, y, allow_tf32); }});
    if (dtype == ScalarType::Float) candidates.push_back(nchw("simt", conv_cuda::simt::forward));
  }
  if (candidates.empty()) candidates = {nchw("simple", conv_cuda::simple::forward)};
  run_chosen("conv2d_forward", call, input, weight, b.has_value(), allow_tf32, benchmark, candidates,
             conv_cuda::last_kernels().forward);
  return y;
}

Tensor conv2d_backward_input_cuda(const Tensor& grad_output, const Tensor& weight, IntArrayRef input_size,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                  bool allow_tf32, bool benchmark) {
  const char* op = "cuconv.conv2d_backward_input";
  const auto shape = check_conv2d_backward_input(op, grad_output, weight, input_size, stride, padding, dilation, groups);
  cuda_detail::DeviceGuard guard(grad_output);
  // Every element is written (pixels no output sees get 0), so no zero fill is needed.
  Tensor dx = cuda_detail::new_output(grad_output, input_size, std::nullopt, is_channels_last(grad_output));
  if (dx.numel() == 0) return dx;
  const ConvCall call{make_conv_params(op, shape, stride, padding, dilation), static_cast<int>(groups),
                      cuda_detail::current_stream(grad_output), cuda_detail::multiprocessor_count(grad_output)};
  const ConvParams& p = call.p;
  const ScalarType dtype = grad_output.scalar_type();
  auto nchw = [&](const char* name, auto family) {
    return Candidate{name, [&, family] {
      in_nchw(grad_output, weight, dx, input_size,
              [&](const Tensor& dy, const Tensor& w, Tensor& out) { family(call, dy, w, out); });
    }};
  };
  std::vector<Candidate> candidates;
  if (p.in_per_group == 1) {
    candidates = {nchw("depthwise", conv_cuda::depthwise::backward_input)};
  } else if (fastest()) {
    if (conv_cuda::tensor_core::takes_backward_input(p, dtype, allow_tf32))
      candidates.push_back({"tensor_core", [&] { conv_cuda::tensor_core::backward_input(call, grad_output, weight, dx, allow_tf32); }});
    if (dtype == ScalarType::Float) candidates.push_back(nchw("simt", conv_cuda::simt::backward_input));
  }
  if (candidates.empty()) candidates = {nchw("simple", conv_cuda::simple::backward_input)};
  run_chosen("conv2d_backward_input", call, grad_output, weight, false, allow_tf32, benchmark, candidates,
             conv_cuda::last_kernels().backward_input);
  return dx;
}

Tensor conv2d_backward_weight_cuda(const Tensor& grad_output, const Tensor& input, IntArrayRef weight_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                   bool allow_tf32, bool benchmark) {
  const char* op = "cuconv.conv2d_backward_weight";
  const auto shape = check_conv2d_backward_weight(op, grad_output, input, weight_size, stride, padding, dilation, groups);
  cuda_detail::DeviceGuard guard(grad_output);
  Tensor dw = cuda_detail::new_output(grad_output, weight_size);
  if (dw.numel() == 0) return dw;
  const ConvCall call{make_conv_params(op, shape, stride, padding, dilation), static_cast<int>(groups),
                      cuda_detail::current_stream(grad_output), cuda_detail::multiprocessor_count(grad_output)};
  const ConvParams& p = call.p;
  const ScalarType dtype = grad_output.scalar_type();
  auto nchw = [&](const char* name, auto family) {  // (dw is contiguous: in_nchw copies nothing back)
    return Candidate{name, [&, family] {
      in_nchw(grad_output, input, dw, weight_size,
              [&](const Tensor& dy, const Tensor& x, Tensor& out) { family(call, dy, x, out); });
    }};
  };
  std::vector<Candidate> candidates;
  if (p.in_per_group == 1) {
    candidates = {nchw("depthwise", conv_cuda::depthwise::backward_weight)};
    if (fastest() && dtype == ScalarType::Float) candidates.push_back(nchw("simt", conv_cuda::simt::backward_weight));
  } else if (fastest()) {
    if (conv_cuda::tensor_core::takes_backward_weight(p, dtype, allow_tf32))
      candidates.push_back({"tensor_core", [&] { conv_cuda::tensor_core::backward_weight(call, grad_output, input, dw, allow_tf32); }});
    if (dtype == ScalarType::Float) candidates.push_back(nchw("simt", conv_cuda::simt::backward_weight));
  }
  if (candidates.empty()) candidates = {nchw("simple", conv_cuda::simple::backward_weight)};
  run_chosen("conv2d_backward_weight", call, grad_output, input, false, allow_tf32, benchmark, candidates,
             conv_cuda::last_kernels().backward_weight);
  return dw;
}

Tensor conv2d_backward_bias_cuda(const Tensor& grad_output) {
  const char* op = "cuconv.conv2d_backward_bias";
  check_image_batch(op, "grad_output", grad_output.sizes());
  cuda_detail::DeviceGuard guard(grad_output);
  const int64_t N = grad_output.size(0), C = grad_output.size(1);
  const int64_t plane = grad_output.size(2) * grad_output.size(3);
  cuda_detail::check_int32_index(op, "channels * height * width", C * plane);
  cuda_detail::check_int32_index(op, "batch * height * width", N * plane);
  Tensor db = cuda_detail::new_output(grad_output, {C});
  const Tensor dy = contiguous_or_self(grad_output);
  const cuda_detail::Stream stream = cuda_detail::current_stream(grad_output);
  const int positions = static_cast<int>(N * plane);
  const int splits = conv_cuda::reduction_splits(C, positions, 16 * conv_cuda::kReduceThreads,
                                                 conv_cuda::kMaxChain * conv_cuda::kReduceThreads, C,
                                                 cuda_detail::max_grid_yz(), cuda_detail::multiprocessor_count(grad_output));
  Tensor partial = conv_cuda::partial_buffer(db, splits);
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_bias_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(splits));
    cuda_detail::launch(conv_cuda::bias_grad_kernel<scalar_t>, grid, conv_cuda::kReduceThreads, 0, stream,
        dy.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), static_cast<int>(C),
        static_cast<int>(plane), positions, C * plane);
  });
  conv_cuda::finish_partials(partial, db, splits, stream);
  return db;
}

}  // namespace cuconv
