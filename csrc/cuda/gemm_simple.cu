// The simple implicit GEMM for the three convolution passes on CUDA: any shape, group count,
// stride, padding and dilation, every dtype. It is the oracle the faster kernels are tested
// against (tests compare them on the emulated device) and their fallback for what they refuse.
// The GEMM formulation of each pass is at the top of conv2d.cu.
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
// Half and bfloat16 are converted to float (opmath_t) on the way into shared memory and
// accumulated in float; within a sample indices are 32-bit (checked on the host).

#include <algorithm>
#include <type_traits>

#include "conv2d_common.cuh"

namespace cuconv::conv_cuda::simple {
namespace {

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

}  // namespace

void forward(const ConvCall& call, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, Tensor& y) {
  const ConvParams& p = call.p;
  const int m = p.batch * p.out_plane, n = p.out_per_group, k = p.in_per_group * p.taps;
  CUCONV_DISPATCH_FLOATING(x.scalar_type(), "conv2d_forward_cuda", [&] {
    const scalar_t* bias_data = bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr;
    if (is_pointwise(p)) {
      const ForwardGemm<scalar_t, ConvGemm, true> problem{
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data, y.mutable_data_ptr<scalar_t>(), p};
      launch_implicit_gemm<ConvGemm>(problem, m, n, k, call.groups, 1, call.stream);
    } else {
      const ForwardGemm<scalar_t, ConvGemm, false> problem{
          x.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), bias_data, y.mutable_data_ptr<scalar_t>(), p};
      launch_implicit_gemm<ConvGemm>(problem, m, n, k, call.groups, 1, call.stream);
    }
  });
}

void backward_input(const ConvCall& call, const Tensor& dy, const Tensor& w, Tensor& dx) {
  const ConvParams& p = call.p;
  const int m = p.batch * p.in_plane, n = p.in_per_group, k = p.out_per_group * p.taps;
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_input_cuda", [&] {
    if (is_pointwise(p)) {
      const BackwardInputGemm<scalar_t, ConvGemm, true> problem{
          dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), p};
      launch_implicit_gemm<ConvGemm>(problem, m, n, k, call.groups, 1, call.stream);
    } else {
      const BackwardInputGemm<scalar_t, ConvGemm, false> problem{
          dy.const_data_ptr<scalar_t>(), w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>(), p};
      launch_implicit_gemm<ConvGemm>(problem, m, n, k, call.groups, 1, call.stream);
    }
  });
}

void backward_weight(const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw) {
  const ConvParams& p = call.p;
  const int m = p.out_per_group, n = p.in_per_group * p.taps, k = p.batch * p.out_plane;
  const int64_t tiles = static_cast<int64_t>(ceil_div(m, ConvGemm::kBlockM)) * ceil_div(n, ConvGemm::kBlockN) * call.groups;
  const int64_t k_steps = ceil_div<int64_t>(k, ConvGemm::kBlockK);
  const int splits = reduction_splits(tiles, k_steps, 8, kMaxChain / ConvGemm::kBlockK, dw.numel(),
                                      cuda_detail::max_grid_yz(), call.sm_count);
  Tensor partial = partial_buffer(dw, splits);
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_weight_cuda", [&] {
    using acc_t = opmath_t<scalar_t>;
    const BackwardWeightGemm<scalar_t, ConvGemm> problem{
        dy.const_data_ptr<scalar_t>(), x.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<acc_t>(), dw.numel(), p};
    launch_implicit_gemm<ConvGemm>(problem, m, n, k, call.groups, splits, call.stream);
  });
  finish_partials(partial, dw, splits, call.stream);
}

}  // namespace cuconv::conv_cuda::simple
