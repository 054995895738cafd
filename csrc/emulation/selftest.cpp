// Kernels with deliberate bugs, to prove that the emulated device catches each kind
// (tests/test_emulation.py). Written as CUDA kernels against csrc/cuda's helpers, like the
// real ones; only the emulated build compiles them, as the op
// cuconv_emulated::selftest(str bug, Tensor x) -> Tensor, x a float32 vector of 256 values:
//
//   none          y[t] = x[t] + x[(t + 1) % 256] through shared memory, with the barrier
//   race          the same without the barrier between the write and the read
//   overrun       reads x[256], one element past the end
//   unwritten     leaves y[255] unwritten
//   grid          launches a grid of 70000 blocks in y (more than 65535)
//   block         launches 2048 threads per block
//   shared        declares 64 KiB of static shared memory
//   exit-barrier  thread 255 returns before a __syncthreads() the others reach
//   shfl-exited   lanes 0..15 return, lanes 16..31 shuffle with the whole warp

#include <torch/csrc/stable/library.h>

#include <cstring>
#include <string>

#include "../cuda/launch.cuh"

namespace cuconv {
namespace {

constexpr int kCount = 256;

template <bool kBarrier, bool kOverrun, bool kUnwritten>
__global__ void neighbour_sum_kernel(const float* __restrict__ x, float* __restrict__ y) {
  CUCONV_SHARED(values, float[kCount]);
  const int t = threadIdx.x;
  values[t] = x[kOverrun && t == kCount - 1 ? kCount : t];
  if (kBarrier) __syncthreads();  // every value is in shared memory before its neighbour reads it
  if (kUnwritten && t == kCount - 1) return;
  y[t] = values[t] + values[(t + 1) % kCount];
}

__global__ void big_shared_kernel(const float* __restrict__ x, float* __restrict__ y) {
  CUCONV_SHARED(values, float[16384]);  // 64 KiB
  values[threadIdx.x] = x[threadIdx.x];
  __syncthreads();
  y[threadIdx.x] = values[threadIdx.x];
}

__global__ void exit_before_barrier_kernel(const float* __restrict__ x, float* __restrict__ y) {
  if (threadIdx.x == kCount - 1) return;
  __syncthreads();
  y[threadIdx.x] = x[threadIdx.x];
}

__global__ void shuffle_with_exited_lanes_kernel(const float* __restrict__ x, float* __restrict__ y) {
  if (threadIdx.x % 32 < 16) return;
  y[threadIdx.x] = cuda_detail::shfl_xor(x[threadIdx.x], 1);
}

Tensor selftest(std::string bug, const Tensor& x) {
  CUCONV_CHECK(x.scalar_type() == ScalarType::Float && x.dim() == 1 && x.numel() == kCount && x.is_contiguous(),
               "selftest: expected a contiguous float32 vector of ", kCount, " values");
  Tensor y = cuda_detail::new_output(x, {kCount});
  const float* in = x.const_data_ptr<float>();
  float* out = y.mutable_data_ptr<float>();
  const auto stream = cuda_detail::current_stream(x);
  if (bug == "none") {
    cuda_detail::launch(neighbour_sum_kernel<true, false, false>, 1, kCount, 0, stream, in, out);
  } else if (bug == "race") {
    cuda_detail::launch(neighbour_sum_kernel<false, false, false>, 1, kCount, 0, stream, in, out);
  } else if (bug == "overrun") {
    cuda_detail::launch(neighbour_sum_kernel<true, true, false>, 1, kCount, 0, stream, in, out);
  } else if (bug == "unwritten") {
    cuda_detail::launch(neighbour_sum_kernel<true, false, true>, 1, kCount, 0, stream, in, out);
  } else if (bug == "grid") {
    cuda_detail::launch(neighbour_sum_kernel<true, false, false>, dim3(1, 70000), kCount, 0, stream, in, out);
  } else if (bug == "block") {
    cuda_detail::launch(neighbour_sum_kernel<true, false, false>, 1, 2048, 0, stream, in, out);
  } else if (bug == "shared") {
    cuda_detail::launch(big_shared_kernel, 1, kCount, 0, stream, in, out);
  } else if (bug == "exit-barrier") {
    cuda_detail::launch(exit_before_barrier_kernel, 1, kCount, 0, stream, in, out);
  } else if (bug == "shfl-exited") {
    cuda_detail::launch(shuffle_with_exited_lanes_kernel, 1, kCount, 0, stream, in, out);
  } else {
    CUCONV_CHECK_VALUE(false, "selftest: unknown bug '", bug, "'");
  }
  return y;
}

}  // namespace
}  // namespace cuconv

STABLE_TORCH_LIBRARY_FRAGMENT(cuconv_emulated, m) { m.def("selftest(str bug, Tensor x) -> Tensor"); }
STABLE_TORCH_LIBRARY_IMPL(cuconv_emulated, CPU, m) { m.impl("selftest", TORCH_BOX(&cuconv::selftest)); }
