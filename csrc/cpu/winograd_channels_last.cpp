// Winograd F(2x2, 3x3) on channels_last (NHWC) float32 tensors (winograd.h; the algebra is
// winograd.cpp's: U = G g G^T, V = B^T d B, y = A^T M A).
//
// Tile (a, b) of sample n covers output rows 2a, 2a+1 and columns 2b, 2b+1; its patch element
// e = 4i + j is the input pixel (2a - pH + i, 2b - pW + j), whose C channels are contiguous in
// NHWC. Per block of tiles (counted across samples, row-major within one):
//
//   V[q, e, :]  = B^T d B of tile q's patch, C channels at a time    (winograd_tile.h)
//   M[q, e, :]  = V[q, e, :] @ U_e                                   U_e [C, O] in B panels, once
//   y[pixel, :] = A^T M[q] A + bias, for the tile's 2x2 pixels inside the image
//
// The 16 products (one per element e) are cuconv's GEMM register tiles with the A rows read
// through pointers (the indirect tile of the NHWC convolution, one "tap"): row r of a tile is
// V[q0 + r, e, :], and the results land in M at row stride 16 * O_pad. No transform gathers or
// scatters: every load and store is a vector of channels. Blocks of tiles are split across
// threads and sized so that V and M of a block (16 x (C + O) floats per tile) fit in half the L2.

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

}  // namespace

void winograd_channels_last_forward(const DirectConv& p, const float* x, const float* w, const float* bias,
                                    float* y) {
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
    std::vector<const float*> rows(mr);
    const float* patch[kElements];
    float* out[4];
    for (int64_t blk = first; blk < last; ++blk) {
      const int64_t t0 = blk * block, count = std::min(block, tiles - t0);

      // Input transform: tile q's patch pixels (zeros in the padding) into V[q].
      for (int64_t q = 0; q < count; ++q) {
        const int64_t t = t0 + q, n = t / per_sample;
        const int64_t row = t % per_sample / tiles_w * 2 - p.pad_h, col = t % per_sample % tiles_w * 2 - p.pad_w;
        const float* sample = x + n * p.height * p.width * C;
        for (int64_t i = 0; i < 4; ++i)
          for (int64_t j = 0; j < 4; ++j) {
            const int64_t ih = row + i, iw = col + j;
            const bool inside = ih >= 0 && ih < p.height && iw >= 0 && iw < p.width;
            patch[4 * i + j] = inside ? sample + (ih * p.width + iw) * C : zeros.data();
          }
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
        const int64_t t = t0 + q, n = t / per_sample;
        const int64_t row = t % per_sample / tiles_w * 2, col = t % per_sample % tiles_w * 2;
        float* corner = y + ((n * p.out_h + row) * p.out_w + col) * O;
        const bool full_w = col + 1 < p.out_w, full_h = row + 1 < p.out_h;
        out[0] = corner;
        out[1] = full_w ? corner + O : nullptr;
        out[2] = full_h ? corner + p.out_w * O : nullptr;
        out[3] = full_w && full_h ? corner + (p.out_w + 1) * O : nullptr;
        transforms.sums(m.data() + q * kElements * o_pad, o_pad, O, bias, out);
      }
    }
  });
}

void winograd_channels_last_backward_input(const DirectConv& p, const float* grad_out, const float* weight,
                                           float* grad_in) {
  // a stride-1 3x3 forward pass over grad_out padded by 2 - padding (direct_conv.h)
  winograd_channels_last_forward(input_gradient_as_forward(p), grad_out, flipped_kernel(p, weight).data(), nullptr,
                                 grad_in);
}

}  // namespace cuconv
