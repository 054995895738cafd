// Convolution on the tensor cores: an NHWC implicit GEMM with mma.sync, for float16 and
// bfloat16 (m16n8k16) and for float32 as TF32 (m16n8k8), accumulating in float32.
//
// The forward pass and the input gradient are one "gather convolution" (as in gemm_simt.cu,
// whose header derives the input gradient's stride phases), here over NHWC data: per group g,
//     out[n, g*N + co, row0 + a*row_step, col0 + b*col_step] = sum_k A[m, k] B[k, co]
//     m = (n, a, b), k = (ti, tj, ci) with ci fastest
//     A[m, k] = src[n, a*s_r + r0 + ti*dr, b*s_c + c0 + tj*dc, g*C + ci]   (NHWC; 0 outside)
//     B[k, co] = W[g*N + co, k]   (packed by pack_weight_kernel: K contiguous, "OHWI")
// forward: src = x, s = stride, r0 = -pad, dr = dilation, W[o, (i, j, c)] = w[o, c, i, j];
// input gradient, one launch a stride phase: src = dy, s = 1, the phase's taps, W[c, (ti, tj, o)] =
// w[o, c, i, j]. With C a multiple of 8 halves (4 floats), every 16 bytes of a row of A or of B
// are 16 consecutive bytes in memory: one cp.async each, zero-filled where a tap falls outside.
// Layouts: src is read in place when channels_last, else transposed to NHWC first; out is
// written through its strides, NCHW or (for a channels_last input) NHWC.
//
// Tiling (TensorCoreTile<BM, BN>): a block computes a BM x BN tile of C (128 x 128 with 8 warps,
// 2 along m x 4 along n; 128 x 64 and 64 x 64 for layers of few output channels or pixels, by
// choose_tile's table); each warp a 64 x 32 tile as 4 x 4 mma tiles of 16 x 8 (64 float
// accumulators a thread). K is walked in steps of 64 bytes (32 halves or 16 floats: two mma
// k-steps). A 3-stage cp.async pipeline (pipeline.cuh) keeps two steps in flight while the third
// is multiplied. Shared tiles are row-major with k contiguous ([row][64 bytes], 8 KiB an operand
// a stage for 128 rows, 48 KiB in all for 128 x 128) and XOR-swizzled in 16-byte chunks, chunk q of row r stored at
// q ^ ((r / 2) % 4): the 8 rows an ldmatrix reads at one chunk then fall in 8 different
// 16-byte bank groups, and so do the cp.async stores. Fragments come from ldmatrix.x4 (for
// TF32 too: an 8 x 8 matrix of 16-bit elements is an 8 x 4 matrix of 32-bit ones, which is the
// m16n8k8 fragment layout). The epilogue adds the bias and stores each accumulator through
// the output's strides.

#include "conv2d_common.cuh"
#include "pipeline.cuh"

namespace cuconv::conv_cuda::tensor_core {
namespace {

using cuda_detail::ceil_div;
using cuda_detail::cp_async;
using cuda_detail::ldmatrix;
using cuda_detail::mma;
using cuda_detail::run_pipeline;
using cuda_detail::to_tf32;

// A block tile of BlockM x BlockN, in warp tiles of 64 x 32 (4 x 4 mma tiles).
template <int BlockM, int BlockN>
struct TensorCoreTile {
  static constexpr int kBlockM = BlockM, kBlockN = BlockN;
  static constexpr int kRowBytes = 64;  // one K step of a shared row
  static constexpr int kChunks = kRowBytes / 16;
  static constexpr int kStages = 3;
  static constexpr int kWarpM = 64, kWarpN = 32;
  static constexpr int kWarpsM = kBlockM / kWarpM, kWarpsN = kBlockN / kWarpN;
  static constexpr int kThreads = 32 * kWarpsM * kWarpsN;
  static constexpr int kMmaM = kWarpM / 16, kMmaN = kWarpN / 8;  // 4 x 4 mma tiles
  // A step's copies: chunk tid % kChunks of rows tid / kChunks + r*kRowsPerCopy
  static constexpr int kRowsPerCopy = kThreads / kChunks;
  static constexpr int kCopiesA = kBlockM / kRowsPerCopy, kCopiesB = kBlockN / kRowsPerCopy;
  static constexpr const char* kName = BlockM == 128 ? (BlockN == 128 ? "128x128" : "128x64") : "64x64";
};
// The configurations (choose_tile): wide layers, up to 64 output channels a group, and those
// with few output pixels too.
using WideTile = TensorCoreTile<128, 128>;
using NarrowTile = TensorCoreTile<128, 64>;
using SmallTile = TensorCoreTile<64, 64>;

constexpr int kChunksPerRow = 4;  // 16-byte chunks in a 64-byte shared row (every configuration)

// The 16-byte chunk of a [rows][4 chunks] swizzled tile that holds chunk `chunk` of row `row`.
__device__ __forceinline__ int swizzled(int row, int chunk) {
  return row * kChunksPerRow + (chunk ^ ((row >> 1) & (kChunksPerRow - 1)));
}

// One gather convolution (see the top of the file), in 32-bit ints within a sample.
struct TensorCoreConv {
  int batch, src_h, src_w, src_channels;  // src: [N, H, W, C_src] in memory
  int channels;                           // C: per group, read
  int rows, cols;                         // the output positions (a, b)
  int s_r, s_c, r0, c0, dr, dc, taps_h, taps_w;
  int n, m, k;                            // GEMM N (output channels per group), M = N*rows*cols, K
  int64_t out_sample;                     // out's strides: sample, channel, pixel; the positions written
  int out_channel_stride, out_pixel_stride, out_w, row0, row_step, col0, col_step;
  int splits, k_per_split;                // split-K (blockIdx.z = group * splits + split)
  int64_t out_numel;                      // one slice of `partial`
};

template <typename T>
__device__ __forceinline__ uint32_t mma_operand(uint32_t bits) {
  if constexpr (std::is_same_v<T, float>) {
    float value;
    std::memcpy(&value, &bits, 4);
    return to_tf32(value);  // round to nearest; the hardware would truncate
  } else {
    return bits;
  }
}

template <typename T, typename Tile>
__global__ void __launch_bounds__(Tile::kThreads)
    conv_tensor_core_kernel(const T* __restrict__ x, const T* __restrict__ w, const T* __restrict__ bias,
                            T* __restrict__ y, float* __restrict__ partial, const TensorCoreConv q) {
  constexpr int kChunkElements = 16 / sizeof(T);
  constexpr int kStepElements = Tile::kRowBytes / sizeof(T);  // K per step

  CUCONV_SHARED(a_tile, uint4[Tile::kStages][Tile::kBlockM * Tile::kChunks]);
  CUCONV_SHARED(b_tile, uint4[Tile::kStages][Tile::kBlockN * Tile::kChunks]);

  const int n_tiles = ceil_div(q.n, Tile::kBlockN);
  const int tile_n = static_cast<int>(blockIdx.x % n_tiles), tile_m = static_cast<int>(blockIdx.x / n_tiles);
  const int group = static_cast<int>(blockIdx.z) / q.splits, split = static_cast<int>(blockIdx.z) % q.splits;
  const int m0 = tile_m * Tile::kBlockM, n0 = tile_n * Tile::kBlockN;
  const int k_begin = split * q.k_per_split, k_end = min(q.k, k_begin + q.k_per_split);
  const int tid = static_cast<int>(threadIdx.x);

  // --- the copies this thread issues each step: chunk `copy_chunk` of rows copy_row + r*kRowsPerCopy.
  // Offsets within a sample are 32-bit (the host checks H*W*C_src < 2^31): the row's origin
  // (a*s_r*W + b*s_c)*C_src plus, per step, the tap's ((r0 + ti*dr)*W + c0 + tj*dc)*C_src + ci, the
  // same for every row. A row past M gets an origin so far outside the image that every check fails.
  const int copy_chunk = tid % Tile::kChunks, copy_row = tid / Tile::kChunks;
  const T* a_sample[Tile::kCopiesA];  // src[n, 0, 0, g*C] of the row's sample
  int a_row[Tile::kCopiesA], a_col[Tile::kCopiesA], a_origin[Tile::kCopiesA];
  const T* b_next[Tile::kCopiesB];  // W[g*N + co, k of the next step's chunk]
  bool b_row_ok[Tile::kCopiesB];
#pragma unroll
  for (int r = 0; r < Tile::kCopiesA; ++r) {
    const int m = m0 + copy_row + r * Tile::kRowsPerCopy;
    a_sample[r] = x;
    a_row[r] = a_col[r] = -(1 << 30);
    a_origin[r] = 0;
    if (m < q.m) {
      const int per_sample = q.rows * q.cols;
      const int n = m / per_sample, position = m - n * per_sample;
      const int a = position / q.cols, b = position - a * q.cols;
      a_sample[r] = x + static_cast<int64_t>(n) * q.src_h * q.src_w * q.src_channels + group * q.channels;
      a_row[r] = a * q.s_r;
      a_col[r] = b * q.s_c;
      a_origin[r] = (a_row[r] * q.src_w + a_col[r]) * q.src_channels;
    }
  }
#pragma unroll
  for (int r = 0; r < Tile::kCopiesB; ++r) {
    const int co = n0 + copy_row + r * Tile::kRowsPerCopy;
    b_row_ok[r] = co < q.n;
    b_next[r] = w + static_cast<int64_t>(group * q.n + (b_row_ok[r] ? co : 0)) * q.k + k_begin +
                copy_chunk * kChunkElements;
  }
  // k of this thread's chunk as (ti, tj, ci), stepped by kStepElements without division.
  MixedRadix tap = MixedRadix::split(k_begin + copy_chunk * kChunkElements, q.taps_w, q.channels);
  const MixedRadix tap_step = MixedRadix::split(kStepElements, q.taps_w, q.channels);
  int next_k = k_begin + copy_chunk * kChunkElements;  // k of the chunk the next copy_step copies
  const int copy_slot = swizzled(copy_row, copy_chunk);  // + r * kRowsPerCopy rows, same swizzle

  auto copy_step = [&](int stage) {
    const bool k_ok = next_k < k_end;
    const int dh = q.r0 + tap.outer * q.dr, dw = q.c0 + tap.mid * q.dc;
    const int tap_offset = (dh * q.src_w + dw) * q.src_channels + tap.inner;
#pragma unroll
    for (int r = 0; r < Tile::kCopiesA; ++r) {
      const int slot = copy_slot + r * Tile::kRowsPerCopy * Tile::kChunks;
      const bool a_ok = k_ok && static_cast<unsigned>(a_row[r] + dh) < static_cast<unsigned>(q.src_h) &&
                        static_cast<unsigned>(a_col[r] + dw) < static_cast<unsigned>(q.src_w);
      cp_async<16>(&a_tile[stage][slot], a_ok ? a_sample[r] + (a_origin[r] + tap_offset) : x, a_ok);
    }
#pragma unroll
    for (int r = 0; r < Tile::kCopiesB; ++r) {
      const int slot = copy_slot + r * Tile::kRowsPerCopy * Tile::kChunks;
      const bool b_ok = k_ok && b_row_ok[r];
      cp_async<16>(&b_tile[stage][slot], b_ok ? b_next[r] : w, b_ok);
      b_next[r] += kStepElements;
    }
    tap.advance(tap_step, q.taps_w, q.channels);
    next_k += kStepElements;
  };

  // --- this warp's tile and its accumulators
  const int lane = tid % 32, warp = tid / 32;
  const int warp_m = (warp % Tile::kWarpsM) * Tile::kWarpM, warp_n = (warp / Tile::kWarpsM) * Tile::kWarpN;
  float acc[Tile::kMmaM][Tile::kMmaN][4];
#pragma unroll
  for (int i = 0; i < Tile::kMmaM; ++i)
#pragma unroll
    for (int j = 0; j < Tile::kMmaN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  // Where this lane's ldmatrix rows are, per mma k-step kk (the 16-row and 8-row tiles of the
  // warp are whole swizzle periods apart, so their offsets are the first tile's plus rows*kChunks):
  //   A: matrices (rows 0-7 | 8-15) x (chunk 2kk | 2kk+1): lane l gives row l % 16 of chunk 2kk + l / 16
  //   B: matrices (n 0-7, chunk 2kk), (n 0-7, 2kk+1), (n 8-15, 2kk), (n 8-15, 2kk+1)
  int a_fragment[Tile::kChunks / 2], b_fragment[Tile::kChunks / 2];
#pragma unroll
  for (int kk = 0; kk < Tile::kChunks / 2; ++kk) {
    a_fragment[kk] = swizzled(warp_m + lane % 16, 2 * kk + lane / 16);
    b_fragment[kk] = swizzled(warp_n + (lane / 16) * 8 + lane % 8, 2 * kk + (lane / 8) % 2);
  }

  const int k_steps = k_end > k_begin ? ceil_div(k_end - k_begin, kStepElements) : 0;
  run_pipeline<Tile::kStages>(k_steps, copy_step, [&](int stage) {
    const uint4* a_stage = a_tile[stage];
    const uint4* b_stage = b_tile[stage];
#pragma unroll
    for (int kk = 0; kk < Tile::kChunks / 2; ++kk) {  // one mma k-step = 2 chunks
      uint32_t a[Tile::kMmaM][4], b[Tile::kMmaN][2];
#pragma unroll
      for (int i = 0; i < Tile::kMmaM; ++i) {
        ldmatrix<4, false>(a[i], &a_stage[a_fragment[kk] + i * 16 * Tile::kChunks]);
#pragma unroll
        for (int e = 0; e < 4; ++e) a[i][e] = mma_operand<T>(a[i][e]);
      }
#pragma unroll
      for (int j = 0; j < Tile::kMmaN; j += 2) {
        uint32_t regs[4];
        ldmatrix<4, false>(regs, &b_stage[b_fragment[kk] + j * 8 * Tile::kChunks]);
        // (B is rounded to TF32 when packed: no conversion here)
        b[j][0] = regs[0], b[j][1] = regs[1], b[j + 1][0] = regs[2], b[j + 1][1] = regs[3];
      }
#pragma unroll
      for (int i = 0; i < Tile::kMmaM; ++i)
#pragma unroll
        for (int j = 0; j < Tile::kMmaN; ++j) mma<T>(acc[i][j], a[i], b[j], acc[i][j]);
    }
  });

  // --- epilogue: accumulator e of mma tile (i, j) is row g + 8*(e/2), column 2t + e%2. With split-K
  // the slice goes to `partial` (float, y's layout), the bias with slice 0.
  const int g = lane / 4, t = lane % 4;
  const bool add_bias = bias != nullptr && split == 0;
  float* slice = partial != nullptr ? partial + split * q.out_numel : nullptr;
#pragma unroll
  for (int i = 0; i < Tile::kMmaM; ++i) {
#pragma unroll
    for (int half = 0; half < 2; ++half) {
      const int m = m0 + warp_m + i * 16 + g + 8 * half;
      if (m >= q.m) continue;
      const int per_sample = q.rows * q.cols;
      const int n = m / per_sample, position = m - n * per_sample;
      const int a = position / q.cols, b = position - a * q.cols;
      const int pixel = (q.row0 + a * q.row_step) * q.out_w + q.col0 + b * q.col_step;
      const int64_t row = n * q.out_sample + static_cast<int64_t>(pixel) * q.out_pixel_stride;
#pragma unroll
      for (int j = 0; j < Tile::kMmaN; ++j) {
#pragma unroll
        for (int e = 0; e < 2; ++e) {
          const int o = n0 + warp_n + j * 8 + 2 * t + e;
          if (o >= q.n) continue;
          const int channel = group * q.n + o;
          float value = acc[i][j][2 * half + e];
          if (add_bias) value += static_cast<float>(bias[channel]);
          const int64_t offset = row + static_cast<int64_t>(channel) * q.out_channel_stride;
          if (slice != nullptr) {
            slice[offset] = value;
          } else {
            y[offset] = static_cast<T>(value);
          }
        }
      }
    }
  }
}

// --- The weight gradient: dW[g*O_g + o, c, i, j] = sum over pixels k = (n, oh, ow) of
//     A[o, k] B[k, (i, j, c)],  A[o, k] = dy[n, oh, ow, g*O_g + o],  B[k, (i, j, c)] = x[n, ih, iw, g*C_g + c]
// (NHWC; ih = oh*sH - pH + i*dH, iw = ow*sW - pW + j*dW, 0 outside). Both operands are
// contiguous along the GEMM's M and N, not along K: their shared tiles are k-major ([k][128
// elements], rows of 16-byte chunks, chunk q of row k stored at q ^ (k % 8)). float16 and
// bfloat16 fragments come from ldmatrix.trans; TF32 ones (ldmatrix moves 16-bit elements) from
// one 32-bit shared load an element, rounded to TF32 in the loop. K (N*Ho*Wo) is split into
// slices (blockIdx.z = group * splits + split) whose partial sums finish_partials adds in a fixed order.
// Warps and mma tiles as the forward kernel's; K steps of 32 pixels (16-bit types) or 16 (TF32),
// 8 KiB an operand a stage, 3 stages.
template <typename T>
struct WeightGradTile {
  static constexpr int kBlockM = 128, kBlockN = 128, kStages = 3;
  static constexpr int kBlockK = 64 / sizeof(T);                   // pixels a step: 32 or 16
  static constexpr int kChunks = kBlockN * int(sizeof(T)) / 16;    // 16-byte chunks in a k-row: 16 or 32
  static constexpr int kChunkElements = 16 / sizeof(T);
  static constexpr int kWarpsM = 2, kWarpsN = 4, kThreads = 256;
  static constexpr int kWarpM = 64, kWarpN = 32, kMmaM = 4, kMmaN = 4;
  static constexpr int kMmaK = std::is_same_v<T, float> ? 8 : 16;
  static constexpr int kCopies = kBlockK * kChunks / kThreads;  // 2 chunks of A and of B a thread a step
  static constexpr int kKRowsPerCopy = kThreads / kChunks;       // 16 or 8
};

template <typename Tile>
__device__ __forceinline__ int k_major_swizzled(int k, int chunk) {
  return k * Tile::kChunks + (chunk ^ (k & 7));
}

// The 32-bit element e of k-row k of a k-major swizzled tile (TF32 fragments), rounded to TF32.
template <typename Tile>
__device__ __forceinline__ uint32_t tf32_element(const uint4* tile, int k, int e) {
  const float* row = reinterpret_cast<const float*>(&tile[k_major_swizzled<Tile>(k, e / 4)]);
  return to_tf32(row[e % 4]);
}

struct TensorCoreWeightGrad {
  int batch, in_h, in_w, in_channels, out_h, out_w, out_channels;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int in_per_group, out_per_group;
  int m, n, k;            // O_g, kH*kW*C_g, N*Ho*Wo
  int k_per_split, splits;
  int64_t partial_stride;  // C_out*C_g*kH*kW: one split's slice of the partial sums
};

template <typename T>
__global__ void __launch_bounds__(WeightGradTile<T>::kThreads)
    weight_grad_tensor_core_kernel(const T* __restrict__ dy, const T* __restrict__ x, float* __restrict__ partial,
                                   const TensorCoreWeightGrad q) {
  using Tile = WeightGradTile<T>;
  constexpr int kChunkElements = Tile::kChunkElements;
  CUCONV_SHARED(a_tile, uint4[Tile::kStages][Tile::kBlockK * Tile::kChunks]);
  CUCONV_SHARED(b_tile, uint4[Tile::kStages][Tile::kBlockK * Tile::kChunks]);

  const int n_tiles = ceil_div(q.n, Tile::kBlockN);
  const int tile_n = static_cast<int>(blockIdx.x % n_tiles), tile_m = static_cast<int>(blockIdx.x / n_tiles);
  const int group = static_cast<int>(blockIdx.z) / q.splits, split = static_cast<int>(blockIdx.z) % q.splits;
  const int m0 = tile_m * Tile::kBlockM, n0 = tile_n * Tile::kBlockN;
  const int k_begin = split * q.k_per_split, k_end = min(q.k, k_begin + q.k_per_split);
  const int tid = static_cast<int>(threadIdx.x);

  // --- copies: chunk tid % kChunks of k-rows tid / kChunks + kKRowsPerCopy*r. A's chunk is 8 (TF32:
  // 4) output channels, B's as many input channels of one tap, fixed for the whole K loop.
  const int copy_chunk = tid % Tile::kChunks, copy_k = tid / Tile::kChunks;
  const int a_o = m0 + copy_chunk * kChunkElements;  // first output channel of A's chunk
  const bool a_ok = a_o < q.m;
  const int b_col = n0 + copy_chunk * kChunkElements;
  const bool b_ok = b_col < q.n;
  const int b_tap = b_col / q.in_per_group, b_c = b_col - b_tap * q.in_per_group;
  const int b_i = b_tap / q.kernel_w, b_j = b_tap - b_i * q.kernel_w;
  const int b_dh = b_i * q.dilation_h - q.pad_h, b_dw = b_j * q.dilation_w - q.pad_w;
  const T* a_base = dy + group * q.out_per_group + a_o;  // + pixel * C_out
  const T* b_base = x + group * q.in_per_group + b_c;    // + (n*H*W + ih*W + iw) * C_in
  MixedRadix pixel[Tile::kCopies];                       // (n, oh, ow) of each copied k-row
#pragma unroll
  for (int r = 0; r < Tile::kCopies; ++r)
    pixel[r] = MixedRadix::split(k_begin + copy_k + r * Tile::kKRowsPerCopy, q.out_h, q.out_w);
  const MixedRadix pixel_step = MixedRadix::split(Tile::kBlockK, q.out_h, q.out_w);
  int next_k = k_begin + copy_k;

  auto copy_step = [&](int stage) {
#pragma unroll
    for (int r = 0; r < Tile::kCopies; ++r) {
      const int k = next_k + r * Tile::kKRowsPerCopy;
      const int row = copy_k + r * Tile::kKRowsPerCopy;
      const bool k_ok = k < k_end;
      const int64_t sample = static_cast<int64_t>(pixel[r].outer) * q.in_h * q.in_w;
      const bool a_copy = k_ok && a_ok;
      cp_async<16>(&a_tile[stage][k_major_swizzled<Tile>(row, copy_chunk)],
                   a_copy ? a_base + static_cast<int64_t>(k) * q.out_channels : dy, a_copy);
      const int ih = pixel[r].mid * q.stride_h + b_dh, iw = pixel[r].inner * q.stride_w + b_dw;
      const bool b_copy = k_ok && b_ok && static_cast<unsigned>(ih) < static_cast<unsigned>(q.in_h) &&
                          static_cast<unsigned>(iw) < static_cast<unsigned>(q.in_w);
      cp_async<16>(&b_tile[stage][k_major_swizzled<Tile>(row, copy_chunk)],
                   b_copy ? b_base + (sample + ih * q.in_w + iw) * q.in_channels : x, b_copy);
      pixel[r].advance(pixel_step, q.out_h, q.out_w);
    }
    next_k += Tile::kBlockK;
  };

  const int lane = tid % 32, warp = tid / 32;
  const int warp_m = (warp % Tile::kWarpsM) * Tile::kWarpM, warp_n = (warp / Tile::kWarpsM) * Tile::kWarpN;
  // ldmatrix.trans rows, per mma k-step kk (lane l gives row l % 8 of matrix l / 8):
  //   A: matrices (k 0-7, m 0-7), (k 0-7, m 8-15), (k 8-15, m 0-7), (k 8-15, m 8-15) -> a[0..3]
  //   B: matrices (k 0-7, n 0-7), (k 8-15, n 0-7), (k 0-7, n 8-15), (k 8-15, n 8-15) -> b[j][0], b[j][1], b[j+1][0], b[j+1][1]
  const int matrix = lane / 8, matrix_row = lane % 8;
  float acc[Tile::kMmaM][Tile::kMmaN][4];
#pragma unroll
  for (int i = 0; i < Tile::kMmaM; ++i)
#pragma unroll
    for (int j = 0; j < Tile::kMmaN; ++j)
#pragma unroll
      for (int e = 0; e < 4; ++e) acc[i][j][e] = 0.f;

  const int k_steps = k_end > k_begin ? ceil_div(k_end - k_begin, Tile::kBlockK) : 0;
  run_pipeline<Tile::kStages>(k_steps, copy_step, [&](int stage) {
    const uint4* a_stage = a_tile[stage];
    const uint4* b_stage = b_tile[stage];
#pragma unroll
    for (int kk = 0; kk < Tile::kBlockK / Tile::kMmaK; ++kk) {
      uint32_t a[Tile::kMmaM][4], b[Tile::kMmaN][2];
      if constexpr (std::is_same_v<T, float>) {
        // m16n8k8 TF32: a = (m g, k t), (g+8, t), (g, t+4), (g+8, t+4); b = (k t, n g), (t+4, g)
        const int g = lane / 4, t = lane % 4, k = kk * 8 + t;
#pragma unroll
        for (int i = 0; i < Tile::kMmaM; ++i) {
          const int m = warp_m + i * 16 + g;
          a[i][0] = tf32_element<Tile>(a_stage, k, m), a[i][1] = tf32_element<Tile>(a_stage, k, m + 8);
          a[i][2] = tf32_element<Tile>(a_stage, k + 4, m), a[i][3] = tf32_element<Tile>(a_stage, k + 4, m + 8);
        }
#pragma unroll
        for (int j = 0; j < Tile::kMmaN; ++j) {
          const int n = warp_n + j * 8 + g;
          b[j][0] = tf32_element<Tile>(b_stage, k, n), b[j][1] = tf32_element<Tile>(b_stage, k + 4, n);
        }
      } else {
#pragma unroll
        for (int i = 0; i < Tile::kMmaM; ++i)
          ldmatrix<4, true>(a[i], &a_stage[k_major_swizzled<Tile>(kk * 16 + (matrix / 2) * 8 + matrix_row,
                                                                  (warp_m + i * 16) / 8 + matrix % 2)]);
#pragma unroll
        for (int j = 0; j < Tile::kMmaN; j += 2) {
          uint32_t regs[4];
          ldmatrix<4, true>(regs, &b_stage[k_major_swizzled<Tile>(kk * 16 + (matrix % 2) * 8 + matrix_row,
                                                                  (warp_n + j * 8) / 8 + matrix / 2)]);
          b[j][0] = regs[0], b[j][1] = regs[1], b[j + 1][0] = regs[2], b[j + 1][1] = regs[3];
        }
      }
#pragma unroll
      for (int i = 0; i < Tile::kMmaM; ++i)
#pragma unroll
        for (int j = 0; j < Tile::kMmaN; ++j) mma<T>(acc[i][j], a[i], b[j], acc[i][j]);
    }
  });

  // --- epilogue: accumulator e of mma tile (i, j) is o = row g + 8*(e/2), column 2t + e%2 = (i, j, c)
  const int g = lane / 4, t = lane % 4;
  const int taps = q.kernel_h * q.kernel_w;
  float* slice = partial + split * q.partial_stride;
#pragma unroll
  for (int j = 0; j < Tile::kMmaN; ++j) {
#pragma unroll
    for (int e = 0; e < 2; ++e) {
      const int col = n0 + warp_n + j * 8 + 2 * t + e;
      if (col >= q.n) continue;
      const int tap = col / q.in_per_group, c = col - tap * q.in_per_group;
#pragma unroll
      for (int i = 0; i < Tile::kMmaM; ++i) {
#pragma unroll
        for (int half = 0; half < 2; ++half) {
          const int o = m0 + warp_m + i * 16 + g + 8 * half;
          if (o < q.m)
            slice[(static_cast<int64_t>(group * q.out_per_group + o) * q.in_per_group + c) * taps + tap] =
                acc[i][j][2 * half + e];
        }
      }
    }
  }
}

// out[n, p, c] = in[n, c, p] for a batch of [C, P] matrices (NCHW -> NHWC with P = H*W; OIHW ->
// OHWI with n = o, c = the C_g channels, p = the taps), through a 32 x 33 shared tile so that
// both the reads and the writes are coalesced. Block (32, 8); grid (P tiles, C tiles, n).
template <typename T>
__global__ void __launch_bounds__(256) transpose_kernel(const T* __restrict__ in, T* __restrict__ out, int channels,
                                                        int positions) {
  CUCONV_SHARED(tile, T[32][33]);
  const int64_t matrix = static_cast<int64_t>(blockIdx.z) * channels * positions;
  const int p0 = blockIdx.x * 32, c0 = blockIdx.y * 32;
  for (int r = threadIdx.y; r < 32; r += 8) {
    const int c = c0 + r, p = p0 + threadIdx.x;
    if (c < channels && p < positions) tile[r][threadIdx.x] = in[matrix + static_cast<int64_t>(c) * positions + p];
  }
  __syncthreads();  // the tile is complete before it is read transposed
  for (int r = threadIdx.y; r < 32; r += 8) {
    const int p = p0 + r, c = c0 + threadIdx.x;
    if (c < channels && p < positions) out[matrix + static_cast<int64_t>(p) * channels + c] = tile[threadIdx.x][r];
  }
}

// W[g*N + co, k] (k = (ti, tj, ci), ci fastest) = w[g*w_group + co*w_co + ci*w_ci + ti*w_ti + tj*w_tj + w_base]:
// the B operand of a gather convolution, K contiguous (float32: rounded to TF32), one thread an element.
template <typename T>
__global__ void pack_weight_kernel(const T* __restrict__ w, T* __restrict__ packed, int groups, int n, int taps_h,
                                   int taps_w, int channels, int64_t w_group, int w_co, int w_ci, int w_ti, int w_tj,
                                   int w_base) {
  const int k = taps_h * taps_w * channels;
  const int64_t total = static_cast<int64_t>(groups) * n * k;
  CUCONV_KERNEL_LOOP(index, total) {
    const int64_t row = index / k;  // g*N + co
    const int kk = static_cast<int>(index - row * k);
    const int g = static_cast<int>(row / n), co = static_cast<int>(row - static_cast<int64_t>(g) * n);
    const int tap = kk / channels, ci = kk - tap * channels;
    const int ti = tap / taps_w, tj = tap - ti * taps_w;
    const T value = w[g * w_group + co * w_co + ci * w_ci + ti * w_ti + tj * w_tj + w_base];
    if constexpr (std::is_same_v<T, float>) {  // the mma's operand, rounded once here rather than per use
      const uint32_t bits = to_tf32(value);
      std::memcpy(&packed[index], &bits, 4);
    } else {
      packed[index] = value;
    }
  }
}

// [n, c, p] -> [n, p, c] into a new tensor of `sizes` (the NHWC / OHWI copy).
template <typename T>
Tensor transposed(const Tensor& in, int64_t batch, int64_t channels, int64_t positions, IntArrayRef sizes,
                  cuda_detail::Stream stream) {
  Tensor out = cuda_detail::new_output(in, sizes);
  if (out.numel() == 0) return out;
  const int64_t channel_tiles = ceil_div<int64_t>(channels, 32), most = cuda_detail::max_grid_yz();
  CUCONV_CHECK(channel_tiles <= most, "cuconv: ", channels, " channels are more than a transpose grid holds");
  // gridDim.z holds at most max_grid_yz() matrices: a larger batch in several launches
  for (int64_t first = 0; first < batch; first += most) {
    const int64_t count = std::min(most, batch - first), offset = first * channels * positions;
    const dim3 grid(static_cast<unsigned int>(ceil_div<int64_t>(positions, 32)), static_cast<unsigned int>(channel_tiles),
                    static_cast<unsigned int>(count));
    cuda_detail::launch(transpose_kernel<T>, grid, dim3(32, 8), 0, stream, in.const_data_ptr<T>() + offset,
                        out.mutable_data_ptr<T>() + offset, static_cast<int>(channels), static_cast<int>(positions));
  }
  return out;
}

// x as NHWC memory: itself when channels_last and 16-byte aligned (cp.async's requirement; a
// view may start mid-chunk), else an NHWC copy.
template <typename T>
Tensor nhwc(const Tensor& x, cuda_detail::Stream stream) {
  if (is_channels_last(x)) {
    if (reinterpret_cast<uintptr_t>(x.data_ptr()) % 16 == 0) return x;
    Tensor aligned = cuda_detail::new_output(x, x.sizes(), std::nullopt, true);
    torch::stable::copy_(aligned, x);
    return aligned;
  }
  const Tensor contiguous = contiguous_or_self(x);
  const int64_t n = x.size(0), c = x.size(1), h = x.size(2), w = x.size(3);
  return transposed<T>(contiguous, n, c, h * w, {n, h, w, c}, stream);
}

// The weight strides of a gather convolution's B operand (pack_weight_kernel).
struct WeightGather {
  int64_t group;
  int co, ci, ti, tj, base;
};

// Launches the kernel with tile configuration Tile over all groups, K split as split_k_slices
// says (resident blocks a multiprocessor: about 16 warps' worth): into slices of its own,
// summed into `out` here, or with `phases`, into the stride phases' shared ones (k_slices).
template <typename T, typename Tile>
void launch_tiles(TensorCoreConv q, const Tensor& src_nhwc, const Tensor& packed, const T* bias, Tensor& out,
                  int groups, PhaseSplits* phases, int sm_count, cuda_detail::Stream stream) {
  constexpr int kStepElements = Tile::kRowBytes / sizeof(T);
  const int64_t tiles = static_cast<int64_t>(ceil_div(q.m, Tile::kBlockM)) * ceil_div(q.n, Tile::kBlockN);
  CUCONV_CHECK(tiles <= cuda_detail::kMaxInt32Index && groups <= cuda_detail::max_grid_yz(),
               "cuconv: convolution too large for one tensor-core launch");
  if (tiles == 0) return;
  const int blocks_per_sm = 16 / (Tile::kWarpsM * Tile::kWarpsN);
  const int k = phases != nullptr ? std::max(q.k, phases->longest_k) : q.k;
  const int wanted = split_k_slices(tiles * groups, ceil_div(k, kStepElements), out.numel(), sm_count, blocks_per_sm);
  const KSlices slices = k_slices(phases, out, std::min(wanted, cuda_detail::max_grid_yz() / groups));
  q.splits = slices.count;
  q.k_per_split = ceil_div(ceil_div(std::max(q.k, 1), q.splits), kStepElements) * kStepElements;
  q.out_numel = out.numel();
  last_kernels().tile = Tile::kName;
  cuda_detail::launch(conv_tensor_core_kernel<T, Tile>,
                      dim3(static_cast<unsigned int>(tiles), 1, static_cast<unsigned int>(groups * q.splits)),
                      Tile::kThreads, 0, stream, src_nhwc.const_data_ptr<T>(), packed.const_data_ptr<T>(), bias,
                      out.mutable_data_ptr<T>(), slices.partial, q);
  if (slices.own.defined()) finish_partials(slices.own, out, q.splits, stream);
}

// The tile configuration of a layer (its GEMM: m output pixels, n output channels a group, in
// `groups` groups), by this table:
//   n > 64                                     WideTile   128 x 128, 8 warps
//   n <= 64, 128-row tiles fill >= 1 wave       NarrowTile 128 x 64,  4 warps (half the work
//                                                          of a wide tile is not wasted)
//   n <= 64, fewer                             SmallTile  64 x 64,   2 warps (more blocks)
// A wave is one block on each multiprocessor. Split-K then fills what the tiles do not.
enum class TileChoice { kWide, kNarrow, kSmall };
TileChoice choose_tile(int m, int n, int groups, int sm_count) {
  if (n > 64) return TileChoice::kWide;
  const int64_t narrow_tiles = static_cast<int64_t>(ceil_div(m, 128)) * ceil_div(n, 64) * groups;
  return narrow_tiles >= sm_count ? TileChoice::kNarrow : TileChoice::kSmall;
}

// Packs W and runs the gather convolution q (geometry and output mapping filled in; src and out
// as tensors, out contiguous or channels_last) over all groups.
template <typename T>
void launch_gather(TensorCoreConv q, const Tensor& src_nhwc, const Tensor& w, const WeightGather& gather,
                   const T* bias, Tensor& out, int groups, PhaseSplits* phases, int sm_count, cuda_detail::Stream stream) {
  Tensor packed = cuda_detail::new_output(w, {groups, q.n, std::max(q.k, 1)});
  const int64_t total = static_cast<int64_t>(groups) * q.n * q.k;
  if (total > 0)
    cuda_detail::launch(pack_weight_kernel<T>, cuda_detail::grid_stride_blocks(total), cuda_detail::kThreadsPerBlock, 0,
                        stream, w.const_data_ptr<T>(), packed.mutable_data_ptr<T>(), groups, q.n, q.taps_h, q.taps_w,
                        q.channels, gather.group, gather.co, gather.ci, gather.ti, gather.tj, gather.base);
  const bool nhwc_out = is_channels_last(out);
  q.out_channel_stride = nhwc_out ? 1 : static_cast<int>(out.size(2) * out.size(3));
  q.out_pixel_stride = nhwc_out ? static_cast<int>(out.size(1)) : 1;
  q.out_sample = out.size(1) * out.size(2) * out.size(3);
  q.out_w = static_cast<int>(out.size(3));
  q.m = q.batch * q.rows * q.cols;
  switch (choose_tile(q.m, q.n, groups, sm_count)) {
    case TileChoice::kWide:
      return launch_tiles<T, WideTile>(q, src_nhwc, packed, bias, out, groups, phases, sm_count, stream);
    case TileChoice::kNarrow:
      return launch_tiles<T, NarrowTile>(q, src_nhwc, packed, bias, out, groups, phases, sm_count, stream);
    case TileChoice::kSmall:
      return launch_tiles<T, SmallTile>(q, src_nhwc, packed, bias, out, groups, phases, sm_count, stream);
  }
}

// 16-byte rows of channels: C_g elements must fill whole chunks.
bool channels_fill_chunks(ScalarType dtype, int channels) {
  const int per_chunk = dtype == ScalarType::Float ? 4 : 8;
  return channels % per_chunk == 0;
}

}  // namespace

bool supports(ScalarType dtype, bool allow_tf32) {
  return dtype == ScalarType::Half || dtype == ScalarType::BFloat16 || (dtype == ScalarType::Float && allow_tf32);
}

bool takes_forward(const ConvParams& p, ScalarType dtype, bool allow_tf32) {
  return supports(dtype, allow_tf32) && channels_fill_chunks(dtype, p.in_per_group);
}

bool takes_backward_input(const ConvParams& p, ScalarType dtype, bool allow_tf32) {
  return supports(dtype, allow_tf32) && channels_fill_chunks(dtype, p.out_per_group);
}

bool takes_backward_weight(const ConvParams& p, ScalarType dtype, bool allow_tf32) {
  return supports(dtype, allow_tf32) && channels_fill_chunks(dtype, p.in_per_group) &&
         channels_fill_chunks(dtype, p.out_per_group);
}

bool forward(const ConvCall& call, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, Tensor& y,
             bool allow_tf32) {
  const ConvParams& p = call.p;
  if (!takes_forward(p, x.scalar_type(), allow_tf32)) return false;
  TensorCoreConv q;
  q.batch = p.batch, q.src_h = p.in_h, q.src_w = p.in_w, q.src_channels = p.in_channels;
  q.channels = p.in_per_group, q.rows = p.out_h, q.cols = p.out_w;
  q.s_r = p.stride_h, q.s_c = p.stride_w, q.r0 = -p.pad_h, q.c0 = -p.pad_w, q.dr = p.dilation_h, q.dc = p.dilation_w;
  q.taps_h = p.kernel_h, q.taps_w = p.kernel_w;
  q.n = p.out_per_group, q.k = p.taps * p.in_per_group;
  q.row0 = q.col0 = 0, q.row_step = q.col_step = 1;
  // W[o, (i, j, c)] = w[o, c, i, j]
  const WeightGather gather{static_cast<int64_t>(p.out_per_group) * p.in_per_group * p.taps, p.in_per_group * p.taps,
                            p.taps, p.kernel_w, 1, 0};
  bool done = false;
  CUCONV_DISPATCH_FLOATING(x.scalar_type(), "conv2d_forward_tensor_core", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      const Tensor x_nhwc = nhwc<scalar_t>(x, call.stream);
      launch_gather<scalar_t>(q, x_nhwc, contiguous_or_self(w), gather,
                              bias.has_value() ? bias->const_data_ptr<scalar_t>() : nullptr, y, call.groups, nullptr,
                              call.sm_count, call.stream);
      done = true;
    }
  });
  return done;
}

bool backward_input(const ConvCall& call, const Tensor& dy, const Tensor& w, Tensor& dx, bool allow_tf32) {
  const ConvParams& p = call.p;
  if (!takes_backward_input(p, dy.scalar_type(), allow_tf32)) return false;
  bool done = false;
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_input_tensor_core", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      const Tensor dy_nhwc = nhwc<scalar_t>(dy, call.stream);
      const Tensor w_contiguous = contiguous_or_self(w);
      // One launch a stride phase (gemm_simt.cu's header)
      for_each_phase_with_taps(p, dx, call.stream, [&](int ph, int pw, const PhaseTaps& th, const PhaseTaps& tw,
                                                       PhaseSplits* phases) {
        TensorCoreConv q;
        q.batch = p.batch, q.src_h = p.out_h, q.src_w = p.out_w, q.src_channels = p.out_channels;
        q.channels = p.out_per_group;
        set_phase_geometry(q, p, ph, pw, th, tw);
        // W[c, (ti, tj, o)] = w[o, c, first_h + ti*step_h, first_w + tj*step_w]
        const WeightGather gather{static_cast<int64_t>(p.out_per_group) * p.in_per_group * p.taps, p.taps,
                                  p.in_per_group * p.taps, th.step * p.kernel_w, tw.step,
                                  th.first * p.kernel_w + tw.first};
        launch_gather<scalar_t>(q, dy_nhwc, w_contiguous, gather, nullptr, dx, call.groups, phases, call.sm_count,
                                call.stream);
      });
      done = true;
    }
  });
  return done;
}

bool backward_weight(const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw, bool allow_tf32) {
  const ConvParams& p = call.p;
  const ScalarType dtype = dy.scalar_type();
  if (!takes_backward_weight(p, dtype, allow_tf32)) return false;
  // (K steps of 32 pixels: as the 16-bit kernel's, for the split count)
  using Tile = WeightGradTile<c10::Half>;
  TensorCoreWeightGrad q;
  q.batch = p.batch, q.in_h = p.in_h, q.in_w = p.in_w, q.in_channels = p.in_channels;
  q.out_h = p.out_h, q.out_w = p.out_w, q.out_channels = p.out_channels;
  q.kernel_h = p.kernel_h, q.kernel_w = p.kernel_w, q.stride_h = p.stride_h, q.stride_w = p.stride_w;
  q.pad_h = p.pad_h, q.pad_w = p.pad_w, q.dilation_h = p.dilation_h, q.dilation_w = p.dilation_w;
  q.in_per_group = p.in_per_group, q.out_per_group = p.out_per_group;
  q.m = p.out_per_group, q.n = p.taps * p.in_per_group, q.k = p.batch * p.out_plane;
  const int64_t tiles = static_cast<int64_t>(ceil_div(q.m, Tile::kBlockM)) * ceil_div(q.n, Tile::kBlockN);
  q.splits = reduction_splits(tiles * call.groups, ceil_div(q.k, Tile::kBlockK), 8, kMaxChain / Tile::kBlockK, dw.numel(),
                              cuda_detail::max_grid_yz() / call.groups, call.sm_count);
  q.k_per_split = ceil_div(ceil_div(std::max(q.k, 1), q.splits), Tile::kBlockK) * Tile::kBlockK;
  q.partial_stride = dw.numel();
  CUCONV_CHECK(tiles <= cuda_detail::kMaxInt32Index && static_cast<int64_t>(call.groups) * q.splits <= cuda_detail::max_grid_yz(),
               "cuconv: weight gradient too large for one tensor-core launch");
  Tensor partial = cuda_detail::new_output(dw, {q.splits, dw.numel()}, ScalarType::Float);
  last_kernels().tile = "128x128";
  CUCONV_DISPATCH_FLOATING(dtype, "conv2d_backward_weight_tensor_core", [&] {
    if constexpr (!std::is_same_v<scalar_t, double>) {
      const Tensor dy_nhwc = nhwc<scalar_t>(dy, call.stream);
      const Tensor x_nhwc = nhwc<scalar_t>(x, call.stream);
      cuda_detail::launch(weight_grad_tensor_core_kernel<scalar_t>,
                          dim3(static_cast<unsigned int>(tiles), 1, static_cast<unsigned int>(call.groups * q.splits)),
                          WeightGradTile<scalar_t>::kThreads, 0, call.stream, dy_nhwc.const_data_ptr<scalar_t>(),
                          x_nhwc.const_data_ptr<scalar_t>(), partial.mutable_data_ptr<float>(), q);
    }
  });
  finish_partials(partial, dw, q.splits, call.stream);
  return true;
}

}  // namespace cuconv::conv_cuda::tensor_core
