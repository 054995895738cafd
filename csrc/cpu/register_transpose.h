// An L x L block of floats transposed in L vector registers, for the vector kernels that turn
// pixel-major sums channel-major or the reverse (pool_tile.h, direct_tile.h, and the depthwise
// kernels' and Winograd's NCHW planes to NHWC rows and back: transpose_floats below). Included by
// simd_avx512.cpp and simd_avx2.cpp after their `#pragma GCC target`, before the tile headers;
// like them it includes nothing. Floats and Ints are GCC vector types (or __m512 / __m256) of L
// floats and L 32-bit integers; the shuffles compile to one instruction each with AVX-512
// (vpermt2ps, vshuff32x4, ...) and to vshufps / vperm2f128 / vblendps with AVX2.

// Lane numbers 0, 1, ..., L - 1 of an L-lane integer vector (L = 4, 8 or 16).
template <typename Ints, int L>
Ints lane_numbers() {
  static_assert(L == 4 || L == 8 || L == 16);
  if constexpr (L == 4) return Ints{0, 1, 2, 3};
  else if constexpr (L == 8) return Ints{0, 1, 2, 3, 4, 5, 6, 7};
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

// Adds each of L rows' lanes pairwise (lane i += lane i + B for B = L/2, L/4, ..., 1: the order
// of pool_tile.h's global sums) and leaves row l's total in lane l of rows[0]: the additions of
// transpose_block and then rows[i] += rows[i + B], with the transpose's stages interleaved so
// that each stage halves the rows (L - 1 adds and 2L - 2 shuffles instead of L log L shuffles).
// Stage B pairs rows i and i + B (i < B): lanes with bit B clear hold row i's lane + lane + B,
// those with it set row i + B's; lane l of rows[0] ends up holding row l's sum.
template <typename Floats, typename Ints, int L, int B = L / 2>
inline void transpose_adding_halves(Floats* rows) {
  const Ints lane = lane_numbers<Ints, L>();
  const Ints has_bit = (lane & B) != 0;
  const Ints first = lane + (has_bit & (L - B));       // i's lane, or i + B's lane - B
  const Ints second = lane + B + (has_bit & (L - B));  // i's lane + B, or i + B's lane
#pragma GCC unroll 16
  for (int i = 0; i < B; ++i)
    rows[i] = __builtin_shuffle(rows[i], rows[i + B], first) + __builtin_shuffle(rows[i], rows[i + B], second);
  if constexpr (B > 1) transpose_adding_halves<Floats, Ints, L, B / 2>(rows);
}

// dst[q*dst_stride + r] = src[r*src_stride + q] for r < rows, q < cols, and 0 for rows <= r <
// stored (stored >= rows: lanes a caller's layout wants zero): a strided matrix transposed, L x L
// blocks through transpose_block, the last block's rows and columns through masked loads and
// stores (Isa: load, store, load_first, store_first, as simd_avx512.cpp's Avx512Float), so no
// element goes one by one (ResNet's 12x12 and smaller planes are all edge). NCHW planes to NHWC
// pixels (rows = channels, cols = pixels) and back (rows = pixels, cols = channels). The blocks
// run along the rows of the side with the longer stride (the planes, out of cache): across the
// planes first, writes to 56-pixel planes took 1.2x as long as an element-by-element copy.
template <class Isa>
void transpose_floats(const float* src, int64_t src_stride, int64_t rows, int64_t cols, int64_t stored, float* dst,
                      int64_t dst_stride) {
  using Floats = typename Isa::Floats;
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  auto block = [&](int64_t r0, int64_t q0) {
    const int64_t lanes = stored - r0 < L ? stored - r0 : L;  // of each vector stored
    const int64_t left = cols - q0 < L ? cols - q0 : L;
    Floats b[L];
#pragma GCC unroll 16
    for (int i = 0; i < L; ++i) {
      b[i] = Floats{};
      if (r0 + i < rows) {
        const float* s = src + (r0 + i) * src_stride + q0;
        b[i] = (Floats)(left == L ? Isa::load(s) : Isa::load_first(s, left));
      }
    }
    transpose_block<Floats, typename Isa::Ints, L>(b);
#pragma GCC unroll 16
    for (int q = 0; q < L; ++q) {
      if (q < left) {
        float* d = dst + (q0 + q) * dst_stride + r0;
        if (lanes == L) Isa::store(d, (V)b[q]);
        else Isa::store_first(d, (V)b[q], lanes);
      }
    }
  };
  if (dst_stride > src_stride) {  // along dst's rows
    for (int64_t q0 = 0; q0 < cols; q0 += L)
      for (int64_t r0 = 0; r0 < stored; r0 += L) block(r0, q0);
  } else {  // along src's rows
    for (int64_t r0 = 0; r0 < stored; r0 += L)
      for (int64_t q0 = 0; q0 < cols; q0 += L) block(r0, q0);
  }
}
