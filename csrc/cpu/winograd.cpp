// Winograd on the CPU (winograd.h): the algebra of both passes, and the weight gradient.
// (The forward pass and the input gradient, in either layout, are winograd_forward.cpp.)
//
// Output tile (a, b) of sample n covers rows 2a, 2a+1 and columns 2b, 2b+1; its input patch d of
// channel c is the 4x4 block at rows 2a - pH + i, columns 2b - pW + j (0 outside the image).
//
// Forward pass, F(2x2, 3x3), with g the 3x3 kernel w[o, c]:
//
//   U[o, c] = G g G^T,   V[c, tile] = B^T d B                     (4x4 each)
//   M[o, tile] = sum_c U[o, c] (.) V[c, tile]                      (element by element)
//   y[n, o, 2a + r, 2b + s] = bias[o] + (A^T M[o, tile] A)[r, s]
//
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
//
// Weight gradient, F(3x3, 2x2): the 3x3 correlation of each patch with its tile's 2x2 of dy,
//
//   D[o, tile] = H e H^T (e: the tile's 2x2 of grad_output channel o, 0 past an odd edge)
//   N[o, c] = sum_tiles D[o, tile] (.) V[c, tile]                  (V as above)
//   dw[o, c] = K^T N[o, c] K                                        (3x3)
//
//   H = [1 0; 1/2 1/2; 1/2 -1/2; 0 1]     K^T = [1 1 1 0; 0 1 -1 0; 0 1 1 -1]
//
// (the usual F(3x3, 2x2) input transform has the last row of B^T negated; here that sign sits in
// K^T's last column, so both passes share V). Each sum is 16 independent matrix products, one per
// element xi of the 4x4 tile, run by cuconv's GEMM (gemm.h) on packed operands; the weight
// gradient's:
//
//   N_xi [O, C] += D_xi [O, tiles] @ V_xi^T [tiles, C]     D and V per block of tiles
//
// Blocking: each thread gets an equal run of tiles (counted across samples, row-major within
// one), cut into blocks that are the products' depth, with a partial N of its own; the partial
// sums are added in a fixed order (deterministic for a given thread count). Blocks are sized so
// that a block's 16 transformed pairs fit in L2 (from the L2 size read at run time: measured on
// ResNet's 6x6 layers, 2x larger blocks that spill to L3 ran 25-90% slower).

#include "winograd.h"

#include <algorithm>
#include <vector>

#include "../stable.h"
#include "gemm.h"

namespace cuconv {
namespace {

constexpr int64_t kElements = 16;  // of a 4x4 tile: the products per block

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

// Tiles are transformed in groups of up to kGroup, element by element across the group, so
// the compiler vectorises the arithmetic (each array below is [16 or 4][kGroup]).
constexpr int64_t kGroup = 16;

// V = B^T d B of each patch d of the group (a patch's 4x4 elements row-major along the first index).
inline void transform_patches(const float (*__restrict__ d)[kGroup], float (*__restrict__ v)[kGroup]) {
  float t[16][kGroup];
  for (int j = 0; j < 4; ++j)
    for (int64_t g = 0; g < kGroup; ++g) {
      t[0 + j][g] = d[0 + j][g] - d[8 + j][g];
      t[4 + j][g] = d[4 + j][g] + d[8 + j][g];
      t[8 + j][g] = d[8 + j][g] - d[4 + j][g];
      t[12 + j][g] = d[4 + j][g] - d[12 + j][g];
    }
  for (int i = 0; i < 4; ++i)
    for (int64_t g = 0; g < kGroup; ++g) {
      v[4 * i + 0][g] = t[4 * i + 0][g] - t[4 * i + 2][g];
      v[4 * i + 1][g] = t[4 * i + 1][g] + t[4 * i + 2][g];
      v[4 * i + 2][g] = t[4 * i + 2][g] - t[4 * i + 1][g];
      v[4 * i + 3][g] = t[4 * i + 1][g] - t[4 * i + 3][g];
    }
}

// D = H e H^T of each 2x2 block e of the group (row-major along the first index).
inline void transform_gradients(const float (*__restrict__ e)[kGroup], float (*__restrict__ d)[kGroup]) {
  float t[8][kGroup];  // H e, 4x2
  for (int j = 0; j < 2; ++j)
    for (int64_t g = 0; g < kGroup; ++g) {
      t[0 + j][g] = e[j][g];
      t[2 + j][g] = 0.5f * (e[j][g] + e[2 + j][g]);
      t[4 + j][g] = 0.5f * (e[j][g] - e[2 + j][g]);
      t[6 + j][g] = e[2 + j][g];
    }
  for (int i = 0; i < 4; ++i)
    for (int64_t g = 0; g < kGroup; ++g) {
      d[4 * i + 0][g] = t[2 * i][g];
      d[4 * i + 1][g] = 0.5f * (t[2 * i][g] + t[2 * i + 1][g]);
      d[4 * i + 2][g] = 0.5f * (t[2 * i][g] - t[2 * i + 1][g]);
      d[4 * i + 3][g] = t[2 * i + 1][g];
    }
}

// The tiling of a layer: tiles counted across samples, row-major within one.
struct Tiling {
  const DirectConv& p;
  int64_t tiles_w, per_sample, tiles;
  explicit Tiling(const DirectConv& p)
      : p(p), tiles_w((p.out_w + 1) / 2), per_sample((p.out_h + 1) / 2 * tiles_w), tiles(p.batch * per_sample) {}
  int64_t sample(int64_t t) const { return t / per_sample; }
  int64_t row(int64_t t) const { return t % per_sample / tiles_w * 2; }  // of the tile's first output pixel
  int64_t col(int64_t t) const { return t % per_sample % tiles_w * 2; }
};

// The input transform of a block of tiles: V[c, q] for every channel c and tile t0 + q of the
// block, handed to store(c, q0, size, v) in groups of up to kGroup tiles (v: [16][kGroup]).
// Groups start at multiples of kGroup. Each (sample, channel) plane is read through a
// zero-padded copy, so every patch is in bounds: padded[r][c] = x[r - pH][c - pW] over the
// rows and columns the tiles reach; the block's samples lie one after another.
class PatchTransform {
 public:
  PatchTransform(const Tiling& tiling, int64_t max_block)
      : tiling_(tiling), padded_w_(tiling.tiles_w * 2 + 2),
        padded_plane_(((tiling.p.out_h + 1) / 2 * 2 + 2) * padded_w_),
        padded_(std::min(max_block, max_block / tiling.per_sample + 2) * padded_plane_, 0.f),  // borders stay 0
        patch_at_(max_block) {}

  template <typename Store>
  void run(const float* x, int64_t t0, int64_t count, Store store) {
    const DirectConv& p = tiling_.p;
    const int64_t first_sample = tiling_.sample(t0), samples = tiling_.sample(t0 + count - 1) - first_sample + 1;
    for (int64_t q = 0; q < count; ++q)
      patch_at_[q] = (tiling_.sample(t0 + q) - first_sample) * padded_plane_ + tiling_.row(t0 + q) * padded_w_ +
                     tiling_.col(t0 + q);
    const int64_t rows = std::min(p.height, padded_plane_ / padded_w_ - p.pad_h);
    const int64_t cols = std::min(p.width, padded_w_ - p.pad_w), plane = p.height * p.width;
    for (int64_t c = 0; c < p.in_channels; ++c) {
      for (int64_t s = 0; s < samples; ++s) {
        const float* plane_in = x + ((first_sample + s) * p.in_channels + c) * plane;
        float* plane_out = padded_.data() + s * padded_plane_ + p.pad_h * padded_w_ + p.pad_w;
        for (int64_t i = 0; i < rows; ++i) std::copy_n(plane_in + i * p.width, cols, plane_out + i * padded_w_);
      }
      for (int64_t q0 = 0; q0 < count; q0 += kGroup) {
        const int64_t size = std::min(kGroup, count - q0);
        for (int64_t g = 0; g < size; ++g) {
          const float* patch = padded_.data() + patch_at_[q0 + g];
          for (int i = 0; i < 4; ++i)
            for (int j = 0; j < 4; ++j) d_[4 * i + j][g] = patch[i * padded_w_ + j];
        }
        transform_patches(d_, v_);
        store(c, q0, size, v_);
      }
    }
  }

 private:
  const Tiling& tiling_;
  int64_t padded_w_, padded_plane_;
  std::vector<float> padded_;
  std::vector<int64_t> patch_at_;  // per tile of the block: its patch in padded_
  alignas(64) float d_[kElements][kGroup] = {}, v_[kElements][kGroup];  // (lanes past a short group: finite junk)
};

}  // namespace

void winograd_kernel_transform(const float* g, float* u) {
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

bool winograd_suits(const DirectConv& p) {
  return p.kernel_h == 3 && p.kernel_w == 3 && p.stride_h == 1 && p.stride_w == 1 && p.dilation_h == 1 &&
         p.dilation_w == 1 && p.in_channels > 0 && p.out_channels > 0;
}

bool winograd_backward_input_suits(const DirectConv& p) {
  return winograd_suits(p) && p.pad_h <= 2 && p.pad_w <= 2;
}

void winograd_backward_weight(const DirectConv& p, const float* x, const float* grad_out, float* grad_weight) {
  const Microkernel<float> kernel = cpu_microkernel<float>();
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const Tiling tiling(p);
  const int64_t C = p.in_channels, O = p.out_channels, mr = kernel.mr, nr = kernel.nr, tiles = tiling.tiles;
  // Tiles per block: the block's 16 transformed pairs (D_xi and V_xi, (O + C) x depth each) fit
  // in L2, a multiple of the transforms' group.
  const int64_t depth = std::clamp<int64_t>(l2_cache_bytes() / (kElements * (O + C) * 4) / kGroup * kGroup, kGroup,
                                            kernel.depth);
  const int64_t out_plane = p.out_h * p.out_w;
  const int64_t n_size = O * C;  // one N_xi, [O, C] row-major
  const int64_t parts = std::max<int64_t>(
      1, std::min<int64_t>(torch::stable::get_num_threads(), (tiles + depth - 1) / depth));
  std::vector<float> partial(parts * kElements * n_size, 0.f);
  if (tiles > 0) {
    // D_xi [O, depth] as A panels and V_xi^T [depth, C] as B panels, over blocks of `depth` tiles
    // (a shorter last block leaves its tail zero, so every block has the same layout).
    const int64_t a_size = packed_size(O, mr, depth), b_size = packed_size(C, nr, depth);
    torch::stable::parallel_for(0, parts, 1, [&](int64_t first, int64_t last) {
      PackedBuffer<float> a(kElements * a_size, 0.f), b(kElements * b_size, 0.f);
      PatchTransform patches(tiling, depth);
      std::vector<int64_t> out_at(depth);              // per tile of the block: its grad_out pixel
      std::vector<char> full_w(depth), full_h(depth);  // whether its second column / row is inside
      alignas(64) float e2[4][kGroup] = {}, d[kElements][kGroup];
      for (int64_t part = first; part < last; ++part) {
        float* n_part = partial.data() + part * kElements * n_size;
        const int64_t begin = tiles * part / parts, end = tiles * (part + 1) / parts;
        for (int64_t t0 = begin; t0 < end; t0 += depth) {
          const int64_t count = std::min(depth, end - t0);
          if (count < depth) {  // zero the tail of the last block (earlier blocks filled it)
            for (int64_t xi = 0; xi < kElements; ++xi)
              for (int64_t q = count; q < depth; ++q) {
                for (int64_t o = 0; o < O; ++o) a[xi * a_size + packed_index(q, o, mr, depth)] = 0.f;
                for (int64_t c = 0; c < C; ++c) b[xi * b_size + packed_index(q, c, nr, depth)] = 0.f;
              }
          }
          // D_xi[o, q]: the tile's 2x2 of grad_out (0 past an odd edge), into A element (o, q)
          for (int64_t q = 0; q < count; ++q) {
            const int64_t t = t0 + q, row = tiling.row(t), col = tiling.col(t);
            out_at[q] = tiling.sample(t) * O * out_plane + row * p.out_w + col;
            full_w[q] = col + 1 < p.out_w;
            full_h[q] = row + 1 < p.out_h;
          }
          for (int64_t o = 0; o < O; ++o) {
            const float* dy_o = grad_out + o * out_plane;
            float* lane = a.data() + packed_index(0, o, mr, depth);  // element q of this row at lane + q * mr
            for (int64_t q0 = 0; q0 < count; q0 += kGroup) {
              const int64_t size = std::min(kGroup, count - q0);
              for (int64_t g = 0; g < size; ++g) {
                const int64_t q = q0 + g;
                const float* e = dy_o + out_at[q];
                e2[0][g] = e[0];
                e2[1][g] = full_w[q] ? e[1] : 0.f;
                e2[2][g] = full_h[q] ? e[p.out_w] : 0.f;
                e2[3][g] = full_w[q] && full_h[q] ? e[p.out_w + 1] : 0.f;
              }
              transform_gradients(e2, d);
              for (int64_t xi = 0; xi < kElements; ++xi)
                for (int64_t g = 0; g < size; ++g) lane[xi * a_size + (q0 + g) * mr] = d[xi][g];
            }
          }
          // V_xi[c, q] into B element (q, c)
          patches.run(x, t0, count, [&](int64_t c, int64_t q0, int64_t size, const float (*v)[kGroup]) {
            for (int64_t xi = 0; xi < kElements; ++xi) {
              float* column = b.data() + xi * b_size + packed_index(q0, c, nr, depth);
              for (int64_t g = 0; g < size; ++g) column[g * nr] = v[xi][g];
            }
          });
          for (int64_t xi = 0; xi < kElements; ++xi)
            gemm_packed(kernel, O, C, depth, a.data() + xi * a_size, depth * mr, b.data() + xi * b_size, depth * nr,
                        n_part + xi * n_size, C, /*accumulate=*/true, nullptr);
        }
      }
    });
  }
  // dw[o, c] = K^T N[o, c] K, N summed over the parts in order
  torch::stable::parallel_for(0, n_size, 256, [&](int64_t first, int64_t last) {
    for (int64_t oc = first; oc < last; ++oc) {
      float n[kElements];
      for (int64_t xi = 0; xi < kElements; ++xi) {
        float total = partial[xi * n_size + oc];
        for (int64_t part = 1; part < parts; ++part) total += partial[(part * kElements + xi) * n_size + oc];
        n[xi] = total;
      }
      transform_weight_sums(n, grad_weight + oc * 9);
    }
  });
}

}  // namespace cuconv
