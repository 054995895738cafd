// 2-D convolution (cross-correlation) on the CPU: im2col into packed GEMM panels,
// multiplied by cuconv's own GEMM (gemm.h).
//
// Index math, for sample n, group g (C_g = C_in/groups input channels, O_g =
// C_out/groups output channels), K = C_g*kH*kW rows and P = H_out*W_out columns:
//
//   columns[(c*kH + i)*kW + j, oh*W_out + ow]
//       = x[n, g*C_g + c, oh*sH - pH + i*dH, ow*sW - pW + j*dW]   (0 in the padding)
//   y[n, g*O_g + o, :] = bias[g*O_g + o] + sum_k W_g[o, k] * columns[k, :]
//
// so the forward pass is the matrix product W_g [O_g, K] @ columns [K, P] per sample
// and group. Backward runs the same products transposed:
//
//   grad_columns = W_g^T @ grad_y[n, g]          then col2im adds them back: grad_x
//   grad_W_g    += grad_y[n, g] @ columns^T
//
// Blocking: the columns are never stored whole. Output rows are taken in blocks,
// counted across samples (row = n*H_out + oh), of about block_columns() pixels, so that
// small images (ResNet's 3x3 layers) still give wide products. For each block, im2col
// writes a slice of K rows straight into the GEMM's packed B panels (pack_columns), or
// for the weight gradient the transposed columns (pack_columns_transposed), and the
// GEMM multiplies the slice while it is in L2. The weights are packed once per call.
//
//                 A (packed once)          B (packed per block)      C
//   forward       W_g      [O_g, K]        columns   [K, block]      y block (in place)
//   input grad    W_g^T    [K, O_g]        grad_y    [O_g, block]    grad_columns -> col2im
//   weight grad   grad_y   [O_g, block]    columns^T [block, K]      partial grad_W_g
//
// Threads: chunks of output rows (forward) or of whole samples (input gradient, whose col2im
// adds neighbouring rows into the same pixels), the next chunk to whichever thread is free
// (parallel.h), so no two threads write the same memory; the weight gradient takes an equal
// run of rows per thread, summed per thread, and the partial sums are added in a fixed
// order, so results are deterministic.
// Half types are packed as float, computed in float and rounded once per element (or, where
// that measures faster, run through the float32 kernels on float32 copies: run_half_types).
// Grouped layers run a GEMM per group, or group by group (run_grouped).
//
// Two layer kinds skip im2col: depthwise layers (depthwise.h, every dtype) and, pass by
// pass, float32 layers that the direct kernels (direct_conv.h), Winograd (winograd.h) or
// the per-pixel products (pixel_gemm.h) run faster (run_float_pass below: measured per
// shape, tuner.h). A strided layer's float32 input gradient may also run by stride phase, as
// forward passes of the phases' taps (stride_phases.h), where that measures faster than col2im.


#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <string>
#include <numeric>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "../shape.h"
#include "conv2d_channels_last.h"
#include "conv2d_integer.h"
#include "depthwise.h"
#include "direct_conv.h"
#include "gemm.h"
#include "parallel.h"
#include "pixel_gemm.h"
#include "streaming.h"
#include "stride_phases.h"
#include "tuner.h"
#include "window.h"
#include "winograd.h"

namespace cuconv {
namespace {

// Output pixels per block, from this CPU's L2 (gemm.h, read at run time): a B slice of
// 256 taps x block columns of float takes 3/8 of it (384 columns in a 1 MiB L2, which stays
// there beside its A slice), a multiple of 48 (every microkernel's NR divides it).
int64_t block_columns() {
  static const int64_t columns = std::clamp<int64_t>(l2_cache_bytes() * 3 / 8 / (256 * 4) / 48 * 48, 96, 1536);
  return columns;
}
// Elements of a block's O_g x block matrix before the block shrinks: a quarter of L2
// (64K floats in a 1 MiB L2).
int64_t product_budget() { return l2_cache_bytes() / 4 / 4; }
// Input-gradient rows (of K) per GEMM before col2im, and weight-gradient taps (of K)
// per packed B: multiples of every microkernel's MR and NR.
constexpr int64_t kGradientRows = 192;
constexpr int64_t kWeightTaps = 192;

// Geometry of one convolution, in plain int64 for the loops below.
struct ConvGeometry {
  int64_t batch, channels_per_group, height, width;
  int64_t out_channels_per_group, kernel_h, kernel_w, out_h, out_w;
  int64_t stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w, groups;

  ConvGeometry(const Conv2dShape& s, IntArrayRef stride, IntArrayRef padding,
               IntArrayRef dilation)
      : batch(s.batch), channels_per_group(s.in_channels / s.groups), height(s.in_h),
        width(s.in_w), out_channels_per_group(s.out_channels / s.groups), kernel_h(s.kernel_h),
        kernel_w(s.kernel_w), out_h(s.out_h), out_w(s.out_w), stride_h(stride[0]),
        stride_w(stride[1]), pad_h(padding[0]), pad_w(padding[1]), dilation_h(dilation[0]),
        dilation_w(dilation[1]), groups(s.groups) {}

  int64_t column_rows() const { return channels_per_group * kernel_h * kernel_w; }
  int64_t out_plane() const { return out_h * out_w; }
  // Output rows per block (counted across samples): about block_columns() pixels, and a
  // whole number of nr-wide B panels where the row width allows. The forward pass and
  // the input gradient (`by_channels`) take fewer where many output channels would make
  // the block's product (forward) or grad_y (input gradient), O_g x block, crowd the
  // other operands out of L2: ResNet's 256- and 512-channel layers ran 5-17% faster.
  int64_t rows_per_block(int64_t nr, bool by_channels) const {
    const int64_t budget = by_channels ? product_budget() / std::max<int64_t>(1, out_channels_per_group) : block_columns();
    // At least 4 tiles' columns, so each A panel (from the whole weight, in L3 or memory where
    // it outgrows L2) serves 4 tiles: a 2048-channel 1x1 product ran 235 -> 313 GFLOP/s on a Xeon.
    const int64_t columns = std::clamp<int64_t>(budget, std::min(4 * nr, block_columns()), block_columns());
    const int64_t aligned = nr / std::gcd(nr, out_w);  // fewest rows that fill whole panels
    const int64_t rows = aligned * out_w <= 2 * columns ? aligned * std::max<int64_t>(1, columns / (aligned * out_w))
                                                        : (columns + out_w - 1) / out_w;
    return std::clamp<int64_t>(rows, 1, std::max<int64_t>(1, batch * out_h));
  }
  // The forward pass's: one whole sample where its pixels fill whole panels and are no more than
  // the block above would hold, so the tiles write straight into y instead of through a product
  // buffer (a block across samples must be copied out: ResNet's 24x24 layers on the GEMM ran
  // ~12% faster on a Xeon); else as above.
  int64_t forward_rows_per_block(int64_t nr) const {
    const int64_t rows = rows_per_block(nr, /*by_channels=*/true);
    return out_plane() % nr == 0 && out_plane() <= rows * out_w ? out_h : rows;
  }
};

// Walks the valid (ih, iw) of column row (c, i, j) for output rows [row_begin, row_end),
// calling visit(column_offset, input_offset, count, step) for each run of valid pixels
// and pad(column_offset, count) for the padding. With stride 1 a run is a whole row.
template <typename Visit, typename Pad>
void for_each_column_row(const ConvGeometry& g, int64_t c, int64_t i, int64_t j, int64_t row_begin,
                         int64_t row_end, Visit visit, Pad pad) {
  const int64_t iw_offset = j * g.dilation_w - g.pad_w;
  // Output columns whose input column lies inside [0, width).
  const auto [ow_lo, ow_hi] = in_bounds_outputs(iw_offset, g.stride_w, g.width, g.out_w);
  for (int64_t oh = row_begin; oh < row_end; ++oh) {
    const int64_t col = (oh - row_begin) * g.out_w;
    const int64_t ih = oh * g.stride_h - g.pad_h + i * g.dilation_h;
    if (ih < 0 || ih >= g.height) {
      pad(col, g.out_w);
      continue;
    }
    const int64_t in_row = (c * g.height + ih) * g.width;
    pad(col, ow_lo);
    visit(col + ow_lo, in_row + ow_lo * g.stride_w + iw_offset, ow_hi - ow_lo, g.stride_w);
    pad(col + ow_hi, g.out_w - ow_hi);
  }
}

// A block is a run of output rows counted across samples, [row_begin, row_end)
// with row = n*H_out + oh; its columns are [K, (row_end-row_begin)*W_out]. A segment
// is the part of a block inside one sample. Segment loops use raw pointers: with
// 3x3 images a block holds dozens of samples.
struct Segment {
  int64_t n, oh_begin, oh_end, column;  // sample, its output rows, first column in the block
  int64_t length(int64_t out_w) const { return (oh_end - oh_begin) * out_w; }
};

template <typename F>
void for_each_segment(const ConvGeometry& g, int64_t row_begin, int64_t row_end, F f) {
  for (int64_t r = row_begin; r < row_end;) {
    const int64_t n = r / g.out_h, oh = r % g.out_h;
    const int64_t oh_end = std::min(g.out_h, oh + (row_end - r));
    f(Segment{n, oh, oh_end, (r - row_begin) * g.out_w});
    r += oh_end - oh;
  }
}

bool single_sample(const ConvGeometry& g, int64_t row_begin, int64_t row_end) {
  return row_begin / g.out_h == (row_end - 1) / g.out_h;
}

// Calls f(row_begin, row_end) for the blocks of `rows` output rows that cut rows
// [first, last) (counted across samples), the last block shorter.
template <typename F>
void for_each_block(int64_t first, int64_t last, int64_t rows, F f) {
  for (int64_t r = first; r < last; r += rows) f(r, std::min(r + rows, last));
}

// The grain of parallel_chunks (parallel.h) over `total` output rows in blocks of `block` rows: a
// whole block, or less where the rows would not give every thread one.
int64_t chunk_grain(int64_t total, int64_t block) {
  const int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  return std::max<int64_t>(1, std::min(block, (total + threads - 1) / threads));
}

// How many equal runs of `rows` output rows the threads take: one per thread.
int64_t thread_parts(int64_t rows) { return std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(torch::stable::get_num_threads()), rows)); }

// Offset into an NCHW-contiguous output: output channel o of group gi of sample n, at row oh.
int64_t output_offset(const ConvGeometry& g, int64_t n, int64_t gi, int64_t o, int64_t oh) {
  return (((n * g.groups + gi) * g.out_channels_per_group + o) * g.out_h + oh) * g.out_w;
}

// ---------------------------------------------------------------------------
// im2col and col2im against packed GEMM operands.
//
// A block's column matrix repeats one pattern per kernel position (i, j): column
// row (c, i, j) reads the same pixels of every input channel c, shifted by c*H*W.
// BlockPlan works the pattern out once per block, as runs of block columns that
// either copy a (strided) input row segment or lie in the padding, cut where a
// run would cross a B panel (nr columns) or an output row. The packers then only
// copy runs: no bounds checks or divisions per pixel.
//
// Small images and strided layers make the runs short (a 3x3 output: runs of 1-3
// pixels), and a loop per run then costs more than its copy. Such blocks also get
// tables of every column's offset (the input pixel per kernel position, -1 in the
// padding, and the grad_y pixel), and the packers read one offset per element instead:
// about 3x faster there, slower than run copies where rows are long.

struct ColumnRun {
  int64_t column, count;  // block columns [column, column + count)
  int64_t source;         // input offset of the first pixel, channel 0 of group 0, from the plan's
                          // input_origin (output runs: from output_origin; padding: unused)
  int64_t panel, lane;    // column / nr and column % nr
};

// Copy runs shorter than this on average (one AVX-512 vector of floats) make a block use
// offset tables. Not a tuned constant: it says where a run stops being a vector copy.
constexpr int64_t kShortRun = 16;
// col2im adds runs of this many values or more (on average) a vector at a time, and takes the
// tables only below: its vectors are 16 bytes (4 floats), whatever the CPU (col2im_add).
constexpr int64_t kShortAddRun = 4;

struct BlockPlan {
  int64_t columns = 0;                           // block width
  std::vector<std::vector<ColumnRun>> copy, pad;  // per kernel position i*kW + j
  std::vector<ColumnRun> output;                 // the block's pixels in grad_y (channel 0 of group 0)
  // Offset tables, when the runs are short (else empty): input[position * columns + column]
  // is the column's input offset from input_origin (-1 in the padding), output[column] its
  // grad_y offset from output_origin, like the runs' sources.
  std::vector<int32_t> input_table, output_table;
  // The offsets of the block's first sample in the input and in grad_y (channel 0 of group 0).
  // Everything above counts from them, so blocks of the same rows of a sample (the same row in
  // the sample and the same length) share a plan: build() then only moves the origins (ResNet's
  // stem, with 49 kernel positions, spent a tenth of its forward building plans).
  int64_t input_origin = 0, output_origin = 0;

  BlockPlan(const ConvGeometry& g) : copy(g.kernel_h * g.kernel_w), pad(g.kernel_h * g.kernel_w) {}

  bool tabled() const { return !output_table.empty(); }
  // Whether col2im should add by the tables: the runs are too short for its vectors.
  bool adds_by_table() const { return tabled() && copied < kShortAddRun * runs; }

  void build(const ConvGeometry& g, int64_t row_begin, int64_t row_end, int64_t nr) {
    const int64_t first = row_begin / g.out_h;  // the block's first sample
    const int64_t sample_in = g.groups * g.channels_per_group * g.height * g.width;
    input_origin = first * sample_in;
    output_origin = output_offset(g, first, 0, 0, 0);
    const int64_t key[3] = {row_begin % g.out_h, row_end - row_begin, nr};
    if (built_for[1] > 0 && std::equal(key, key + 3, built_for)) return;  // the same rows of another sample
    std::copy(key, key + 3, built_for);
    columns = (row_end - row_begin) * g.out_w;
    for (auto& runs : copy) runs.clear();
    for (auto& runs : pad) runs.clear();
    output.clear();
    input_table.clear();
    output_table.clear();
    runs = copied = 0;
    // Appends [column, column + count) cut at panel boundaries; the source moves by `step`.
    auto add = [nr](std::vector<ColumnRun>& runs, int64_t column, int64_t count, int64_t source, int64_t step) {
      while (count > 0) {
        const int64_t piece = std::min(count, nr - column % nr);
        runs.push_back({column, piece, source, column / nr, column % nr});
        column += piece, count -= piece, source += piece * step;
      }
    };
    for_each_segment(g, row_begin, row_end, [&](const Segment& s) {
      const int64_t sample = (s.n - first) * sample_in;
      for (int64_t i = 0; i < g.kernel_h; ++i)
        for (int64_t j = 0; j < g.kernel_w; ++j) {
          const int64_t position = i * g.kernel_w + j;
          for_each_column_row(
              g, /*c=*/0, i, j, s.oh_begin, s.oh_end,
              [&](int64_t col, int64_t src, int64_t count, int64_t step) {
                add(copy[position], s.column + col, count, sample + src, step);
              },
              [&](int64_t col, int64_t count) { add(pad[position], s.column + col, count, 0, 0); });
        }
      add(output, s.column, s.length(g.out_w), output_offset(g, s.n - first, 0, 0, s.oh_begin), 1);
    });
    build_tables(g, row_begin, row_end);
  }

 private:
  int64_t built_for[3] = {0, 0, 0};  // the rows in the sample, their count and nr of the plan built last
  int64_t runs = 0, copied = 0;      // the copy runs, and the columns they hold

  void build_tables(const ConvGeometry& g, int64_t row_begin, int64_t row_end) {
    for (const auto& position : copy) {
      runs += static_cast<int64_t>(position.size());
      for (const ColumnRun& r : position) copied += r.count;
    }
    const int64_t first = row_begin / g.out_h, last = (row_end - 1) / g.out_h;  // the block's samples
    const int64_t sample_in = g.groups * g.channels_per_group * g.height * g.width;
    const int64_t sample_out = g.groups * g.out_channels_per_group * g.out_plane();
    const bool fits = (last - first + 1) * std::max(sample_in, sample_out) <= INT32_MAX;
    if (runs == 0 || copied >= kShortRun * runs || !fits) return;
    input_table.assign(copy.size() * columns, -1);
    for (size_t position = 0; position < copy.size(); ++position)
      for (const ColumnRun& r : copy[position])
        for (int64_t q = 0; q < r.count; ++q)
          input_table[position * columns + r.column + q] = static_cast<int32_t>(r.source + q * g.stride_w);
    output_table.resize(columns);
    for (const ColumnRun& r : output)
      for (int64_t q = 0; q < r.count; ++q) output_table[r.column + q] = static_cast<int32_t>(r.source + q);
  }
};

template <typename acc_t, typename scalar_t>
void copy_run(acc_t* __restrict__ dst, int64_t dst_step, const scalar_t* __restrict__ src, int64_t src_step,
              int64_t count) {
  if (dst_step == 1 && src_step == 1) {  // the common case, kept apart so it vectorises
    for (int64_t q = 0; q < count; ++q) dst[q] = static_cast<acc_t>(src[q]);
  } else if (dst_step == 1 && src_step == 2) {  // stride-2 layers (ResNet's stem): vectorised too, with shuffles
    for (int64_t q = 0; q < count; ++q) dst[q] = static_cast<acc_t>(src[2 * q]);
  } else {
    for (int64_t q = 0; q < count; ++q) dst[q * dst_step] = static_cast<acc_t>(src[q * src_step]);
  }
}

template <typename acc_t>
void zero_run(acc_t* dst, int64_t dst_step, int64_t count) {
  for (int64_t q = 0; q < count; ++q) dst[q * dst_step] = acc_t(0);
}

// dst[q * dst_step] = src[offsets[q]], or 0 where the offset is -1 (the padding), for q < count:
// a tabled block's packing. A function of its own, so that its few pointers stay in registers
// (inlined into the packers' loops they were reloaded from the stack for every element), and
// without a branch on the padding (GCC made the select one, mispredicted at every edge of the
// image: half the packing's time): the value's bits are masked off instead.
template <typename acc_t, typename scalar_t>
[[gnu::noinline]] void gather_run(acc_t* __restrict__ dst, int64_t dst_step, const scalar_t* __restrict__ src,
                                  const int32_t* __restrict__ offsets, int64_t count) {
  using Bits = std::conditional_t<sizeof(acc_t) == 8, uint64_t, uint32_t>;
  static_assert(sizeof(Bits) == sizeof(acc_t));
  for (int64_t q = 0; q < count; ++q) {
    const int32_t offset = offsets[q];
    const acc_t value = static_cast<acc_t>(src[offset < 0 ? 0 : offset]);
    Bits bits;
    std::memcpy(&bits, &value, sizeof bits);
    bits &= Bits(0) - static_cast<Bits>(offset >= 0);  // all ones inside the image, zero in the padding
    std::memcpy(dst + q * dst_step, &bits, sizeof bits);
  }
}

// B panels (depth `depth`) of column rows [k0, k0 + depth) of the planned block:
// element (k - k0, col) = columns[k, col]. `x` points at the group's channel 0.
template <typename acc_t, typename scalar_t>
void pack_columns(const ConvGeometry& g, const BlockPlan& plan, const scalar_t* x, int64_t k0, int64_t depth,
                  int64_t nr, acc_t* b, GatherKernel<acc_t> gather) {
  const int64_t positions = g.kernel_h * g.kernel_w, plane = g.height * g.width;
  zero_last_b_panel(b, nr, depth, plan.columns);
  if (plan.tabled()) {
    for (int64_t k = k0; k < k0 + depth; ++k) {
      const scalar_t* x_channel = x + k / positions * plane + plan.input_origin;
      const int32_t* offsets = plan.input_table.data() + k % positions * plan.columns;
      for (int64_t p0 = 0; p0 < plan.columns; p0 += nr) {
        acc_t* lane = b + (p0 / nr * depth + k - k0) * nr;
        const int64_t count = std::min(nr, plan.columns - p0);
        if constexpr (std::is_same_v<scalar_t, acc_t>) {
          if (gather != nullptr) {
            gather(lane, x_channel, offsets + p0, count);
            continue;
          }
        }
        gather_run(lane, 1, x_channel, offsets + p0, count);
      }
    }
    return;
  }
  for (int64_t k = k0; k < k0 + depth; ++k) {
    const int64_t position = k % positions, row = k - k0;
    const scalar_t* x_channel = x + k / positions * plane + plan.input_origin;
    for (const ColumnRun& r : plan.copy[position])
      copy_run(b + (r.panel * depth + row) * nr + r.lane, 1, x_channel + r.source, g.stride_w, r.count);
    for (const ColumnRun& r : plan.pad[position]) zero_run(b + (r.panel * depth + row) * nr + r.lane, 1, r.count);
  }
}

// B panels of the transposed columns, for the weight gradient: depth = the block's
// pixels, N = column rows [k0, k0 + taps); element (col, k - k0) = columns[k, col].
template <typename acc_t, typename scalar_t>
void pack_columns_transposed(const ConvGeometry& g, const BlockPlan& plan, const scalar_t* x, int64_t k0,
                             int64_t taps, int64_t nr, acc_t* b) {
  const int64_t positions = g.kernel_h * g.kernel_w, plane = g.height * g.width, depth = plan.columns;
  zero_last_b_panel(b, nr, depth, taps);
  if (plan.tabled()) {
    for (int64_t k = k0; k < k0 + taps; ++k) {
      const scalar_t* x_channel = x + k / positions * plane + plan.input_origin;
      const int32_t* offsets = plan.input_table.data() + k % positions * plan.columns;
      acc_t* lane = b + packed_index(0, k - k0, nr, depth);
      for (int64_t col = 0; col < depth; ++col) {  // (inline, a branch on the padding: gather_run measured 10% slower here)
        const int32_t offset = offsets[col];
        lane[col * nr] = offset < 0 ? acc_t(0) : static_cast<acc_t>(x_channel[offset]);
      }
    }
    return;
  }
  for (int64_t k = k0; k < k0 + taps; ++k) {
    const int64_t position = k % positions;
    const scalar_t* x_channel = x + k / positions * plane + plan.input_origin;
    acc_t* lane = b + packed_index(0, k - k0, nr, depth);  // this column row's lane of its panel
    for (const ColumnRun& r : plan.copy[position])
      copy_run(lane + r.column * nr, nr, x_channel + r.source, g.stride_w, r.count);
    for (const ColumnRun& r : plan.pad[position]) zero_run(lane + r.column * nr, nr, r.count);
  }
}

// One channel of grad_y at the block's pixels (`dy_channel` points at its sample 0), into
// a packed operand: column col goes to dst[col / per * panel_step + col % per * step].
// (B panels of the input gradient: per = nr, step 1; an A lane of the weight gradient:
// per = the block, step mr.)
template <typename acc_t, typename scalar_t>
void pack_output_channel(const BlockPlan& plan, const scalar_t* dy_channel, acc_t* dst, int64_t per,
                         int64_t panel_step, int64_t step) {
  if (plan.tabled()) {
    const scalar_t* src = dy_channel + plan.output_origin;
    for (int64_t p0 = 0; p0 < plan.columns; p0 += per)
      gather_run(dst + p0 / per * panel_step, step, src, plan.output_table.data() + p0, std::min(per, plan.columns - p0));
    return;
  }
  for (const ColumnRun& r : plan.output)  // runs never cross a panel of nr columns, so neither one of `per`
    copy_run(dst + r.column / per * panel_step + r.column % per * step, step, dy_channel + plan.output_origin + r.source,
             1, r.count);
}

// d[2q] += s[q] for q < count (a run of a stride-2 layer), a 16-byte vector of s at a time,
// spread over the even lanes of two vectors of d with +0 in the odd ones (element by element,
// the compiler's loop or the tables, col2im took 1.6-1.9x as long in dcgan.g4's input
// gradient). The odd lanes hold the pixels between the run's: v + +0 leaves each as it is, as
// col2im's sums start at +0 and are never -0 (and NaN + 0 is the NaN). The last odd lane lies
// past the run's last pixel, so the vectors stop one value short unless `room` says that pixel
// is in the row (past it, it may be another thread's sample, or past the tensor).
template <typename acc_t>
void add_run_stride_2(acc_t* __restrict__ d, const acc_t* __restrict__ s, int64_t count, bool room) {
  typedef acc_t Vector __attribute__((vector_size(16)));
  constexpr int64_t L = 16 / sizeof(acc_t);
  const Vector zero = {};
  int64_t q = 0;
  for (; q + L <= count - (room ? 0 : 1); q += L) {
    Vector v, low, high;
    __builtin_memcpy(&v, s + q, sizeof v);
    Vector even_low, even_high;  // values q .. q + L/2 - 1 and the rest, each followed by +0
    if constexpr (L == 4) {
      even_low = __builtin_shufflevector(v, zero, 0, 4, 1, 4);
      even_high = __builtin_shufflevector(v, zero, 2, 4, 3, 4);
    } else {
      even_low = __builtin_shufflevector(v, zero, 0, 2);
      even_high = __builtin_shufflevector(v, zero, 1, 2);
    }
    __builtin_memcpy(&low, d + 2 * q, sizeof low);
    __builtin_memcpy(&high, d + 2 * q + L, sizeof high);
    low += even_low;
    high += even_high;
    __builtin_memcpy(d + 2 * q, &low, sizeof low);
    __builtin_memcpy(d + 2 * q + L, &high, sizeof high);
  }
  for (; q < count; ++q) d[2 * q] += s[q];
}

// grad_x += col2im of column rows [k_begin, k_end) of the planned block: each entry
// goes back to the pixel it came from. `columns` holds row k at (k - k_begin)*columns
// of the block; `grad_x` points at the group's channel 0 of the sample at input offset
// `origin` (plan offsets count from sample 0, so a one-sample buffer passes its sample's).
// grad_x is of the op-math type (float for half types, which would round after every
// kernel tap: gemm_backward_input sums those in a float buffer), and holds +0 where no
// column has reached it yet. Each pixel takes its columns in the order of k, whichever way the
// runs go: the same bits by runs or by tables.
template <typename acc_t>
void col2im_add(const ConvGeometry& g, const BlockPlan& plan, const acc_t* columns, int64_t k_begin,
                int64_t k_end, int64_t origin, acc_t* grad_x) {
  const int64_t positions = g.kernel_h * g.kernel_w, plane = g.height * g.width;
  for (int64_t k = k_begin; k < k_end; ++k) {
    const acc_t* row = columns + (k - k_begin) * plan.columns;
    const int64_t channel = k / positions * plane - origin;
    if (plan.adds_by_table()) {  // one input pixel per column at a given position: no two columns collide
      acc_t* d = grad_x + channel + plan.input_origin;
      const int32_t* offsets = plan.input_table.data() + k % positions * plan.columns;
      for (int64_t col = 0; col < plan.columns; ++col)
        if (offsets[col] >= 0) d[offsets[col]] += row[col];
      continue;
    }
    for (const ColumnRun& r : plan.copy[k % positions]) {
      acc_t* __restrict__ d = grad_x + (channel + plan.input_origin + r.source);
      const acc_t* __restrict__ s = row + r.column;
      if (g.stride_w == 1) {  // the common case, kept apart so it vectorises
        for (int64_t q = 0; q < r.count; ++q) d[q] += s[q];
      } else if (g.stride_w == 2) {  // (a source counts from a sample's start: % width is its column)
        add_run_stride_2(d, s, r.count, r.source % g.width + 2 * r.count - 1 < g.width);
      } else {
        for (int64_t q = 0; q < r.count; ++q) d[q * g.stride_w] += s[q];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// The three products (see the table at the top).

template <typename acc_t, typename scalar_t>
std::vector<acc_t> to_acc(const scalar_t* data, int64_t count) {
  return std::vector<acc_t>(data, data + count);
}

// The weights of every group as A panels (pack_a, gemm.h), on all threads: ResNet's last
// layers hold 5-10 MB of them, packed on every call. Group gi's rows start at
// src + gi * group_stride and its panels at dst + gi * group_size.
template <typename acc_t, typename scalar_t>
void pack_weights(const ConvGeometry& g, acc_t* dst, int64_t group_size, int64_t mr, int64_t depth, const scalar_t* src,
                  int64_t group_stride, int64_t rows, int64_t row_stride, int64_t col_stride) {
  const int64_t panels = (rows + mr - 1) / mr;
  const int64_t grain = std::max<int64_t>(1, (int64_t{1} << 16) / (mr * depth));  // small weights: one thread
  torch::stable::parallel_for(0, g.groups * panels, grain, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t gi = item / panels, m0 = item % panels * mr;
      pack_a(dst + gi * group_size + m0 * depth, mr, depth, src + gi * group_stride + m0 * row_stride,
             std::min(mr, rows - m0), row_stride, col_stride);
    }
  });
}

// bfloat16 products on pairs (gemm.h, PairMicrokernel), where the CPU has them: the packers
// write float panels as for every type, narrow_to_pairs turns them into pairs, and the pair
// tiles run instead of the float ones. For other types (and CPUs) the tile is null.
template <typename scalar_t>
PairMicrokernel pair_microkernel_for(const Microkernel<opmath_t<scalar_t>>& kernel) {
  if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) return cpu_pair_microkernel(kernel);
  else return {};
}

// `count` float panels of `width` lanes and depth `depth`, one after another, narrowed to pairs
// in `pairs` (resized to fit); returns their data. (Compiled for every type's panels, called
// only where a pair tile runs: on float panels.)
template <typename acc_t>
uint16_t* narrowed(PackedBuffer<uint16_t>& pairs, const acc_t* panels, int64_t count, int64_t width, int64_t depth) {
  if constexpr (std::is_same_v<acc_t, float>) {
    pairs.resize(count * pair_panel_size(width, depth));
    narrow_to_pairs(panels, count, depth * width, width, depth, pairs.data());
  }
  return pairs.data();
}

int64_t panels_of(int64_t count, int64_t width) { return (count + width - 1) / width; }

template <typename scalar_t>
void gemm_forward(const ConvGeometry& g, const scalar_t* x, const scalar_t* w, const scalar_t* bias, scalar_t* y) {
  using acc_t = opmath_t<scalar_t>;
  const Microkernel<acc_t> kernel = cpu_microkernel<acc_t>();
  const PairMicrokernel pairs = pair_microkernel_for<scalar_t>(kernel);
  note_kernel_use(KernelPath::kGemm, pairs.tile != nullptr ? pairs.isa : kernel.isa);
  const int64_t K = g.column_rows(), O = g.out_channels_per_group, rows = g.forward_rows_per_block(kernel.nr);
  const int64_t a_size = packed_size(O, kernel.mr, K);
  PackedBuffer<acc_t> a(g.groups * a_size);
  pack_weights(g, a.data(), a_size, kernel.mr, K, w, O * K, O, K, 1);
  PackedBuffer<uint16_t> a_pairs;  // (every group's panels, as a)
  if (pairs.tile != nullptr) narrowed(a_pairs, a.data(), g.groups * panels_of(O, kernel.mr), kernel.mr, K);
  const int64_t a_pair_size = panels_of(O, kernel.mr) * pair_panel_size(kernel.mr, K);
  const std::vector<acc_t> bias_acc = bias ? to_acc<acc_t>(bias, g.groups * O) : std::vector<acc_t>();

  const int64_t group_in = g.channels_per_group * g.height * g.width;

  // Threads take chunks of output rows (parallel.h; batch 1 splits too), cut into blocks: no two
  // write the same output row.
  const int64_t total_rows = g.batch * g.out_h;
  parallel_chunks(0, total_rows, chunk_grain(total_rows, rows), [&](ChunkQueue& chunks) {
    BlockPlan plan(g);
    PackedBuffer<acc_t> b(packed_size(rows * g.out_w, kernel.nr, kernel.depth));
    PackedBuffer<uint16_t> b_pairs;
    PackedBuffer<acc_t> c;  // the block's [O_g, block] product when it cannot go straight into y
    for (int64_t first, last; chunks.next(first, last);) {
      for_each_block(first, last, rows, [&](int64_t r0, int64_t r1) {
        plan.build(g, r0, r1, kernel.nr);
        const int64_t block = plan.columns;
        // Within one sample, in the output's own type, the tiles write straight into y.
        const bool in_place = std::is_same_v<scalar_t, acc_t> && single_sample(g, r0, r1);
        for (int64_t gi = 0; gi < g.groups; ++gi) {
          acc_t* out = nullptr;
          int64_t ldc = 0;
          if constexpr (std::is_same_v<scalar_t, acc_t>) {
            out = y + output_offset(g, r0 / g.out_h, gi, 0, r0 % g.out_h);
            ldc = g.out_plane();
          }
          if (!in_place) {
            c.resize(O * block);
            out = c.data();
            ldc = block;
          }
          for (int64_t k0 = 0; k0 < K; k0 += kernel.depth) {
            const int64_t depth = std::min(kernel.depth, K - k0);
            pack_columns(g, plan, x + gi * group_in, k0, depth, kernel.nr, b.data(), kernel.gather);
            const acc_t* row_bias = k0 == 0 && bias ? bias_acc.data() + gi * O : nullptr;
            if constexpr (std::is_same_v<acc_t, float>) {
              if (pairs.tile != nullptr) {
                gemm_packed_pairs(pairs, O, block, depth, a_pairs.data() + gi * a_pair_size + k0 * kernel.mr,
                                  pair_panel_size(kernel.mr, K),
                                  narrowed(b_pairs, b.data(), panels_of(block, kernel.nr), kernel.nr, depth),
                                  pair_panel_size(kernel.nr, depth), out, ldc, /*accumulate=*/k0 > 0, row_bias);
                continue;
              }
            }
            gemm_packed(kernel, O, block, depth, a.data() + gi * a_size + k0 * kernel.mr, K * kernel.mr, b.data(),
                        depth * kernel.nr, out, ldc, /*accumulate=*/k0 > 0, row_bias);
          }
          if (in_place) continue;
          for_each_segment(g, r0, r1, [&](const Segment& s) {
            for (int64_t o = 0; o < O; ++o) {
              const acc_t* src = c.data() + o * block + s.column;
              scalar_t* dst = y + output_offset(g, s.n, gi, o, s.oh_begin);
              for (int64_t q = 0; q < s.length(g.out_w); ++q) dst[q] = static_cast<scalar_t>(src[q]);
            }
          });
        }
      });
    }
  });
}

// dx need not be initialised: each sample is zeroed just before its first block adds into it,
// while it is still in cache (zeroing the whole tensor first left col2im's first adds to each
// line waiting on memory: the input gradients of transposed and stride-2 layers took 1.05-1.25x
// as long).
template <typename scalar_t>
void gemm_backward_input(const ConvGeometry& g, const scalar_t* dy, const scalar_t* w, scalar_t* dx) {
  using acc_t = opmath_t<scalar_t>;
  // Half types: each sample's gradient is summed in a float buffer and rounded once
  // (adding every kernel tap into a half-typed dx would round kH*kW times).
  constexpr bool kRoundOnce = !std::is_same_v<scalar_t, acc_t>;
  const Microkernel<acc_t> kernel = cpu_microkernel<acc_t>();
  const PairMicrokernel pairs = pair_microkernel_for<scalar_t>(kernel);
  note_kernel_use(KernelPath::kGemm, pairs.tile != nullptr ? pairs.isa : kernel.isa);
  const int64_t K = g.column_rows(), O = g.out_channels_per_group, rows = g.rows_per_block(kernel.nr, /*by_channels=*/true);
  const int64_t group_in = g.channels_per_group * g.height * g.width, group_out = O * g.out_plane();
  const int64_t sample_in = g.groups * group_in;
  if (O == 0) {  // no output channels: the input gradient is zero
    std::fill(dx, dx + g.batch * sample_in, scalar_t(0));
    return;
  }
  // A = W_g^T: element (k, o) = w[o*K + k], depth O_g.
  const int64_t a_size = packed_size(K, kernel.mr, O);
  PackedBuffer<acc_t> a(g.groups * a_size);
  pack_weights(g, a.data(), a_size, kernel.mr, O, w, O * K, K, 1, K);
  PackedBuffer<uint16_t> a_pairs;
  if (pairs.tile != nullptr) narrowed(a_pairs, a.data(), g.groups * panels_of(K, kernel.mr), kernel.mr, O);
  const int64_t a_pair_size = panels_of(K, kernel.mr) * pair_panel_size(kernel.mr, O);

  // Threads take chunks of whole samples (parallel.h): col2im of neighbouring rows adds into the
  // same pixels.
  parallel_chunks(0, g.batch, 1, [&](ChunkQueue& chunks) {
    BlockPlan plan(g);
    PackedBuffer<acc_t> b(packed_size(rows * g.out_w, kernel.nr, O));
    PackedBuffer<uint16_t> b_pairs;
    PackedBuffer<acc_t> grad_columns(kGradientRows * rows * g.out_w);
    // grad_x of output rows [r0, r1) added into `target`, which holds the input from offset `origin` on.
    auto add_block = [&](int64_t r0, int64_t r1, acc_t* target, int64_t origin) {
      plan.build(g, r0, r1, kernel.nr);
      const int64_t block = plan.columns;
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        // B = grad_y of the block, [O_g, block], packed whole (depth O_g).
        zero_last_b_panel(b.data(), kernel.nr, O, block);
        for (int64_t o = 0; o < O; ++o)
          pack_output_channel(plan, dy + gi * group_out + o * g.out_plane(), b.data() + o * kernel.nr, kernel.nr,
                              O * kernel.nr, 1);
        if (pairs.tile != nullptr) narrowed(b_pairs, b.data(), panels_of(block, kernel.nr), kernel.nr, O);
        for (int64_t m0 = 0; m0 < K; m0 += kGradientRows) {
          const int64_t m_count = std::min(kGradientRows, K - m0);
          for (int64_t o0 = 0; o0 < O; o0 += kernel.depth) {
            const int64_t depth = std::min(kernel.depth, O - o0);
            if constexpr (std::is_same_v<acc_t, float>) {
              if (pairs.tile != nullptr) {
                gemm_packed_pairs(pairs, m_count, block, depth,
                                  a_pairs.data() + gi * a_pair_size + m0 / kernel.mr * pair_panel_size(kernel.mr, O) +
                                      o0 * kernel.mr,
                                  pair_panel_size(kernel.mr, O), b_pairs.data() + o0 * kernel.nr,
                                  pair_panel_size(kernel.nr, O), grad_columns.data(), block, /*accumulate=*/o0 > 0,
                                  nullptr);
                continue;
              }
            }
            gemm_packed(kernel, m_count, block, depth, a.data() + gi * a_size + m0 * O + o0 * kernel.mr, O * kernel.mr,
                        b.data() + o0 * kernel.nr, O * kernel.nr, grad_columns.data(), block, /*accumulate=*/o0 > 0,
                        nullptr);
          }
          col2im_add(g, plan, grad_columns.data(), m0, m0 + m_count, origin, target + gi * group_in);
        }
      }
    };
    std::vector<acc_t> sample(kRoundOnce ? sample_in : 0);
    for (int64_t n_begin, n_end; chunks.next(n_begin, n_end);) {
      if constexpr (kRoundOnce) {
        for (int64_t n = n_begin; n < n_end; ++n) {
          std::fill(sample.begin(), sample.end(), acc_t(0));
          for_each_block(n * g.out_h, (n + 1) * g.out_h, rows,
                         [&](int64_t r0, int64_t r1) { add_block(r0, r1, sample.data(), n * sample_in); });
          std::transform(sample.begin(), sample.end(), dx + n * sample_in, [](acc_t v) { return static_cast<scalar_t>(v); });
        }
      } else {
        int64_t zeroed = n_begin;  // samples [n_begin, zeroed) hold zeros or sums
        for_each_block(n_begin * g.out_h, n_end * g.out_h, rows, [&](int64_t r0, int64_t r1) {
          const int64_t reached = (r1 - 1) / g.out_h + 1;  // the samples the block adds into end here
          if (reached > zeroed) std::fill(dx + zeroed * sample_in, dx + reached * sample_in, scalar_t(0));
          zeroed = std::max(zeroed, reached);
          add_block(r0, r1, dx, 0);
        });
      }
    }
  });
}

template <typename scalar_t>
void gemm_backward_weight(const ConvGeometry& g, const scalar_t* dy, const scalar_t* x, scalar_t* dw) {
  using acc_t = opmath_t<scalar_t>;
  const Microkernel<acc_t> kernel = cpu_microkernel<acc_t>();
  const PairMicrokernel pairs = pair_microkernel_for<scalar_t>(kernel);
  note_kernel_use(KernelPath::kGemm, pairs.tile != nullptr ? pairs.isa : kernel.isa);
  const int64_t K = g.column_rows(), O = g.out_channels_per_group, rows = g.rows_per_block(kernel.nr, /*by_channels=*/false);
  const int64_t weights = g.groups * O * K;
  // A fixed split of the output rows into `parts`, one partial gradient each, summed in order.
  const int64_t total_rows = g.batch * g.out_h, parts = thread_parts(total_rows);
  PackedBuffer<acc_t> partial(parts * weights, acc_t(0));

  const int64_t group_in = g.channels_per_group * g.height * g.width, group_out = O * g.out_plane();

  torch::stable::parallel_for(0, parts, 1, [&](int64_t p_begin, int64_t p_end) {
    BlockPlan plan(g);
    PackedBuffer<acc_t> a(packed_size(O, kernel.mr, rows * g.out_w), acc_t(0));  // rows past O_g read as 0
    PackedBuffer<acc_t> b(packed_size(kWeightTaps, kernel.nr, rows * g.out_w));
    PackedBuffer<uint16_t> a_pairs, b_pairs;
    for (int64_t p = p_begin; p < p_end; ++p) {
      for_each_block(p * total_rows / parts, (p + 1) * total_rows / parts, rows, [&](int64_t r0, int64_t r1) {
        plan.build(g, r0, r1, kernel.nr);
        const int64_t block = plan.columns;  // the product's depth
        for (int64_t gi = 0; gi < g.groups; ++gi) {
          // A = grad_y of the block, [O_g, block]. (Panel rows past O_g hold zeros or stale
          // values when a shorter block reuses the buffer; the edge tiles' results drop them.)
          for (int64_t o = 0; o < O; ++o)
            pack_output_channel(plan, dy + gi * group_out + o * g.out_plane(),
                                a.data() + packed_index(0, o, kernel.mr, block), block, 0, kernel.mr);
          acc_t* grad = partial.data() + p * weights + gi * O * K;
          if (pairs.tile != nullptr) narrowed(a_pairs, a.data(), panels_of(O, kernel.mr), kernel.mr, block);
          for (int64_t t0 = 0; t0 < K; t0 += kWeightTaps) {
            const int64_t taps = std::min(kWeightTaps, K - t0);
            pack_columns_transposed(g, plan, x + gi * group_in, t0, taps, kernel.nr, b.data());
            if (pairs.tile != nullptr) narrowed(b_pairs, b.data(), panels_of(taps, kernel.nr), kernel.nr, block);
            for (int64_t d0 = 0; d0 < block; d0 += kernel.depth) {
              const int64_t depth = std::min(kernel.depth, block - d0);
              if constexpr (std::is_same_v<acc_t, float>) {
                if (pairs.tile != nullptr) {
                  gemm_packed_pairs(pairs, O, taps, depth, a_pairs.data() + d0 * kernel.mr,
                                    pair_panel_size(kernel.mr, block), b_pairs.data() + d0 * kernel.nr,
                                    pair_panel_size(kernel.nr, block), grad + t0, K, /*accumulate=*/true, nullptr);
                  continue;
                }
              }
              gemm_packed(kernel, O, taps, depth, a.data() + d0 * kernel.mr, block * kernel.mr,
                          b.data() + d0 * kernel.nr, block * kernel.nr, grad + t0, K, /*accumulate=*/true, nullptr);
            }
          }
        }
      });
    }
  });
  torch::stable::parallel_for(0, weights, 4096, [&](int64_t begin, int64_t end) {
    for (int64_t i = begin; i < end; ++i) {
      acc_t total = partial[i];
      for (int64_t p = 1; p < parts; ++p) total += partial[p * weights + i];
      dw[i] = static_cast<scalar_t>(total);
    }
  });
}

// Depthwise layers (one input channel per group, groups > 1) have their own kernels
// (depthwise.h): here a GEMM per group would have a single row.
bool is_depthwise(const ConvGeometry& g) { return g.channels_per_group == 1 && g.groups > 1; }

// The depthwise kernels' geometry: every channel, not one group's.
DirectConv depthwise_problem(const ConvGeometry& g) {
  return DirectConv{g.batch,    g.groups,   g.height,   g.width,    g.out_channels_per_group * g.groups,
                    g.out_h,    g.out_w,    g.kernel_h, g.kernel_w, g.stride_h,
                    g.stride_w, g.pad_h,    g.pad_w,    g.dilation_h, g.dilation_w};
}

// The direct float32 kernels (direct_conv.h), groups = 1.
DirectConv direct_problem(const ConvGeometry& g) {
  return DirectConv{g.batch,    g.channels_per_group,     g.height,   g.width,    g.out_channels_per_group,
                    g.out_h,    g.out_w,                  g.kernel_h, g.kernel_w, g.stride_h,
                    g.stride_w, g.pad_h,                  g.pad_w,    g.dilation_h, g.dilation_w};
}


// Which kernel runs a float32 pass, direct or im2col + GEMM. CUCONV_CPU_DIRECT=1 / 0 forces
// one; otherwise, where both can run, the faster on this machine, measured on the first call
// of each shape (tuner.h). Only with CUCONV_CPU_TUNE=0 do the static rules below decide:
// they come from timing both paths on the book's layers on one AVX-512 CPU
// (benchmarks/NOTES.md), so they are a reproducible fallback, not a tuned answer for every
// CPU: the direct kernels win where their register tiles fill up and their scattered output
// stores are amortised (many taps per output, rows of a few pixels or more); the GEMM where
// K is small, on 3x3 and 6x6 images, and for the input gradient of layers with few input
// channels.
enum class ConvPass { kForward, kInput, kWeight };

bool direct_rule(const ConvGeometry& g, ConvPass pass) {
  const int64_t K = g.column_rows(), O = g.out_channels_per_group, C = g.channels_per_group;
  switch (pass) {
    case ConvPass::kForward: return g.out_w >= 6 && (K >= 256 || (O <= 16 && K >= 16));
    case ConvPass::kWeight: return g.out_w >= 8 || K < 256;
    default: return C >= 64 && g.width >= 8;
  }
}

bool direct_can_run(const ConvGeometry& g, ConvPass pass) {
  return g.groups == 1 && (pass != ConvPass::kInput || direct_conv_backward_input_suits(direct_problem(g)));
}

bool winograd_can_run(const ConvGeometry& g, ConvPass pass) {
  const DirectConv p = direct_problem(g);
  return g.groups == 1 && (pass == ConvPass::kInput ? winograd_backward_input_suits(p) : winograd_suits(p));
}

bool pixel_gemm_can_run(const ConvGeometry& g) { return g.groups == 1 && pixel_gemm_suits(direct_problem(g)); }

// The tuning key: everything the kernels' speed depends on.
std::string tuning_key(const ConvGeometry& g, ConvPass pass, const char* variant = "float32") {
  static const char* names[] = {"conv2d_forward", "conv2d_backward_input", "conv2d_backward_weight"};
  char key[320];
  std::snprintf(key, sizeof key,
                "%s %s N=%lld C=%lld H=%lld W=%lld O=%lld k=%lldx%lld s=%lldx%lld p=%lldx%lld d=%lldx%lld "
                "groups=%lld threads=%d isa=%s",
                names[static_cast<int>(pass)], variant, static_cast<long long>(g.batch),
                static_cast<long long>(g.channels_per_group * g.groups), static_cast<long long>(g.height),
                static_cast<long long>(g.width), static_cast<long long>(g.out_channels_per_group * g.groups),
                static_cast<long long>(g.kernel_h), static_cast<long long>(g.kernel_w),
                static_cast<long long>(g.stride_h), static_cast<long long>(g.stride_w),
                static_cast<long long>(g.pad_h), static_cast<long long>(g.pad_w),
                static_cast<long long>(g.dilation_h), static_cast<long long>(g.dilation_w),
                static_cast<long long>(g.groups), static_cast<int>(torch::stable::get_num_threads()),
                cpu_microkernel<float>().isa);
  return key;
}

// The dtype in a tuning key's variant; bfloat16 products run on pairs or on floats by
// CUCONV_CPU_ISA (gemm.h), each its own choice.
std::string dtype_variant(ScalarType dtype) {
  switch (dtype) {
    case ScalarType::Float: return "float32";
    case ScalarType::Double: return "float64";
    case ScalarType::Half: return "float16";
    default: return bf16_dot_products() ? "bfloat16 pairs" : "bfloat16";
  }
}

// Whether an optional kernel joins the measured choice: its variable (CUCONV_CPU_WINOGRAD for
// Winograd, winograd.h; CUCONV_CPU_PIXEL_GEMM for the per-pixel products, pixel_gemm.h;
// CUCONV_CPU_BY_PHASE for the input gradient by stride phase, stride_phases.h) =1 runs
// it wherever it can (tests), =0 never; unset, it is a candidate when nothing else is forced
// (CUCONV_CPU_DIRECT unset) and tuning is on. Any other value is an error.
enum class OptionalMode { kAuto, kAlways, kNever };
OptionalMode optional_kernel_mode(const char* variable) {
  const char* setting = std::getenv(variable);
  if (setting == nullptr || *setting == '\0') return OptionalMode::kAuto;
  const std::string value(setting);
  CUCONV_CHECK_VALUE(value == "0" || value == "1", "cuconv: expected the environment variable ", variable,
                     " to be 0 or 1, but got '", value, "'");
  return value == "1" ? OptionalMode::kAlways : OptionalMode::kNever;
}

// The same for bfloat16 values (their bits).
bool all_finite_bfloat16(const uint16_t* data, int64_t count) {
  std::atomic<bool> finite{true};
  torch::stable::parallel_for(0, count, 1 << 16, [&](int64_t begin, int64_t end) {
    uint32_t special = 0;
    for (int64_t i = begin; i < end; ++i) special |= (data[i] & 0x7f80u) == 0x7f80u;
    if (special != 0) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

bool all_finite(const float* data, int64_t count) {
  std::atomic<bool> finite{true};
  torch::stable::parallel_for(0, count, 1 << 16, [&](int64_t begin, int64_t end) {
    uint32_t special = 0;  // Inf and NaN have every exponent bit set (a loop that vectorises)
    for (int64_t i = begin; i < end; ++i) {
      uint32_t bits;
      std::memcpy(&bits, data + i, sizeof bits);
      special |= (bits & 0x7f800000u) == 0x7f800000u;
    }
    if (special != 0) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

// Float32 operands (data, element count), as Winograd's callers list them.
using Operands = std::vector<std::pair<const float*, int64_t>>;
bool all_finite(const Operands& operands) {
  return std::all_of(operands.begin(), operands.end(), [](const auto& o) { return all_finite(o.first, o.second); });
}

// The largest magnitude among the values: Inf where one is Inf or NaN. (The largest of the bits
// without the sign: non-negative floats order as their bits do, NaN's above Inf's; a loop that
// vectorises.)
float largest_magnitude(const float* data, int64_t count) {
  std::atomic<uint32_t> largest{0};
  torch::stable::parallel_for(0, count, 1 << 16, [&](int64_t begin, int64_t end) {
    uint32_t part = 0;
    for (int64_t i = begin; i < end; ++i) {
      uint32_t bits;
      std::memcpy(&bits, data + i, sizeof bits);
      part = std::max(part, bits & 0x7fffffffu);
    }
    uint32_t seen = largest.load(std::memory_order_relaxed);
    while (part > seen && !largest.compare_exchange_weak(seen, part, std::memory_order_relaxed)) {
    }
  });
  const uint32_t bits = std::min(largest.load(), 0x7f800000u);
  float value;
  std::memcpy(&value, &bits, sizeof value);
  return value;
}

// Whether Winograd's answer for a pass over these two operands is finite wherever the exact sum's
// is: no Inf or NaN among them (its transforms subtract inputs, so Inf - Inf would turn an
// infinite result into NaN), and no transform or sum that can overflow float32 on finite values
// (the GEMM's sums could not). F(2x2, 3x3)'s transforms at most quadruple an input and multiply a
// weight by 2.25, and each output adds 9 of the channel sums; F(3x3, 2x2)'s likewise: every value
// it computes is at most 81 times the reduction's length (at most the larger operand's size)
// times the two operands' largest magnitudes. Asking for 256 times that to stay below float32's
// largest value leaves everyday data (|values| up to ~1e12 each) on Winograd; larger values take
// the GEMM (inputs of 2e38 with weights of 1e-5 had given all NaN where torch's answer is finite).
bool winograd_stays_finite(const Operands& operands) {
  double bound = 256.0;
  int64_t length = 1;
  for (const auto& [data, count] : operands) {
    const double largest = largest_magnitude(data, count);
    if (!(16.0 * largest < std::numeric_limits<float>::max())) return false;
    bound *= largest;
    length = std::max(length, count);
  }
  return bound * static_cast<double>(length) < std::numeric_limits<float>::max();
}

int64_t float_bytes(const Tensor& t) { return t.numel() * static_cast<int64_t>(sizeof(float)); }

// How the direct kernels write an output of this size where nothing measures the choice:
// streaming.h's rule (an output larger than the last-level cache streams).
OutputStores stores_by_rule(int64_t output_bytes) {
  return streams_output(output_bytes) ? OutputStores::kStreamed : OutputStores::kCached;
}
OutputStores stores_by_rule(const DirectConv& p) {
  return stores_by_rule(p.batch * p.out_channels * p.out_h * p.out_w * static_cast<int64_t>(sizeof(float)));
}

// Whether the direct kernels' output streamed past the caches is measured as a candidate of its
// own (run_float_pass, run_half_types): an output larger than the threads' L2 caches together (a
// smaller one could stay in cache for the op after it), or one the rule streams.
bool streaming_is_a_candidate(int64_t output_bytes) {
  return output_bytes > l2_cache_bytes() * torch::stable::get_num_threads() ||
         stores_by_rule(output_bytes) == OutputStores::kStreamed;
}

// The float32 kernels of one pass (not depthwise), for run_float_pass.
struct FloatPass {
  // the direct kernels, writing their output as they are told (direct_conv.h; the weight
  // gradient, a small output, as it always does)
  std::function<void(OutputStores)> direct;
  std::function<void()> gemm, winograd, pixel;
  // a strided layer's input gradient by stride phase (stride_phases.h); empty elsewhere
  std::function<void()> by_phase = nullptr;
  // The output's size in bytes where the direct kernels can stream it past the caches (their
  // forward and input gradient, not by the row tiles), else 0.
  int64_t streamable_bytes = 0;
  // false: the direct kernels, or the phases, would not give the exact answer for these values
  bool direct_exact = true;
  // Winograd gets the GEMM's answer unless its answer stays finite for its operands
  // (winograd_stays_finite): these are they. (The per-pixel products check their own operands:
  // pixel_gemm.h.)
  Operands winograd_inputs;
};

// Runs a float32 pass by the direct kernels, the GEMM or, where they suit, Winograd
// (winograd.h) or the per-pixel products (pixel_gemm.h), as chosen above.
// The direct kernels' output streamed past the caches is a candidate of its own where
// streaming_is_a_candidate: whether streaming pays depends on the layer and on how much of the
// last-level cache the process really gets (on a VM, a slice of a cache shared with other
// machines, whose size Linux reports whole), so it is measured. Without measuring, the rule of
// streaming.h decides (an output larger than the last-level cache streams).
void run_float_pass(const ConvGeometry& g, ConvPass pass, const FloatPass& kernels) {
  const OptionalMode wmode = winograd_can_run(g, pass) ? optional_kernel_mode("CUCONV_CPU_WINOGRAD") : OptionalMode::kNever;
  const OptionalMode pmode = pixel_gemm_can_run(g) ? optional_kernel_mode("CUCONV_CPU_PIXEL_GEMM") : OptionalMode::kNever;
  const OptionalMode phase_mode =
      kernels.by_phase && kernels.direct_exact ? optional_kernel_mode("CUCONV_CPU_BY_PHASE") : OptionalMode::kNever;
  auto winograd_or_gemm = [&] { winograd_stays_finite(kernels.winograd_inputs) ? kernels.winograd() : kernels.gemm(); };
  if (wmode == OptionalMode::kAlways) return winograd_or_gemm();
  if (pmode == OptionalMode::kAlways) return kernels.pixel();
  if (phase_mode == OptionalMode::kAlways) return kernels.by_phase();
  const DirectMode mode = direct_conv_mode();
  const bool direct_runs = mode != DirectMode::kNever && direct_can_run(g, pass) && kernels.direct_exact;
  const int64_t streamable = kernels.streamable_bytes;
  const OutputStores by_rule = stores_by_rule(streamable);
  if (direct_runs && mode == DirectMode::kAlways) return kernels.direct(by_rule);
  if (!tuning_enabled()) return direct_runs && direct_rule(g, pass) ? kernels.direct(by_rule) : kernels.gemm();
  std::vector<Candidate> candidates;
  if (direct_runs) {
    candidates.push_back({kernel_name(KernelName::kDirect), [&] { kernels.direct(OutputStores::kCached); }});
    if (streaming_is_a_candidate(streamable))
      candidates.push_back({kernel_name(KernelName::kDirectStreamed), [&] { kernels.direct(OutputStores::kStreamed); }});
  }
  candidates.push_back({kernel_name(KernelName::kGemm), kernels.gemm});
  if (mode == DirectMode::kAuto) {
    if (wmode == OptionalMode::kAuto) candidates.push_back({kernel_name(KernelName::kWinograd), winograd_or_gemm});
    if (pmode == OptionalMode::kAuto) candidates.push_back({kernel_name(KernelName::kPixel), kernels.pixel});
    if (phase_mode == OptionalMode::kAuto) candidates.push_back({kernel_name(KernelName::kByPhase), kernels.by_phase});
  }
  if (candidates.size() == 1) return kernels.gemm();
  run_tuned(tuning_key(g, pass), candidates);
}

// A depthwise pass (`run`: the forward pass or the input gradient) whose rows are read in place
// measures its rows fetched by the hardware alone and by software too (depthwise.h, RowFetch);
// the others, and every pass without measuring, leave it to the hardware.
Tensor run_depthwise(const ConvGeometry& g, ConvPass pass, const Tensor& source,
                     const std::function<Tensor(RowFetch)>& run) {
  if (!tuning_enabled() || !depthwise_rows_fetchable(depthwise_problem(g), source)) return run(RowFetch::kHardware);
  const ScalarType dtype = source.scalar_type();
  const char* variant = dtype == ScalarType::Float    ? "float32 channels_last depthwise"
                        : dtype == ScalarType::Double ? "float64 channels_last depthwise"
                                                      : "bfloat16 channels_last depthwise";
  Tensor out;
  const std::vector<Candidate> candidates{
      {kernel_name(KernelName::kDepthwise), [&] { out = run(RowFetch::kHardware); }},
      {kernel_name(KernelName::kDepthwiseFetched), [&] { out = run(RowFetch::kSoftware); }}};
  run_tuned(tuning_key(g, pass, variant), candidates);
  return out;
}

// channels_last float and double layers of one group can run NHWC in place
// (conv2d_channels_last.h); the rest are computed NCHW and copied back into channels_last.
bool runs_channels_last(const ConvGeometry& g, const Tensor& t) {
  return g.groups == 1 && is_channels_last(t) &&
         (t.scalar_type() == ScalarType::Float || t.scalar_type() == ScalarType::Double);
}

// Which runs such a pass: the NHWC kernels, the NHWC Winograd (`winograd`, given for float32;
// where it suits, CUCONV_CPU_WINOGRAD as for NCHW), the direct kernels on NHWC pixels (`direct`,
// given for float32 where they can run; CUCONV_CPU_DIRECT=1 runs them) or the NCHW kernels between
// two layout copies, measured per shape (tuner.h; "nhwc" with CUCONV_CPU_TUNE=0). Which wins
// depends on the layer and pass (benchmarks/NOTES.md: Winograd on 3x3 stride-1 layers, the NCHW
// kernels between copies on some small images, the direct ones on few channels).
void choose_layout(const ConvGeometry& g, ConvPass pass, ScalarType dtype, const std::function<void()>& nhwc,
                   const std::function<void()>& nchw, const std::function<void()>& winograd,
                   const std::function<void()>& direct) {
  const OptionalMode wmode = winograd && winograd_can_run(g, pass)
                                 ? optional_kernel_mode("CUCONV_CPU_WINOGRAD")
                                 : OptionalMode::kNever;
  if (wmode == OptionalMode::kAlways) return winograd();
  const DirectMode dmode = direct ? direct_conv_mode() : DirectMode::kNever;
  if (dmode == DirectMode::kAlways) return direct();
  if (!tuning_enabled()) return nhwc();
  const char* variant = dtype == ScalarType::Double ? "float64 channels_last" : "float32 channels_last";
  std::vector<Candidate> candidates{{kernel_name(KernelName::kNhwc), nhwc}, {kernel_name(KernelName::kNchw), nchw}};
  if (wmode == OptionalMode::kAuto && direct_conv_mode() == DirectMode::kAuto)
    candidates.push_back({kernel_name(KernelName::kNhwcWinograd), winograd});
  if (dmode == DirectMode::kAuto) candidates.push_back({kernel_name(KernelName::kNhwcDirect), direct});
  run_tuned(tuning_key(g, pass, variant), candidates);
}

// choose_layout's direct candidate: `run` for a float32 pass where the direct kernels can run
// (and `suits`), else none.
std::function<void()> nhwc_direct_if(const Tensor& t, bool suits, std::function<void()> run) {
  if (t.scalar_type() != ScalarType::Float || !suits || direct_conv_mode() == DirectMode::kNever) return nullptr;
  return run;
}

// choose_layout's Winograd candidate for a float32 pass over operands a and b (none for other
// dtypes): the NHWC Winograd where its answer stays finite (winograd_stays_finite), else the NHWC
// kernels. (a and b must outlive it.)
std::function<void()> nhwc_winograd_or(std::function<void()> nhwc, const Tensor& a, const Tensor& b,
                                       std::function<void()> winograd) {
  if (a.scalar_type() != ScalarType::Float) return nullptr;
  return [nhwc = std::move(nhwc), &a, &b, winograd = std::move(winograd)] {
    const Operands operands{{a.const_data_ptr<float>(), a.numel()}, {b.const_data_ptr<float>(), b.numel()}};
    winograd_stays_finite(operands) ? winograd() : nhwc();
  };
}

// ---------------------------------------------------------------------------
// Grouped layers (groups > 1, not depthwise) run either as above, a GEMM per group and block
// (im2col), or group by group as groups = 1 layers on copies of the group's channels, where every
// kernel of groups = 1 (direct, Winograd, per-pixel products, NHWC) can run, chosen per shape as
// there. Which of the two, measured per shape (tuner.h); CUCONV_CPU_BY_GROUP=1 / 0 forces it
// (tests), and with CUCONV_CPU_TUNE=0 the GEMM per group runs. On most grouped layers measured
// (benchmarks/NOTES.md, eighth session) the copies cost less than the im2col they save.

// Channels [first, first + count) of t (dimension 1) as a tensor of their own, laid out as t is.
Tensor channel_slice_copy(const Tensor& t, int64_t first, int64_t count) {
  Tensor whole = t;
  const Tensor slice = torch::stable::narrow(whole, 1, first, count);
  Tensor copy = empty_in_layout_of(t, slice.sizes());
  torch::stable::copy_(copy, slice);
  return copy;
}

// Rows [first, first + count) of a contiguous tensor (dimension 0): a view.
Tensor leading_slice(const Tensor& t, int64_t first, int64_t count) {
  Tensor whole = t;
  return torch::stable::narrow(whole, 0, first, count);
}

// Copies `part` into channels [first, first + part.size(1)) of `whole`.
void copy_into_channels(Tensor& whole, int64_t first, const Tensor& part) {
  Tensor slice = torch::stable::narrow(whole, 1, first, part.size(1));
  torch::stable::copy_(slice, part);
}

// Runs a grouped pass by `per_gemm` (the GEMM per group), `by_group`, or `direct_by_group` (float32:
// the direct kernels on the layer's own tensors, each group's channels read and written in place
// through the whole layer's sample strides, no copies: NCHW group by group, channels_last every
// group at once, each sample read once for them all; empty where it cannot run), as chosen above;
// CUCONV_CPU_DIRECT=1 asks for direct_by_group wherever it can run, =0 never.
Tensor run_grouped(const ConvGeometry& g, ConvPass pass, const Tensor& model, const std::function<Tensor()>& per_gemm,
                   const std::function<Tensor()>& direct_by_group, const std::function<Tensor()>& by_group) {
  const OptionalMode mode = optional_kernel_mode("CUCONV_CPU_BY_GROUP");
  if (mode != OptionalMode::kAuto) return mode == OptionalMode::kAlways ? by_group() : per_gemm();
  const DirectMode direct = direct_by_group ? direct_conv_mode() : DirectMode::kNever;
  if (direct == DirectMode::kAlways) return direct_by_group();
  if (!tuning_enabled()) return per_gemm();
  Tensor result;
  std::string variant = dtype_variant(model.scalar_type());
  variant += is_channels_last(model) ? " grouped channels_last" : " grouped";
  std::vector<Candidate> candidates = {{kernel_name(KernelName::kGemm), [&] { result = per_gemm(); }},
                                       {kernel_name(KernelName::kByGroup), [&] { result = by_group(); }}};
  if (direct != DirectMode::kNever)
    candidates.push_back({kernel_name(KernelName::kDirectByGroup), [&] { result = direct_by_group(); }});
  run_tuned(tuning_key(g, pass, variant.c_str()), candidates);
  return result;
}

// The direct kernels' problem for one group of a grouped layer, its tensors read in place: the
// group's channels, the whole layer's samples apart.
DirectConv group_problem(const ConvGeometry& g) {
  DirectConv p = direct_problem(g);
  p.in_sample_stride = g.groups * g.channels_per_group * g.height * g.width;
  p.out_sample_stride = g.groups * g.out_channels_per_group * g.out_plane();
  return p;
}

// ---------------------------------------------------------------------------
// Half types (float16, bfloat16) run either the kernels below, whose GEMM packs the half type as
// float, or the float32 kernels on float32 copies of the operands (every float32 kernel then
// applies: direct, Winograd, per-pixel products, NHWC, each measured as for float32), the result
// rounded once either way: both compute in float. The copies keep each tensor's layout.

bool is_half_type(ScalarType t) { return t == ScalarType::Half || t == ScalarType::BFloat16; }

// t's values as `dtype`, in t's layout (a contiguous copy of a tensor in neither layout).
Tensor converted(const Tensor& t, ScalarType dtype) {
  Tensor copy = empty_in_layout_of(t, t.sizes(), dtype);
  torch::stable::copy_(copy, t);
  return copy;
}

// Runs a half-type pass by `packed` (the kernels above, the GEMM packing float from the half
// type) or `via_float` (float32 copies through every float32 kernel), measured per shape
// (tuner.h; `via_float` with CUCONV_CPU_TUNE=0; CUCONV_CPU_HALF_AS_FLOAT=1 / 0 forces one): the
// copies cost more than they save on small products (a 1x1 layer on a 1x1 image), less on the rest.
// A bfloat16 pass has a third way where the CPU has AVX512-BF16, `on_pairs` (the direct kernels on
// pairs: forward_on_pairs, backward_input_on_pairs, backward_weight_on_pairs; empty elsewhere),
// its NCHW output cached or streamed as the float32 direct kernels' (run_float_pass), and for an
// NCHW forward pass or input gradient also on pixels (PairWay; the weight gradient's output is
// small, always cached; a channels_last pass runs on pixels whichever way is asked):
// CUCONV_CPU_DIRECT_PAIRS=1 runs it wherever it can (tests; on planes, writing as streaming.h's
// rule says), =0 never; unset, it is measured with the other two.

// How a pass runs on pairs (direct_conv.h): on NCHW planes of channel pairs, the output written
// through the caches or streamed past them; or on NHWC pixels, a channels_last tensor's only way,
// an NCHW tensor's through copies in and out (which small images repay: their kernel rows in the
// padding skipped, their samples' rows grouped).
enum class PairWay { kPlanes, kPlanesStreamed, kPixels };

struct OnPairs {
  std::function<Tensor(PairWay)> run;  // empty where the pairs cannot run
  int64_t output_bytes = 0;            // of an NCHW output, which planes may stream (0: none)
  bool on_pixels_too = false;          // an NCHW pass that may also run on pixels
};

Tensor run_half_types(const ConvGeometry& g, ConvPass pass, const Tensor& model, const std::function<Tensor()>& packed,
                      const std::function<Tensor()>& via_float, const OnPairs& on_pairs = {}) {
  const OptionalMode pairs = on_pairs.run ? optional_kernel_mode("CUCONV_CPU_DIRECT_PAIRS") : OptionalMode::kNever;
  if (pairs == OptionalMode::kAlways)
    return on_pairs.run(stores_by_rule(on_pairs.output_bytes) == OutputStores::kStreamed ? PairWay::kPlanesStreamed
                                                                                          : PairWay::kPlanes);
  const OptionalMode mode = optional_kernel_mode("CUCONV_CPU_HALF_AS_FLOAT");
  if (mode != OptionalMode::kAuto) return mode == OptionalMode::kAlways ? via_float() : packed();
  if (!tuning_enabled()) return via_float();
  Tensor result;
  std::string variant = dtype_variant(model.scalar_type());
  if (is_channels_last(model)) variant += " channels_last";
  std::vector<Candidate> candidates{{kernel_name(KernelName::kGemm), [&] { result = packed(); }},
                                    {kernel_name(KernelName::kFloat32), [&] { result = via_float(); }}};
  if (pairs == OptionalMode::kAuto) {
    candidates.push_back({kernel_name(KernelName::kDirectPairs), [&] { result = on_pairs.run(PairWay::kPlanes); }});
    if (streaming_is_a_candidate(on_pairs.output_bytes))
      candidates.push_back({kernel_name(KernelName::kDirectPairsStreamed),
                            [&] { result = on_pairs.run(PairWay::kPlanesStreamed); }});
    if (on_pairs.on_pixels_too)
      candidates.push_back({kernel_name(KernelName::kDirectPairsNhwc), [&] { result = on_pairs.run(PairWay::kPixels); }});
  }
  run_tuned(tuning_key(g, pass, variant.c_str()), candidates);
  return result;
}

const uint16_t* bfloat16_bits(const Tensor& t) { return static_cast<const uint16_t*>(t.const_data_ptr()); }

// The layer `q` on the direct kernels' channel pairs with the channels innermost (direct_conv.h,
// direct_conv_forward_pairs_nhwc) over the bfloat16 `input`: channels_last read as it is (channel
// pairs are adjacent there; a copy with a zero channel where C is odd), NCHW through a copy in
// NHWC pairs; `w_pairs` its weights already paired (`finite_weights`: no Inf or NaN among them, so
// the kernel rows in the padding may be skipped); into a channels_last bfloat16 tensor of
// `out_size`, as `placement` puts it. `q` may be one group of `groups` (pair_sums_rounded): each
// group's pairs a run of every pixel's, read in place (an even C).
Tensor nhwc_forward_on_pairs(const DirectConv& q, const Tensor& input, const uint32_t* w_pairs, bool finite_weights,
                             const float* bias, IntArrayRef out_size, const PixelPlacement* placement = nullptr,
                             int64_t groups = 1) {
  const int64_t pair_count = (q.in_channels + 1) / 2;
  const bool nhwc = is_channels_last(input), copies = !nhwc || q.in_channels % 2 != 0;
  CUCONV_CHECK(groups == 1 || !copies, "cuconv: internal error: a grouped layer's pairs are read in place");
  PackedBuffer<uint32_t> x_pairs(copies ? q.batch * q.height * q.width * pair_count : 0);
  if (copies)
    channel_pairs_innermost(bfloat16_bits(nhwc ? input : contiguous_or_self(input)), q.batch, q.in_channels,
                            q.height * q.width, nhwc, x_pairs.data());
  Tensor y = empty_channels_last_like(input, out_size);
  DirectConv all = q;  // (every group in one pass: each sample read once for them all)
  all.groups = groups;
  direct_conv_forward_pairs_nhwc(all, copies ? x_pairs.data() : static_cast<const uint32_t*>(input.const_data_ptr()),
                                 w_pairs, bias, static_cast<uint16_t*>(y.mutable_data_ptr()), finite_weights, placement);
  return y;
}

// bfloat16 on the direct kernels' channel pairs (direct_conv.h): the layer `q` over x (bfloat16, in
// its layout) and contiguous OIHW weights w (their bits), plus `bias` (float, may be null), in x's
// layout, the tiles' float sums rounded once straight into it (no float tensor). Planes: x and w
// interleaved into planes of channel pairs. Pixels: nhwc_forward_on_pairs. Where `groups` > 1, `q`
// is one group's problem (an even number of input channels C', so that no pair straddles two
// groups; its samples the whole layer's elements apart) and w is [groups * O'][C'][kH][kW]: the
// groups run one by one in place, each group's pairs a run of every pixel's or of every sample's
// planes (PairWay::kPixels is for one group only).
Tensor pair_sums_rounded(const DirectConv& q, const Tensor& input, const uint16_t* w, const float* bias, PairWay way,
                         int64_t groups = 1) {
  const int64_t pair_count = (q.in_channels + 1) / 2, taps = q.kernel_h * q.kernel_w, O = q.out_channels;
  const std::vector<int64_t> out_size{q.batch, groups * O, q.out_h, q.out_w};
  PackedBuffer<uint32_t> w_pairs(groups * O * pair_count * taps);
  if (is_channels_last(input) || way == PairWay::kPixels) {
    channel_pairs_innermost(w, groups * O, q.in_channels, taps, false, w_pairs.data());
    const Tensor y = nhwc_forward_on_pairs(q, input, w_pairs.data(),
                                           all_finite_bfloat16(w, groups * O * q.in_channels * taps), bias, out_size,
                                           nullptr, groups);
    if (is_channels_last(input)) return y;
    Tensor planes = empty_like_with(input, out_size);
    torch::stable::copy_(planes, y);
    return planes;
  }
  const Tensor x = contiguous_or_self(input);
  const int64_t plane = q.height * q.width;
  PackedBuffer<uint32_t> x_pairs(q.batch * groups * pair_count * plane);
  interleave_channel_pairs(bfloat16_bits(x), q.batch, groups * q.in_channels, plane, x_pairs.data());
  interleave_channel_pairs(w, groups * O, q.in_channels, taps, w_pairs.data());
  Tensor y = empty_like_with(x, out_size);
  for (int64_t gi = 0; gi < groups; ++gi)
    direct_conv_forward_pairs(q, x_pairs.data() + gi * pair_count * plane, w_pairs.data() + gi * O * pair_count * taps,
                              bias != nullptr ? bias + gi * O : nullptr,
                              static_cast<uint16_t*>(y.mutable_data_ptr()) + gi * O * q.out_h * q.out_w,
                              way == PairWay::kPlanesStreamed ? OutputStores::kStreamed : OutputStores::kCached);
  return y;
}

// The problem the pairs run a layer by: the whole layer, or one group of a grouped one (its
// tensors read in place group by group: pair_sums_rounded).
DirectConv pair_problem(const ConvGeometry& g) { return g.groups > 1 ? group_problem(g) : direct_problem(g); }

Tensor forward_on_pairs(const ConvGeometry& g, const Tensor& input, const Tensor& w, const Tensor& b, PairWay way) {
  const Tensor b_float = b.defined() ? converted(b, ScalarType::Float) : Tensor();
  return pair_sums_rounded(pair_problem(g), input, bfloat16_bits(w), b.defined() ? b_float.const_data_ptr<float>() : nullptr,
                           way, g.groups);
}

// A 1x1 layer without padding, whose input gradient runs on pairs at any stride in channels_last:
// each output pixel's gradient times W^T lands on one input pixel, (oh * sH, ow * sW), and the
// other pixels' gradients are zero, a 1x1 forward pass over grad_output (O channels in, C out)
// placed at the stride (direct_conv.h, PixelPlacement). (ResNet's shortcuts.)
bool unpadded_1x1(const DirectConv& p) {
  return p.kernel_h == 1 && p.kernel_w == 1 && p.pad_h == 0 && p.pad_w == 0;
}

// The input gradient on pairs: at stride 1 the forward pass it is (direct_conv.h,
// input_gradient_as_forward; a grouped layer's group by group); else an unpadded 1x1 layer's,
// channels_last (above).
Tensor backward_input_on_pairs(const ConvGeometry& g, const Tensor& grad_output, const Tensor& w, PairWay way) {
  const DirectConv p = pair_problem(g);
  if (direct_conv_backward_input_suits(p)) {  // (a grouped layer's: each group's kernel flipped)
    const int64_t group_weights = p.out_channels * p.in_channels * p.kernel_h * p.kernel_w;
    std::vector<uint16_t> flipped(g.groups * group_weights);
    for (int64_t gi = 0; gi < g.groups; ++gi) {
      const std::vector<uint16_t> group = flipped_kernel(p, bfloat16_bits(w) + gi * group_weights);
      std::copy(group.begin(), group.end(), flipped.begin() + gi * group_weights);
    }
    return pair_sums_rounded(input_gradient_as_forward(p), grad_output, flipped.data(), nullptr, way, g.groups);
  }
  CUCONV_CHECK(unpadded_1x1(p) && is_channels_last(grad_output), "cuconv: internal error: no input gradient on pairs");
  const DirectConv over_grad{p.batch, p.out_channels, p.out_h, p.out_w, p.in_channels, p.out_h, p.out_w,
                             1,       1,              1,       1,       0,             0,       1,       1};
  PackedBuffer<uint32_t> w_pairs(p.in_channels * ((p.out_channels + 1) / 2));
  channel_pairs_innermost(bfloat16_bits(w), 1, p.out_channels, p.in_channels, false, w_pairs.data());  // W^T's rows
  const PixelPlacement at{p.height, p.width, p.stride_h, p.stride_w};
  return nhwc_forward_on_pairs(over_grad, grad_output, w_pairs.data(), /*finite_weights=*/false, nullptr,
                               std::vector<int64_t>{p.batch, p.in_channels, p.height, p.width}, &at);
}

// The weight gradient on pairs of output pixels (direct_conv.h), as weight_size's contiguous
// tensor; undefined where an odd output row's missing pixel could meet an Inf or NaN (some other
// kernel must run then).
Tensor backward_weight_on_pairs(const ConvGeometry& g, const Tensor& grad_output, const Tensor& input,
                                IntArrayRef weight_size) {
  // (a grouped layer's group by group in place: each group's channels, the whole layer's strides)
  const DirectConv p = pair_problem(g);
  const bool nhwc = is_channels_last(input) && is_channels_last(grad_output);  // (read as they are)
  const Tensor x = nhwc ? input : contiguous_or_self(input), dy = nhwc ? grad_output : contiguous_or_self(grad_output);
  if (p.out_w % 2 != 0 && !all_finite_bfloat16(bfloat16_bits(x), x.numel())) return Tensor();
  Tensor sums = empty_like_with(x, weight_size, ScalarType::Float);
  const int64_t C = p.in_channels, O = p.out_channels, pair_w = (p.out_w + 1) / 2;
  float* sums_data = sums.mutable_data_ptr<float>();
  if (nhwc) {
    for (int64_t gi = 0; gi < g.groups; ++gi)
      direct_conv_backward_weight_pairs_nhwc(p, bfloat16_bits(x) + gi * C, bfloat16_bits(dy) + gi * O,
                                             sums_data + gi * O * g.column_rows());
  } else {
    PackedBuffer<uint32_t> dy_pairs(p.batch * g.groups * O * p.out_h * pair_w);
    pair_adjacent_columns(bfloat16_bits(dy), p.batch * g.groups * O, p.out_h, p.out_w, dy_pairs.data());
    for (int64_t gi = 0; gi < g.groups; ++gi)
      direct_conv_backward_weight_pairs(p, bfloat16_bits(x) + gi * C * p.height * p.width,
                                        dy_pairs.data() + gi * O * p.out_h * pair_w, sums_data + gi * O * g.column_rows());
  }
  return converted(sums, ScalarType::BFloat16);
}

// The pairs' way for run_half_types where it can run: bfloat16, groups = 1, a CPU with AVX512-BF16,
// and for the input gradient stride 1 or an unpadded 1x1 layer in channels_last
// (backward_input_on_pairs). `model` is the pass's input (its dtype and layout); an NCHW output of
// `output_elements` (bfloat16) may be streamed. `finite_weights` (the input gradient's): the
// stride-1 form multiplies grad_output's zero border by every tap, so an Inf or NaN weight would
// make NaN where the gradient has none (as run_float_pass's direct_exact).
OnPairs pairs_for(const ConvGeometry& g, ConvPass pass, const Tensor& model, int64_t output_elements,
                  std::function<Tensor(PairWay)> run, bool finite_weights = true) {
  const DirectConv p = direct_problem(g);
  // (grouped layers group by group: the forward pass and stride-1 input gradient where the pairs of
  // the channels summed over stay within a group; the weight gradient, on pairs of pixels, always)
  const bool layer_runs = g.groups == 1 || (pass == ConvPass::kForward && g.channels_per_group % 2 == 0) ||
                          (pass == ConvPass::kInput && g.out_channels_per_group % 2 == 0) || pass == ConvPass::kWeight;
  const bool runs = model.scalar_type() == ScalarType::BFloat16 && layer_runs && direct_conv_pairs_available() &&
                    (pass != ConvPass::kInput || (direct_conv_backward_input_suits(p) && finite_weights) ||
                     (unpadded_1x1(p) && is_channels_last(model) && g.groups == 1));
  if (!runs) return {};
  const bool planes = !is_channels_last(model);  // (NHWC: written through the caches)
  return {std::move(run), planes ? output_elements * static_cast<int64_t>(sizeof(uint16_t)) : 0,
          planes && pass != ConvPass::kWeight && g.groups == 1};
}

// Whether a pass of a half type still chooses between the two ways above (the public ops), or
// runs the kernels for it (the `packed` candidate).
enum class HalfTypes { kChoose, kPacked };

// A stride phase's forward pass (stride_phases.h): by the direct kernels where they run (a
// measured choice per phase would nest a second measurement inside the one that times the
// phases against col2im, and make a new layer's first call slower still), else the GEMM.
void phase_forward(const DirectConv& phase, const float* window, const float* weight, float* out) {
  if (direct_conv_mode() != DirectMode::kNever)
    return direct_conv_forward(phase, window, weight, nullptr, out, OutputStores::kCached);
  const Conv2dShape shape{phase.batch,    phase.in_channels, phase.height, phase.width, phase.out_channels,
                          phase.kernel_h, phase.kernel_w,    phase.out_h,  phase.out_w, 1};
  const int64_t one[2] = {1, 1}, zero[2] = {0, 0}, dilation[2] = {phase.dilation_h, phase.dilation_w};
  gemm_forward<float>(ConvGeometry(shape, IntArrayRef(one, 2), IntArrayRef(zero, 2), IntArrayRef(dilation, 2)),
                      window, weight, nullptr, out);
}

Tensor forward_pass(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias, IntArrayRef stride,
                    IntArrayRef padding, IntArrayRef dilation, int64_t groups, HalfTypes half) {
  const auto shape = check_conv2d("cuconv.conv2d", input, weight, bias, stride, padding,
                                           dilation, groups, Integers::kAll);
  const ConvGeometry g(shape, stride, padding, dilation);
  const Tensor w = contiguous_or_self(weight);
  const Tensor b = bias.has_value() && bias->defined() ? contiguous_or_self(*bias) : Tensor();
  if (is_integer(input.scalar_type())) return integer_conv2d_forward(shape, input, w, b, stride, padding, dilation);
  if (is_depthwise(g))
    return run_depthwise(g, ConvPass::kForward, input,
                         [&](RowFetch fetch) { return depthwise_conv2d_forward(depthwise_problem(g), input, w, b, fetch); });
  if (half == HalfTypes::kChoose && is_half_type(input.scalar_type())) {
    const OnPairs on_pairs =
        pairs_for(g, ConvPass::kForward, input, shape.batch * shape.out_channels * g.out_plane(),
                  [&](PairWay way) { return forward_on_pairs(g, input, w, b, way); });
    return run_half_types(
        g, ConvPass::kForward, input,
        [&] { return forward_pass(input, weight, bias, stride, padding, dilation, groups, HalfTypes::kPacked); },
        [&] {
          const std::optional<Tensor> bias_float =
              b.defined() ? std::optional<Tensor>(converted(b, ScalarType::Float)) : std::nullopt;
          return converted(conv2d_forward_cpu(converted(input, ScalarType::Float), converted(w, ScalarType::Float),
                                              bias_float, stride, padding, dilation, groups, false, false),
                           input.scalar_type());
        },
        on_pairs);
  }
  // NCHW kernels (a channels_last input is read through a contiguous copy)
  auto nchw = [&]() -> Tensor {
    const Tensor x = contiguous_or_self(input);
    Tensor y = empty_like_with(input, {shape.batch, shape.out_channels, g.out_h, g.out_w});

    CUCONV_DISPATCH_FLOATING(x.scalar_type(), "conv2d_forward_cpu", [&] {
      const scalar_t* x_data = x.const_data_ptr<scalar_t>();
      const scalar_t* w_data = w.const_data_ptr<scalar_t>();
      const scalar_t* b_data = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
      scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
      if constexpr (std::is_same_v<scalar_t, float>) {
        // (the float pointers again: this lambda is compiled for every dtype)
        const float *xf = x.const_data_ptr<float>(), *wf = w.const_data_ptr<float>();
        const float* bf = b.defined() ? b.const_data_ptr<float>() : nullptr;
        float* yf = y.mutable_data_ptr<float>();
        const DirectConv p = direct_problem(g);
        auto gemm = [&] { gemm_forward<float>(g, xf, wf, bf, yf); };
        run_float_pass(g, ConvPass::kForward,
                       {.direct = [&](OutputStores stores) { direct_conv_forward(p, xf, wf, bf, yf, stores); },
                        .gemm = gemm,
                        .winograd = [&] { winograd_forward(p, xf, wf, bf, yf); },
                        .pixel = [&] { if (!pixel_gemm_forward(p, xf, wf, bf, yf)) gemm(); },
                        .streamable_bytes = direct_conv_forward_can_stream(p) ? float_bytes(y) : 0,
                        .winograd_inputs = {{xf, x.numel()}, {wf, w.numel()}}});
      } else {
        gemm_forward<scalar_t>(g, x_data, w_data, b_data, y_data);
      }
    });
    return y;
  };
  if (g.groups > 1) {
    std::function<Tensor()> direct_by_group;
    if (input.scalar_type() == ScalarType::Float) direct_by_group = [&] {
      const DirectConv p = group_problem(g);
      const int64_t C = g.channels_per_group, O = g.out_channels_per_group;
      const float* wf = w.const_data_ptr<float>();
      const float* bf = b.defined() ? b.const_data_ptr<float>() : nullptr;
      if (is_channels_last(input)) {  // NHWC in place: a group's channels are a run of each pixel's
        Tensor y = empty_channels_last_like(input, {shape.batch, shape.out_channels, g.out_h, g.out_w});
        const bool finite = all_finite(Operands{{wf, w.numel()}});
        DirectConv all = p;  // (every group in one pass: each sample read once for them all)
        all.groups = g.groups;
        direct_conv_forward_nhwc(all, input.const_data_ptr<float>(), wf, bf, y.mutable_data_ptr<float>(), finite);
        return y;
      }
      const Tensor x = contiguous_or_self(input);
      Tensor y = empty_like_with(input, {shape.batch, shape.out_channels, g.out_h, g.out_w});
      for (int64_t gi = 0; gi < g.groups; ++gi)
        direct_conv_forward(p, x.const_data_ptr<float>() + gi * C * g.height * g.width, wf + gi * O * g.column_rows(),
                            bf != nullptr ? bf + gi * O : nullptr, y.mutable_data_ptr<float>() + gi * O * g.out_plane(),
                            stores_by_rule(p));
      return in_layout_of(input, y);
    };
    return run_grouped(g, ConvPass::kForward, input, [&] { return in_layout_of(input, nchw()); }, direct_by_group, [&] {
      Tensor y = empty_in_layout_of(input, {shape.batch, shape.out_channels, g.out_h, g.out_w});
      const int64_t C = g.channels_per_group, O = g.out_channels_per_group;
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        const std::optional<Tensor> bias_g = b.defined() ? std::optional<Tensor>(leading_slice(b, gi * O, O)) : std::nullopt;
        copy_into_channels(y, gi * O,
                           forward_pass(channel_slice_copy(input, gi * C, C), leading_slice(w, gi * O, O), bias_g,
                                        stride, padding, dilation, 1, half));
      }
      return y;
    });
  }
  if (runs_channels_last(g, input)) {
    Tensor y = empty_channels_last_like(input, {shape.batch, shape.out_channels, g.out_h, g.out_w});
    auto native = [&] {
      CUCONV_DISPATCH_FLOATING(input.scalar_type(), "conv2d_forward_cpu", [&] {
        if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
          conv_channels_last_forward<scalar_t>(direct_problem(g), input.const_data_ptr<scalar_t>(),
                                               w.const_data_ptr<scalar_t>(),
                                               b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                                               y.mutable_data_ptr<scalar_t>());
        }
      });
    };
    choose_layout(g, ConvPass::kForward, input.scalar_type(), native, [&] { torch::stable::copy_(y, nchw()); },
                  nhwc_winograd_or(native, input, w, [&] {
                    winograd_channels_last_forward(direct_problem(g), input.const_data_ptr<float>(),
                                                   w.const_data_ptr<float>(),
                                                   b.defined() ? b.const_data_ptr<float>() : nullptr,
                                                   y.mutable_data_ptr<float>());
                  }),
                  nhwc_direct_if(input, true, [&] {
                    const float* wf = w.const_data_ptr<float>();
                    direct_conv_forward_nhwc(direct_problem(g), input.const_data_ptr<float>(), wf,
                                             b.defined() ? b.const_data_ptr<float>() : nullptr,
                                             y.mutable_data_ptr<float>(), all_finite(Operands{{wf, w.numel()}}));
                  }));
    return y;
  }
  return in_layout_of(input, nchw());  // channels_last in, channels_last out (as torch)
}

Tensor backward_input_pass(const Tensor& grad_output, const Tensor& weight, IntArrayRef input_size, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, int64_t groups, HalfTypes half) {
  const char* op = "cuconv.conv2d_backward_input";
  const auto shape = check_conv2d_backward_input(op, grad_output, weight, input_size, stride,
                                                         padding, dilation, groups);
  const ConvGeometry g(shape, stride, padding, dilation);
  const Tensor w = contiguous_or_self(weight);
  if (is_depthwise(g))
    return run_depthwise(g, ConvPass::kInput, grad_output, [&](RowFetch fetch) {
      return depthwise_conv2d_backward_input(depthwise_problem(g), grad_output, w, input_size, fetch);
    });
  if (half == HalfTypes::kChoose && is_half_type(grad_output.scalar_type())) {
    const OnPairs on_pairs =
        pairs_for(g, ConvPass::kInput, grad_output, shape.batch * shape.in_channels * g.height * g.width,
                  [&](PairWay way) { return backward_input_on_pairs(g, grad_output, w, way); },
                  grad_output.scalar_type() != ScalarType::BFloat16 || all_finite_bfloat16(bfloat16_bits(w), w.numel()));
    return run_half_types(
        g, ConvPass::kInput, grad_output,
        [&] {
          return backward_input_pass(grad_output, weight, input_size, stride, padding, dilation, groups,
                                     HalfTypes::kPacked);
        },
        [&] {
          return converted(conv2d_backward_input_cpu(converted(grad_output, ScalarType::Float),
                                                     converted(w, ScalarType::Float), input_size, stride, padding,
                                                     dilation, groups, false, false),
                           grad_output.scalar_type());
        },
        on_pairs);
  }
  auto nchw = [&]() -> Tensor {
    const Tensor dy = contiguous_or_self(grad_output);
    // Every kernel writes every element (col2im zeroes each sample before adding into it).
    Tensor dx = empty_like_with(grad_output, input_size);

    CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_input_cpu", [&] {
      const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
      const scalar_t* w_data = w.const_data_ptr<scalar_t>();
      scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
      if constexpr (std::is_same_v<scalar_t, float>) {
        const float *dyf = dy.const_data_ptr<float>(), *wf = w.const_data_ptr<float>();
        float* dxf = dx.mutable_data_ptr<float>();
        const DirectConv p = direct_problem(g);
        run_float_pass(g, ConvPass::kInput,
                       {.direct = [&](OutputStores stores) { direct_conv_backward_input(p, dyf, wf, dxf, stores); },
                        .gemm = [&] { gemm_backward_input<float>(g, dyf, wf, dxf); },
                        .winograd = [&] { winograd_backward_input(p, dyf, wf, dxf); },
                        .pixel = [&] { pixel_gemm_backward_input(p, dyf, wf, dxf); },
                        .by_phase = g.groups > 1 || g.stride_h * g.stride_w == 1 ? nullptr : std::function<void()>([&] {
                          input_gradient_by_phase(p, dyf, wf, dxf, phase_forward);
                        }),
                        .streamable_bytes =
                            direct_conv_forward_can_stream(input_gradient_as_forward(p)) ? float_bytes(dx) : 0,
                        // The direct input gradient (and the phases) multiply the zero border of a padded
                        // grad_output by every tap: a NaN or Inf weight would make NaN where the true
                        // gradient has none.
                        .direct_exact = std::all_of(wf, wf + w.numel(), [](float v) { return std::isfinite(v); }),
                        .winograd_inputs = {{dyf, dy.numel()}, {wf, w.numel()}}});
      } else {
        gemm_backward_input<scalar_t>(g, dy_data, w_data, dx_data);
      }
    });
    return dx;
  };
  if (g.groups > 1) {
    std::function<Tensor()> direct_by_group;
    const DirectConv group = group_problem(g);
    if (grad_output.scalar_type() == ScalarType::Float && direct_conv_backward_input_suits(group) &&
        all_finite(Operands{{w.const_data_ptr<float>(), w.numel()}}))  // (as run_float_pass's direct_exact)
      direct_by_group = [&] {
        const int64_t C = g.channels_per_group, O = g.out_channels_per_group;
        if (is_channels_last(grad_output)) {  // NHWC in place, every group in one pass, as the forward pass
          Tensor dx = empty_channels_last_like(grad_output, input_size);
          DirectConv all = group;
          all.groups = g.groups;
          direct_conv_backward_input_nhwc(all, grad_output.const_data_ptr<float>(), w.const_data_ptr<float>(),
                                          dx.mutable_data_ptr<float>());
          return dx;
        }
        const Tensor dy = contiguous_or_self(grad_output);
        Tensor dx = empty_like_with(grad_output, input_size);
        for (int64_t gi = 0; gi < g.groups; ++gi)
          direct_conv_backward_input(group, dy.const_data_ptr<float>() + gi * O * g.out_plane(),
                                     w.const_data_ptr<float>() + gi * O * g.column_rows(),
                                     dx.mutable_data_ptr<float>() + gi * C * g.height * g.width,
                                     stores_by_rule(input_gradient_as_forward(group)));
        return in_layout_of(grad_output, dx);
      };
    return run_grouped(g, ConvPass::kInput, grad_output, [&] { return in_layout_of(grad_output, nchw()); }, direct_by_group, [&] {
      Tensor dx = empty_in_layout_of(grad_output, input_size);
      const int64_t C = g.channels_per_group, O = g.out_channels_per_group;
      const int64_t group_size[4] = {input_size[0], C, input_size[2], input_size[3]};
      for (int64_t gi = 0; gi < g.groups; ++gi)
        copy_into_channels(dx, gi * C,
                           backward_input_pass(channel_slice_copy(grad_output, gi * O, O), leading_slice(w, gi * O, O),
                                               IntArrayRef(group_size, 4), stride, padding, dilation, 1, half));
      return dx;
    });
  }
  if (runs_channels_last(g, grad_output)) {
    Tensor dx = empty_channels_last_like(grad_output, input_size);
    auto native = [&] {
      CUCONV_DISPATCH_FLOATING(grad_output.scalar_type(), "conv2d_backward_input_cpu", [&] {
        if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
          conv_channels_last_backward_input<scalar_t>(direct_problem(g), grad_output.const_data_ptr<scalar_t>(),
                                                      w.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>());
        }
      });
    };
    choose_layout(g, ConvPass::kInput, grad_output.scalar_type(), native, [&] { torch::stable::copy_(dx, nchw()); },
                  nhwc_winograd_or(native, grad_output, w, [&] {
                    winograd_channels_last_backward_input(direct_problem(g), grad_output.const_data_ptr<float>(),
                                                          w.const_data_ptr<float>(), dx.mutable_data_ptr<float>());
                  }),
                  // (finite weights only: the padding's products are skipped; else the NHWC kernels)
                  nhwc_direct_if(grad_output, direct_conv_backward_input_suits(direct_problem(g)), [&] {
                    if (!all_finite(Operands{{w.const_data_ptr<float>(), w.numel()}})) return native();
                    direct_conv_backward_input_nhwc(direct_problem(g), grad_output.const_data_ptr<float>(),
                                                    w.const_data_ptr<float>(), dx.mutable_data_ptr<float>());
                  }));
    return dx;
  }
  return in_layout_of(grad_output, nchw());
}

Tensor backward_weight_pass(const Tensor& grad_output, const Tensor& input, IntArrayRef weight_size,
                            IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                            HalfTypes half) {
  const char* op = "cuconv.conv2d_backward_weight";
  const auto shape = check_conv2d_backward_weight(op, grad_output, input, weight_size, stride,
                                                          padding, dilation, groups);
  const ConvGeometry g(shape, stride, padding, dilation);
  if (is_depthwise(g)) return depthwise_conv2d_backward_weight(depthwise_problem(g), grad_output, input, weight_size);
  if (half == HalfTypes::kChoose && is_half_type(grad_output.scalar_type())) {
    auto via_float = [&] {
      return converted(conv2d_backward_weight_cpu(converted(grad_output, ScalarType::Float),
                                                  converted(input, ScalarType::Float), weight_size, stride, padding,
                                                  dilation, groups, false, false),
                       grad_output.scalar_type());
    };
    const OnPairs on_pairs = pairs_for(g, ConvPass::kWeight, grad_output, /*output_elements=*/0,
                                       [&](PairWay /*a small output: cached, in place*/) {
      const Tensor dw = backward_weight_on_pairs(g, grad_output, input, weight_size);
      return dw.defined() ? dw : via_float();
    });
    return run_half_types(
        g, ConvPass::kWeight, grad_output,
        [&] {
          return backward_weight_pass(grad_output, input, weight_size, stride, padding, dilation, groups,
                                      HalfTypes::kPacked);
        },
        via_float, on_pairs);
  }
  auto nchw = [&]() -> Tensor {
    const Tensor x = contiguous_or_self(input);
    const Tensor dy = contiguous_or_self(grad_output);
    Tensor dw = empty_like_with(dy, weight_size);

    CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "conv2d_backward_weight_cpu", [&] {
      const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
      const scalar_t* x_data = x.const_data_ptr<scalar_t>();
      scalar_t* dw_data = dw.mutable_data_ptr<scalar_t>();
      if constexpr (std::is_same_v<scalar_t, float>) {
        const float *dyf = dy.const_data_ptr<float>(), *xf = x.const_data_ptr<float>();
        float* dwf = dw.mutable_data_ptr<float>();
        const DirectConv p = direct_problem(g);
        auto gemm = [&] { gemm_backward_weight<float>(g, dyf, xf, dwf); };
        run_float_pass(g, ConvPass::kWeight,
                       {.direct = [&](OutputStores) { direct_conv_backward_weight(p, xf, dyf, dwf); },
                        .gemm = gemm,
                        .winograd = [&] { winograd_backward_weight(p, xf, dyf, dwf); },
                        .pixel = [&] { if (!pixel_gemm_backward_weight(p, xf, dyf, dwf)) gemm(); },
                        .winograd_inputs = {{xf, x.numel()}, {dyf, dy.numel()}}});
      } else {
        gemm_backward_weight<scalar_t>(g, dy_data, x_data, dw_data);
      }
    });
    return dw;
  };
  if (g.groups > 1) {
    std::function<Tensor()> direct_by_group;
    if (grad_output.scalar_type() == ScalarType::Float) direct_by_group = [&] {
      const DirectConv p = group_problem(g);
      const int64_t C = g.channels_per_group, O = g.out_channels_per_group;
      if (is_channels_last(grad_output) && is_channels_last(input)) {  // NHWC in place, every group at once
        Tensor dw = empty_like_with(grad_output, weight_size);
        DirectConv all = p;
        all.groups = g.groups;
        direct_conv_backward_weight_nhwc(all, input.const_data_ptr<float>(), grad_output.const_data_ptr<float>(),
                                         dw.mutable_data_ptr<float>());
        return dw;
      }
      const Tensor x = contiguous_or_self(input), dy = contiguous_or_self(grad_output);
      Tensor dw = empty_like_with(dy, weight_size);
      for (int64_t gi = 0; gi < g.groups; ++gi)
        direct_conv_backward_weight(p, x.const_data_ptr<float>() + gi * C * g.height * g.width,
                                    dy.const_data_ptr<float>() + gi * O * g.out_plane(),
                                    dw.mutable_data_ptr<float>() + gi * O * g.column_rows());
      return dw;
    };
    return run_grouped(g, ConvPass::kWeight, grad_output, nchw, direct_by_group, [&] {
      Tensor dw = empty_like_with(grad_output, weight_size);
      const int64_t C = g.channels_per_group, O = g.out_channels_per_group;
      const int64_t group_size[4] = {O, C, weight_size[2], weight_size[3]};
      for (int64_t gi = 0; gi < g.groups; ++gi) {
        Tensor part = leading_slice(dw, gi * O, O);
        torch::stable::copy_(part, backward_weight_pass(channel_slice_copy(grad_output, gi * O, O),
                                                        channel_slice_copy(input, gi * C, C), IntArrayRef(group_size, 4),
                                                        stride, padding, dilation, 1, half));
      }
      return dw;
    });
  }
  if (runs_channels_last(g, grad_output) && is_channels_last(input)) {
    Tensor dw = empty_like_with(grad_output, weight_size);
    auto native = [&] {
      CUCONV_DISPATCH_FLOATING(grad_output.scalar_type(), "conv2d_backward_weight_cpu", [&] {
        if constexpr (std::is_same_v<scalar_t, float> || std::is_same_v<scalar_t, double>) {
          conv_channels_last_backward_weight<scalar_t>(direct_problem(g), grad_output.const_data_ptr<scalar_t>(),
                                                       input.const_data_ptr<scalar_t>(), dw.mutable_data_ptr<scalar_t>());
        }
      });
    };
    choose_layout(g, ConvPass::kWeight, grad_output.scalar_type(), native, [&] { torch::stable::copy_(dw, nchw()); },
                  nhwc_winograd_or(native, input, grad_output, [&] {
                    winograd_channels_last_backward_weight(direct_problem(g), input.const_data_ptr<float>(),
                                                           grad_output.const_data_ptr<float>(),
                                                           dw.mutable_data_ptr<float>());
                  }),
                  nhwc_direct_if(grad_output, true, [&] {
                    direct_conv_backward_weight_nhwc(direct_problem(g), input.const_data_ptr<float>(),
                                                     grad_output.const_data_ptr<float>(), dw.mutable_data_ptr<float>());
                  }));
    return dw;
  }
  return nchw();
}

}  // namespace

Tensor conv2d_forward_cpu(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
                          IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                          bool /*allow_tf32: float32 on the CPU is float32*/,
                          bool /*benchmark: the CPU measures unless CUCONV_CPU_TUNE=0*/) {
  return forward_pass(input, weight, bias, stride, padding, dilation, groups, HalfTypes::kChoose);
}

Tensor conv2d_backward_input_cpu(const Tensor& grad_output, const Tensor& weight, IntArrayRef input_size,
                                 IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                 bool /*allow_tf32*/, bool /*benchmark*/) {
  return backward_input_pass(grad_output, weight, input_size, stride, padding, dilation, groups, HalfTypes::kChoose);
}

Tensor conv2d_backward_weight_cpu(const Tensor& grad_output, const Tensor& input, IntArrayRef weight_size,
                                  IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                                  bool /*allow_tf32*/, bool /*benchmark*/) {
  return backward_weight_pass(grad_output, input, weight_size, stride, padding, dilation, groups, HalfTypes::kChoose);
}

}  // namespace cuconv
