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
//                    then summed in slice order: deterministic, no atomics.
//
// Tiling of implicit_gemm_kernel (sizes are GemmConfig template parameters):
//   a block of kThreads = (BM/TM)*(BN/TN) = 256 threads computes a BM x BN = 64 x 64 tile of C,
//   each thread a TM x TN = 4 x 4 register micro-tile; K is walked in steps of BK = 16.
//   Per step the block stages A[BM x BK] and B[BK x BN] in shared memory (k-major, so a
//   thread's TM or TN values are contiguous: one 128-bit load each). Global loads for the
//   next step are issued into registers before the FMAs of the current one and stored
//   to the other of two shared buffers afterwards (one __syncthreads() per step).
//   Which (row, k) element of a tile each thread loads is chosen per operand for
//   coalescing: "row-fastest" where consecutive rows are consecutive addresses (output or
//   input pixels), "k-fastest" where consecutive k are (weights along (c,i,j), pixels
//   along (n,oh,ow)). Loaders keep k decomposed as a mixed-radix counter stepped by BK, so
//   the K loop does no integer division. Every load and store is bounds-checked, so no
//   size needs to be a tile multiple.
//   A 1x1 kernel without padding (any stride) uses the same template with a flag that
//   reduces the index math to k = channel (kPointwise).
//   Grid: x = (m tile, n tile) with n tiles fastest, so the blocks that share an input
//   tile run together; z = (group, split).
//
// Depthwise-like convolutions (C_g == 1: groups == C_in) use direct kernels instead:
// forward and backward input give one thread per output / input element (the latter
// gathers over the outputs and taps that see its pixel), backward weight gives one
// block per (weight element, split) that reduces over N*Ho*Wo. The bias gradient is a
// block reduction per (channel, split). Split partial sums go to an opmath-typed buffer
// summed in fixed order by sum_partials_kernel, so every pass is deterministic (no atomics,
// whatever torch.use_deterministic_algorithms says).
//
// Indexing: within a sample everything is 32-bit (checked on the host); sample offsets are
// 64-bit. Half and bfloat16 are converted to float (opmath_t) on the way into shared
// memory and accumulated in float.


#include <algorithm>
#include <type_traits>

#include "../ops.h"
#include "../shape.h"
#include "launch.cuh"

namespace cuconv {
namespace {

using cuda_detail::ceil_div;
using cuda_detail::check_int32_index;
using cuda_detail::grid_stride_blocks;
using cuda_detail::kThreadsPerBlock;

// Geometry of one convolution in 32-bit ints, plus the 64-bit per-sample strides.
struct ConvParams {
  int batch, in_channels, in_h, in_w;
  int out_channels, out_h, out_w;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int in_per_group, out_per_group;  // C_g, O_g
  int in_plane, out_plane, taps;    // H*W, Ho*Wo, kH*kW
  int64_t in_sample, out_sample;    // C_in*H*W, C_out*Ho*Wo
};

ConvParams make_conv_params(const char* op, const Conv2dShape& s, IntArrayRef stride,
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
bool is_pointwise(const ConvParams& p) {
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

// ---------------------------------------------------------------------------
// The implicit-GEMM kernel and its tile configuration

template <int BlockM, int BlockN, int BlockK, int ThreadM, int ThreadN>
struct GemmConfig {
  static constexpr int kBlockM = BlockM, kBlockN = BlockN, kBlockK = BlockK;
  static constexpr int kThreadM = ThreadM, kThreadN = ThreadN;
  static constexpr int kThreads = (BlockM / ThreadM) * (BlockN / ThreadN);
  // Shared rows are padded by 4 elements: rows stay 16-byte aligned for the vector loads
  // and the k-fastest stores (16 k x 2 rows per warp) spread over 16 banks instead of 2.
  static constexpr int kPad = 4;
  static_assert(BlockM % ThreadM == 0 && BlockN % ThreadN == 0, "micro-tile must divide the tile");
  static_assert(ThreadM % 4 == 0 && ThreadN % 4 == 0, "micro-tile rows are read 4 at a time");
};
using ConvGemm = GemmConfig<64, 64, 16, 4, 4>;  // 256 threads, 4x4 outputs each

// Which (row, k) elements of a [kRows x kBK] tile thread `tid` loads (kCount of them).
// Row-fastest: consecutive threads take consecutive rows, a thread's elements are kKStride
// apart in k. Stores to the k-major shared tile are then conflict-free.
template <int kRows, int kBK, int kThreads>
struct RowFastestMap {
  static_assert(kThreads % kRows == 0 && (kRows * kBK) % kThreads == 0, "bad row-fastest map");
  static constexpr int kCount = kRows * kBK / kThreads;
  static constexpr int kKStride = kThreads / kRows;
  __device__ __forceinline__ static int row(int tid, int) { return tid % kRows; }
  __device__ __forceinline__ static int k(int tid, int e) { return tid / kRows + e * kKStride; }
};
// K-fastest: consecutive threads take consecutive k, a thread's elements are kRowStride rows apart.
template <int kRows, int kBK, int kThreads>
struct KFastestMap {
  static_assert(kThreads % kBK == 0 && (kRows * kBK) % kThreads == 0, "bad k-fastest map");
  static constexpr int kCount = kRows * kBK / kThreads;
  static constexpr int kRowStride = kThreads / kBK;
  __device__ __forceinline__ static int row(int tid, int e) { return tid / kBK + e * kRowStride; }
  __device__ __forceinline__ static int k(int tid, int) { return tid % kBK; }
};

struct GemmShape {
  int m, n, k;         // per group
  int k_per_split;     // multiple of BK
  int splits;          // blockIdx.z = (group - group_base) * splits + split
  int group_base;      // first group of this launch (grids hold at most 65535 z-blocks: max_grid_yz)
  int m_tiles, n_tiles;
};

template <typename T, int kCount>
__device__ __forceinline__ void load_fragment(const T* src, T (&dst)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; ++i) dst[i] = src[i];
}
template <int kCount>
__device__ __forceinline__ void load_fragment(const float* src, float (&dst)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; i += 4) {
    const float4 v = *reinterpret_cast<const float4*>(src + i);
    dst[i] = v.x, dst[i + 1] = v.y, dst[i + 2] = v.z, dst[i + 3] = v.w;
  }
}
template <int kCount>
__device__ __forceinline__ void load_fragment(const double* src, double (&dst)[kCount]) {
#pragma unroll
  for (int i = 0; i < kCount; i += 2) {
    const double2 v = *reinterpret_cast<const double2*>(src + i);
    dst[i] = v.x, dst[i + 1] = v.y;
  }
}

template <typename Map, int kRowsPadded, typename T>
__device__ __forceinline__ void stash(const T (&regs)[Map::kCount], T (*tile)[kRowsPadded]) {
#pragma unroll
  for (int e = 0; e < Map::kCount; ++e) tile[Map::k(threadIdx.x, e)][Map::row(threadIdx.x, e)] = regs[e];
}

// C[M, Ncol] = A[M, K] B[K, Ncol] for one (group, split) per blockIdx.z; Problem supplies
// the operand loaders (ALoader, BLoader: constructor + fetch of one BK step into registers)
// and the epilogue (output_row + store).
// Two resident blocks per SM (<= 128 registers a thread) for float accumulation; double
// accumulators need more registers than that, so one block.
template <typename Config, typename Problem>
__global__ void __launch_bounds__(Config::kThreads, sizeof(typename Problem::acc_t) == 8 ? 1 : 2)
    implicit_gemm_kernel(const Problem problem, const GemmShape shape) {
  using acc_t = typename Problem::acc_t;
  using ALoader = typename Problem::ALoader;
  using BLoader = typename Problem::BLoader;
  constexpr int BM = Config::kBlockM, BN = Config::kBlockN, BK = Config::kBlockK;
  constexpr int TM = Config::kThreadM, TN = Config::kThreadN, kPad = Config::kPad;

  // Operand tiles, k-major (tile[k][row]) so that the TM (TN) rows one thread multiplies are
  // contiguous, and double-buffered so that step t+1 is written while step t is read.
  CUCONV_SHARED(a_tile, acc_t[2][BK][BM + kPad]);
  CUCONV_SHARED(b_tile, acc_t[2][BK][BN + kPad]);

  const int tile_n = static_cast<int>(blockIdx.x % shape.n_tiles);
  const int tile_m = static_cast<int>(blockIdx.x / shape.n_tiles);
  const int group_in_launch = static_cast<int>(blockIdx.z) / shape.splits;
  const int split = static_cast<int>(blockIdx.z) - group_in_launch * shape.splits;
  const int group = shape.group_base + group_in_launch;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int k_begin = split * shape.k_per_split;
  const int k_end = min(shape.k, k_begin + shape.k_per_split);
  const int k_steps = k_end > k_begin ? ceil_div(k_end - k_begin, BK) : 0;

  ALoader a_loader(problem, shape, group, m0, k_begin);
  BLoader b_loader(problem, shape, group, n0, k_begin);
  acc_t a_regs[ALoader::Map::kCount];
  acc_t b_regs[BLoader::Map::kCount];

  // This thread's micro-tile: rows thread_m .. +TM, columns thread_n .. +TN of the block tile.
  // Consecutive threads take consecutive row groups, so a warp's stores cover 16*TM pixels.
  const int thread_m = (threadIdx.x % (BM / TM)) * TM;
  const int thread_n = (threadIdx.x / (BM / TM)) * TN;
  acc_t acc[TM][TN];
#pragma unroll
  for (int i = 0; i < TM; ++i)
#pragma unroll
    for (int j = 0; j < TN; ++j) acc[i][j] = acc_t(0);

  if (k_steps > 0) {
    a_loader.fetch(problem, k_begin, k_end, a_regs);
    b_loader.fetch(problem, k_begin, k_end, b_regs);
    stash<typename ALoader::Map>(a_regs, a_tile[0]);
    stash<typename BLoader::Map>(b_regs, b_tile[0]);
  }
  __syncthreads();  // step 0's tiles are complete before anyone reads them

  for (int step = 0; step < k_steps; ++step) {
    const int buffer = step & 1;
    const bool has_next = step + 1 < k_steps;
    if (has_next) {  // issue the next step's global loads now; they land during the FMAs
      a_loader.fetch(problem, k_begin + (step + 1) * BK, k_end, a_regs);
      b_loader.fetch(problem, k_begin + (step + 1) * BK, k_end, b_regs);
    }
#pragma unroll
    for (int kk = 0; kk < BK; ++kk) {
      acc_t a[TM], b[TN];
      load_fragment(&a_tile[buffer][kk][thread_m], a);
      load_fragment(&b_tile[buffer][kk][thread_n], b);
#pragma unroll
      for (int i = 0; i < TM; ++i)
#pragma unroll
        for (int j = 0; j < TN; ++j) acc[i][j] = fma(a[i], b[j], acc[i][j]);
    }
    if (has_next) {  // the other buffer was last read in step-1, which every thread has left
      stash<typename ALoader::Map>(a_regs, a_tile[buffer ^ 1]);
      stash<typename BLoader::Map>(b_regs, b_tile[buffer ^ 1]);
    }
    // The next step's tiles are complete, and nobody still reads this step's buffer
    // when step+1 overwrites it.
    __syncthreads();
  }

#pragma unroll
  for (int i = 0; i < TM; ++i) {
    const int m = m0 + thread_m + i;
    if (m >= shape.m) break;
    const auto row = problem.output_row(group, split, m);
#pragma unroll
    for (int j = 0; j < TN; ++j) {
      const int col = n0 + thread_n + j;
      if (col < shape.n) problem.store(row, group, col, acc[i][j]);
    }
  }
}

// ---------------------------------------------------------------------------
// Forward: A = x through the receptive fields (row-fastest: consecutive output pixels are
// consecutive addresses for stride 1), B = w as [O_g, K] rows (k-fastest: contiguous in k).

template <typename scalar_t, typename Config, bool kPointwise>
struct ForwardGemm {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* input;
  const scalar_t* weight;
  const scalar_t* bias;  // null when there is none
  scalar_t* output;
  ConvParams p;

  struct ALoader {
    using Map = RowFastestMap<Config::kBlockM, Config::kBlockK, Config::kThreads>;
    const scalar_t* sample;  // x[n, g*C_g] of this thread's output pixel; null past M
    int ih0, iw0;            // window origin oh*sH - pH, ow*sW - pW (pointwise: ih0 = pixel offset)
    MixedRadix ck[Map::kCount];  // (c, i, j) of each k this thread loads (not pointwise)
    MixedRadix step;             // BK as (c, i, j)

    __device__ __forceinline__ ALoader(const ForwardGemm& g, const GemmShape& shape, int group,
                                       int m0, int k_begin) {
      const ConvParams& p = g.p;
      const int m = m0 + Map::row(threadIdx.x, 0);
      sample = nullptr;
      ih0 = iw0 = 0;
      if (m < shape.m) {
        const int n = m / p.out_plane, pixel = m - n * p.out_plane;
        const int oh = pixel / p.out_w, ow = pixel - oh * p.out_w;
        sample = g.input + n * p.in_sample + static_cast<int64_t>(group) * p.in_per_group * p.in_plane;
        if constexpr (kPointwise) {
          ih0 = oh * p.stride_h * p.in_w + ow * p.stride_w;
        } else {
          ih0 = oh * p.stride_h - p.pad_h;
          iw0 = ow * p.stride_w - p.pad_w;
        }
      }
      if constexpr (!kPointwise) {
#pragma unroll
        for (int e = 0; e < Map::kCount; ++e)
          ck[e] = MixedRadix::split(k_begin + Map::k(threadIdx.x, e), p.kernel_h, p.kernel_w);
        step = MixedRadix::split(Config::kBlockK, p.kernel_h, p.kernel_w);
      }
    }

    __device__ __forceinline__ void fetch(const ForwardGemm& g, int k0, int k_end,
                                          acc_t (&regs)[Map::kCount]) {
      const ConvParams& p = g.p;
#pragma unroll
      for (int e = 0; e < Map::kCount; ++e) {
        const int k = k0 + Map::k(threadIdx.x, e);
        acc_t v = acc_t(0);
        if constexpr (kPointwise) {
          if (sample != nullptr && k < k_end) v = static_cast<acc_t>(sample[k * p.in_plane + ih0]);
        } else {
          const int ih = ih0 + ck[e].mid * p.dilation_h;
          const int iw = iw0 + ck[e].inner * p.dilation_w;
          if (sample != nullptr && k < k_end && static_cast<unsigned>(ih) < static_cast<unsigned>(p.in_h) &&
              static_cast<unsigned>(iw) < static_cast<unsigned>(p.in_w))
            v = static_cast<acc_t>(sample[ck[e].outer * p.in_plane + ih * p.in_w + iw]);
          ck[e].advance(step, p.kernel_h, p.kernel_w);
        }
        regs[e] = v;
      }
    }
  };

  struct BLoader {
    using Map = KFastestMap<Config::kBlockN, Config::kBlockK, Config::kThreads>;
    const scalar_t* next;  // w[g*O_g + first_o, k] of the next step's k
    int first_o;           // element e is output channel first_o + e*kRowStride

    __device__ __forceinline__ BLoader(const ForwardGemm& g, const GemmShape& shape, int group,
                                       int n0, int k_begin) {
      first_o = n0 + Map::row(threadIdx.x, 0);
      next = g.weight + static_cast<int64_t>(group * g.p.out_per_group + first_o) * shape.k + k_begin +
             Map::k(threadIdx.x, 0);
    }

    __device__ __forceinline__ void fetch(const ForwardGemm& g, int k0, int k_end,
                                          acc_t (&regs)[Map::kCount]) {
      const int row_length = g.p.in_per_group * g.p.taps;  // K
      const bool k_ok = k0 + Map::k(threadIdx.x, 0) < k_end;
#pragma unroll
      for (int e = 0; e < Map::kCount; ++e) {
        const bool ok = k_ok && first_o + e * Map::kRowStride < g.p.out_per_group;
        regs[e] = ok ? static_cast<acc_t>(next[e * Map::kRowStride * row_length]) : acc_t(0);
      }
      next += Config::kBlockK;
    }
  };

  struct OutputRow {
    scalar_t* pixel;  // y[n, g*O_g, oh, ow]
  };
  __device__ __forceinline__ OutputRow output_row(int group, int, int m) const {
    const int n = m / p.out_plane, pixel = m - n * p.out_plane;
    return {output + n * p.out_sample + static_cast<int64_t>(group) * p.out_per_group * p.out_plane + pixel};
  }
  __device__ __forceinline__ void store(const OutputRow& row, int group, int o, acc_t value) const {
    if (bias != nullptr) value += static_cast<acc_t>(bias[group * p.out_per_group + o]);
    row.pixel[o * p.out_plane] = static_cast<scalar_t>(value);
  }
};

// ---------------------------------------------------------------------------
// Backward input: A = dy through the transposed receptive fields (row-fastest over input
// pixels), B = w read as [(o, i, j), c] (k-fastest: contiguous over the taps).

template <typename scalar_t, typename Config, bool kPointwise>
struct BackwardInputGemm {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_output;
  const scalar_t* weight;
  scalar_t* grad_input;
  ConvParams p;

  struct ALoader {
    using Map = RowFastestMap<Config::kBlockM, Config::kBlockK, Config::kThreads>;
    const scalar_t* sample;  // dy[n, g*O_g] of this thread's input pixel; null past M (or,
                             // pointwise, when no output pixel sees it)
    int ihp, iwp;            // ih + pH, iw + pW (pointwise: ihp = oh*Wo + ow)
    MixedRadix oij[Map::kCount];  // (o, i, j) of each k this thread loads (not pointwise)
    MixedRadix step;

    __device__ __forceinline__ ALoader(const BackwardInputGemm& g, const GemmShape& shape,
                                       int group, int m0, int k_begin) {
      const ConvParams& p = g.p;
      const int m = m0 + Map::row(threadIdx.x, 0);
      sample = nullptr;
      ihp = iwp = 0;
      if (m < shape.m) {
        const int n = m / p.in_plane, pixel = m - n * p.in_plane;
        const int ih = pixel / p.in_w, iw = pixel - ih * p.in_w;
        const scalar_t* s =
            g.grad_output + n * p.out_sample + static_cast<int64_t>(group) * p.out_per_group * p.out_plane;
        if constexpr (kPointwise) {
          int oh = 0, ow = 0;
          if (exact_quotient(ih, p.stride_h, oh) && oh < p.out_h && exact_quotient(iw, p.stride_w, ow) &&
              ow < p.out_w) {
            sample = s;
            ihp = oh * p.out_w + ow;
          }
        } else {
          sample = s;
          ihp = ih + p.pad_h;
          iwp = iw + p.pad_w;
        }
      }
      if constexpr (!kPointwise) {
#pragma unroll
        for (int e = 0; e < Map::kCount; ++e)
          oij[e] = MixedRadix::split(k_begin + Map::k(threadIdx.x, e), p.kernel_h, p.kernel_w);
        step = MixedRadix::split(Config::kBlockK, p.kernel_h, p.kernel_w);
      }
    }

    __device__ __forceinline__ void fetch(const BackwardInputGemm& g, int k0, int k_end,
                                          acc_t (&regs)[Map::kCount]) {
      const ConvParams& p = g.p;
#pragma unroll
      for (int e = 0; e < Map::kCount; ++e) {
        const int k = k0 + Map::k(threadIdx.x, e);
        acc_t v = acc_t(0);
        if constexpr (kPointwise) {
          if (sample != nullptr && k < k_end) v = static_cast<acc_t>(sample[k * p.out_plane + ihp]);
        } else {
          int oh = 0, ow = 0;
          if (sample != nullptr && k < k_end &&
              exact_quotient(ihp - oij[e].mid * p.dilation_h, p.stride_h, oh) && oh < p.out_h &&
              exact_quotient(iwp - oij[e].inner * p.dilation_w, p.stride_w, ow) && ow < p.out_w)
            v = static_cast<acc_t>(sample[oij[e].outer * p.out_plane + oh * p.out_w + ow]);
          oij[e].advance(step, p.kernel_h, p.kernel_w);
        }
        regs[e] = v;
      }
    }
  };

  struct BLoader {
    using Map = KFastestMap<Config::kBlockN, Config::kBlockK, Config::kThreads>;
    const scalar_t* group_weight;  // w[g*O_g, first_c, 0, 0]
    int first_c;                   // element e is input channel first_c + e*kRowStride
    MixedRadix tap;                // k as (o, -, i*kW + j)
    MixedRadix step;

    __device__ __forceinline__ BLoader(const BackwardInputGemm& g, const GemmShape&, int group,
                                       int n0, int k_begin) {
      const ConvParams& p = g.p;
      first_c = n0 + Map::row(threadIdx.x, 0);
      group_weight = g.weight + (static_cast<int64_t>(group) * p.out_per_group * p.in_per_group + first_c) * p.taps;
      tap = MixedRadix::split(k_begin + Map::k(threadIdx.x, 0), 1, p.taps);
      step = MixedRadix::split(Config::kBlockK, 1, p.taps);
    }

    __device__ __forceinline__ void fetch(const BackwardInputGemm& g, int k0, int k_end,
                                          acc_t (&regs)[Map::kCount]) {
      const ConvParams& p = g.p;
      const bool k_ok = k0 + Map::k(threadIdx.x, 0) < k_end;
      const scalar_t* src = group_weight + tap.outer * p.in_per_group * p.taps + tap.inner;
#pragma unroll
      for (int e = 0; e < Map::kCount; ++e) {
        const bool in_range = k_ok && first_c + e * Map::kRowStride < p.in_per_group;
        regs[e] = in_range ? static_cast<acc_t>(src[e * Map::kRowStride * p.taps]) : acc_t(0);
      }
      tap.advance(step, 1, p.taps);
    }
  };

  struct OutputRow {
    scalar_t* pixel;  // dx[n, g*C_g, ih, iw]
  };
  __device__ __forceinline__ OutputRow output_row(int group, int, int m) const {
    const int n = m / p.in_plane, pixel = m - n * p.in_plane;
    return {grad_input + n * p.in_sample + static_cast<int64_t>(group) * p.in_per_group * p.in_plane + pixel};
  }
  __device__ __forceinline__ void store(const OutputRow& row, int, int c, acc_t value) const {
    row.pixel[c * p.in_plane] = static_cast<scalar_t>(value);
  }
};

// ---------------------------------------------------------------------------
// Backward weight: A = dy as [O_g, (n, oh, ow)], B = x through the receptive fields as
// [(n, oh, ow), (c, i, j)]; both k-fastest (consecutive k are consecutive output pixels).

template <typename scalar_t, typename Config>
struct BackwardWeightGemm {
  using acc_t = opmath_t<scalar_t>;
  const scalar_t* grad_output;
  const scalar_t* input;
  acc_t* partial;            // [splits, C_out, C_g*kH*kW]
  int64_t partial_stride;    // C_out*C_g*kH*kW, one split's slice
  ConvParams p;

  struct ALoader {
    using Map = KFastestMap<Config::kBlockM, Config::kBlockK, Config::kThreads>;
    const scalar_t* group_grad;  // dy[0, g*O_g + first_o]
    int first_o;                 // element e is output channel first_o + e*kRowStride
    MixedRadix pixel;            // k as (n, -, oh*Wo + ow)
    MixedRadix step;

    __device__ __forceinline__ ALoader(const BackwardWeightGemm& g, const GemmShape&, int group,
                                       int m0, int k_begin) {
      const ConvParams& p = g.p;
      first_o = m0 + Map::row(threadIdx.x, 0);
      group_grad = g.grad_output + static_cast<int64_t>(group * p.out_per_group + first_o) * p.out_plane;
      pixel = MixedRadix::split(k_begin + Map::k(threadIdx.x, 0), 1, p.out_plane);
      step = MixedRadix::split(Config::kBlockK, 1, p.out_plane);
    }

    __device__ __forceinline__ void fetch(const BackwardWeightGemm& g, int k0, int k_end,
                                          acc_t (&regs)[Map::kCount]) {
      const ConvParams& p = g.p;
      const bool k_ok = k0 + Map::k(threadIdx.x, 0) < k_end;
      const scalar_t* src = group_grad + pixel.outer * p.out_sample + pixel.inner;
#pragma unroll
      for (int e = 0; e < Map::kCount; ++e) {
        const bool in_range = k_ok && first_o + e * Map::kRowStride < p.out_per_group;
        regs[e] = in_range ? static_cast<acc_t>(src[e * Map::kRowStride * p.out_plane]) : acc_t(0);
      }
      pixel.advance(step, 1, p.out_plane);
    }
  };

  struct BLoader {
    using Map = KFastestMap<Config::kBlockN, Config::kBlockK, Config::kThreads>;
    const scalar_t* group_input;  // x[0, g*C_g]
    // Per element e (a fixed column (c, i, j) for the whole K loop): c*H*W (-1 past the
    // last column) and the tap's offsets i*dH - pH, j*dW - pW.
    int channel_offset[Map::kCount], row_offset[Map::kCount], col_offset[Map::kCount];
    MixedRadix pixel;  // k as (n, oh, ow)
    MixedRadix step;

    __device__ __forceinline__ BLoader(const BackwardWeightGemm& g, const GemmShape& shape,
                                       int group, int n0, int k_begin) {
      const ConvParams& p = g.p;
      group_input = g.input + static_cast<int64_t>(group) * p.in_per_group * p.in_plane;
#pragma unroll
      for (int e = 0; e < Map::kCount; ++e) {
        const int column = n0 + Map::row(threadIdx.x, e);
        const int c = column / p.taps, tap = column - c * p.taps;
        const int i = tap / p.kernel_w, j = tap - i * p.kernel_w;
        channel_offset[e] = column < shape.n ? c * p.in_plane : -1;
        row_offset[e] = i * p.dilation_h - p.pad_h;
        col_offset[e] = j * p.dilation_w - p.pad_w;
      }
      pixel = MixedRadix::split(k_begin + Map::k(threadIdx.x, 0), p.out_h, p.out_w);
      step = MixedRadix::split(Config::kBlockK, p.out_h, p.out_w);
    }

    __device__ __forceinline__ void fetch(const BackwardWeightGemm& g, int k0, int k_end,
                                          acc_t (&regs)[Map::kCount]) {
      const ConvParams& p = g.p;
      const bool k_ok = k0 + Map::k(threadIdx.x, 0) < k_end;
      const scalar_t* src = group_input + pixel.outer * p.in_sample;
      const int ih0 = pixel.mid * p.stride_h, iw0 = pixel.inner * p.stride_w;
#pragma unroll
      for (int e = 0; e < Map::kCount; ++e) {
        const int ih = ih0 + row_offset[e], iw = iw0 + col_offset[e];
        const bool in_range = k_ok && channel_offset[e] >= 0 &&
                              static_cast<unsigned>(ih) < static_cast<unsigned>(p.in_h) &&
                              static_cast<unsigned>(iw) < static_cast<unsigned>(p.in_w);
        regs[e] = in_range ? static_cast<acc_t>(src[channel_offset[e] + ih * p.in_w + iw]) : acc_t(0);
      }
      pixel.advance(step, p.out_h, p.out_w);
    }
  };

  struct OutputRow {
    acc_t* row;  // partial[split, g*O_g + o, :]
  };
  __device__ __forceinline__ OutputRow output_row(int group, int split, int o) const {
    return {partial + split * partial_stride +
            static_cast<int64_t>(group * p.out_per_group + o) * p.in_per_group * p.taps};
  }
  __device__ __forceinline__ void store(const OutputRow& row, int, int column, acc_t value) const {
    row.row[column] = value;
  }
};

template <typename Config, typename Problem>
void launch_implicit_gemm(const Problem& problem, int m, int n, int k, int groups, int splits,
                          cuda_detail::Stream stream) {
  GemmShape shape;
  shape.m = m;
  shape.n = n;
  shape.k = k;
  shape.k_per_split = ceil_div(ceil_div(std::max(k, 1), splits), Config::kBlockK) * Config::kBlockK;
  shape.splits = splits;
  shape.m_tiles = ceil_div(m, Config::kBlockM);
  shape.n_tiles = ceil_div(n, Config::kBlockN);
  const int64_t tiles = static_cast<int64_t>(shape.m_tiles) * shape.n_tiles;
  const int max_z = cuda_detail::max_grid_yz();
  CUCONV_CHECK(tiles <= cuda_detail::kMaxInt32Index && splits <= max_z,
              "cuconv: convolution too large for one launch (", tiles, " tiles x ", splits, " splits)");
  // gridDim.z is limited (65535): launch the groups in chunks of that many (group, split) pairs.
  const int groups_per_launch = std::max(1, max_z / splits);
  for (int base = 0; base < groups; base += groups_per_launch) {
    shape.group_base = base;
    const int launch_groups = std::min(groups_per_launch, groups - base);
    const dim3 grid(static_cast<unsigned int>(tiles), 1, static_cast<unsigned int>(launch_groups * splits));
    cuda_detail::launch(implicit_gemm_kernel<Config, Problem>, grid, Config::kThreads, 0, stream, problem, shape);
  }
}

// ---------------------------------------------------------------------------
// Reductions: block sums, split partials, bias gradient, depthwise weight gradient

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

// How many slices to split a reduction into so the grid fills the GPU: enough blocks for
// ~4 per SM, at least `min_work` items per slice, at most 64 slices and 2^24 partial values.
int reduction_splits(int64_t blocks_per_split, int64_t work, int64_t min_work,
                     int64_t partial_per_split, int64_t max_z, int sm_count) {
  const int64_t wanted = ceil_div<int64_t>(4 * static_cast<int64_t>(sm_count), std::max<int64_t>(blocks_per_split, 1));
  const int64_t by_work = std::max<int64_t>(1, work / std::max<int64_t>(min_work, 1));
  const int64_t by_memory = std::max<int64_t>(1, (int64_t{1} << 24) / std::max<int64_t>(partial_per_split, 1));
  return static_cast<int>(std::clamp<int64_t>(std::min({wanted, by_work, by_memory, max_z, int64_t{64}}), 1, 64));
}

// out[e] = sum over s of partial[s, e], in order s = 0, 1, ...
template <typename scalar_t, typename acc_t>
__global__ void sum_partials_kernel(const acc_t* __restrict__ partial, scalar_t* __restrict__ out,
                                    int64_t count, int splits) {
  CUCONV_KERNEL_LOOP(e, count) {
    acc_t sum = 0;
    for (int s = 0; s < splits; ++s) sum += partial[s * count + e];
    out[e] = static_cast<scalar_t>(sum);
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

// ---------------------------------------------------------------------------
// Depthwise-like convolution (C_g == 1): direct kernels

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

// dx[n, c, ih, iw] = sum over the O_g channels o of group c, taps (i, j) and the output pixel
// (oh, ow) that tap maps onto (ih, iw) of dy[n, o, oh, ow] * w[o, 0, i, j]: a gather.
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
    acc_t sum = 0;
    for (int m = 0; m < p.out_per_group; ++m) {
      const int o = c * p.out_per_group + m;
      const scalar_t* dy = grad_output + n * p.out_sample + static_cast<int64_t>(o) * p.out_plane;
      const scalar_t* w = weight + o * p.taps;
      for (int i = 0; i < p.kernel_h; ++i) {
        int oh = 0;
        const int oh_num = ih + p.pad_h - i * p.dilation_h;
        if (oh_num < 0) break;  // and for every larger i
        if (!exact_quotient(oh_num, p.stride_h, oh) || oh >= p.out_h) continue;
        for (int j = 0; j < p.kernel_w; ++j) {
          int ow = 0;
          const int ow_num = iw + p.pad_w - j * p.dilation_w;
          if (ow_num < 0) break;
          if (!exact_quotient(ow_num, p.stride_w, ow) || ow >= p.out_w) continue;
          sum += static_cast<acc_t>(dy[oh * p.out_w + ow]) * static_cast<acc_t>(w[i * p.kernel_w + j]);
        }
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

// Sums `splits` slices of `partial` into `out` (or, when out already is the only slice, nothing).
template <typename scalar_t, typename acc_t>
void finish_partials(const Tensor& partial, Tensor& out, int splits, cuda_detail::Stream stream) {
  if (partial.data_ptr() == out.data_ptr()) return;
  const int64_t count = out.numel();
  cuda_detail::launch(sum_partials_kernel<scalar_t, acc_t>, grid_stride_blocks(count), kThreadsPerBlock, 0, stream,
      partial.const_data_ptr<acc_t>(), out.mutable_data_ptr<scalar_t>(), count, splits);
}

// The buffer a split reduction writes: `out` itself when there is one split and no
// conversion, else a new [splits, out.numel()] opmath-typed buffer.
template <typename scalar_t, typename acc_t>
Tensor partial_buffer(const Tensor& out, int splits) {
  if (splits == 1 && std::is_same_v<scalar_t, acc_t>) return out;
  return cuda_detail::new_output(out, {splits, out.numel()}, scalar_type_of<acc_t>());
}

}  // namespace

// ---------------------------------------------------------------------------
// Entry points: the checks and output shapes of cpu/conv2d.cpp.

Tensor conv2d_forward_cuda(const Tensor& input, const Tensor& weight,
                               const std::optional<Tensor>& bias, IntArrayRef stride,
                               IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "cuconv.conv2d";
  const auto shape = check_conv2d(op, input, weight, bias, stride, padding, dilation, groups);
  cuda_detail::DeviceGuard guard(input);
  Tensor y = cuda_detail::new_output(input, {shape.batch, shape.out_channels, shape.out_h, shape.out_w});
  if (y.numel() == 0) return y;
  const ConvParams p = make_conv_params(op, shape, stride, padding, dilation);
  const Tensor x = contiguous_or_self(input);
  const Tensor w = contiguous_or_self(weight);
  const bool has_bias = bias.has_value() && bias->defined();
  const Tensor b = has_bias ? contiguous_or_self(*bias) : Tensor();
  const cuda_detail::Stream stream = cuda_detail::current_stream(input);

  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "conv2d_forward_cuda", [&] {
    const scalar_t* bias_data = has_bias ? b.const_data_ptr<scalar_t>() : nullptr;
    if (p.in_per_group == 1) {
      const int64_t total = y.numel();
      const unsigned int blocks = grid_stride_blocks(total);
      if (p.kernel_h == 3 && p.kernel_w == 3) {
        cuda_detail::launch(depthwise_forward_kernel<scalar_t, 3>, blocks, kThreadsPerBlock, 0, stream,
            x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data,
            y.mutable_data_ptr<scalar_t>(), p, total);
      } else {
        cuda_detail::launch(depthwise_forward_kernel<scalar_t, 0>, blocks, kThreadsPerBlock, 0, stream,
            x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data,
            y.mutable_data_ptr<scalar_t>(), p, total);
      }
      return;
    }
    const int m = p.batch * p.out_plane, n = p.out_per_group, k = p.in_per_group * p.taps;
    if (is_pointwise(p)) {
      const ForwardGemm<scalar_t, ConvGemm, true> problem{
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data,
          y.mutable_data_ptr<scalar_t>(), p};
      launch_implicit_gemm<ConvGemm>(problem, m, n, k, static_cast<int>(groups), 1, stream);
    } else {
      const ForwardGemm<scalar_t, ConvGemm, false> problem{
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data,
          y.mutable_data_ptr<scalar_t>(), p};
      launch_implicit_gemm<ConvGemm>(problem, m, n, k, static_cast<int>(groups), 1, stream);
    }
  });
  return y;
}

Tensor conv2d_backward_input_cuda(const Tensor& grad_output, const Tensor& weight,
                                      IntArrayRef input_size, IntArrayRef stride,
                                      IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "cuconv.conv2d_backward_input";
  const auto shape = check_conv2d_backward_input(op, grad_output, weight, input_size, stride,
                                                         padding, dilation, groups);
  cuda_detail::DeviceGuard guard(grad_output);
  // Every element is written (pixels no output sees get 0), so no zero fill is needed.
  Tensor dx = cuda_detail::new_output(grad_output, input_size);
  if (dx.numel() == 0) return dx;
  const ConvParams p = make_conv_params(op, shape, stride, padding, dilation);
  const Tensor dy = contiguous_or_self(grad_output);
  const Tensor w = contiguous_or_self(weight);
  const cuda_detail::Stream stream = cuda_detail::current_stream(grad_output);

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_input_cuda", [&] {
    if (p.in_per_group == 1) {
      const int64_t total = dx.numel();
      cuda_detail::launch(depthwise_backward_input_kernel<scalar_t>, grid_stride_blocks(total), kThreadsPerBlock, 0, stream,
          dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), p, total);
      return;
    }
    const int m = p.batch * p.in_plane, n = p.in_per_group, k = p.out_per_group * p.taps;
    if (is_pointwise(p)) {
      const BackwardInputGemm<scalar_t, ConvGemm, true> problem{
          dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), p};
      launch_implicit_gemm<ConvGemm>(problem, m, n, k, static_cast<int>(groups), 1, stream);
    } else {
      const BackwardInputGemm<scalar_t, ConvGemm, false> problem{
          dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), p};
      launch_implicit_gemm<ConvGemm>(problem, m, n, k, static_cast<int>(groups), 1, stream);
    }
  });
  return dx;
}

Tensor conv2d_backward_weight_cuda(const Tensor& grad_output, const Tensor& input,
                                       IntArrayRef weight_size, IntArrayRef stride,
                                       IntArrayRef padding, IntArrayRef dilation, int64_t groups) {
  const char* op = "cuconv.conv2d_backward_weight";
  const auto shape = check_conv2d_backward_weight(op, grad_output, input, weight_size, stride,
                                                          padding, dilation, groups);
  cuda_detail::DeviceGuard guard(grad_output);
  Tensor dw = cuda_detail::new_output(grad_output, weight_size);
  if (dw.numel() == 0) return dw;
  const ConvParams p = make_conv_params(op, shape, stride, padding, dilation);
  const Tensor x = contiguous_or_self(input);
  const Tensor dy = contiguous_or_self(grad_output);
  const cuda_detail::Stream stream = cuda_detail::current_stream(grad_output);
  const int sm_count = cuda_detail::multiprocessor_count(grad_output);
  const int positions = p.batch * p.out_plane;  // the reduction length N*Ho*Wo (may be 0)

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_weight_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    if (p.in_per_group == 1) {
      const int64_t elements = dw.numel();  // C_out * kH * kW
      CUCONV_CHECK(elements <= cuda_detail::kMaxInt32Index, op, ": too many weight elements");
      const int splits = reduction_splits(elements, positions, 16 * kReduceThreads, elements, cuda_detail::max_grid_yz(), sm_count);
      Tensor partial = partial_buffer<scalar_t, acc_t>(dw, splits);
      const dim3 grid(static_cast<unsigned int>(elements), static_cast<unsigned int>(splits));
      cuda_detail::launch(depthwise_weight_grad_kernel<scalar_t>, grid, kReduceThreads, 0, stream,
          dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
          p, positions);
      finish_partials<scalar_t, acc_t>(partial, dw, splits, stream);
      return;
    }
    const int m = p.out_per_group, n = p.in_per_group * p.taps, k = positions;
    const int64_t tiles = static_cast<int64_t>(ceil_div(m, ConvGemm::kBlockM)) * ceil_div(n, ConvGemm::kBlockN) * groups;
    const int64_t k_steps = ceil_div<int64_t>(k, ConvGemm::kBlockK);
    const int splits = reduction_splits(tiles, k_steps, 8, dw.numel(), cuda_detail::max_grid_yz(), sm_count);
    Tensor partial = partial_buffer<scalar_t, acc_t>(dw, splits);
    const BackwardWeightGemm<scalar_t, ConvGemm> problem{
        dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(),
        dw.numel(), p};
    launch_implicit_gemm<ConvGemm>(problem, m, n, k, static_cast<int>(groups), splits, stream);
    finish_partials<scalar_t, acc_t>(partial, dw, splits, stream);
  });
  return dw;
}

Tensor conv2d_backward_bias_cuda(const Tensor& grad_output) {
  const char* op = "cuconv.conv2d_backward_bias";
  check_image_batch(op, "grad_output", grad_output.sizes());
  cuda_detail::DeviceGuard guard(grad_output);
  const int64_t N = grad_output.size(0), C = grad_output.size(1);
  const int64_t plane = grad_output.size(2) * grad_output.size(3);
  check_int32_index(op, "channels * height * width", C * plane);
  check_int32_index(op, "batch * height * width", N * plane);
  Tensor db = cuda_detail::new_output(grad_output, {C});
  const Tensor dy = contiguous_or_self(grad_output);
  const cuda_detail::Stream stream = cuda_detail::current_stream(grad_output);
  const int sm_count = cuda_detail::multiprocessor_count(grad_output);

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_bias_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const int positions = static_cast<int>(N * plane);
    const int splits = reduction_splits(C, positions, 16 * kReduceThreads, C, cuda_detail::max_grid_yz(), sm_count);
    Tensor partial = partial_buffer<scalar_t, acc_t>(db, splits);
    const dim3 grid(static_cast<unsigned int>(C), static_cast<unsigned int>(splits));
    cuda_detail::launch(bias_grad_kernel<scalar_t>, grid, kReduceThreads, 0, stream,
        dy.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), static_cast<int>(C),
        static_cast<int>(plane), positions, C * plane);
    finish_partials<scalar_t, acc_t>(partial, db, splits, stream);
  });
  return db;
}

}  // namespace cuconv
