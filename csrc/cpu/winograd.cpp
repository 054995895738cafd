// Winograd convolution on the CPU (winograd.h), float32, NCHW or channels_last.
//
// Tile (a, b) of sample n covers output rows 2a, 2a+1 and columns 2b, 2b+1; its input patch is
// the 4x4 block of pixels at rows 2a - pH + i, columns 2b - pW + j (0 outside the image), element
// e = 4i + j. With g the 3x3 kernel w[o, c] and d a patch of channel c:
//
// Forward pass, F(2x2, 3x3):
//   U[o, c] = G g G^T,   V[tile, c] = B^T d B                      (4x4 each)
//   M[tile, o] = sum_c V[tile, c] (.) U[o, c]                       (element by element)
//   y[n, o, 2a + r, 2b + s] = bias[o] + (A^T M[tile, o] A)[r, s]
//
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
//
// Weight gradient, F(3x3, 2x2): the 3x3 correlation of each patch with its tile's 2x2 of dy,
//   D[tile, o] = H e H^T (e: the tile's 2x2 of grad_output channel o, 0 past an odd edge)
//   N[o, c] = sum_tiles D[tile, o] (.) V[tile, c]                   (V as above)
//   dw[o, c] = K^T N[o, c] K                                         (3x3)
//
//   H = [1 0; 1/2 1/2; 1/2 -1/2; 0 1]     K^T = [1 1 1 0; 0 1 -1 0; 0 1 1 -1]
//
// (the usual F(3x3, 2x2) input transform has the last row of B^T negated; here that sign sits in
// K^T's last column, so both passes share V). Each sum is 16 independent matrix products, one
// per element e, on cuconv's GEMM register tiles (gemm.h):
//
//   forward:  M_e [tiles, O]  = V_e [tiles, C] @ U_e [C, O]     U_e packed once; V_e's rows read
//                                                               through pointers (indirect tile)
//   weight:   N_e [O, C]     += D_e^T [O, tiles] @ V_e [tiles, C]  D_e packed per block; V_e's rows
//                                                               through pointers (rows_b tile)
//
// Channels are innermost throughout, as in NHWC: V[e, q, :], M[q, e, :] and D[e, q, :] are rows
// of channels, and every transform (winograd_tile.h, compiled per ISA) loads and stores whole
// vectors of channels. NHWC tensors are read and written in place; NCHW ones through small NHWC
// strips: each input (and grad_output) row is copied once into a ring of rows, and each tile
// row's two output rows are gathered in a strip copied out into the planes when the tile row (or
// the block) ends. The strips stay in cache, so NCHW costs two in-cache transposes (in registers,
// gemm.h's cpu_transpose_floats: element by element they cost ResNet's b2 layer 8% of its forward).
//
// Blocking: the forward pass splits blocks of tiles (counted across samples, row-major within
// one) across threads, sized so that V and M of a block (16 x (C + O) floats per tile) fit in
// half the L2 (read at run time). The weight gradient gives each thread an equal run of tiles,
// cut into blocks the same way, with a partial N of its own; the partial sums are added in a
// fixed order (deterministic for a given thread count).

#include "winograd.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "../stable.h"
#include "gemm.h"
#include "parallel.h"
#include "simd.h"

namespace cuconv {
namespace {

#include "winograd_tile.h"  // the portable build of the transforms (4 floats per vector)

constexpr int64_t kElements = 16;  // of a 4x4 tile: the products per block

// The transforms for this CPU (and CUCONV_CPU_ISA).
WinogradNhwcTransforms transforms_for_this_cpu() {
#if CUCONV_X86_SIMD
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: return avx512_winograd_nhwc_transforms();
    case CpuIsa::kAvx2: return avx2_winograd_nhwc_transforms();
    default: break;
  }
#endif
  return {&winograd_patch_nhwc<4>, &winograd_sums_nhwc<4>, &winograd_gradient_nhwc<4>};
}

// U = G g G^T of one 3x3 kernel g (row-major), into u (4x4, row-major).
void transform_kernel(const float* g, float* u) {
  float t[4][3];
  for (int j = 0; j < 3; ++j) {
    const float g0 = g[j], g1 = g[3 + j], g2 = g[6 + j];
    t[0][j] = g0;
    t[1][j] = 0.5f * (g0 + g1 + g2);
    t[2][j] = 0.5f * (g0 - g1 + g2);
    t[3][j] = g2;
  }
  for (int i = 0; i < 4; ++i) {
    u[4 * i + 0] = t[i][0];
    u[4 * i + 1] = 0.5f * (t[i][0] + t[i][1] + t[i][2]);
    u[4 * i + 2] = 0.5f * (t[i][0] - t[i][1] + t[i][2]);
    u[4 * i + 3] = t[i][2];
  }
}

// dw = K^T n K of one 4x4 sum n (row-major), into dw (3x3, row-major).
void transform_weight_sums(const float* n, float* dw) {
  float t[3][4];
  for (int j = 0; j < 4; ++j) {
    t[0][j] = n[j] + n[4 + j] + n[8 + j];
    t[1][j] = n[4 + j] - n[8 + j];
    t[2][j] = n[4 + j] + n[8 + j] - n[12 + j];
  }
  for (int i = 0; i < 3; ++i) {
    dw[3 * i + 0] = t[i][0] + t[i][1] + t[i][2];
    dw[3 * i + 1] = t[i][1] - t[i][2];
    dw[3 * i + 2] = t[i][1] + t[i][2] - t[i][3];
  }
}

// A tile's place: sample n, tile row a (output row 2a), tile column b (output column 2b).
struct Tile {
  int64_t n, a, b;
};

// The tiles of a layer, counted across samples, row-major within one.
struct Tiling {
  int64_t tiles_w, per_sample, count;
  explicit Tiling(const DirectConv& p)
      : tiles_w((p.out_w + 1) / 2), per_sample((p.out_h + 1) / 2 * tiles_w), count(p.batch * per_sample) {}
  Tile tile(int64_t t) const { return {t / per_sample, t % per_sample / tiles_w, t % per_sample % tiles_w}; }
};

// Where the passes read patches and grad_output and write outputs, as rows of channels:
//   patch(t, d):   d[e] -> the channels of the tile's patch element e (zeros in the padding)
//   gradient(t, e): e[2r + s] -> grad_output's channels at the tile's pixel (r, s) (zeros past the image)
//   outputs(t, y): y[2r + s] -> where the output pixel's channels go (null, or discarded, past the image)
//   flush():       after a block's outputs
// channels_last: everything in place.
class NhwcLayout {
 public:
  NhwcLayout(const DirectConv& p, const float* x, const float* dy, float* y)
      : p_(p), x_(x), dy_(dy), y_(y), zeros_(std::max(p.in_channels, p.out_channels), 0.f) {}

  void patch(const Tile& t, const float** d) const {
    const float* sample = x_ + t.n * p_.height * p_.width * p_.in_channels;
    for (int64_t i = 0; i < 4; ++i)
      for (int64_t j = 0; j < 4; ++j) {
        const int64_t ih = 2 * t.a - p_.pad_h + i, iw = 2 * t.b - p_.pad_w + j;
        const bool inside = ih >= 0 && ih < p_.height && iw >= 0 && iw < p_.width;
        d[4 * i + j] = inside ? sample + (ih * p_.width + iw) * p_.in_channels : zeros_.data();
      }
  }
  void gradient(const Tile& t, const float** e) const {
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t s = 0; s < 2; ++s) {
        const int64_t oh = 2 * t.a + r, ow = 2 * t.b + s;
        e[2 * r + s] = oh < p_.out_h && ow < p_.out_w ? dy_ + ((t.n * p_.out_h + oh) * p_.out_w + ow) * p_.out_channels
                                                      : zeros_.data();
      }
  }
  void outputs(const Tile& t, float** out) const {
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t s = 0; s < 2; ++s) {
        const int64_t oh = 2 * t.a + r, ow = 2 * t.b + s;
        out[2 * r + s] = oh < p_.out_h && ow < p_.out_w ? y_ + ((t.n * p_.out_h + oh) * p_.out_w + ow) * p_.out_channels
                                                        : nullptr;
      }
  }
  void flush() {}

 private:
  const DirectConv& p_;
  const float* x_;
  const float* dy_;
  float* y_;
  std::vector<float> zeros_;
};

// Rows of an NCHW tensor (`channels` planes of height x width per sample) as NHWC:
// row[w][c] = t[n, c, h, w - pad] (0 outside), `width` columns. The last `slots` rows asked for
// are kept, row h in slot h mod slots, so a tile row that shares rows with the one before copies
// only its new ones. Copying a row prefetches the row two below in every plane, the next tile
// row's (64 planes are 64 streams, which the hardware prefetcher does not follow: measured on
// ResNet b2, 64 channels at 24x24, the prefetch took the forward pass from 10.8 to 9.2 ms and
// the weight gradient from 15 to 12.7).
class NhwcRows {
 public:
  NhwcRows(const float* t, int64_t channels, int64_t height, int64_t width, int64_t pad, int64_t strip_w, int64_t slots)
      : t_(t), channels_(channels), height_(height), width_(width), pad_(pad), strip_w_(strip_w), slots_(slots),
        rows_(slots * strip_w * channels), held_(slots, Tile{-1, -1, 0}), transpose_(cpu_transpose_floats()) {}

  const float* row(int64_t n, int64_t h) {
    const int64_t slot = (h % slots_ + slots_) % slots_, C = channels_;
    float* strip_row = rows_.data() + slot * strip_w_ * C;
    if (held_[slot].n == n && held_[slot].a == h) return strip_row;
    held_[slot] = {n, h, 0};
    if (h < 0 || h >= height_) {
      std::fill_n(strip_row, strip_w_ * C, 0.f);
      return strip_row;
    }
    const int64_t w0 = std::min(pad_, strip_w_), w1 = std::min(strip_w_, pad_ + width_);
    std::fill_n(strip_row, w0 * C, 0.f);
    if (w1 < strip_w_) std::fill_n(strip_row + std::max(w0, w1) * C, (strip_w_ - std::max(w0, w1)) * C, 0.f);
    const float* src = t_ + (n * C * height_ + h) * width_ - pad_;  // channel c's row at src + c * plane
    const int64_t plane = height_ * width_;
    if (h + 2 < height_)  // the row two down, which the next tile row copies (each plane is a stream of its own)
      for (int64_t c = 0; c < C; ++c) {
        __builtin_prefetch(src + c * plane + 2 * width_ + w0);
        __builtin_prefetch(src + c * plane + 2 * width_ + w1 - 1);
      }
    if (w1 > w0) transpose_(src + w0, plane, C, w1 - w0, C, strip_row + w0 * C, C);
    return strip_row;
  }

 private:
  const float* t_;
  int64_t channels_, height_, width_, pad_, strip_w_, slots_;
  std::vector<float> rows_;
  std::vector<Tile> held_;  // (n, row) in each slot
  TransposeFloats transpose_;
};

// NCHW: through NHWC rows, in and out.
class NchwLayout {
 public:
  NchwLayout(const DirectConv& p, const float* x, const float* dy, float* y)
      : p_(p), y_(y), tiles_w_((p.out_w + 1) / 2),
        input_(x, p.in_channels, p.height, p.width, p.pad_w, 2 * tiles_w_ + 2, 4),
        grad_(dy, dy != nullptr ? p.out_channels : 0, p.out_h, p.out_w, 0, 2 * tiles_w_, 2),
        out_strip_(y != nullptr ? 2 * 2 * tiles_w_ * p.out_channels : 0), transpose_(cpu_transpose_floats()) {}

  void patch(const Tile& t, const float** d) {
    for (int64_t i = 0; i < 4; ++i) {
      const float* row = input_.row(t.n, 2 * t.a - p_.pad_h + i);
      for (int64_t j = 0; j < 4; ++j) d[4 * i + j] = row + (2 * t.b + j) * p_.in_channels;
    }
  }
  void gradient(const Tile& t, const float** e) {
    for (int64_t r = 0; r < 2; ++r) {
      const float* row = grad_.row(t.n, 2 * t.a + r);
      for (int64_t s = 0; s < 2; ++s) e[2 * r + s] = row + (2 * t.b + s) * p_.out_channels;
    }
  }
  // The output strip's pixels; clipped ones are written there too and never copied out.
  void outputs(const Tile& t, float** out) {
    if (t.n != out_row_.n || t.a != out_row_.a) {
      flush();
      out_row_ = t;
    }
    out_end_ = 2 * t.b + 2;
    const int64_t O = p_.out_channels, width = 2 * tiles_w_;
    for (int64_t r = 0; r < 2; ++r)
      for (int64_t s = 0; s < 2; ++s) out[2 * r + s] = out_strip_.data() + (r * width + 2 * t.b + s) * O;
  }
  // Copies the output strip's columns [2b of its first tile, out_end_) into y's planes.
  void flush() {
    if (out_row_.n < 0) return;
    const int64_t O = p_.out_channels, width = 2 * tiles_w_, plane = p_.out_h * p_.out_w;
    const int64_t col0 = 2 * out_row_.b, col1 = std::min(out_end_, p_.out_w);
    // Transposed into a channel-major buffer (in cache), then each output row copied whole: a
    // transpose straight into the planes wrote 16 planes' rows a piece at a time, 7-12% slower on
    // VGG's 56x56 and 28x28 layers (outputs beyond L2) than the element-by-element copy.
    const int64_t count = std::max<int64_t>(0, col1 - col0);
    staged_.resize(O * count);
    for (int64_t r = 0; r < 2 && 2 * out_row_.a + r < p_.out_h && count > 0; ++r) {
      transpose_(out_strip_.data() + (r * width + col0) * O, O, count, O, count, staged_.data(), count);
      float* y_row = y_ + out_row_.n * O * plane + (2 * out_row_.a + r) * p_.out_w + col0;
      for (int64_t o = 0; o < O; ++o) std::memcpy(y_row + o * plane, staged_.data() + o * count, count * sizeof(float));
    }
    out_row_ = {-1, -1, -1};
  }

 private:
  const DirectConv& p_;
  float* y_;
  int64_t tiles_w_;
  NhwcRows input_, grad_;
  std::vector<float> out_strip_;
  Tile out_row_{-1, -1, -1};  // the output strip's tile row (out_row_.b: the first tile in it)
  int64_t out_end_ = 0;       // one past the last output column written
  TransposeFloats transpose_;
  std::vector<float> staged_;  // the output strip's rows, channel-major (flush)
};

// Tiles per block: a multiple of `tile` whose 16 transformed pairs (`channels` = C + O floats
// each per tile) fit in half the L2, at least `least` (a product's rows or depth: fewer would
// spend more on the register tile's loads and stores than on its sums) and no more than `share`.
int64_t block_tiles(int64_t channels, int64_t share, int64_t tile, int64_t least) {
  const int64_t by_cache = l2_cache_bytes() / 2 / (kElements * channels * 4) / tile * tile;
  return std::max(least, std::min(by_cache, (share + tile - 1) / tile * tile));
}

template <class Layout>
void forward(const DirectConv& p, const float* x, const float* w, const float* bias, float* y) {
  const Microkernel<float> kernel = cpu_microkernel_for_columns<float>(p.out_channels);
  const WinogradNhwcTransforms transforms = transforms_for_this_cpu();
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t C = p.in_channels, O = p.out_channels, mr = kernel.mr, nr = kernel.nr;
  const Tiling tiling(p);
  if (tiling.count == 0) return;
  const int64_t o_pad = (O + nr - 1) / nr * nr;  // M's row: whole register tiles

  // U_e [C, O] as B panels (columns past O are zeros), all 16 in one buffer.
  const int64_t u_size = packed_size(O, nr, C);
  PackedBuffer<float> u(kElements * u_size, 0.f);
  torch::stable::parallel_for(0, O, 16, [&](int64_t first, int64_t last) {
    float ue[kElements];
    for (int64_t o = first; o < last; ++o)
      for (int64_t c = 0; c < C; ++c) {
        transform_kernel(w + (o * C + c) * 9, ue);
        for (int64_t e = 0; e < kElements; ++e) u[e * u_size + packed_index(c, o, nr, C)] = ue[e];
      }
  });

  const int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  const int64_t block = block_tiles(C + o_pad, (tiling.count + threads - 1) / threads, mr, 2 * mr);  // every thread gets blocks
  const std::vector<float> zeros(C, 0.f);

  // Threads take chunks of blocks (parallel.h).
  parallel_chunks(0, (tiling.count + block - 1) / block, 1, [&](ChunkQueue& chunks) {
    PackedBuffer<float> v(block * kElements * C), m(block * kElements * o_pad);
    Layout layout(p, x, nullptr, y);
    std::vector<const float*> rows(mr);
    const float* patch[kElements];
    float* out[4];
    for (int64_t first, last; chunks.next(first, last);) {
      for (int64_t blk = first; blk < last; ++blk) {
        const int64_t t0 = blk * block, count = std::min(block, tiling.count - t0);

        // Input transform: tile q's patch into V[:, q] (element-major, so each product reads one run).
        for (int64_t q = 0; q < count; ++q) {
          layout.patch(tiling.tile(t0 + q), patch);
          transforms.patch(patch, C, v.data() + q * C, block * C);
        }

        // The 16 products M[:, e, :] = V[e] @ U_e, K cut into the microkernel's depth; rows
        // past the block's tiles read zeros (M has room for them: block is a multiple of mr).
        for (int64_t e = 0; e < kElements; ++e)
          for (int64_t k0 = 0; k0 < C; k0 += kernel.depth) {
            const int64_t depth = std::min(kernel.depth, C - k0);
            for (int64_t r0 = 0; r0 < count; r0 += mr) {
              for (int64_t r = 0; r < mr; ++r)
                rows[r] = r0 + r < count ? v.data() + (e * block + r0 + r) * C + k0 : zeros.data();
              for (int64_t j0 = 0; j0 < o_pad; j0 += nr)
                kernel.indirect(1, depth, rows.data(), u.data() + e * u_size + j0 / nr * C * nr + k0 * nr,
                                m.data() + (r0 * kElements + e) * o_pad + j0, kElements * o_pad, k0 > 0, nullptr);
            }
          }

        // Output transform: each tile's 2x2 pixels, clipped where H_out or W_out is odd.
        for (int64_t q = 0; q < count; ++q) {
          layout.outputs(tiling.tile(t0 + q), out);
          transforms.sums(m.data() + q * kElements * o_pad, o_pad, O, bias, out);
        }
        layout.flush();
      }
    }
  });
}

// The transpose of rows of channels, as A panels: a[panel p][q][r] = rows[q * stride + p * mr + r]
// for q < count (zeros past `channels`). (pack_a's general strides would make a library call of
// mr floats per element here.)
template <int MR>
void pack_rows_of_channels_as(float* a, const float* rows, int64_t count, int64_t stride, int64_t channels) {
  for (int64_t o0 = 0; o0 < channels; o0 += MR) {
    float* panel = a + o0 * count;
    const int64_t valid = std::min<int64_t>(MR, channels - o0);
    for (int64_t q = 0; q < count; ++q) {
      const float* src = rows + q * stride + o0;
      float* dst = panel + q * MR;
      if (valid == MR) {
        for (int r = 0; r < MR; ++r) dst[r] = src[r];
      } else {
        for (int r = 0; r < MR; ++r) dst[r] = r < valid ? src[r] : 0.f;
      }
    }
  }
}
void pack_rows_of_channels(float* a, int64_t mr, const float* rows, int64_t count, int64_t stride, int64_t channels) {
  switch (mr) {
    case 4: return pack_rows_of_channels_as<4>(a, rows, count, stride, channels);
    case 6: return pack_rows_of_channels_as<6>(a, rows, count, stride, channels);
    case 8: return pack_rows_of_channels_as<8>(a, rows, count, stride, channels);
    default: return pack_a(a, mr, count, rows, channels, int64_t{1}, stride);
  }
}

template <class Layout>
void backward_weight(const DirectConv& p, const float* x, const float* dy, float* dw) {
  const Microkernel<float> kernel = cpu_microkernel_for_columns<float>(p.in_channels);
  const WinogradNhwcTransforms transforms = transforms_for_this_cpu();
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t C = p.in_channels, O = p.out_channels, mr = kernel.mr, nr = kernel.nr;
  const Tiling tiling(p);
  // V's and N's rows: whole register tiles (the tiles read and write past C there); N's
  // columns: whole A panels (D's packed rows past O are zeros).
  const int64_t c_pad = (C + nr - 1) / nr * nr, o_pad = (O + mr - 1) / mr * mr, n_size = o_pad * c_pad;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(torch::stable::get_num_threads(), tiling.count / 64));
  const int64_t block = block_tiles(c_pad + O, tiling.count, 1, 32);
  std::vector<float> partial(parts * kElements * n_size, 0.f);
  torch::stable::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
    PackedBuffer<float> v(block * kElements * c_pad, 0.f), d(block * kElements * O), a(packed_size(O, mr, block));
    Layout layout(p, x, dy, nullptr);
    std::vector<const float*> b_rows(block);
    const float* patch[kElements];
    const float* grad[4];
    for (int64_t part = first; part < last; ++part) {
      float* n_part = partial.data() + part * kElements * n_size;
      const int64_t begin = tiling.count * part / parts, end = tiling.count * (part + 1) / parts;
      for (int64_t t0 = begin; t0 < end; t0 += block) {
        const int64_t count = std::min(block, end - t0);
        // V[:, q] and D[:, q] of each tile of the block
        for (int64_t q = 0; q < count; ++q) {
          const Tile tile = tiling.tile(t0 + q);
          layout.patch(tile, patch);
          transforms.patch(patch, C, v.data() + q * c_pad, block * c_pad);
          layout.gradient(tile, grad);
          transforms.gradient(grad, O, d.data() + q * O, block * O);
        }
        // N_e += D_e^T @ V_e: D_e^T packed as A panels over the block's tiles, V_e's rows by pointer
        for (int64_t e = 0; e < kElements; ++e) {
          pack_rows_of_channels(a.data(), mr, d.data() + e * block * O, count, O, O);
          for (int64_t q = 0; q < count; ++q) b_rows[q] = v.data() + (e * block + q) * c_pad;
          float* n_e = n_part + e * n_size;
          for (int64_t o0 = 0; o0 < O; o0 += mr)
            for (int64_t j0 = 0; j0 < c_pad; j0 += nr)
              kernel.rows_b(count, a.data() + o0 * count, kernel.mr, b_rows.data(), j0, n_e + o0 * c_pad + j0, c_pad, true);
        }
      }
    }
  });
  // dw[o, c] = K^T N[o, c] K, N summed over the parts in order
  torch::stable::parallel_for(0, O * C, 256, [&](int64_t first, int64_t last) {
    for (int64_t oc = first; oc < last; ++oc) {
      const int64_t at = oc / C * c_pad + oc % C;
      float n[kElements];
      for (int64_t e = 0; e < kElements; ++e) {
        float total = partial[e * n_size + at];
        for (int64_t part = 1; part < parts; ++part) total += partial[(part * kElements + e) * n_size + at];
        n[e] = total;
      }
      transform_weight_sums(n, dw + oc * 9);
    }
  });
}

}  // namespace

bool winograd_suits(const DirectConv& p) {
  return p.kernel_h == 3 && p.kernel_w == 3 && p.stride_h == 1 && p.stride_w == 1 && p.dilation_h == 1 &&
         p.dilation_w == 1 && p.in_channels > 0 && p.out_channels > 0;
}

bool winograd_backward_input_suits(const DirectConv& p) {
  return winograd_suits(p) && p.pad_h <= 2 && p.pad_w <= 2;
}

void winograd_forward(const DirectConv& p, const float* x, const float* w, const float* bias, float* y) {
  forward<NchwLayout>(p, x, w, bias, y);
}

void winograd_backward_input(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in) {
  // a stride-1 3x3 forward pass over grad_out padded by 2 - padding (direct_conv.h)
  winograd_forward(input_gradient_as_forward(p), grad_out, flipped_kernel(p, weight).data(), nullptr, grad_in);
}

void winograd_backward_weight(const DirectConv& p, const float* x, const float* grad_out, float* grad_weight) {
  backward_weight<NchwLayout>(p, x, grad_out, grad_weight);
}

void winograd_channels_last_forward(const DirectConv& p, const float* x, const float* w, const float* bias,
                                    float* y) {
  forward<NhwcLayout>(p, x, w, bias, y);
}

void winograd_channels_last_backward_input(const DirectConv& p, const float* grad_out, const float* weight,
                                           float* grad_in) {
  winograd_channels_last_forward(input_gradient_as_forward(p), grad_out, flipped_kernel(p, weight).data(), nullptr,
                                 grad_in);
}

void winograd_channels_last_backward_weight(const DirectConv& p, const float* x, const float* grad_out,
                                            float* grad_weight) {
  backward_weight<NhwcLayout>(p, x, grad_out, grad_weight);
}

}  // namespace cuconv
