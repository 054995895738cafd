// Winograd F(2x2, 3x3) convolution on the CPU (winograd.h).
//
// For the output tile at rows 2a, 2a+1 and columns 2b, 2b+1 of sample n, with d the 4x4 input
// patch of channel c at rows 2a - pH + i, columns 2b - pW + j (0 outside the image), and g the
// 3x3 kernel w[o, c]:
//
//   U[o, c] = G g G^T,   V[c, tile] = B^T d B                     (4x4 each)
//   M[o, tile] = sum_c U[o, c] (.) V[c, tile]                      (element by element)
//   y[n, o, 2a + r, 2b + s] = bias[o] + (A^T M[o, tile] A)[r, s]
//
//   G = [1 0 0; 1/2 1/2 1/2; 1/2 -1/2 1/2; 0 0 1]     B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1]
//   A^T = [1 1 1 0; 0 1 -1 -1]
//
// The sum over c is 16 independent matrix products, one per element xi of the 4x4 tile,
//
//   M_xi [O, tiles] = U_xi [O, C] @ V_xi [C, tiles],
//
// run by cuconv's GEMM (gemm.h): the U_xi packed once per call as A panels, the V_xi written
// by the input transform straight into B panels, per block of tiles.
//
// Blocking: threads take blocks of tiles counted across samples (row-major within a sample).
// Per block: transform the input patches of all C channels (16 B operands, C x block each),
// run the 16 products into M (16 x [O, block]), and transform M into the output tiles,
// clipped where H_out or W_out is odd. A block is sized so that one V_xi stays in L2 while
// U_xi streams past it, and so that every thread gets blocks.

#include "winograd.h"

#include <algorithm>
#include <vector>

#include "../stable.h"
#include "gemm.h"

namespace cuconv {
namespace {

constexpr int64_t kElements = 16;  // of a 4x4 tile: the products per block

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

// Y = A^T m A of each tile's 16 sums m in the group, into y (2x2 row-major along the first index).
inline void transform_sums(const float (*__restrict__ m)[kGroup], float (*__restrict__ y)[kGroup]) {
  float t[8][kGroup];
  for (int j = 0; j < 4; ++j)
    for (int64_t g = 0; g < kGroup; ++g) {
      t[j][g] = m[j][g] + m[4 + j][g] + m[8 + j][g];
      t[4 + j][g] = m[4 + j][g] - m[8 + j][g] - m[12 + j][g];
    }
  for (int i = 0; i < 2; ++i)
    for (int64_t g = 0; g < kGroup; ++g) {
      y[2 * i + 0][g] = t[4 * i + 0][g] + t[4 * i + 1][g] + t[4 * i + 2][g];
      y[2 * i + 1][g] = t[4 * i + 1][g] - t[4 * i + 2][g] - t[4 * i + 3][g];
    }
}


}  // namespace

bool winograd_suits(const DirectConv& p) {
  return p.kernel_h == 3 && p.kernel_w == 3 && p.stride_h == 1 && p.stride_w == 1 && p.dilation_h == 1 &&
         p.dilation_w == 1 && p.in_channels > 0 && p.out_channels > 0;
}

void winograd_forward(const DirectConv& p, const float* x, const float* w, const float* bias, float* y) {
  const Microkernel<float> kernel = cpu_microkernel<float>();
  note_kernel_use(KernelPath::kGemm, kernel.isa);
  const int64_t C = p.in_channels, O = p.out_channels, mr = kernel.mr, nr = kernel.nr;
  const int64_t tiles_w = (p.out_w + 1) / 2, per_sample = (p.out_h + 1) / 2 * tiles_w;
  const int64_t tiles = p.batch * per_sample, plane = p.height * p.width, out_plane = p.out_h * p.out_w;
  if (tiles == 0) return;
  CUCONV_CHECK(nr % kGroup == 0);  // so a group of tiles never crosses a B panel

  // U_xi as A panels [O, C], all 16 in one buffer (panel rows past O are zeros).
  const int64_t a_size = packed_size(O, mr, C), panels = (O + mr - 1) / mr;
  PackedBuffer<float> a(kElements * a_size);
  torch::stable::parallel_for(0, panels, 1, [&](int64_t first, int64_t last) {
    float u[kElements];
    for (int64_t o = first * mr; o < last * mr; ++o)
      for (int64_t c = 0; c < C; ++c) {
        if (o < O) transform_kernel(w + (o * C + c) * 9, u);
        else std::fill_n(u, kElements, 0.f);
        for (int64_t xi = 0; xi < kElements; ++xi) a[xi * a_size + packed_index(c, o, mr, C)] = u[xi];
      }
  });

  const int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  const int64_t by_cache = std::clamp<int64_t>(l2_cache_bytes() / 4 / (C * 4) / nr * nr, nr, 4 * nr);
  const int64_t share = ((tiles + threads - 1) / threads + nr - 1) / nr * nr;
  const int64_t block = std::max(nr, std::min(by_cache, share));
  const int64_t b_size = packed_size(block, nr, C);

  // The input is read through zero-padded copies of its planes, so every patch is in bounds:
  // padded[r][c] = x[r - pH][c - pW], over all the rows and columns the tiles reach.
  const int64_t padded_h = (p.out_h + 1) / 2 * 2 + 2, padded_w = tiles_w * 2 + 2, padded_plane = padded_h * padded_w;
  const int64_t max_samples = std::min(block, block / per_sample + 2);  // a block's samples, at most

  torch::stable::parallel_for(0, (tiles + block - 1) / block, 1, [&](int64_t first, int64_t last) {
    PackedBuffer<float> v(kElements * b_size), m(kElements * O * block);
    std::vector<float> padded(max_samples * padded_plane, 0.f);  // borders stay zero
    const int64_t rows = std::min(p.height, padded_h - p.pad_h), cols = std::min(p.width, padded_w - p.pad_w);
    // Per tile of the block: its patch in `padded`, its output pixel, whether its tile is whole.
    std::vector<int64_t> patch_at(block), out_at(block);
    std::vector<char> full_w(block), full_h(block);
    alignas(64) float d[kElements][kGroup] = {}, t[kElements][kGroup];  // (lanes past a short group: finite junk)
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t t0 = blk * block, count = std::min(block, tiles - t0);
      const int64_t first_sample = t0 / per_sample, samples = (t0 + count - 1) / per_sample - first_sample + 1;
      for (int64_t q = 0; q < count; ++q) {
        const int64_t n = (t0 + q) / per_sample, r = (t0 + q) % per_sample;
        const int64_t row = r / tiles_w * 2, col = r % tiles_w * 2;
        patch_at[q] = (n - first_sample) * padded_plane + row * padded_w + col;
        out_at[q] = n * O * out_plane + row * p.out_w + col;
        full_w[q] = col + 1 < p.out_w;
        full_h[q] = row + 1 < p.out_h;
      }

      // Input transform: V_xi[c, q] into lane q % nr of B panel q / nr, row c.
      for (int64_t xi = 0; xi < kElements; ++xi) zero_last_b_panel(v.data() + xi * b_size, nr, C, count);
      for (int64_t c = 0; c < C; ++c) {
        for (int64_t s = 0; s < samples; ++s) {
          const float* plane_in = x + ((first_sample + s) * C + c) * plane;
          float* plane_out = padded.data() + s * padded_plane + p.pad_h * padded_w + p.pad_w;
          for (int64_t i = 0; i < rows; ++i) std::copy_n(plane_in + i * p.width, cols, plane_out + i * padded_w);
        }
        for (int64_t q0 = 0; q0 < count; q0 += kGroup) {  // groups never cross a B panel (nr % 16 == 0)
          const int64_t size = std::min(kGroup, count - q0);
          for (int64_t g = 0; g < size; ++g) {
            const float* patch = padded.data() + patch_at[q0 + g];
            for (int i = 0; i < 4; ++i)
              for (int j = 0; j < 4; ++j) d[4 * i + j][g] = patch[i * padded_w + j];
          }
          transform_patches(d, t);
          float* lanes = v.data() + (q0 / nr * C + c) * nr + q0 % nr;
          if (size == kGroup) {
            for (int64_t xi = 0; xi < kElements; ++xi)
              for (int64_t g = 0; g < kGroup; ++g) lanes[xi * b_size + g] = t[xi][g];
          } else {
            for (int64_t xi = 0; xi < kElements; ++xi) std::copy_n(t[xi], size, lanes + xi * b_size);
          }
        }
      }

      // The 16 products M_xi [O, count], K sliced to the microkernel's depth.
      for (int64_t xi = 0; xi < kElements; ++xi)
        for (int64_t k0 = 0; k0 < C; k0 += kernel.depth)
          gemm_packed(kernel, O, count, std::min(kernel.depth, C - k0), a.data() + xi * a_size + k0 * mr, C * mr,
                      v.data() + xi * b_size + k0 * nr, C * nr, m.data() + xi * O * block, block, k0 > 0, nullptr);

      // Output transform, clipped where H_out or W_out is odd.
      for (int64_t o = 0; o < O; ++o) {
        const float b = bias != nullptr ? bias[o] : 0.f;
        float* out = y + o * out_plane;
        for (int64_t q0 = 0; q0 < count; q0 += kGroup) {
          const int64_t size = std::min(kGroup, count - q0);
          const float* sums = m.data() + o * block + q0;
          for (int64_t xi = 0; xi < kElements; ++xi)
            for (int64_t g = 0; g < kGroup; ++g) d[xi][g] = sums[xi * O * block + g];  // (m has room past count)
          transform_sums(d, t);
          for (int64_t g = 0; g < size; ++g) {
            float* dst = out + out_at[q0 + g];
            dst[0] = t[0][g] + b;
            if (full_w[q0 + g]) dst[1] = t[1][g] + b;
            if (full_h[q0 + g]) {
              dst[p.out_w] = t[2][g] + b;
              if (full_w[q0 + g]) dst[p.out_w + 1] = t[3][g] + b;
            }
          }
        }
      }
    }
  });
}

bool winograd_backward_input_suits(const DirectConv& p) {
  return winograd_suits(p) && p.pad_h <= 2 && p.pad_w <= 2;
}

void winograd_backward_input(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in) {
  // grad_in[n, c] = sum_{o,i,j} w[o, c, 2-i, 2-j] * grad_padded[n, o, ih + i, iw + j], grad_out padded
  // by 2 - padding: a stride-1 3x3 forward pass with in and out channels swapped.
  const int64_t C = p.in_channels, O = p.out_channels;
  std::vector<float> flipped(C * O * 9);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < 9; ++k) flipped[(c * O + o) * 9 + 8 - k] = weight[(o * C + c) * 9 + k];
  const DirectConv transposed{p.batch, O, p.out_h, p.out_w, C, p.height, p.width, 3, 3, 1, 1,
                              2 - p.pad_h, 2 - p.pad_w, 1, 1};
  winograd_forward(transposed, grad_out, flipped.data(), nullptr, grad_in);
}

}  // namespace cuconv
