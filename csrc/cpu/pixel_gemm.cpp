// Per-pixel matrix products for small images (pixel_gemm.h).
//
// Each pass is a set of sums of products, one sum per destination (an output pixel, an input
// pixel, or a kernel tap):
//
//   C_d [M, N] = sum over d's terms (a, b) of A_a [M, depth] @ B_b [depth, N]
//
//                 destinations d     terms (a, b)                A_a              B_b
//   forward       output pixels p    (tap t, pixel s(p, t))      W_t    [O, C]    x_s  [C, batch]
//   input grad    input pixels s     (tap t, pixel p), s(p,t)=s  W_t^T  [C, O]    dy_p [O, batch]
//   weight grad   taps t             (pixel p, pixel s(p, t))    dy_p   [O, batch] x_s^T [batch, C]
//
// Every operand is packed once per call, in gemm.h's panel layouts (A: rows in panels of MR,
// B: columns in panels of NR), one operand per tap or per pixel, so a term is a plain GEMM on
// packed panels with no im2col: the taps that fall into the padding are simply not terms.
//
// Blocking and threads: the threads split the M rows (in whole panels; the destinations too,
// where there are more threads than panels) and take the destinations one by one; the
// columns go in blocks whose B slice (depth x block, depth = the microkernel's K slice) takes
// 3/8 of L2 (read at run time, gemm.h), as in conv2d.cpp's im2col blocks. A destination's sum
// is accumulated in a buffer of the thread, term after term in a fixed order, and scattered into
// the NCHW (or OIHW) result: every result element is written by one thread, deterministically.

#include "pixel_gemm.h"

#include <algorithm>
#include <array>
#include <atomic>
#include <cstring>
#include <utility>
#include <vector>

#include "../stable.h"
#include "gemm.h"

namespace cuconv {
namespace {

// The sums of one pass. A operands are `a_size` elements apart, each MR-row panels of depth
// `depth`; B operands `b_size` apart, each NR-column panels of depth `depth`, with the
// columns past N zero.
struct ProductSums {
  ProductSums(const Microkernel<float>& kernel, int64_t rows, int64_t columns, int64_t depth_)
      : M(rows), N(columns), depth(depth_), a_size(packed_size(M, kernel.mr, depth)),
        b_size(packed_size(N, kernel.nr, depth)) {}
  int64_t M, N, depth;
  int64_t a_size, b_size;  // elements of one A / B operand
  const float* a = nullptr;  // operand 0 of each (packed by the caller)
  const float* b = nullptr;
  std::vector<int64_t> first;                       // destination d's terms: [first[d], first[d + 1])
  std::vector<std::pair<int64_t, int64_t>> terms;  // (A operand, B operand)
  int64_t destinations() const { return static_cast<int64_t>(first.size()) - 1; }
};

// Runs every sum; emit(d, m_begin, m_end, n_begin, n_end, c, ldc) receives rows [m_begin, m_end)
// and columns [n_begin, n_end) of destination d's sum (row m - m_begin, column n - n_begin of c).
// `bias` (per row, may be null) is added to every sum; a destination without terms gets it alone.
template <typename Emit>
void run_product_sums(const Microkernel<float>& kernel, const ProductSums& s, const float* bias, Emit emit) {
  const int64_t mr = kernel.mr, nr = kernel.nr, depth = s.depth, destinations = s.destinations();
  const int64_t m_panels = (s.M + mr - 1) / mr;
  const int64_t threads = torch::stable::get_num_threads();
  const int64_t m_parts = std::max<int64_t>(1, std::min(threads, m_panels));
  const int64_t d_parts = std::max<int64_t>(1, std::min(destinations, threads / m_parts));
  const int64_t padded_n = (s.N + nr - 1) / nr * nr;
  const int64_t block = std::clamp<int64_t>(l2_cache_bytes() * 3 / 8 / (kernel.depth * 4) / nr * nr, nr, padded_n);
  torch::stable::parallel_for(0, m_parts * d_parts, 1, [&](int64_t begin, int64_t end) {
    PackedBuffer<float> sum((m_panels + m_parts - 1) / m_parts * mr * block);  // the largest part's rows
    for (int64_t item = begin; item < end; ++item) {
      const int64_t mp = item % m_parts, dp = item / m_parts;
      const int64_t m_begin = mp * m_panels / m_parts * mr, m_end = std::min(s.M, (mp + 1) * m_panels / m_parts * mr);
      const float* row_bias = bias != nullptr ? bias + m_begin : nullptr;
      for (int64_t d = dp * destinations / d_parts; d < (dp + 1) * destinations / d_parts; ++d) {
        for (int64_t n0 = 0; n0 < s.N; n0 += block) {
          const int64_t columns = std::min(block, padded_n - n0);  // whole panels: their tails are zero
          if (s.first[d] == s.first[d + 1]) {
            for (int64_t m = m_begin; m < m_end; ++m)
              std::fill_n(sum.data() + (m - m_begin) * block, columns, row_bias ? row_bias[m - m_begin] : 0.f);
          }
          bool accumulate = false;
          for (int64_t term = s.first[d]; term < s.first[d + 1]; ++term) {
            const float* a = s.a + s.terms[term].first * s.a_size + m_begin * depth;
            const float* b = s.b + s.terms[term].second * s.b_size + n0 * depth;  // panel n0/nr
            for (int64_t k0 = 0; k0 < depth; k0 += kernel.depth) {
              gemm_packed(kernel, m_end - m_begin, columns, std::min(kernel.depth, depth - k0), a + k0 * mr,
                          depth * mr, b + k0 * nr, depth * nr, sum.data(), block, accumulate,
                          accumulate ? nullptr : row_bias);
              accumulate = true;
            }
          }
          emit(d, m_begin, m_end, n0, std::min(s.N, n0 + block), sum.data(), block);
        }
      }
    }
  });
}

// Whether a float is Inf or NaN (every exponent bit set; a test that vectorises).
inline bool is_special(float v) {
  uint32_t bits;
  std::memcpy(&bits, &v, sizeof bits);
  return (bits & 0x7f800000u) == 0x7f800000u;
}

// The packers below turn a tensor inside out: each source row holds one value per operand (a
// weight's taps, a channel's pixels), each operand wants the rows side by side. Writing operand
// after operand one value at a time touches a cache line per operand per value, and operands
// whole pages apart share cache sets: 36 operands thrashed L1 (a stride-2 layer packed 20x
// slower than its products ran). So each packer gathers a chunk of rows into a small buffer,
// stage[value][lane], and writes each operand's part of the chunk in one contiguous run.
// pack_pixels_over_batch fills its stage by register transposes (gemm.h, cpu_transpose_floats;
// a channel's pixel rows of a panel of samples at a time): one value at a time, it took a fifth
// of ResNet's 3x3-output layers' forward on a Zen 4 (1x1 shortcut 4.8 -> 3.8 ms, b5.conv1 13.9
// -> 12.8). (pack_pixels_over_channels' panels are as few as MR = 6 channels wide: there the
// transposes of 16 lanes measured 3-10% slower.)
class Stage {
 public:
  // `values` per row, `lanes` rows per chunk: chunks of ~16 KB (L1), at least one row.
  Stage(int64_t values, int64_t row_lanes, int64_t rows_available)
      : values_(values),
        rows_(std::clamp<int64_t>((int64_t{4096} / std::max<int64_t>(1, values * row_lanes)), 1, rows_available)),
        lanes_(rows_ * row_lanes),
        data_(values * lanes_) {}
  int64_t rows_per_chunk() const { return rows_; }
  float& at(int64_t value, int64_t lane) { return data_[value * lanes_ + lane]; }
  int64_t lanes() const { return lanes_; }
  // Operand v's `lanes` values (of the chunk) to dst + v * operand_size.
  void write(float* dst, int64_t operand_size, int64_t lanes) const {
    for (int64_t v = 0; v < values_; ++v) std::copy_n(data_.data() + v * lanes_, lanes, dst + v * operand_size);
  }

 private:
  int64_t values_, rows_, lanes_;
  std::vector<float> data_;
};

// One A operand per kernel tap t, from OIHW weights: element (m, k) = w[m*row_stride +
// k*depth_stride + t], for m < rows, k < depth, in MR-row panels (rows past `rows` zero); operand
// t at dst + t * packed_size(rows, mr, depth). Returns whether the weights were all finite.
bool pack_tap_operands(const float* w, int64_t rows, int64_t depth, int64_t row_stride, int64_t depth_stride,
                       int64_t taps, int64_t mr, float* dst) {
  const int64_t size = packed_size(rows, mr, depth), panels = (rows + mr - 1) / mr;
  std::atomic<bool> finite{true};
  torch::stable::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    Stage stage(taps, mr, depth);  // a chunk: consecutive k of one panel, [k][mr] in each operand
    bool special = false;
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t m0 = panel * mr, valid = std::min(mr, rows - m0);
      for (int64_t k0 = 0; k0 < depth; k0 += stage.rows_per_chunk()) {
        const int64_t ks = std::min(stage.rows_per_chunk(), depth - k0);
        for (int64_t r = 0; r < mr; ++r)
          for (int64_t k = 0; k < ks; ++k) {
            const float* src = w + (m0 + r) * row_stride + (k0 + k) * depth_stride;
            for (int64_t t = 0; t < taps; ++t) {
              const float v = r < valid ? src[t] : 0.f;
              stage.at(t, k * mr + r) = v;
              special |= is_special(v);
            }
          }
        stage.write(dst + (panel * depth + k0) * mr, size, ks * mr);
      }
    }
    if (special) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

// One B operand per pixel s of an NCHW tensor [batch, channels, pixels]: element (c, n) =
// src[(n*channels + c)*pixels + s], the batch in NR-column panels (columns past the batch zero),
// depth = channels; operand s at dst + s * packed_size(batch, nr, channels).
void pack_pixels_over_batch(const float* src, int64_t batch, int64_t channels, int64_t pixels, int64_t nr,
                            float* dst) {
  const int64_t size = packed_size(batch, nr, channels), panels = (batch + nr - 1) / nr;
  const TransposeFloats transpose = cpu_transpose_floats();
  torch::stable::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    Stage stage(pixels, nr, channels);  // a chunk: consecutive channels of one panel, [c][nr] in each operand
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t valid = std::min(nr, batch - panel * nr);
      for (int64_t c0 = 0; c0 < channels; c0 += stage.rows_per_chunk()) {
        const int64_t cs = std::min(stage.rows_per_chunk(), channels - c0);
        // channel c: the panel's [samples x pixels] block, transposed in registers into the stage's
        // lanes c*nr.. (lanes past the batch zero)
        for (int64_t c = 0; c < cs; ++c)
          transpose(src + (panel * nr * channels + c0 + c) * pixels, channels * pixels, valid, pixels, nr,
                    &stage.at(0, c * nr), stage.lanes());
        stage.write(dst + (panel * channels + c0) * nr, size, cs * nr);
      }
    }
  });
}

// One operand per pixel s of an NCHW tensor with the channels in panels of `tile` (MR for an A
// operand, NR for a B) and depth = the batch: element (channel c, sample n) at
// (c/tile*batch + n)*tile + c%tile = src[(n*channels + c)*pixels + s] (channels past the last zero);
// operand s at dst + s * packed_size(channels, tile, batch). Returns whether all were finite.
bool pack_pixels_over_channels(const float* src, int64_t batch, int64_t channels, int64_t pixels, int64_t tile,
                               float* dst) {
  const int64_t size = packed_size(channels, tile, batch), panels = (channels + tile - 1) / tile;
  std::atomic<bool> finite{true};
  torch::stable::parallel_for(0, panels, 1, [&](int64_t begin, int64_t end) {
    Stage stage(pixels, tile, batch);  // a chunk: consecutive samples of one panel, [n][tile] in each operand
    bool special = false;
    for (int64_t panel = begin; panel < end; ++panel) {
      const int64_t valid = std::min(tile, channels - panel * tile);
      for (int64_t n0 = 0; n0 < batch; n0 += stage.rows_per_chunk()) {
        const int64_t ns = std::min(stage.rows_per_chunk(), batch - n0);
        for (int64_t n = 0; n < ns; ++n) {
          const float* rows = src + ((n0 + n) * channels + panel * tile) * pixels;  // `valid` rows, contiguous
          for (int64_t lane = 0; lane < tile; ++lane)
            for (int64_t s = 0; s < pixels; ++s) {
              const float v = lane < valid ? rows[lane * pixels + s] : 0.f;
              stage.at(s, n * tile + lane) = v;
              special |= is_special(v);
            }
        }
        stage.write(dst + (panel * batch + n0) * tile, size, ns * tile);
      }
    }
    if (special) finite.store(false, std::memory_order_relaxed);
  });
  return finite.load();
}

// The input pixel that tap (i, j) of output pixel (oh, ow) reads, or -1 in the padding.
int64_t source_pixel(const DirectConv& p, int64_t oh, int64_t ow, int64_t i, int64_t j) {
  const int64_t ih = oh * p.stride_h - p.pad_h + i * p.dilation_h, iw = ow * p.stride_w - p.pad_w + j * p.dilation_w;
  return ih >= 0 && ih < p.height && iw >= 0 && iw < p.width ? ih * p.width + iw : -1;
}

// Calls f(output pixel, tap, input pixel) for every tap inside the image, output pixels and
// taps in order.
template <typename F>
void for_each_inside_tap(const DirectConv& p, F f) {
  for (int64_t oh = 0; oh < p.out_h; ++oh)
    for (int64_t ow = 0; ow < p.out_w; ++ow)
      for (int64_t i = 0; i < p.kernel_h; ++i)
        for (int64_t j = 0; j < p.kernel_w; ++j) {
          const int64_t s = source_pixel(p, oh, ow, i, j);
          if (s >= 0) f(oh * p.out_w + ow, i * p.kernel_w + j, s);
        }
}

// Groups (destination, A operand, B operand) triples by destination, keeping their order.
void set_terms(ProductSums& sums, int64_t destinations, const std::vector<std::array<int64_t, 3>>& triples) {
  sums.first.assign(destinations + 1, 0);
  for (const auto& t : triples) ++sums.first[t[0] + 1];
  for (int64_t d = 0; d < destinations; ++d) sums.first[d + 1] += sums.first[d];
  sums.terms.resize(triples.size());
  std::vector<int64_t> next(sums.first.begin(), sums.first.end() - 1);
  for (const auto& t : triples) sums.terms[next[t[0]]++] = {t[1], t[2]};
}

// The forward pass and the input gradient, which are the same sums over the batch with the
// weights seen two ways: for every destination pixel d of `to` (NCHW, M channels, to_pixels),
//   to[:, :, d] = bias + sum over d's terms (tap t, pixel s) of A_t [M, K] @ from[:, :, s]
// with `from` NCHW (K channels, from_pixels) and A_t element (m, k) = w[m*row_stride +
// k*depth_stride + t]; triples are (d, t, s). Returns false, having written nothing, when
// `check_weights` and a weight is Inf or NaN.
bool products_over_batch(const DirectConv& p, const float* from, int64_t K, int64_t from_pixels, const float* w,
                         int64_t M, int64_t row_stride, int64_t depth_stride, bool check_weights,
                         const std::vector<std::array<int64_t, 3>>& triples, const float* bias, float* to,
                         int64_t to_pixels) {
  const Microkernel<float> kernel = cpu_microkernel_for_columns<float>(p.batch);
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t taps = p.kernel_h * p.kernel_w;
  ProductSums sums(kernel, M, p.batch, K);
  PackedBuffer<float> a(taps * sums.a_size), b(from_pixels * sums.b_size);
  const bool finite = pack_tap_operands(w, M, K, row_stride, depth_stride, taps, kernel.mr, a.data());
  if (check_weights && !finite) return false;
  pack_pixels_over_batch(from, p.batch, K, from_pixels, kernel.nr, b.data());
  sums.a = a.data(), sums.b = b.data();
  set_terms(sums, to_pixels, triples);
  run_product_sums(kernel, sums, bias,
                   [&](int64_t pixel, int64_t m0, int64_t m1, int64_t n0, int64_t n1, const float* c, int64_t ldc) {
                     for (int64_t n = n0; n < n1; ++n)
                       for (int64_t m = m0; m < m1; ++m) to[(n * M + m) * to_pixels + pixel] = c[(m - m0) * ldc + (n - n0)];
                   });
  return true;
}

}  // namespace

bool pixel_gemm_suits(const DirectConv& p) {
  return p.out_h * p.out_w <= 64 && 2 * p.batch >= cpu_microkernel_for_columns<float>(p.batch).nr;
}

bool pixel_gemm_forward(const DirectConv& p, const float* x, const float* w, const float* bias, float* y) {
  const int64_t C = p.in_channels, taps = p.kernel_h * p.kernel_w;
  std::vector<std::array<int64_t, 3>> triples;  // (output pixel, tap, input pixel)
  for_each_inside_tap(p, [&](int64_t out, int64_t tap, int64_t in) { triples.push_back({out, tap, in}); });
  // A_t = W_t: (o, c) = w[o, c, t]
  return products_over_batch(p, x, C, p.height * p.width, w, p.out_channels, C * taps, taps, /*check_weights=*/true,
                             triples, bias, y, p.out_h * p.out_w);
}

void pixel_gemm_backward_input(const DirectConv& p, const float* dy, const float* w, float* dx) {
  const int64_t C = p.in_channels, taps = p.kernel_h * p.kernel_w;
  std::vector<std::array<int64_t, 3>> triples;  // (input pixel, tap, output pixel)
  for_each_inside_tap(p, [&](int64_t out, int64_t tap, int64_t in) { triples.push_back({in, tap, out}); });
  // A_t = W_t^T: (c, o) = w[o, c, t]
  products_over_batch(p, dy, p.out_channels, p.out_h * p.out_w, w, C, taps, C * taps, /*check_weights=*/false,
                      triples, nullptr, dx, p.height * p.width);
}

bool pixel_gemm_backward_weight(const DirectConv& p, const float* x, const float* dy, float* dw) {
  const Microkernel<float> kernel = cpu_microkernel_for_columns<float>(p.in_channels);
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t C = p.in_channels, O = p.out_channels, taps = p.kernel_h * p.kernel_w;
  const int64_t in_pixels = p.height * p.width, out_pixels = p.out_h * p.out_w;
  ProductSums sums(kernel, O, C, p.batch);
  PackedBuffer<float> a(out_pixels * sums.a_size), b(in_pixels * sums.b_size);
  if (!pack_pixels_over_channels(dy, p.batch, O, out_pixels, kernel.mr, a.data())) return false;
  pack_pixels_over_channels(x, p.batch, C, in_pixels, kernel.nr, b.data());
  sums.a = a.data(), sums.b = b.data();
  std::vector<std::array<int64_t, 3>> triples;
  for_each_inside_tap(p, [&](int64_t out, int64_t tap, int64_t in) { triples.push_back({tap, out, in}); });
  set_terms(sums, taps, triples);
  run_product_sums(kernel, sums, nullptr,
                   [&](int64_t tap, int64_t m0, int64_t m1, int64_t n0, int64_t n1, const float* c, int64_t ldc) {
                     for (int64_t o = m0; o < m1; ++o)
                       for (int64_t ch = n0; ch < n1; ++ch) dw[(o * C + ch) * taps + tap] = c[(o - m0) * ldc + (ch - n0)];
                   });
  return true;
}

}  // namespace cuconv
