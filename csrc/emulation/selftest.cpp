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
//
// and the matrix instructions against plain matrix products (tests/test_emulation.py):
//   selftest_mma(a, b, c, b_trans)  one warp computes a @ b + c: a [16, K] and b [K, 8] in
//       float16 / bfloat16 (K = 16: ldmatrix fragments, b through ldmatrix.trans from a row-major
//       copy when b_trans) or float32 (K = 8: tf32, fragments read as the ISA lays them out)
//   selftest_cp_async(x)  x float32 [64]: 16-byte copies of x into shared memory (the last one
//       zero-filled), read back before and after cp.async.wait_group: [before, after]

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

// One warp: D = A B + C through shared memory, ldmatrix (16-bit types) and mma.
template <typename T>
__global__ void mma_kernel(const T* __restrict__ a, const T* __restrict__ b, const float* __restrict__ c,
                           float* __restrict__ d, bool b_trans) {
  constexpr bool kTF32 = std::is_same_v<T, float>;
  constexpr int K = kTF32 ? 8 : 16;
  CUCONV_SHARED(a_tile, T[16][K]);
  CUCONV_SHARED(b_rows, T[K][8]);  // b as given: row k holds columns n = 0..7
  CUCONV_SHARED(b_cols, T[8][K]);  // b transposed: row n holds k = 0..K-1 (the "col" operand)
  const int lane = threadIdx.x, g = lane / 4, t = lane % 4;
  for (int e = lane; e < 16 * K; e += 32) a_tile[e / K][e % K] = a[e];
  for (int e = lane; e < K * 8; e += 32) {
    b_rows[e / 8][e % 8] = b[e];
    b_cols[e % 8][e / 8] = b[e];
  }
  __syncthreads();  // the tiles are complete before any lane reads its fragments
  uint32_t af[4], bf[2];
  if constexpr (kTF32) {
    const float av[4] = {a_tile[g][t], a_tile[g + 8][t], a_tile[g][t + 4], a_tile[g + 8][t + 4]};
    for (int r = 0; r < 4; ++r) af[r] = cuda_detail::to_tf32(av[r]);
    bf[0] = cuda_detail::to_tf32(b_cols[g][t]);
    bf[1] = cuda_detail::to_tf32(b_cols[g][t + 4]);
  } else {
    const int j = lane / 8, r = lane % 8;  // this lane addresses row r of matrix j
    cuda_detail::ldmatrix<4, false>(af, &a_tile[r + 8 * (j % 2)][8 * (j / 2)]);
    if (b_trans) {  // matrix j = rows k 8j .. 8j+7 of b, transposed by ldmatrix
      uint32_t bt[2];
      cuda_detail::ldmatrix<2, true>(bt, &b_rows[r + 8 * (j % 2)][0]);
      bf[0] = bt[0], bf[1] = bt[1];
    } else {  // matrix j = columns k 8j .. 8j+7 of the transposed copy
      uint32_t bt[2];
      cuda_detail::ldmatrix<2, false>(bt, &b_cols[r][8 * (j % 2)]);
      bf[0] = bt[0], bf[1] = bt[1];
    }
  }
  const float cf[4] = {c[g * 8 + 2 * t], c[g * 8 + 2 * t + 1], c[(g + 8) * 8 + 2 * t], c[(g + 8) * 8 + 2 * t + 1]};
  float df[4];
  cuda_detail::mma<T>(df, af, bf, cf);
  d[g * 8 + 2 * t] = df[0];
  d[g * 8 + 2 * t + 1] = df[1];
  d[(g + 8) * 8 + 2 * t] = df[2];
  d[(g + 8) * 8 + 2 * t + 1] = df[3];
}

Tensor selftest_mma(const Tensor& a, const Tensor& b, const Tensor& c, bool b_trans) {
  const bool tf32 = a.scalar_type() == ScalarType::Float;
  const int64_t K = tf32 ? 8 : 16;
  CUCONV_CHECK(a.dim() == 2 && a.size(0) == 16 && a.size(1) == K && b.dim() == 2 && b.size(0) == K &&
                   b.size(1) == 8 && b.scalar_type() == a.scalar_type() && c.scalar_type() == ScalarType::Float &&
                   c.numel() == 128 && a.is_contiguous() && b.is_contiguous() && c.is_contiguous(),
               "selftest_mma: expected a [16, K], b [K, 8] (K = 16 for half types, 8 for float32) and c float32 [16, 8]");
  Tensor d = cuda_detail::new_output(c, {16, 8});
  const auto stream = cuda_detail::current_stream(a);
  CUCONV_DISPATCH_FLOATING(a.scalar_type(), "selftest_mma", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      cuda_detail::launch(mma_kernel<scalar_t>, 1, 32, 0, stream, a.const_data_ptr<scalar_t>(),
                          b.const_data_ptr<scalar_t>(), c.const_data_ptr<float>(), d.mutable_data_ptr<float>(), b_trans);
    } else {
      CUCONV_CHECK(false, "selftest_mma: no mma for float64");
    }
  });
  return d;
}

// Thread i copies x[4i .. 4i+3] (16 bytes) into shared memory, the last thread zero-filled.
__global__ void cp_async_kernel(const float* __restrict__ x, float* __restrict__ before, float* __restrict__ after) {
  CUCONV_SHARED(staged, float[64]);
  const int i = threadIdx.x;
  cuda_detail::cp_async<16>(&staged[4 * i], x + 4 * i, i != 15);
  cuda_detail::cp_async_commit();
  for (int e = 0; e < 4; ++e) before[4 * i + e] = staged[4 * i + e];  // not landed yet: the poison
  cuda_detail::cp_async_wait<0>();
  for (int e = 0; e < 4; ++e) after[4 * i + e] = staged[4 * i + e];
}

std::tuple<Tensor, Tensor> selftest_cp_async(const Tensor& x) {
  CUCONV_CHECK(x.scalar_type() == ScalarType::Float && x.numel() == 64 && x.is_contiguous(),
               "selftest_cp_async: expected a contiguous float32 vector of 64 values");
  Tensor before = cuda_detail::new_output(x, {64}), after = cuda_detail::new_output(x, {64});
  cuda_detail::launch(cp_async_kernel, 1, 16, 0, cuda_detail::current_stream(x), x.const_data_ptr<float>(),
                      before.mutable_data_ptr<float>(), after.mutable_data_ptr<float>());
  return {before, after};
}

}  // namespace
}  // namespace cuconv

STABLE_TORCH_LIBRARY_FRAGMENT(cuconv_emulated, m) {
  m.def("selftest(str bug, Tensor x) -> Tensor");
  m.def("selftest_mma(Tensor a, Tensor b, Tensor c, bool b_trans) -> Tensor");
  m.def("selftest_cp_async(Tensor x) -> (Tensor, Tensor)");
}
STABLE_TORCH_LIBRARY_IMPL(cuconv_emulated, CPU, m) {
  m.impl("selftest", TORCH_BOX(&cuconv::selftest));
  m.impl("selftest_mma", TORCH_BOX(&cuconv::selftest_mma));
  m.impl("selftest_cp_async", TORCH_BOX(&cuconv::selftest_cp_async));
}
