#pragma once
// Helpers shared by cuconv's CUDA kernels (conv2d.cu, pool2d.cu):
// ceil-div, grid sizing for grid-stride loops, the 32-bit index check and a warp-level sum.
// Every entry function also takes a cuda_detail::DeviceGuard on its tensor's device and
// launches through cuda_detail::launch on cuda_detail::current_stream(), which checks each
// launch (device.cuh); none of them synchronises with the host.

#include <algorithm>
#include <cstdint>
#include <limits>

#include "device.cuh"
#include "intrinsics.cuh"

namespace cuconv {
namespace cuda_detail {

constexpr int kThreadsPerBlock = 256;

template <typename T>
__host__ __device__ __forceinline__ constexpr T ceil_div(T a, T b) {
  return (a + b - 1) / b;
}

// Blocks for a grid-stride loop over `count` items: one item per thread, capped
// (the loop covers the rest) and at least one block.
inline unsigned int grid_stride_blocks(int64_t count, int threads = kThreadsPerBlock) {
  const int64_t blocks = ceil_div<int64_t>(count, threads);
  return static_cast<unsigned int>(std::clamp<int64_t>(blocks, 1, int64_t{1} << 20));
}

// The kernels index within one sample (or one plane) with 32-bit ints. Values
// must stay below 2^31 with room for a tile or a grid stride of overshoot.
constexpr int64_t kMaxInt32Index = std::numeric_limits<int32_t>::max() - (int64_t{1} << 20);

inline void check_int32_index(const char* op, const char* what, int64_t value) {
  CUCONV_CHECK(value >= 0 && value <= kMaxInt32Index, op, ": ", what, " = ", value,
              " is too large for the CUDA kernels' 32-bit indexing (at most ", kMaxInt32Index,
              ")");
}

// Sum over the 32 lanes of a warp; every lane must call it, every lane gets the total.
template <typename T>
__device__ __forceinline__ T warp_sum(T value) {
#pragma unroll
  for (int offset = 16; offset > 0; offset /= 2) value += shfl_xor(value, offset);
  return value;
}

}  // namespace cuda_detail
}  // namespace cuconv

// Grid-stride loop over [0, total) with a 64-bit index.
#define CUCONV_KERNEL_LOOP(index, total)                                                     \
  for (int64_t index = static_cast<int64_t>(blockIdx.x) * blockDim.x + threadIdx.x;          \
       index < (total); index += static_cast<int64_t>(blockDim.x) * gridDim.x)
