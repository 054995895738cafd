// Float32 convolution on the CUDA cores (FFMA): the forward pass and the input gradient as one
// "gather convolution", NCHW, in a 128 x 128 tiled GEMM with a cp.async pipeline.
//
// The gather convolution: per group g, output channel co < N and output position (n, a, b),
//     out[n, g*N + co, row0 + a*row_step, col0 + b*col_step]
//         = sum over ci < C, ti < taps_h, tj < taps_w of
//           src[n, g*C + ci, a*s_r + r0 + ti*dr, b*s_c + c0 + tj*dc] * W[g, (ci, ti, tj), co]
// (src read as 0 outside its plane). Both passes are of this form, with no division in the
// main loop and no multiplication by structural zeros:
//   forward          src = x, s = stride, r0 = -pad, dr = dilation, taps = kernel; rows dense;
//                    W[g, (c, i, j), o] = w[g*O_g + o, c, i, j]
//   input gradient   split by stride phase (ph, pw) (ph < sH, pw < sW): the input rows
//                    ih = ph + sH*a only receive the taps i with sH | (ph + pH - i*dH), which are
//                    i = i0 + t*(sH/gcd(sH, dH)), reading dy row a + (ph + pH - i*dH)/sH, an
//                    arithmetic progression in t: src = dy, s = 1, r0 = (ph + pH - i0*dH)/sH,
//                    dr = -dH/gcd; rows ph + sH*a of dx; W[g, (o, ti, tj), c] = w[g*O_g + o, c, i, j].
//                    One launch a phase; the phases without taps are zero-filled, together.
//                    Where the first phase's tiles fill less than two waves, every phase splits
//                    K into the same zeroed slices (a phase adds only its own positions), summed
//                    into dx after the last phase.
// W is packed on the device before the launch (pack_weight_kernel): [G][K_pad][N_pad] with
// k = (ci, ti, tj), zeros in the padding, so that a row of B is 128 contiguous floats.
//
// Tiling (SimtTile<BN>): a block of 256 threads computes a 128 x 128 tile of out (rows = output
// positions m, columns = output channels; layers of 64 or 32 output channels a group get 128 x 64
// and 128 x 32 tiles of 128 and 64 threads, the same warp tiles) over K in steps of BK = 16. Shared tiles are k-major,
// A[k][m] and B[k][co], in 3 stages filled by cp.async (A: 4-byte copies, zero-filled outside
// the image, 32 consecutive rows a warp; B: 16-byte copies), waited for one step ahead of use
// (pipeline.cuh). The 8 warps are 2 (m) x 4 (co); a warp's 64 x 32 tile is held by its 32 lanes
// as 8 (m) x 4 (co) lanes of 8 x 8 accumulators, each lane's rows being two runs of 4 (32
// apart) and its columns two runs of 4 (16 apart): per k a lane reads 2 + 2 float4 from shared
// memory (8 different float4 across the warp's lanes per operand, so no bank conflicts) for 64
// FFMA. The epilogue adds the bias and is staged through shared memory, 32 output channels at a
// time, so that a warp stores a channel's 128 output positions with 16-byte stores aligned to
// the addresses (any plane size, e.g. ResNet's 7x7), not to the tile.

#include <numeric>
#include <vector>

#include "conv2d_common.cuh"
#include "pipeline.cuh"

namespace cuconv::conv_cuda::simt {
namespace {

using cuda_detail::ceil_div;
using cuda_detail::cp_async;
using cuda_detail::run_pipeline;

// A block tile of 128 x BlockN (BlockN = 128, 64 or 32: choose_tile's table), in warp tiles of
// 64 x 32, 2 warps along m.
template <int BlockN>
struct SimtTile {
  static constexpr int kBlockM = 128, kBlockN = BlockN, kBlockK = 16, kStages = 3;
  static constexpr int kWarpM = 64, kWarpN = 32;
  static constexpr int kWarps = 2 * (kBlockN / kWarpN);
  static constexpr int kThreads = 32 * kWarps;
  // A copies: a warp copies 32 consecutive rows at one k; a thread kRows rows at each of kKs k's
  static constexpr int kKStride = kWarps;               // the warps cover kWarps k's at a time
  static constexpr int kKs = kBlockK / kKStride;
  static constexpr int kRows = kBlockM / 32;            // 4
  // B copies: 16-byte chunks (4 columns), chunk tid % kBChunks of k rows tid / kBChunks + 8h, h < 2
  static constexpr int kBChunks = kBlockN / 4;
  static_assert(kThreads / kBChunks == 8 && kBlockK == 16, "B: two passes of 8 k rows");
  static constexpr const char* kName = BlockN == 128 ? "128x128" : BlockN == 64 ? "128x64" : "128x32";
};

// One K step of the 8 x 8 micro-tile: a lane's rows are two runs of 4 (row_base, row_base + 32),
// its columns two runs of 4 (col_base, col_base + 16); `at(k, r)` maps an element of a k-major
// shared row to where it is stored (a swizzle, or none).
template <int kSteps, int kALength, int kBLength, typename At>
__device__ __forceinline__ void multiply_stage(const float (*a_tile)[kALength], const float (*b_tile)[kBLength],
                                               int row_base, int col_base, At at, float (&acc)[8][8]) {
#pragma unroll
  for (int kk = 0; kk < kSteps; ++kk) {
    const float4 a_lo = *reinterpret_cast<const float4*>(&a_tile[kk][at(kk, row_base)]);
    const float4 a_hi = *reinterpret_cast<const float4*>(&a_tile[kk][at(kk, row_base + 32)]);
    const float4 b_lo = *reinterpret_cast<const float4*>(&b_tile[kk][at(kk, col_base)]);
    const float4 b_hi = *reinterpret_cast<const float4*>(&b_tile[kk][at(kk, col_base + 16)]);
    const float a[8] = {a_lo.x, a_lo.y, a_lo.z, a_lo.w, a_hi.x, a_hi.y, a_hi.z, a_hi.w};
    const float b[8] = {b_lo.x, b_lo.y, b_lo.z, b_lo.w, b_hi.x, b_hi.y, b_hi.z, b_hi.w};
#pragma unroll
    for (int i = 0; i < 8; ++i)
#pragma unroll
      for (int j = 0; j < 8; ++j) acc[i][j] = fmaf(a[i], b[j], acc[i][j]);
  }
}

// One gather convolution (see the top of the file), in 32-bit ints within a sample.
struct GatherConv {
  int batch, groups;
  int channels, src_h, src_w, src_plane;  // C (per group), the source image
  int64_t src_sample;
  int rows, cols;                          // a < rows, b < cols: the output positions computed
  int s_r, s_c, r0, c0, dr, dc;            // source row a*s_r + r0 + ti*dr, column likewise
  int taps_h, taps_w;
  int n, k, k_pad, n_pad;                  // GEMM N (output channels per group), K = C*taps_h*taps_w
  int64_t out_sample;
  int out_plane, out_w, row0, row_step, col0, col_step;
  int splits, k_per_split;  // split-K (blockIdx.z = group * splits + split), slices of out_numel floats
  int64_t out_numel;
};

// W[g, k, co] (k = (ci, ti, tj)) = w[g*w_group + co*w_co + ci*w_ci + ti*w_ti + tj*w_tj + w_base],
// zeros for k >= K or co >= N.
__global__ void pack_weight_kernel(const float* __restrict__ w, float* __restrict__ packed, const GatherConv q,
                                   int64_t w_group, int w_co, int w_ci, int w_ti, int w_tj, int w_base) {
  const int64_t total = static_cast<int64_t>(q.groups) * q.k_pad * q.n_pad;
  CUCONV_KERNEL_LOOP(index, total) {
    const int co = static_cast<int>(index % q.n_pad);
    const int64_t gk = index / q.n_pad;
    const int k = static_cast<int>(gk % q.k_pad);
    const int g = static_cast<int>(gk / q.k_pad);
    float value = 0.f;
    if (k < q.k && co < q.n) {
      const int taps = q.taps_h * q.taps_w;
      const int ci = k / taps, tap = k - ci * taps;
      const int ti = tap / q.taps_w, tj = tap - ti * q.taps_w;
      value = w[g * w_group + co * w_co + ci * w_ci + ti * w_ti + tj * w_tj + w_base];
    }
    packed[index] = value;
  }
}

template <typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1)
    gather_conv_kernel(const float* __restrict__ src, const float* __restrict__ packed, const float* __restrict__ bias,
                       float* __restrict__ out, float* __restrict__ partial, const GatherConv q) {
  constexpr int BM = Tile::kBlockM, BN = Tile::kBlockN, BK = Tile::kBlockK;
  CUCONV_SHARED(a_tile, float[Tile::kStages][BK][BM]);
  CUCONV_SHARED(b_tile, float[Tile::kStages][BK][BN]);

  const int n_tiles = ceil_div(q.n, BN);
  const int tile_n = static_cast<int>(blockIdx.x % n_tiles), tile_m = static_cast<int>(blockIdx.x / n_tiles);
  const int group = static_cast<int>(blockIdx.z) / q.splits, split = static_cast<int>(blockIdx.z) % q.splits;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int k_begin = split * q.k_per_split, k_end = min(q.k, k_begin + q.k_per_split);
  const int tid = static_cast<int>(threadIdx.x);
  const int m_total = q.batch * q.rows * q.cols;

  // --- A copies: k = k0 + tid/32 + 8h, rows tid%32 + 32e. A row out of range gets a row origin
  // so far outside the image that every bounds check fails.
  const int a_k = tid / 32;
  const float* a_sample[Tile::kRows];
  int a_row[Tile::kRows], a_col[Tile::kRows];  // a*s_r, b*s_c
  int a_origin[Tile::kRows];                   // a*s_r*src_w + b*s_c
#pragma unroll
  for (int e = 0; e < Tile::kRows; ++e) {
    const int m = m0 + tid % 32 + 32 * e;
    a_sample[e] = src;
    a_row[e] = a_col[e] = -(1 << 30);
    a_origin[e] = 0;
    if (m < m_total) {
      const int per_sample = q.rows * q.cols;
      const int n = m / per_sample, position = m - n * per_sample;
      const int a = position / q.cols, b = position - a * q.cols;
      a_sample[e] = src + n * q.src_sample + static_cast<int64_t>(group) * q.channels * q.src_plane;
      a_row[e] = a * q.s_r;
      a_col[e] = b * q.s_c;
      a_origin[e] = a_row[e] * q.src_w + a_col[e];
    }
  }
  MixedRadix a_tap[Tile::kKs];  // (ci, ti, tj) of this thread's k's
#pragma unroll
  for (int h = 0; h < Tile::kKs; ++h)
    a_tap[h] = MixedRadix::split(k_begin + a_k + h * Tile::kKStride, q.taps_h, q.taps_w);
  const MixedRadix a_step = MixedRadix::split(BK, q.taps_h, q.taps_w);
  int a_next_k = k_begin + a_k;  // the first of them, at the next copy_step
  // --- B copies: 16-byte chunks, rows k0 + tid/kBChunks + 8h, columns n0 + 4*(tid%kBChunks) .. +4
  const int b_row = tid / Tile::kBChunks, b_col = 4 * (tid % Tile::kBChunks);
  const float* b_next = packed + (static_cast<int64_t>(group) * q.k_pad + k_begin + b_row) * q.n_pad + n0 + b_col;
  const bool b_ok = n0 + b_col < q.n_pad;

  auto copy_step = [&](int stage) {
#pragma unroll
    for (int h = 0; h < Tile::kKs; ++h) {
      const bool k_ok = a_next_k + h * Tile::kKStride < k_end;
      const int dh = q.r0 + a_tap[h].mid * q.dr, dw = q.c0 + a_tap[h].inner * q.dc;
      const int offset = a_tap[h].outer * q.src_plane + dh * q.src_w + dw;
#pragma unroll
      for (int e = 0; e < Tile::kRows; ++e) {
        const int ih = a_row[e] + dh, iw = a_col[e] + dw;
        const bool ok = k_ok && static_cast<unsigned>(ih) < static_cast<unsigned>(q.src_h) &&
                        static_cast<unsigned>(iw) < static_cast<unsigned>(q.src_w);
        cp_async<4>(&a_tile[stage][a_k + h * Tile::kKStride][tid % 32 + 32 * e],
                    ok ? a_sample[e] + (a_origin[e] + offset) : src, ok);
      }
      a_tap[h].advance(a_step, q.taps_h, q.taps_w);
    }
#pragma unroll
    for (int h = 0; h < 2; ++h)
      cp_async<16>(&b_tile[stage][b_row + 8 * h][b_col], b_ok ? b_next + 8 * h * q.n_pad : packed, b_ok);
    b_next += BK * q.n_pad;
    a_next_k += BK;
  };

  // --- this lane's accumulators: rows warp_m + lane_m + {0..3, 32..35}, columns warp_n + lane_n + {0..3, 16..19}
  const int lane = tid % 32, warp = tid / 32;
  const int row_base = (warp % 2) * Tile::kWarpM + (lane % 8) * 4;
  const int col_base = (warp / 2) * Tile::kWarpN + (lane / 8) * 4;
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  const int k_steps = k_end > k_begin ? ceil_div(k_end - k_begin, BK) : 0;
  run_pipeline<Tile::kStages>(k_steps, copy_step, [&](int stage) {
    multiply_stage<BK>(a_tile[stage], b_tile[stage], row_base, col_base, [](int, int r) { return r; }, acc);
  });

  // --- epilogue, staged through shared memory: per pass of 32 output channels, the warps that hold
  // them write their accumulators (+ bias) to stage[channel][row], then each warp stores whole
  // channel rows, a lane 4 consecutive output positions. Consecutive positions of one sample are
  // consecutive addresses in a dense NCHW output, so the lanes' groups of 4 are placed at the
  // row's first 16-byte boundary and stored as float4 wherever they do not cross a sample; the
  // rest (a row's head, sample ends, the strided positions of a stride phase) element by element.
  // With split-K the slice goes to `partial` (out's layout), the bias with slice 0.
  if (partial != nullptr) out = partial + split * q.out_numel;
  if (split != 0) bias = nullptr;
  constexpr int kPassChannels = 32, kStageRow = BM + 4;
  static_assert(kPassChannels * kStageRow <= Tile::kStages * BK * BM, "the stage fits in A's pipeline tiles");
  float (*stage)[kStageRow] = reinterpret_cast<float (*)[kStageRow]>(&a_tile[0][0][0]);
  const int per_sample = q.rows * q.cols;
  const bool dense = q.row_step == 1 && q.col_step == 1 && q.row0 == 0 && q.col0 == 0 && q.cols == q.out_w;
  auto offset_of = [&](int m, int co) {  // out's element of output position m, channel co of the group
    const int n = m / per_sample, position = m - n * per_sample;
    const int a = position / q.cols, b = position - a * q.cols;
    return n * q.out_sample + static_cast<int64_t>(group * q.n + co) * q.out_plane +
           (q.row0 + a * q.row_step) * q.out_w + q.col0 + b * q.col_step;
  };
  for (int pass = 0; pass < BN / kPassChannels; ++pass) {
    __syncthreads();  // the pipeline's (or the last pass's) reads of this memory are done
    if (col_base / kPassChannels == pass) {  // this warp's 32 columns are the pass's
#pragma unroll
      for (int j = 0; j < 8; ++j) {
        const int column = col_base % kPassChannels + (j / 4) * 16 + j % 4;
        const int co = n0 + pass * kPassChannels + column;
        const float bias_value = bias != nullptr && co < q.n ? bias[group * q.n + co] : 0.f;
#pragma unroll
        for (int i = 0; i < 8; ++i) stage[column][row_base + (i / 4) * 32 + i % 4] = acc[i][j] + bias_value;
      }
    }
    __syncthreads();  // the pass's tile is complete
    for (int column = warp; column < kPassChannels; column += Tile::kWarps) {
      const int co = n0 + pass * kPassChannels + column;
      if (co >= q.n) continue;
      // groups of 4 start at the row's first 16-byte boundary (dense outputs; a split-K slice may
      // start anywhere) or at 0
      const int head =
          dense ? static_cast<int>((16 - reinterpret_cast<uintptr_t>(out + offset_of(m0, co)) % 16) % 16 / 4) : 0;
      if (lane < head && m0 + lane < m_total) out[offset_of(m0 + lane, co)] = stage[column][lane];
      const int first = head + 4 * lane;  // this lane's group: rows first .. first + 3 of the tile
      if (first >= BM) continue;
      const int m = m0 + first;
      const int count = min(4, min(BM - first, m_total - m));
      if (count <= 0) continue;
      const int64_t offset = offset_of(m, co);
      if (dense && count == 4 && (m % per_sample) + 3 < per_sample &&
          reinterpret_cast<uintptr_t>(out + offset) % 16 == 0) {
        *reinterpret_cast<float4*>(out + offset) = make_float4(stage[column][first], stage[column][first + 1],
                                                               stage[column][first + 2], stage[column][first + 3]);
      } else {
        for (int e = 0; e < count; ++e) out[offset_of(m + e, co)] = stage[column][first + e];
      }
    }
  }
}

// Runs the gather convolution with the packed W over all groups in tiles of Tile, K split
// (split_k_slices, resident blocks: 16 warps' worth) when the tiles fill less than two waves:
// into slices of its own, summed into `out` here, or with `phases`, into the phases' shared ones.
template <typename Tile>
void launch_tiles(GatherConv q, const float* src, const Tensor& packed, const float* bias, Tensor& out,
                  PhaseSplits* phases, int sm_count, cuda_detail::Stream stream) {
  const int64_t m = static_cast<int64_t>(q.batch) * q.rows * q.cols;
  const int64_t tiles = ceil_div<int64_t>(m, Tile::kBlockM) * ceil_div(q.n, Tile::kBlockN);
  CUCONV_CHECK(tiles <= cuda_detail::kMaxInt32Index && q.groups <= cuda_detail::max_grid_yz(),
               "cuconv: convolution too large for one launch");
  if (tiles == 0) return;
  const int k = phases != nullptr ? std::max(q.k, phases->longest_k) : q.k;
  const int wanted = split_k_slices(tiles * q.groups, ceil_div(k, Tile::kBlockK), out.numel(), sm_count,
                                    std::max(1, 16 / Tile::kWarps));
  const KSlices slices = k_slices(phases, out, std::min(wanted, cuda_detail::max_grid_yz() / q.groups));
  q.splits = slices.count;
  q.k_per_split = ceil_div(ceil_div(std::max(q.k, 1), q.splits), Tile::kBlockK) * Tile::kBlockK;
  q.out_numel = out.numel();
  last_kernels().tile = Tile::kName;
  cuda_detail::launch(gather_conv_kernel<Tile>,
                      dim3(static_cast<unsigned int>(tiles), 1, static_cast<unsigned int>(q.groups * q.splits)),
                      Tile::kThreads, 0, stream, src, packed.const_data_ptr<float>(), bias, out.mutable_data_ptr<float>(),
                      slices.partial, q);
  if (slices.own.defined()) finish_partials(slices.own, out, q.splits, stream);
}

// Packs W for `q` and runs the gather convolution over all groups, in the tile configuration of
// this table (by N, the output channels per group; blocks of 128 output positions):
//   N > 64: 128 x 128 (8 warps)    32 < N <= 64: 128 x 64 (4 warps)    N <= 32: 128 x 32 (2 warps)
// so that no more than half of a tile's columns is padding.
void launch_gather(GatherConv q, const float* src, const float* w, const float* bias, Tensor& out, PhaseSplits* phases,
                   int sm_count, int64_t w_group, int w_co, int w_ci, int w_ti, int w_tj, int w_base,
                   cuda_detail::Stream stream) {
  constexpr int BK = SimtTile<128>::kBlockK;
  q.k_pad = std::max(ceil_div(q.k, BK), 1) * BK;
  q.n_pad = ceil_div(q.n, 4) * 4;
  Tensor packed = cuda_detail::new_output(out, {q.groups, q.k_pad, q.n_pad});
  const int64_t total = packed.numel();
  cuda_detail::launch(pack_weight_kernel, cuda_detail::grid_stride_blocks(total), cuda_detail::kThreadsPerBlock, 0,
                      stream, w, packed.mutable_data_ptr<float>(), q, w_group, w_co, w_ci, w_ti, w_tj, w_base);
  if (q.n > 64) {
    launch_tiles<SimtTile<128>>(q, src, packed, bias, out, phases, sm_count, stream);
  } else if (q.n > 32) {
    launch_tiles<SimtTile<64>>(q, src, packed, bias, out, phases, sm_count, stream);
  } else {
    launch_tiles<SimtTile<32>>(q, src, packed, bias, out, phases, sm_count, stream);
  }
}


// --- The weight gradient, per group g and split s:
//     partial[s, g*O_g + o, (c, i, j)] = sum over this split's pixels k = (n, oh, ow) of A[o, k] B[k, (c, i, j)]
//     A[o, k] = dy[n, g*O_g + o, oh, ow],  B[k, (c, i, j)] = x[n, g*C_g + c, oh*sH - pH + i*dH, ow*sW - pW + j*dW]
// The same warp tiles and pipeline as gather_conv_kernel, in block tiles of BlockM x 128:
// 128 x 128 (8 warps, 2 along o), or 64 x 128 (4 warps, 1 along o) for layers of at most 64
// output channels a group, which would leave half of a 128-row tile's products on zero rows (the
// book's VGG and ResNet-18's first stage; on an H200 those weight gradients took 2.0-3.5x cuDNN's
// time, against 1.8-2.2x for 128+ channels). Both operands are read along K (consecutive pixels
// are consecutive addresses), so a thread copies, at k = k0 + t%8 and k0 + t%8 + 8, rows
// t/8 + (threads/8)e of A (output channels) and columns t/8 + (threads/8)e of B ((c, i, j), fixed
// for the K loop): 8 consecutive pixels a row, 32-byte segments. Element r of shared row k is
// stored at r ^ 4*(k % 8): the 8 k x 4 rows a warp stores fall in 32 different banks, and a
// lane's 4 consecutive rows stay one aligned float4 for the reads.
template <int BlockM>
struct WeightGradTile {
  static constexpr int kBlockM = BlockM, kBlockN = 128, kBlockK = 16, kStages = 3;
  static constexpr int kWarpM = 64, kWarpN = 32, kWarpsM = BlockM / kWarpM;
  static constexpr int kThreads = 32 * kWarpsM * (kBlockN / kWarpN);
  static constexpr int kCopyStride = kThreads / 8;            // rows apart a thread's copies are
  static constexpr int kARows = kBlockM / kCopyStride;        // 4: a thread's A rows at each of its 2 k's
  static constexpr int kBColumns = kBlockN / kCopyStride;     // 4 or 8: its B columns
  static constexpr const char* kName = BlockM == 128 ? "128x128" : "64x128";
};
struct WeightGradConv {
  int batch, in_h, in_w, in_plane, out_h, out_w, out_plane;
  int64_t in_sample, out_sample;
  int kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  int in_per_group, out_per_group;
  int m, n, k;  // O_g, C_g*kH*kW, N*Ho*Wo
  int splits, k_per_split;
  int64_t partial_stride;  // one split's slice: C_out*C_g*kH*kW
};

template <typename Tile>
__global__ void __launch_bounds__(Tile::kThreads, 1)
    weight_grad_kernel(const float* __restrict__ dy, const float* __restrict__ x, float* __restrict__ partial,
                       const WeightGradConv q) {
  constexpr int BM = Tile::kBlockM, BN = Tile::kBlockN, BK = Tile::kBlockK;
  constexpr int kARows = Tile::kARows, kBColumns = Tile::kBColumns, kCopyStride = Tile::kCopyStride;
  CUCONV_SHARED(a_tile, float[Tile::kStages][BK][BM]);
  CUCONV_SHARED(b_tile, float[Tile::kStages][BK][BN]);
  auto swizzle = [](int k, int r) { return r ^ ((k & 7) << 2); };

  const int n_tiles = ceil_div(q.n, BN);
  const int tile_n = static_cast<int>(blockIdx.x % n_tiles), tile_m = static_cast<int>(blockIdx.x / n_tiles);
  const int group = static_cast<int>(blockIdx.z) / q.splits, split = static_cast<int>(blockIdx.z) % q.splits;
  const int m0 = tile_m * BM, n0 = tile_n * BN;
  const int k_begin = split * q.k_per_split, k_end = min(q.k, k_begin + q.k_per_split);
  const int tid = static_cast<int>(threadIdx.x);

  // --- copies: k = k0 + tid%8 + 8h, rows / columns tid/8 + kCopyStride*e
  const int copy_k = tid % 8, copy_row = tid / 8;
  const float* a_row[kARows];  // dy[0, g*O_g + o]; rows past O_g read nothing
  bool a_ok[kARows];
#pragma unroll
  for (int e = 0; e < kARows; ++e) {
    const int o = m0 + copy_row + kCopyStride * e;
    a_ok[e] = o < q.m;
    a_row[e] = dy + static_cast<int64_t>(group * q.out_per_group + (a_ok[e] ? o : 0)) * q.out_plane;
  }
  int b_channel[kBColumns], b_dh[kBColumns], b_dw[kBColumns];  // c*H*W and the tap's offsets; columns past N: dh far outside
#pragma unroll
  for (int e = 0; e < kBColumns; ++e) {
    const int col = n0 + copy_row + kCopyStride * e;
    const int taps = q.kernel_h * q.kernel_w;
    const int c = col / taps, tap = col - c * taps;
    const int i = tap / q.kernel_w, j = tap - i * q.kernel_w;
    b_channel[e] = (group * q.in_per_group + c) * q.in_plane;
    b_dh[e] = col < q.n ? i * q.dilation_h - q.pad_h : -(1 << 30);
    b_dw[e] = j * q.dilation_w - q.pad_w;
  }
  MixedRadix pixel[2];  // (n, oh, ow) of k0 + tid%8 and of k0 + tid%8 + 8
#pragma unroll
  for (int h = 0; h < 2; ++h) pixel[h] = MixedRadix::split(k_begin + copy_k + 8 * h, q.out_h, q.out_w);
  const MixedRadix pixel_step = MixedRadix::split(BK, q.out_h, q.out_w);
  int next_k = k_begin + copy_k;

  auto copy_step = [&](int stage) {
#pragma unroll
    for (int h = 0; h < 2; ++h) {
      const bool k_ok = next_k + 8 * h < k_end;
      const int64_t dy_offset = pixel[h].outer * q.out_sample + pixel[h].mid * q.out_w + pixel[h].inner;
      const float* x_sample = x + pixel[h].outer * q.in_sample;
      const int ih0 = pixel[h].mid * q.stride_h, iw0 = pixel[h].inner * q.stride_w;
      const int k = copy_k + 8 * h;
#pragma unroll
      for (int e = 0; e < kARows; ++e) {
        const bool a_copy = k_ok && a_ok[e];
        cp_async<4>(&a_tile[stage][k][swizzle(k, copy_row + kCopyStride * e)], a_copy ? a_row[e] + dy_offset : dy,
                    a_copy);
      }
#pragma unroll
      for (int e = 0; e < kBColumns; ++e) {
        const int ih = ih0 + b_dh[e], iw = iw0 + b_dw[e];
        const bool b_copy = k_ok && static_cast<unsigned>(ih) < static_cast<unsigned>(q.in_h) &&
                            static_cast<unsigned>(iw) < static_cast<unsigned>(q.in_w);
        cp_async<4>(&b_tile[stage][k][swizzle(k, copy_row + kCopyStride * e)],
                    b_copy ? x_sample + (b_channel[e] + ih * q.in_w + iw) : x, b_copy);
      }
      pixel[h].advance(pixel_step, q.out_h, q.out_w);
    }
    next_k += BK;
  };

  const int lane = tid % 32, warp = tid / 32;
  const int row_base = (warp % Tile::kWarpsM) * Tile::kWarpM + (lane % 8) * 4;
  const int col_base = (warp / Tile::kWarpsM) * Tile::kWarpN + (lane / 8) * 4;
  float acc[8][8];
#pragma unroll
  for (int i = 0; i < 8; ++i)
#pragma unroll
    for (int j = 0; j < 8; ++j) acc[i][j] = 0.f;

  const int k_steps = k_end > k_begin ? ceil_div(k_end - k_begin, BK) : 0;
  run_pipeline<Tile::kStages>(k_steps, copy_step, [&](int stage) {
    multiply_stage<BK>(a_tile[stage], b_tile[stage], row_base, col_base, swizzle, acc);
  });

  // --- epilogue: row o, runs of 4 columns (16-byte stores where the row length allows)
  float* slice = partial + split * q.partial_stride;
  const bool vector = q.n % 4 == 0;
#pragma unroll
  for (int i = 0; i < 8; ++i) {
    const int o = m0 + row_base + (i / 4) * 32 + i % 4;
    if (o >= q.m) continue;
    float* row = slice + static_cast<int64_t>(group * q.out_per_group + o) * q.n;
#pragma unroll
    for (int run = 0; run < 2; ++run) {
      const int col = n0 + col_base + 16 * run;
      if (vector && col + 3 < q.n) {
        *reinterpret_cast<float4*>(row + col) =
            make_float4(acc[i][4 * run], acc[i][4 * run + 1], acc[i][4 * run + 2], acc[i][4 * run + 3]);
        continue;
      }
#pragma unroll
      for (int j = 0; j < 4; ++j)
        if (col + j < q.n) row[col + j] = acc[i][4 * run + j];
    }
  }
}

}  // namespace

bool forward(const ConvCall& call, const Tensor& x, const Tensor& w, const std::optional<Tensor>& bias, Tensor& y) {
  if (x.scalar_type() != ScalarType::Float) return false;
  const ConvParams& p = call.p;
  GatherConv q;
  q.batch = p.batch, q.groups = call.groups;
  q.channels = p.in_per_group, q.src_h = p.in_h, q.src_w = p.in_w, q.src_plane = p.in_plane;
  q.src_sample = p.in_sample;
  q.rows = p.out_h, q.cols = p.out_w;
  q.s_r = p.stride_h, q.s_c = p.stride_w, q.r0 = -p.pad_h, q.c0 = -p.pad_w, q.dr = p.dilation_h, q.dc = p.dilation_w;
  q.taps_h = p.kernel_h, q.taps_w = p.kernel_w;
  q.n = p.out_per_group, q.k = p.in_per_group * p.taps;
  q.out_sample = p.out_sample, q.out_plane = p.out_plane, q.out_w = p.out_w;
  q.row0 = q.col0 = 0, q.row_step = q.col_step = 1;
  launch_gather(q, x.const_data_ptr<float>(), w.const_data_ptr<float>(),
                bias.has_value() ? bias->const_data_ptr<float>() : nullptr, y, nullptr, call.sm_count,
                static_cast<int64_t>(p.out_per_group) * p.in_per_group * p.taps, p.in_per_group * p.taps, p.taps,
                p.kernel_w, 1, 0, call.stream);
  return true;
}

bool backward_input(const ConvCall& call, const Tensor& dy, const Tensor& w, Tensor& dx) {
  if (dy.scalar_type() != ScalarType::Float) return false;
  const ConvParams& p = call.p;
  for_each_phase_with_taps(p, dx, call.stream, [&](int ph, int pw, const PhaseTaps& th, const PhaseTaps& tw,
                                                   PhaseSplits* phases) {
    GatherConv q;
    q.batch = p.batch, q.groups = call.groups;
    q.channels = p.out_per_group, q.src_h = p.out_h, q.src_w = p.out_w, q.src_plane = p.out_plane;
    q.src_sample = p.out_sample;
    set_phase_geometry(q, p, ph, pw, th, tw);
    q.out_sample = p.in_sample, q.out_plane = p.in_plane, q.out_w = p.in_w;
    // W[g, (o, ti, tj), c] = w[g*O_g + o, c, first_h + ti*step_h, first_w + tj*step_w]
    launch_gather(q, dy.const_data_ptr<float>(), w.const_data_ptr<float>(), nullptr, dx, phases, call.sm_count,
                  static_cast<int64_t>(p.out_per_group) * p.in_per_group * p.taps, p.taps, p.in_per_group * p.taps,
                  th.step * p.kernel_w, tw.step, th.first * p.kernel_w + tw.first, call.stream);
  });
  return true;
}


namespace {

// Launches weight_grad_kernel with Tile over all groups, K split by reduction_splits (blocks
// counted in 256-thread units, so that a 64-row tile's half-size blocks are wanted twice as many).
template <typename Tile>
void launch_weight_grad(WeightGradConv q, const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw) {
  const int64_t tiles = static_cast<int64_t>(ceil_div(q.m, Tile::kBlockM)) * ceil_div(q.n, Tile::kBlockN);
  q.splits = reduction_splits(ceil_div<int64_t>(tiles * call.groups * Tile::kThreads, 256), ceil_div(q.k, Tile::kBlockK),
                              8, kMaxChain / Tile::kBlockK, dw.numel(), cuda_detail::max_grid_yz() / call.groups,
                              call.sm_count);
  q.k_per_split = ceil_div(ceil_div(std::max(q.k, 1), q.splits), Tile::kBlockK) * Tile::kBlockK;
  q.partial_stride = dw.numel();
  CUCONV_CHECK(tiles <= cuda_detail::kMaxInt32Index &&
                   static_cast<int64_t>(call.groups) * q.splits <= cuda_detail::max_grid_yz(),
               "cuconv: weight gradient too large for one launch");
  Tensor partial = partial_buffer(dw, q.splits);
  last_kernels().tile = Tile::kName;
  cuda_detail::launch(weight_grad_kernel<Tile>,
                      dim3(static_cast<unsigned int>(tiles), 1, static_cast<unsigned int>(call.groups * q.splits)),
                      Tile::kThreads, 0, call.stream, dy.const_data_ptr<float>(), x.const_data_ptr<float>(),
                      partial.mutable_data_ptr<float>(), q);
  finish_partials(partial, dw, q.splits, call.stream);
}

}  // namespace

bool backward_weight(const ConvCall& call, const Tensor& dy, const Tensor& x, Tensor& dw) {
  if (dy.scalar_type() != ScalarType::Float) return false;
  const ConvParams& p = call.p;
  WeightGradConv q;
  q.batch = p.batch, q.in_h = p.in_h, q.in_w = p.in_w, q.in_plane = p.in_plane;
  q.out_h = p.out_h, q.out_w = p.out_w, q.out_plane = p.out_plane;
  q.in_sample = p.in_sample, q.out_sample = p.out_sample;
  q.kernel_h = p.kernel_h, q.kernel_w = p.kernel_w, q.stride_h = p.stride_h, q.stride_w = p.stride_w;
  q.pad_h = p.pad_h, q.pad_w = p.pad_w, q.dilation_h = p.dilation_h, q.dilation_w = p.dilation_w;
  q.in_per_group = p.in_per_group, q.out_per_group = p.out_per_group;
  q.m = p.out_per_group, q.n = p.in_per_group * p.taps, q.k = p.batch * p.out_plane;
  if (q.m <= 64) {
    launch_weight_grad<WeightGradTile<64>>(q, call, dy, x, dw);
  } else {
    launch_weight_grad<WeightGradTile<128>>(q, call, dy, x, dw);
  }
  return true;
}

}  // namespace cuconv::conv_cuda::simt
