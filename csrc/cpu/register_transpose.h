// An L x L block of floats transposed in L vector registers, for the vector kernels that turn
// pixel-major sums channel-major or the reverse (pool_tile.h, direct_tile.h, and the depthwise
// kernels' NCHW planes to NHWC rows and back: planes_to_pixels, pixels_to_planes below). Included by
// simd_avx512.cpp and simd_avx2.cpp after their `#pragma GCC target`, before the tile headers;
// like them it includes nothing. Floats and Ints are GCC vector types (or __m512 / __m256) of L
// floats and L 32-bit integers; the shuffles compile to one instruction each with AVX-512
// (vpermt2ps, vshuff32x4, ...) and to vshufps / vperm2f128 / vblendps with AVX2.

// Lane numbers 0, 1, ..., L - 1 of an L-lane integer vector (L = 8 or 16).
template <typename Ints, int L>
Ints lane_numbers() {
  static_assert(L == 8 || L == 16);
  if constexpr (L == 8) return Ints{0, 1, 2, 3, 4, 5, 6, 7};
  else return Ints{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15};
}

// Transposes the L x L block rows[0..L) in registers: afterwards lane l of rows[j] is what lane j
// of rows[l] was. Butterfly stages B = L/2, L/4, ..., 1: rows i and i + B (bit B of i clear)
// swap their off-diagonal B x B blocks, i.e. row i's lanes with bit B set and row i + B's
// lanes with it clear. Each output is one two-register shuffle with a constant mask.
template <typename Floats, typename Ints, int L, int B = L / 2>
inline void transpose_block(Floats* rows) {
  const Ints lane = lane_numbers<Ints, L>();
  const Ints has_bit = (lane & B) != 0;                      // -1 where bit B of the lane is set
  const Ints keep_low = lane + (has_bit & (L - B));          // i: own lanes, then i + B's low lanes
  const Ints keep_high = lane + B + (has_bit & (L - B));     // i + B: i's high lanes, then its own
#pragma GCC unroll 16
  for (int i = 0; i < L; ++i) {
    if (i & B) continue;
    const Floats low = rows[i], high = rows[i + B];
    rows[i] = __builtin_shuffle(low, high, keep_low);
    rows[i + B] = __builtin_shuffle(low, high, keep_high);
  }
  if constexpr (B > 1) transpose_block<Floats, Ints, L, B / 2>(rows);
}

// Interleaves `channels` planes of `width` floats (plane k at planes + k*plane_stride) into
// pixels of `channels` floats: pixels[w*channels + k] = planes[k*plane_stride + w]. L x L blocks
// go through transpose_block; the channels and pixels past the last whole block one by one.
template <typename Floats, typename Ints, int L>
void planes_to_pixels(const float* planes, int64_t plane_stride, int64_t width, int64_t channels, float* pixels) {
  int64_t k0 = 0;
  for (; k0 + L <= channels; k0 += L) {
    int64_t w0 = 0;
    for (; w0 + L <= width; w0 += L) {
      Floats rows[L];
#pragma GCC unroll 16
      for (int i = 0; i < L; ++i) __builtin_memcpy(&rows[i], planes + (k0 + i) * plane_stride + w0, sizeof(Floats));
      transpose_block<Floats, Ints, L>(rows);
#pragma GCC unroll 16
      for (int i = 0; i < L; ++i) __builtin_memcpy(pixels + (w0 + i) * channels + k0, &rows[i], sizeof(Floats));
    }
    for (; w0 < width; ++w0)
      for (int i = 0; i < L; ++i) pixels[w0 * channels + k0 + i] = planes[(k0 + i) * plane_stride + w0];
  }
  for (; k0 < channels; ++k0)
    for (int64_t w = 0; w < width; ++w) pixels[w * channels + k0] = planes[k0 * plane_stride + w];
}

// The reverse: planes[k*plane_stride + w] = pixels[w*channels + k].
template <typename Floats, typename Ints, int L>
void pixels_to_planes(const float* pixels, int64_t channels, int64_t width, float* planes, int64_t plane_stride) {
  int64_t k0 = 0;
  for (; k0 + L <= channels; k0 += L) {
    int64_t w0 = 0;
    for (; w0 + L <= width; w0 += L) {
      Floats rows[L];
#pragma GCC unroll 16
      for (int i = 0; i < L; ++i) __builtin_memcpy(&rows[i], pixels + (w0 + i) * channels + k0, sizeof(Floats));
      transpose_block<Floats, Ints, L>(rows);
#pragma GCC unroll 16
      for (int i = 0; i < L; ++i) __builtin_memcpy(planes + (k0 + i) * plane_stride + w0, &rows[i], sizeof(Floats));
    }
    for (; w0 < width; ++w0)
      for (int i = 0; i < L; ++i) planes[(k0 + i) * plane_stride + w0] = pixels[w0 * channels + k0 + i];
  }
  for (; k0 < channels; ++k0)
    for (int64_t w = 0; w < width; ++w) planes[k0 * plane_stride + w] = pixels[w * channels + k0];
}
