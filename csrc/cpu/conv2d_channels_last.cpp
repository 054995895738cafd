// channels_last (NHWC) convolution on the CPU (conv2d_channels_last.h).
//
// In NHWC a pixel's channels are contiguous, so im2col is a copy of channel runs and the
// output pixels are the rows of the product. With k = (i*kW + j)*C + c (tap-major) and
// pixel p = (n*H_out + oh)*W_out + ow:
//
//   cols[p, k] = x[n, oh*sH - pH + i*dH, ow*sW - pW + j*dW, c]     (0 in the padding)
//
//                 A (MR rows)                 B (packed: NR columns)     C
//   forward       cols      [P_blk, K]        W^T  [K, O] (once)        y rows [P_blk, O] in place
//                 (not packed: row pointers into x, the indirect convolution)
//   input grad    dy (packed) [P_blk, O]      W    [O, K] (once)        dcols [P_blk, K_chunk] -> col2im
//    (1x1, no padding: dy's rows in place)                                   dx's pixels (oh*sH, ow*sW)
//   weight grad   dy^T (in place) [O, P_slice] X_t [P_slice, C] per tap  dW_t [O, C], per thread part
//                                             (not packed: row pointers into x)
//
// The input gradient of a stride-1 layer is the forward pass itself (flipped kernel over dy).
// Blocks of P_blk pixels are sized from the L2 (as conv2d.cpp's); the forward pass splits
// pixel blocks across threads, the input gradient whole samples (col2im adds neighbouring
// pixels), the weight gradient equal runs of pixels whose partial sums are added in a fixed
// order (deterministic for a given thread count).

#include "conv2d_channels_last.h"

#include <algorithm>
#include <vector>

#include "../ops.h"
#include "gemm.h"
#include "parallel.h"

namespace cuconv {
namespace {

struct Nhwc {
  const DirectConv& p;
  int64_t taps() const { return p.kernel_h * p.kernel_w; }
  int64_t K() const { return taps() * p.in_channels; }
  int64_t pixels_per_sample() const { return p.out_h * p.out_w; }
  // Element of an OIHW weight at output channel o and column k = t*C + c of the product.
  int64_t weight_index(int64_t o, int64_t k) const {
    return (o * p.in_channels + k % p.in_channels) * taps() + k / p.in_channels;
  }
  // Input pixel of output pixel q (within a sample) at tap t, or -1 in the padding.
  int64_t source(int64_t q, int64_t t) const {
    const int64_t oh = q / p.out_w, ow = q % p.out_w, i = t / p.kernel_w, j = t % p.kernel_w;
    const int64_t ih = oh * p.stride_h - p.pad_h + i * p.dilation_h, iw = ow * p.stride_w - p.pad_w + j * p.dilation_w;
    return ih < 0 || ih >= p.height || iw < 0 || iw >= p.width ? -1 : ih * p.width + iw;
  }

  // The same for the hot loops, without a division per tap: an output pixel (counted across
  // samples) as its window, worked out once, and each tap as its offset from the window's corner.
  struct Window {
    int64_t sample, h0, w0;  // the sample's first input element; the corner's row and column (< 0 in the padding)
  };
  Window window(int64_t pixel) const {
    const int64_t q = pixel % pixels_per_sample();
    return {pixel / pixels_per_sample() * p.height * p.width * p.in_channels, q / p.out_w * p.stride_h - p.pad_h,
            q % p.out_w * p.stride_w - p.pad_w};
  }
  struct TapOffset {
    int64_t h, w;
  };
  std::vector<TapOffset> tap_offsets() const {
    std::vector<TapOffset> offsets;
    for (int64_t t = 0; t < taps(); ++t) offsets.push_back({t / p.kernel_w * p.dilation_h, t % p.kernel_w * p.dilation_w});
    return offsets;
  }
  // Element offset of the input pixel that a tap of the window reads (its channel 0), or -1 in the padding.
  int64_t tap_source(const Window& win, const TapOffset& tap) const {
    const int64_t ih = win.h0 + tap.h, iw = win.w0 + tap.w;
    return ih < 0 || ih >= p.height || iw < 0 || iw >= p.width ? -1 : win.sample + (ih * p.width + iw) * p.in_channels;
  }
};

// Pixels per block: a multiple of `tile` whose packed slice (256 deep) takes ~3/8 of the
// L2, and no more than an equal share of `pixels` per thread (so every thread has work).
int64_t block_pixels(int64_t pixels, int64_t tile) {
  const int64_t by_cache = std::max<int64_t>(tile, l2_cache_bytes() * 3 / 8 / (256 * 4) / tile * tile);
  const int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  const int64_t share = ((pixels + threads - 1) / threads + tile - 1) / tile * tile;
  return std::max<int64_t>(tile, std::min(by_cache, share));
}

}  // namespace

// The forward pass is the indirect convolution: the microkernel reads each output pixel's
// input pixels through row pointers straight from x (a row of zeros in the padding), so x is
// never packed. K is cut into slices of about the GEMM's depth: runs of whole taps where C is
// small, single taps cut into channel runs where it is large. Per slice, every mr-pixel panel
// of the block meets every NR-column panel of the packed W^T slice (in L2).
template <typename T>
void conv_channels_last_forward(const DirectConv& p, const T* x, const T* w, const T* bias, T* y) {
  const Nhwc g{p};
  const Microkernel<T> kernel = cpu_microkernel_for_columns<T>(p.out_channels);
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t C = p.in_channels, O = p.out_channels, K = g.K(), plane = g.pixels_per_sample();
  const int64_t P = p.batch * plane, mr = kernel.mr, nr = kernel.nr;
  // W^T [K, O] in B panels over the whole depth K.
  PackedBuffer<T> b(packed_size(O, nr, K), T(0));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < K; ++k) b[packed_index(k, o, nr, K)] = w[g.weight_index(o, k)];
  struct Slice {
    int64_t tap, taps, channel, channels;
  };
  std::vector<Slice> slices;
  if (C >= kernel.depth) {
    for (int64_t t = 0; t < g.taps(); ++t)
      for (int64_t c = 0; c < C; c += kernel.depth) slices.push_back({t, 1, c, std::min(kernel.depth, C - c)});
  } else {
    // as many taps per slice as keep its W^T slice (taps x C x O) within a quarter of the L2, in
    // slices of equal size (a last slice of one tap would add a pass over y for little work)
    const int64_t fit = std::max<int64_t>(1, l2_cache_bytes() / 4 / (C * packed_size(O, nr, 1) * static_cast<int64_t>(sizeof(T))));
    const int64_t count = (g.taps() + fit - 1) / fit, taps_per_slice = (g.taps() + count - 1) / count;
    for (int64_t t = 0; t < g.taps(); t += taps_per_slice)
      slices.push_back({t, std::min(taps_per_slice, g.taps() - t), 0, C});
  }
  const std::vector<T> zeros(C, T(0));
  const std::vector<Nhwc::TapOffset> taps = g.tap_offsets();
  const int64_t block = block_pixels(P, mr);
  parallel_for_chunks(0, (P + block - 1) / block, 1, [&](int64_t first, int64_t last) {
    std::vector<const T*> rows(g.taps() * mr);
    T edge[kMaxTileElements];
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t p0 = blk * block, M = std::min(block, P - p0);
      for (const Slice& slice : slices) {
        const bool first_slice = &slice == &slices.front();
        for (int64_t r0 = 0; r0 < M; r0 += mr) {
          const int64_t valid_rows = std::min(mr, M - r0);
          for (int64_t r = 0; r < mr; ++r) {
            const Nhwc::Window win = g.window(p0 + r0 + r);
            for (int64_t t = 0; t < slice.taps; ++t) {
              const int64_t source = r < valid_rows ? g.tap_source(win, taps[slice.tap + t]) : -1;
              rows[t * mr + r] = source < 0 ? zeros.data() : x + source + slice.channel;
            }
          }
          T* out = y + (p0 + r0) * O;
          for (int64_t j0 = 0; j0 < O; j0 += nr) {
            const T* panel = b.data() + j0 / nr * K * nr + (slice.tap * C + slice.channel) * nr;
            const int64_t cols = std::min(nr, O - j0);
            if (valid_rows == mr && cols == nr) {
              kernel.indirect(slice.taps, slice.channels, rows.data(), panel, out + j0, O, !first_slice,
                              first_slice && bias != nullptr ? bias + j0 : nullptr);
              continue;
            }
            kernel.indirect(slice.taps, slice.channels, rows.data(), panel, edge, nr, false, nullptr);
            for (int64_t r = 0; r < valid_rows; ++r)
              for (int64_t j = 0; j < cols; ++j) {
                T& o = out[r * O + j0 + j];
                o = (first_slice ? (bias != nullptr ? bias[j0 + j] : T(0)) : o) + edge[r * nr + j];
              }
          }
        }
      }
    }
  });
}

namespace {

// No Inf or NaN among the weights (v - v is 0 for every finite v, NaN else; a loop with no early
// exit, which vectorises).
template <typename T>
bool all_finite_weights(const T* w, int64_t count) {
  bool special = false;
  for (int64_t i = 0; i < count; ++i) special |= !(w[i] - w[i] == T(0));
  return !special;
}

}  // namespace

template <typename T>
void conv_channels_last_backward_input(const DirectConv& p, const T* dy, const T* w, T* dx) {
  const Nhwc g{p};
  if (direct_conv_backward_input_suits(p) && all_finite_weights(w, p.out_channels * p.in_channels * p.kernel_h * p.kernel_w)) {
    // (stride 1, padding within the kernel's reach)
    // Stride 1: dx is the forward pass over dy with the kernel flipped (direct_conv.h): the
    // indirect forward writes every element, no col2im. (With finite weights only: it multiplies
    // dy's zero border by every tap, and an Inf or NaN weight would make NaN where the true
    // gradient has none; col2im below adds only the products that exist.)
    conv_channels_last_forward<T>(input_gradient_as_forward(p), dy, flipped_kernel(p, w).data(), nullptr, dx);
    return;
  }
  // dx's columns are the input channels: the tile that wastes fewest of them (with AVX-512, 64
  // channels fill one 6 x 64 tile, where the 8 x 48 one left two thirds of its second idle and
  // went through its edge buffer: ResNet's b3 shortcut's input gradient took ~2x torch's time).
  const Microkernel<T> kernel = cpu_microkernel_for_columns<T>(p.in_channels);
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t C = p.in_channels, O = p.out_channels, K = g.K(), plane = g.pixels_per_sample();
  const int64_t mr = kernel.mr, nr = kernel.nr;
  // W [O, K] in B panels over the whole depth O.
  PackedBuffer<T> b(packed_size(K, nr, O), T(0));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t k = 0; k < K; ++k) b[packed_index(o, k, nr, O)] = w[g.weight_index(o, k)];
  if (K == C && p.pad_h == 0 && p.pad_w == 0) {
    // A 1x1 kernel without padding (strided: ResNet's shortcuts): input pixel (oh*sH, ow*sW)
    // takes dy's pixel (oh, ow) times W and the others nothing, so each output row's product
    // goes straight to its input pixels, sW*C elements apart (no dcols, no col2im's adds), and
    // only the pixels no product reaches are zeroed. dy's pixels are the tile's A rows, read in
    // place through pointers (the indirect tile; packing them took ~1/3 of the time).
    const std::vector<T> zeros(O, T(0));  // the rows of a last tile past the output row
    parallel_for_chunks(0, p.batch, 1, [&](int64_t first, int64_t last) {
      std::vector<const T*> pixels(mr), rows(mr);
      T edge[kMaxTileElements];
      for (int64_t n = first; n < last; ++n) {
        T* dxn = dx + n * p.height * p.width * C;
        for (int64_t ih = 0; ih < p.height; ++ih) {
          T* row = dxn + ih * p.width * C;
          if (ih % p.stride_h != 0) {  // (every row and column at a multiple of the stride is some output's)
            std::fill_n(row, p.width * C, T(0));
            continue;
          }
          for (int64_t iw = 0; iw < p.width; ++iw)
            if (iw % p.stride_w != 0) std::fill_n(row + iw * C, C, T(0));
        }
        for (int64_t oh = 0; oh < p.out_h; ++oh) {
          const T* dy_row = dy + (n * plane + oh * p.out_w) * O;
          T* dx_row = dxn + oh * p.stride_h * p.width * C;
          for (int64_t ow0 = 0; ow0 < p.out_w; ow0 += mr) {
            const int64_t valid = std::min(mr, p.out_w - ow0);
            for (int64_t r = 0; r < mr; ++r) pixels[r] = r < valid ? dy_row + (ow0 + r) * O : zeros.data();
            for (int64_t j0 = 0; j0 < C; j0 += nr) {
              const int64_t cols = std::min(nr, C - j0);
              const bool whole = valid == mr && cols == nr;
              T* out = dx_row + ow0 * p.stride_w * C + j0;
              for (int64_t o0 = 0; o0 < O; o0 += kernel.depth) {
                for (int64_t r = 0; r < mr; ++r) rows[r] = pixels[r] + o0;
                kernel.indirect(1, std::min(kernel.depth, O - o0), rows.data(), b.data() + j0 / nr * O * nr + o0 * nr,
                                whole ? out : edge, whole ? p.stride_w * C : nr, o0 > 0, nullptr);
              }
              if (!whole)
                for (int64_t r = 0; r < valid; ++r) std::copy_n(edge + r * nr, cols, out + r * p.stride_w * C);
            }
          }
        }
      }
    });
    return;
  }
  const int64_t block = std::max<int64_t>(mr, std::min<int64_t>(plane, l2_cache_bytes() * 3 / 8 / (256 * 4)) / mr * mr);
  const int64_t chunk = std::max<int64_t>(nr, 256 / nr * nr);  // columns of dcols per product
  parallel_for_chunks(0, p.batch, 1, [&](int64_t first, int64_t last) {
    PackedBuffer<T> a(packed_size(block, mr, O)), dcols(block * chunk);
    for (int64_t n = first; n < last; ++n) {
      T* dxn = dx + n * p.height * p.width * C;
      std::fill_n(dxn, p.height * p.width * C, T(0));
      for (int64_t q0 = 0; q0 < plane; q0 += block) {
        const int64_t M = std::min(block, plane - q0);
        // dy rows [M, O] into A panels over the whole depth O
        pack_a(a.data(), mr, O, dy + (n * plane + q0) * O, M, O, int64_t{1});
        for (int64_t k0 = 0; k0 < K; k0 += chunk) {
          const int64_t width = std::min(chunk, K - k0);
          for (int64_t o0 = 0; o0 < O; o0 += kernel.depth) {
            gemm_packed(kernel, M, width, std::min(kernel.depth, O - o0), a.data() + o0 * mr, O * mr,
                        b.data() + k0 / nr * O * nr + o0 * nr, O * nr, dcols.data(), chunk, o0 > 0, nullptr);
          }
          // col2im: each dcols element back to its input pixel and channel
          for (int64_t m = 0; m < M; ++m) {
            const T* row = dcols.data() + m * chunk;
            for (int64_t k = k0; k < k0 + width;) {
              const int64_t t = k / C, c = k % C, run = std::min(C - c, k0 + width - k);
              const int64_t pixel = g.source(q0 + m, t);
              if (pixel >= 0) {
                T* d = dxn + pixel * C + c;
                const T* s = row + (k - k0);
                for (int64_t e = 0; e < run; ++e) d[e] += s[e];
              }
              k += run;
            }
          }
        }
      }
    }
  });
}

// The weight gradient, tap by tap: dW_t [O, C] = dy^T [O, P] @ X_t [P, C], where row p of X_t is
// the input pixel that tap t of output pixel p reads (a row of zeros in the padding). The
// microkernel reads X_t's rows through pointers straight from x (rows_b, gemm.h): nothing of x
// is packed, and neither is dy^T: a panel of MR output channels is MR consecutive values of each
// pixel's row of dy, read with a step of O (packing it took ~1/8 of ResNet's 1x1 stride-2
// shortcut's weight gradient); only a last panel of fewer channels is packed. (Packing the
// im2col columns instead, 9x the input for a 3x3 kernel, cost as much as the products on
// 64-channel layers.) Channels past the last whole NR panel are copied per slice into rows of
// NR, zero-padded, so no row is read past its end.
template <typename T>
void conv_channels_last_backward_weight(const DirectConv& p, const T* dy, const T* x, T* dw) {
  const Nhwc g{p};
  const Microkernel<T> kernel = cpu_microkernel_for_columns<T>(p.in_channels);
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t C = p.in_channels, O = p.out_channels, plane = g.pixels_per_sample();
  const int64_t P = p.batch * plane, mr = kernel.mr, nr = kernel.nr, depth = kernel.depth;
  const int64_t full = C / nr * nr;  // channels in whole NR panels
  const std::vector<Nhwc::TapOffset> taps = g.tap_offsets();
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(torch::stable::get_num_threads(), (P + depth - 1) / depth));
  std::vector<std::vector<T>> partial(parts);  // per part: dW_t [O, C] for every tap t
  const std::vector<T> zeros(C, T(0));
  const int64_t whole_panels = O / mr * mr;  // output channels read from dy in place
  torch::stable::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    PackedBuffer<T> a(mr * depth);  // the last panel of fewer than mr channels, packed
    std::vector<const T*> rows(depth), tail_rows(depth);
    std::vector<Nhwc::Window> windows(depth);
    std::vector<T> tails(full < C ? depth * nr : 0, T(0));
    T edge[kMaxTileElements];
    for (int64_t part = first; part < last; ++part) {
      std::vector<T>& sum = partial[part];
      sum.assign(g.taps() * O * C, T(0));
      const int64_t begin = P * part / parts, end = P * (part + 1) / parts;
      for (int64_t p0 = begin; p0 < end; p0 += depth) {
        const int64_t d = std::min(depth, end - p0);
        // dy^T: A element (o, pixel) = dy[pixel, o]. A panel of mr channels is read from dy in place
        // (mr consecutive values, then the next pixel's: a step of O); only a last panel of
        // fewer channels is packed, zero-padded, so that no read leaves dy.
        if (whole_panels < O) pack_a(a.data(), mr, d, dy + p0 * O + whole_panels, O - whole_panels, int64_t{1}, O);
        for (int64_t k = 0; k < d; ++k) windows[k] = g.window(p0 + k);
        for (int64_t t = 0; t < g.taps(); ++t) {
          for (int64_t k = 0; k < d; ++k) {
            const int64_t source = g.tap_source(windows[k], taps[t]);
            rows[k] = source < 0 ? zeros.data() : x + source;
            if (full < C) {
              std::copy(rows[k] + full, rows[k] + C, tails.begin() + k * nr);
              tail_rows[k] = tails.data() + k * nr;
            }
          }
          T* dw_t = sum.data() + t * O * C;
          for (int64_t m0 = 0; m0 < O; m0 += mr) {
            const int64_t valid_rows = std::min(mr, O - m0);
            const T* panel = m0 < whole_panels ? dy + p0 * O + m0 : a.data();
            const int64_t a_step = m0 < whole_panels ? O : mr;
            for (int64_t j0 = 0; j0 < C; j0 += nr) {
              const T* const* b_rows = j0 < full ? rows.data() : tail_rows.data();
              const int64_t offset = j0 < full ? j0 : 0, cols = std::min(nr, C - j0);
              if (valid_rows == mr && cols == nr) {
                kernel.rows_b(d, panel, a_step, b_rows, offset, dw_t + m0 * C + j0, C, /*accumulate=*/true);
                continue;
              }
              kernel.rows_b(d, panel, a_step, b_rows, offset, edge, nr, false);
              for (int64_t r = 0; r < valid_rows; ++r)
                for (int64_t j = 0; j < cols; ++j) dw_t[(m0 + r) * C + j0 + j] += edge[r * nr + j];
            }
          }
        }
      }
    }
  });
  // dw[o, c, t] = sum over parts, in order, of dW_t[o, c]
  torch::stable::parallel_for(0, O, 1, [&](int64_t first, int64_t last) {
    for (int64_t o = first; o < last; ++o)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t t = 0; t < g.taps(); ++t) {
          T total = T(0);
          for (int64_t part = 0; part < parts; ++part) total += partial[part][(t * O + o) * C + c];
          dw[(o * C + c) * g.taps() + t] = total;
        }
  });
}

#define CUCONV_INSTANTIATE(T)                                                                                 \
  template void conv_channels_last_forward<T>(const DirectConv&, const T*, const T*, const T*, T*);          \
  template void conv_channels_last_backward_input<T>(const DirectConv&, const T*, const T*, T*);             \
  template void conv_channels_last_backward_weight<T>(const DirectConv&, const T*, const T*, T*);
CUCONV_INSTANTIATE(float)
CUCONV_INSTANTIATE(double)
#undef CUCONV_INSTANTIATE

}  // namespace cuconv
