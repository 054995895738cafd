// Winograd F(2x2, 3x3) forward pass and stride-1 input gradient, float32, NCHW or channels_last
// (winograd.h; the algebra is winograd.cpp's: U = G g G^T, V = B^T d B, y = A^T M A).
//
// Tile (a, b) of sample n covers output rows 2a, 2a+1 and columns 2b, 2b+1; its patch element
// e = 4i + j is the input pixel (2a - pH + i, 2b - pW + j). The work is done with channels
// innermost, as in NHWC, where a pixel's C channels are contiguous. Per block of tiles (counted
// across samples, row-major within one):
//
//   V[q, e, :]  = B^T d B of tile q's patch, C channels at a time    (winograd_tile.h)
//   M[q, e, :]  = V[q, e, :] @ U_e                                   U_e [C, O] in B panels, once
//   y[pixel, :] = A^T M[q] A + bias, for the tile's 2x2 pixels inside the image
//
// The 16 products (one per element e) are cuconv's GEMM register tiles with the A rows read
// through pointers (the indirect tile of the NHWC convolution, one "tap"): row r of a tile is
// V[q0 + r, e, :], and the results land in M at row stride 16 * O_pad. The transforms neither
// gather nor scatter: every load and store is a vector of channels. Blocks of tiles are split
// across threads and sized so that V and M of a block (16 x (C + O) floats per tile) fit in
// half the L2.
//
// Where the patches come from and the outputs go (the layouts below): NHWC tensors are read and
// written in place; for NCHW ones each input row is copied once into an NHWC strip of four rows
// (zeros in the padding), and each tile row's two output rows are gathered in an NHWC strip that
// is copied out into the planes when the tile row (or the block) ends. The strips are small and stay in
// cache, so NCHW pays two in-cache transposes rather than the scalar gathers of a patch
// transform done plane by plane.

#include <algorithm>
#include <vector>

#include "../stable.h"
#include "gemm.h"
#include "simd.h"
#include "winograd.h"

namespace cuconv {
namespace {

#include "winograd_tile.h"  // the portable build of the transforms (4 floats per vector)

constexpr int64_t kElements = 16;  // of a 4x4 tile: the products per block

// The transforms for this CPU (and CUCONV_CPU_ISA).
WinogradNhwcTransforms nhwc_transforms() {
#if CUCONV_X86_SIMD
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return avx512_winograd_nhwc_transforms();
    case CpuIsa::kAvx2: return avx2_winograd_nhwc_transforms();
    default: break;
  }
#endif
  return {&winograd_patch_nhwc<4>, &winograd_sums_nhwc<4>};
}

// A tile's place: sample n, tile row a (output row 2a), tile column b (output column 2b).
struct Tile {
  int64_t n, a, b;
};

// channels_last: patches and outputs in place.
class NhwcLayout {
 public:
  NhwcLayout(const DirectConv& p, const float* x, float* y) : p_(p), x_(x), y_(y), zeros_(p.in_channels, 0.f) {}

  // Points patch[e] at the channels of the tile's patch element e (zeros in the padding).
  void patch(const Tile& t, const float** patch) {
    const float* sample = x_ + t.n * p_.height * p_.width * p_.in_channels;
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 4; ++j) {
        const int64_t ih = 2 * t.a - p_.pad_h + i, iw = 2 * t.b - p_.pad_w + j;
        const bool inside = ih >= 0 && ih < p_.height && iw >= 0 && iw < p_.width;
        patch[4 * i + j] = inside ? sample + (ih * p_.width + iw) * p_.in_channels : zeros_.data();
      }
  }
  // Points out[2r + s] at the channels of the tile's output pixel (2a + r, 2b + s), null past the image.
  void outputs(const Tile& t, float** out) {
    const int64_t row = 2 * t.a, col = 2 * t.b, O = p_.out_channels;
    float* corner = y_ + ((t.n * p_.out_h + row) * p_.out_w + col) * O;
    const bool full_w = col + 1 < p_.out_w, full_h = row + 1 < p_.out_h;
    out[0] = corner;
    out[1] = full_w ? corner + O : nullptr;
    out[2] = full_h ? corner + p_.out_w * O : nullptr;
    out[3] = full_w && full_h ? corner + (p_.out_w + 1) * O : nullptr;
  }
  void flush() {}

 private:
  const DirectConv& p_;
  const float* x_;
  float* y_;
  std::vector<float> zeros_;
};

// NCHW: through an NHWC strip per tile row, in and out.
class NchwLayout {
 public:
  NchwLayout(const DirectConv& p, const float* x, float* y)
      : p_(p), x_(x), y_(y), strip_w_((p.out_w + 1) / 2 * 2 + 2), in_strip_(4 * strip_w_ * p.in_channels),
        out_strip_(2 * (strip_w_ - 2) * p.out_channels) {}

  void patch(const Tile& t, const float** patch) {
    for (int64_t i = 0; i < 4; ++i) {
      const float* row = input_row(t.n, 2 * t.a - p_.pad_h + i);
      for (int64_t j = 0; j < 4; ++j) patch[4 * i + j] = row + (2 * t.b + j) * p_.in_channels;
    }
  }
  // The strip's pixels; clipped ones are written to the strip too and never copied out.
  void outputs(const Tile& t, float** out) {
    if (t.n != out_row_.n || t.a != out_row_.a) {
      flush();
      out_row_ = {t.n, t.a, t.b};
    }
    out_end_ = 2 * t.b + 2;
    const int64_t O = p_.out_channels, width = strip_w_ - 2;
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t s = 0; s < 2; ++s) out[2 * r + s] = out_strip_.data() + (r * width + 2 * t.b + s) * O;
  }
  // Copies the output strip's columns [2 * first tile's b, out_end_) into y's planes.
  void flush() {
    if (out_row_.n < 0) return;
    const int64_t O = p_.out_channels, width = strip_w_ - 2, plane = p_.out_h * p_.out_w;
    const int64_t col0 = 2 * out_row_.b, col1 = std::min(out_end_, p_.out_w);
    for (int64_t r = 0; r < 2 && 2 * out_row_.a + r < p_.out_h; ++r)
      for (int64_t o = 0; o < O; ++o) {
        float* dst = y_ + (out_row_.n * O + o) * plane + (2 * out_row_.a + r) * p_.out_w;
        const float* src = out_strip_.data() + r * width * O + o;
        for (int64_t col = col0; col < col1; ++col) dst[col] = src[col * O];
      }
    out_row_ = {-1, -1, -1};
  }

 private:
  // Input row ih of sample n as NHWC, strip_row[w][c] = x[n, c, ih, w - pW] (0 outside the
  // image), from one of four slots: row ih lives in slot ih mod 4, so the next tile row (two rows
  // down) finds its first two rows there and copies only two.
  const float* input_row(int64_t n, int64_t ih) {
    const int64_t slot = ih & 3, C = p_.in_channels;
    float* strip_row = in_strip_.data() + slot * strip_w_ * C;
    if (slot_row_[slot].n == n && slot_row_[slot].a == ih) return strip_row;
    slot_row_[slot] = {n, ih, 0};
    if (ih < 0 || ih >= p_.height) {
      std::fill_n(strip_row, strip_w_ * C, 0.f);
      return strip_row;
    }
    const int64_t w0 = std::min(p_.pad_w, strip_w_), w1 = std::min(strip_w_, p_.pad_w + p_.width);
    std::fill_n(strip_row, w0 * C, 0.f);
    if (w1 < strip_w_) std::fill_n(strip_row + std::max(w0, w1) * C, (strip_w_ - std::max(w0, w1)) * C, 0.f);
    for (int64_t c = 0; c < C; ++c) {
      const float* src = x_ + ((n * C + c) * p_.height + ih) * p_.width - p_.pad_w;
      for (int64_t w = w0; w < w1; ++w) strip_row[w * C + c] = src[w];
    }
    return strip_row;
  }

  const DirectConv& p_;
  const float* x_;
  float* y_;
  int64_t strip_w_;  // input columns a tile row reaches: 2 * tiles per row + 2
  std::vector<float> in_strip_, out_strip_;
  Tile slot_row_[4] = {{-1, -1, 0}, {-1, -1, 0}, {-1, -1, 0}, {-1, -1, 0}};  // (n, input row) in each slot
  Tile out_row_{-1, -1, -1};  // the output strip's tile row (out_row_.b: the first tile in it)
  int64_t out_end_ = 0;                            // one past the last output column written
};

template <class Layout>
void winograd_forward_in(const DirectConv& p, const float* x, const float* w, const float* bias, float* y) {
  const Microkernel<float> kernel = cpu_microkernel_for_columns<float>(p.out_channels);
  const WinogradNhwcTransforms transforms = nhwc_transforms();
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t C = p.in_channels, O = p.out_channels, mr = kernel.mr, nr = kernel.nr;
  const int64_t tiles_w = (p.out_w + 1) / 2, per_sample = (p.out_h + 1) / 2 * tiles_w, tiles = p.batch * per_sample;
  if (tiles == 0) return;
  const int64_t o_pad = (O + nr - 1) / nr * nr;  // M's row: whole register tiles

  // U_e [C, O] as B panels (columns past O are zeros), all 16 in one buffer.
  const int64_t u_size = packed_size(O, nr, C);
  PackedBuffer<float> u(kElements * u_size, 0.f);
  torch::stable::parallel_for(0, O, 16, [&](int64_t first, int64_t last) {
    float ue[kElements];
    for (int64_t o = first; o < last; ++o)
      for (int64_t c = 0; c < C; ++c) {
        winograd_kernel_transform(w + (o * C + c) * 9, ue);
        for (int64_t e = 0; e < kElements; ++e) u[e * u_size + packed_index(c, o, nr, C)] = ue[e];
      }
  });

  // Tiles per block: a multiple of mr whose V and M fit in half the L2, and every thread gets blocks.
  const int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  const int64_t by_cache = l2_cache_bytes() / 2 / (kElements * (C + o_pad) * 4) / mr * mr;
  const int64_t share = ((tiles + threads - 1) / threads + mr - 1) / mr * mr;
  const int64_t block = std::max(2 * mr, std::min(by_cache, share));
  const std::vector<float> zeros(C, 0.f);

  torch::stable::parallel_for(0, (tiles + block - 1) / block, 1, [&](int64_t first, int64_t last) {
    PackedBuffer<float> v(block * kElements * C), m(block * kElements * o_pad);
    Layout layout(p, x, y);
    std::vector<const float*> rows(mr);
    const float* patch[kElements];
    float* out[4];
    auto tile = [&](int64_t t) { return Tile{t / per_sample, t % per_sample / tiles_w, t % per_sample % tiles_w}; };
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t t0 = blk * block, count = std::min(block, tiles - t0);

      // Input transform: tile q's patch into V[q].
      for (int64_t q = 0; q < count; ++q) {
        layout.patch(tile(t0 + q), patch);
        transforms.patch(patch, C, v.data() + q * kElements * C, C);
      }

      // The 16 products M[:, e, :] = V[:, e, :] @ U_e, K cut into the microkernel's depth; rows
      // past the block's tiles read zeros (M has room for them: block is a multiple of mr).
      for (int64_t e = 0; e < kElements; ++e)
        for (int64_t k0 = 0; k0 < C; k0 += kernel.depth) {
          const int64_t depth = std::min(kernel.depth, C - k0);
          for (int64_t r0 = 0; r0 < count; r0 += mr) {
            for (int64_t r = 0; r < mr; ++r)
              rows[r] = r0 + r < count ? v.data() + ((r0 + r) * kElements + e) * C + k0 : zeros.data();
            for (int64_t j0 = 0; j0 < o_pad; j0 += nr)
              kernel.indirect(1, depth, rows.data(), u.data() + e * u_size + j0 / nr * C * nr + k0 * nr,
                              m.data() + (r0 * kElements + e) * o_pad + j0, kElements * o_pad, k0 > 0, nullptr);
          }
        }

      // Output transform: each tile's 2x2 pixels, clipped where H_out or W_out is odd.
      for (int64_t q = 0; q < count; ++q) {
        layout.outputs(tile(t0 + q), out);
        transforms.sums(m.data() + q * kElements * o_pad, o_pad, O, bias, out);
      }
      layout.flush();
    }
  });
}

}  // namespace

void winograd_forward(const DirectConv& p, const float* x, const float* w, const float* bias, float* y) {
  winograd_forward_in<NchwLayout>(p, x, w, bias, y);
}

void winograd_backward_input(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in) {
  // a stride-1 3x3 forward pass over grad_out padded by 2 - padding (direct_conv.h)
  winograd_forward(input_gradient_as_forward(p), grad_out, flipped_kernel(p, weight).data(), nullptr, grad_in);
}

void winograd_channels_last_forward(const DirectConv& p, const float* x, const float* w, const float* bias,
                                    float* y) {
  winograd_forward_in<NhwcLayout>(p, x, w, bias, y);
}

void winograd_channels_last_backward_input(const DirectConv& p, const float* grad_out, const float* weight,
                                           float* grad_in) {
  winograd_channels_last_forward(input_gradient_as_forward(p), grad_out, flipped_kernel(p, weight).data(), nullptr,
                                 grad_in);
}

}  // namespace cuconv
