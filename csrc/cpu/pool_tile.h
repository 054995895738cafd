// Vector kernels of pool2d.cpp, written once for every vector ISA: included by simd_avx512.cpp
// and simd_avx2.cpp after their `#pragma GCC target`, where GCC's vector types below compile to
// one AVX-512 register or two AVX2 ones.
//
// Max and average pooling of one NHWC output pixel, registers of channels at a time (the
// channels_last kernels; which dtypes take each: simd.h), with GCC's vector types of the ISA's
// own width: Floats of L floats, Ints and Longs of as many 32- and 64-bit lanes (the AVX-512 file
// takes 16, the AVX2 file 8; a 16-float type on AVX2 compiled to scalar code, 7-12x slower than
// torch). (In pool2d.cpp's target_clones functions GCC 12 lowers them to scalar code too, 10x
// slower; so do plain loops over the channels, which it unrolls before vectorising.) As
// gemm_tile.h: no #include here.

typedef float PoolFloats __attribute__((vector_size(64)));
typedef int32_t PoolInts __attribute__((vector_size(64)));
typedef int64_t PoolLongs __attribute__((vector_size(128)));
typedef float PoolFloats8 __attribute__((vector_size(32)));
typedef int32_t PoolInts8 __attribute__((vector_size(32)));
typedef int64_t PoolLongs8 __attribute__((vector_size(64)));
typedef float PoolFloats4 __attribute__((vector_size(16)));  // global average pooling's quads (below)
typedef int32_t PoolInts4 __attribute__((vector_size(16)));
typedef double PoolDoubles __attribute__((vector_size(64)));  // global average pooling of float64
typedef double PoolDoubles4 __attribute__((vector_size(32)));
typedef int64_t PoolLongs4 __attribute__((vector_size(32)));

// 16-bit lanes zero-extended to 32, and 32-bit lanes cut to their low 16: one instruction a
// register where the ISA has one (GCC 12's __builtin_convertvector splits these into 128-bit
// pieces and packs them again, 3-4x the instructions).
// The including file says whether it is compiled for AVX-512 (kCompiledForAvx512: a `#pragma GCC
// target` defines no __AVX512F__); the AVX2 file compiles the 16-lane kernels too, for tests, and
// keeps GCC's conversions there.
template <typename Ints, typename Halves>
inline Ints widen_halves(Halves h) {
  if constexpr (kCompiledForAvx512 && sizeof(Halves) == 32 && sizeof(Ints) == 64) {
    return (Ints)_mm512_cvtepu16_epi32((__m256i)h);
  } else if constexpr (sizeof(Halves) == 16 && sizeof(Ints) == 32) {
    return (Ints)_mm256_cvtepu16_epi32((__m128i)h);
  } else {
    return __builtin_convertvector(h, Ints);
  }
}
template <typename Halves, typename Ints>
inline Halves narrow_to_halves(Ints v) {
  if constexpr (kCompiledForAvx512 && sizeof(Ints) == 64 && sizeof(Halves) == 32) {
    return (Halves)_mm512_cvtepi32_epi16((__m512i)v);
  } else {
    return __builtin_convertvector(v, Halves);
  }
}

// L values at p as floats: float32 as they are, bfloat16 (its bits, uint16_t: the upper half of a
// float's) widened exactly, float16 (Float16Bits) by F16C's conversion, 8 values an instruction
// (exact; a signalling NaN quietened, as c10's conversion does).
template <typename Floats, typename Ints, int L, typename Element>
inline Floats load_as_floats(const Element* p) {
  Floats v;
  if constexpr (std::is_same_v<Element, uint16_t>) {
    typedef uint16_t Halves __attribute__((vector_size(L * sizeof(uint16_t))));
    Halves bits;
    __builtin_memcpy(&bits, p, sizeof bits);
    // (bits >= 0x8000 shift into the sign bit: GCC's vector shifts wrap, as the hardware's do)
    const Ints wide = widen_halves<Ints>(bits) << 16;
    __builtin_memcpy(&v, &wide, sizeof v);
  } else if constexpr (std::is_same_v<Element, Float16Bits>) {
    static_assert(L % 8 == 0);
    for (int i = 0; i < L; i += 8) {
      __m128i bits;
      __builtin_memcpy(&bits, p + i, sizeof bits);
      const __m256 floats = _mm256_cvtph_ps(bits);
      __builtin_memcpy(reinterpret_cast<char*>(&v) + i * sizeof(float), &floats, sizeof floats);
    }
  } else {
    static_assert(sizeof(Element) == sizeof(float));
    __builtin_memcpy(&v, p, sizeof v);
  }
  return v;
}

// L values of x at p as the accumulator type: float64 as they are, the others as load_as_floats.
template <typename Values, typename Lanes, int L, typename Element>
inline Values load_values(const Element* p) {
  if constexpr (std::is_same_v<Element, double>) {
    Values v;
    __builtin_memcpy(&v, p, sizeof v);
    return v;
  } else {
    return load_as_floats<Values, Lanes, L>(p);
  }
}

// Stores L accumulators at p: bfloat16 rounded to nearest even as c10::BFloat16 rounds (a NaN
// becomes 0x7FC0), float16 likewise by F16C (to nearest even, past the largest float16 to Inf; a
// NaN keeps its payload's high bits, as torch's float16 copies do, where c10::Half's scalar
// conversion writes 0x7E00: cuconv promises neither).
template <typename Values, typename Lanes, int L, typename Element>
inline void store_values(Element* p, const Values& v) {
  typedef uint16_t Halves __attribute__((vector_size(L * sizeof(uint16_t))));
  if constexpr (std::is_same_v<Element, uint16_t>) {
    Lanes bits;  // (the adds below stay in range for every value but a NaN, whose lane is replaced)
    __builtin_memcpy(&bits, &v, sizeof bits);
    const Lanes rounded = (bits + 0x7FFF + ((bits >> 16) & 1)) >> 16;
    const Halves narrow = narrow_to_halves<Halves>(v != v ? Lanes{} + 0x7FC0 : rounded);
    __builtin_memcpy(p, &narrow, sizeof narrow);
  } else if constexpr (std::is_same_v<Element, Float16Bits>) {
    Halves narrow;
    for (int i = 0; i < L; i += 8) {
      __m256 floats;
      __builtin_memcpy(&floats, reinterpret_cast<const char*>(&v) + i * sizeof(float), sizeof floats);
      const __m128i bits = _mm256_cvtps_ph(floats, _MM_FROUND_TO_NEAREST_INT | _MM_FROUND_NO_EXC);
      __builtin_memcpy(reinterpret_cast<char*>(&narrow) + i * sizeof(uint16_t), &bits, sizeof bits);
    }
    __builtin_memcpy(p, &narrow, sizeof narrow);
  } else {
    __builtin_memcpy(p, &v, sizeof v);
  }
}

// Max pooling, for channels [c0, c0 + L) of every register: the maximum over the window's pixels
// x + window[t] * C (t < taps), by torch's rule (v replaces the best when v > best or v is NaN;
// the first pixel stands for an all -inf window), and its pixel index; narrowed back exactly
// (the maximum is one of the inputs). NV registers of channels from c0 (each an independent
// chain of compare-and-selects over the window: one register alone waits on each select's
// latency, tap after tap).
template <typename Floats, typename Ints, typename Longs, int L, int NV, typename Element>
inline void max_pool_registers_nhwc(const Element* x, int64_t C, int64_t c0, const int32_t* window, int64_t taps,
                                    Element* y, int64_t* indices) {
  Floats best[NV];
  Ints best_index[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    best[v] = load_as_floats<Floats, Ints, L>(x + window[0] * C + c0 + v * L);
    best_index[v] = Ints{} + window[0];
  }
  for (int64_t t = 1; t < taps; ++t) {
    const Element* pixel = x + window[t] * C + c0;
    const Ints position = Ints{} + window[t];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      const Floats value = load_as_floats<Floats, Ints, L>(pixel + v * L);
      const Ints takes = (value > best[v]) | (value != value);
      best[v] = takes ? value : best[v];
      best_index[v] = takes ? position : best_index[v];
    }
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const Longs wide = __builtin_convertvector(best_index[v], Longs);
    if constexpr (!std::is_same_v<Element, uint16_t>) {
      store_values<Floats, Ints, L>(y + c0 + v * L, best[v]);
    } else {  // (bfloat16 by its bits: a NaN keeps its payload)
      typedef uint16_t Halves __attribute__((vector_size(L * sizeof(uint16_t))));
      Ints bits;
      __builtin_memcpy(&bits, &best[v], sizeof bits);
      const Halves narrow = narrow_to_halves<Halves>(bits >> 16);
      __builtin_memcpy(y + c0 + v * L, &narrow, sizeof narrow);
    }
    __builtin_memcpy(indices + c0 + v * L, &wide, sizeof wide);
  }
}

// Every channel of one max-pooled pixel: returns the channels done, all of them, or none where
// C < L (the caller does them).
template <typename Floats, typename Ints, typename Longs, int L, typename Element>
int64_t max_pool_pixel_nhwc(const Element* x, int64_t C, const int32_t* window, int64_t taps, Element* y,
                            int64_t* indices) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats) &&
                sizeof(Longs) == 2 * sizeof(Floats));
  if (C < L) return 0;
  // four registers at a time, then one, then the last L channels (overlapping the register
  // before: its channels are written again with the same values)
  int64_t c0 = 0;
  for (; c0 + 4 * L <= C; c0 += 4 * L) max_pool_registers_nhwc<Floats, Ints, Longs, L, 4>(x, C, c0, window, taps, y, indices);
  for (; c0 + L <= C; c0 += L) max_pool_registers_nhwc<Floats, Ints, Longs, L, 1>(x, C, c0, window, taps, y, indices);
  if (c0 < C) max_pool_registers_nhwc<Floats, Ints, Longs, L, 1>(x, C, C - L, window, taps, y, indices);
  return C;
}

// Average pooling, NV registers of channels from c0: each channel's sum of the window's pixels
// x + (row * width + column) * C in (row, column) order from +0, in float (the scalar kernel's
// sums, so the same bits), divided by `divisor` and stored rounded (store_values).
template <typename Floats, typename Ints, int L, int NV, typename Element>
inline void avg_pool_registers_nhwc(const Element* x, int64_t C, int64_t c0, const PoolRectangle& window,
                                    float divisor, Element* y) {
  Floats sum[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) sum[v] = Floats{};
  for (int64_t row = window.row_begin; row < window.row_end; ++row)
    for (int64_t column = window.col_begin; column < window.col_end; ++column) {
      const Element* pixel = x + (row * window.width + column) * C + c0;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) sum[v] += load_as_floats<Floats, Ints, L>(pixel + v * L);
    }
  const Floats count = Floats{} + divisor;
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) store_values<Floats, Ints, L>(y + c0 + v * L, sum[v] / count);
}

// Every channel of one average-pooled pixel, as max_pool_pixel_nhwc.
template <typename Floats, typename Ints, int L, typename Element>
int64_t avg_pool_pixel_nhwc(const Element* x, int64_t C, const PoolRectangle& window, float divisor, Element* y) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats));
  if (C < L) return 0;
  int64_t c0 = 0;
  for (; c0 + 4 * L <= C; c0 += 4 * L) avg_pool_registers_nhwc<Floats, Ints, L, 4>(x, C, c0, window, divisor, y);
  for (; c0 + L <= C; c0 += L) avg_pool_registers_nhwc<Floats, Ints, L, 1>(x, C, c0, window, divisor, y);
  if (c0 < C) avg_pool_registers_nhwc<Floats, Ints, L, 1>(x, C, C - L, window, divisor, y);
  return C;
}

// Global average pooling's gradient in float32 over planes of `plane` <= 16 values, L planes at
// a time (L = 16 with AVX-512, 8 with AVX2): their L shares dy / divisor in one vector, and the
// planes' L * plane outputs as `plane` vectors, vector m holding share (L*m + l) / plane in lane
// l: one permute and one full store each (the scalar kernel's stores straddle planes). The
// vector types are the ISA's own width (a permute of 16 floats compiles to scalar code on AVX2;
// of 8 it is one vpermps).
template <typename Floats, typename Ints, int L>
void global_unpool_groups(const float* dy, int64_t groups, int64_t plane, float divisor, float* dx) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats));
  Ints lanes[16];
  for (int64_t m = 0; m < plane; ++m)
    for (int l = 0; l < L; ++l) lanes[m][l] = static_cast<int32_t>((L * m + l) / plane);
  const Floats count = Floats{} + divisor;
  for (int64_t q = 0; q < groups; ++q) {
    Floats g;
    __builtin_memcpy(&g, dy + L * q, sizeof g);
    const Floats shares = Floats{} + g / count;  // (0 + x: -0 becomes +0, as the scalar kernel)
    float* out = dx + L * q * plane;
    for (int64_t m = 0; m < plane; ++m) {
      const Floats v = __builtin_shuffle(shares, lanes[m]);
      __builtin_memcpy(out + L * m, &v, sizeof v);
    }
  }
}

// The same over quads, 4 planes of P values at a time in 128-bit registers (a CPU whose vector
// units are 128 bits wide splits each 256-bit permute and store above in two; pool2d.cpp
// measures which is faster): vector m holds share (4m + l) / P in lane l. P is compiled in, so
// each permute's lane picks are an immediate (one vpermilps or shufps); with the picks in a
// register, as above, a Zen 1 took 1.8x as long, and the quads took 0.4 of the 8 lanes' time
// on 3x3 planes.
template <int P, int... M>
void global_unpool_quads_of(const float* dy, int64_t groups, float divisor, float* dx,
                            std::integer_sequence<int, M...>) {
  const PoolFloats4 count = PoolFloats4{} + divisor;
  for (int64_t q = 0; q < groups; ++q) {
    PoolFloats4 g;
    __builtin_memcpy(&g, dy + 4 * q, sizeof g);
    const PoolFloats4 shares = PoolFloats4{} + g / count;  // (0 + x: -0 becomes +0, as the scalar kernel)
    float* out = dx + 4 * q * P;
    auto store = [&](int m, PoolFloats4 v) { __builtin_memcpy(out + 4 * m, &v, sizeof v); };
    (store(M, __builtin_shuffle(shares, PoolInts4{4 * M / P, (4 * M + 1) / P, (4 * M + 2) / P, (4 * M + 3) / P})), ...);
  }
}
template <int P>
void global_unpool_quads_of_plane(const float* dy, int64_t groups, float divisor, float* dx) {
  global_unpool_quads_of<P>(dy, groups, divisor, dx, std::make_integer_sequence<int, P>{});
}
template <int... P>
void global_unpool_quads_by_plane(const float* dy, int64_t groups, int64_t plane, float divisor, float* dx,
                                  std::integer_sequence<int, P...>) {
  using Kernel = void (*)(const float*, int64_t, float, float*);
  static constexpr Kernel kernels[] = {&global_unpool_quads_of_plane<P + 1>...};
  kernels[plane - 1](dy, groups, divisor, dx);
}
// (GlobalUnpoolGroups's signature; planes of 1 to 16 values)
inline void global_unpool_quads(const float* dy, int64_t groups, int64_t plane, float divisor, float* dx) {
  global_unpool_quads_by_plane(dy, groups, plane, divisor, dx, std::make_integer_sequence<int, 16>{});
}

// How many of the blocks 0, 1, ... `step` values apart reach at most `reach` values past their
// start without going past `limit` values: those k >= 0 with k * step + reach <= limit.
inline int64_t within(int64_t limit, int64_t reach, int64_t step) {
  return limit >= reach ? (limit - reach) / step + 1 : 0;
}

// How many whole groups of L planes of `plane` values the kernels below may take from x, where
// reading a group's planes runs `read_past` values past its last plane: only while x[0, readable)
// holds them.
inline int64_t readable_groups(int64_t planes, int64_t plane, int64_t readable, int64_t L, int64_t read_past) {
  int64_t groups = planes / L;
  while (groups > 0 && groups * L * plane + read_past > readable) --groups;
  return groups;
}

// take(column, k) for k = 0, 1, ..., plane - 1 in order, where lane l of `column` is value k of
// plane l of the L planes at `group`. The planes are read as L rows of L values (row l: plane l
// from value `start`), transposed in registers, and the column vectors taken in order. The last
// block of a plane of >= L values starts L values before its end (nothing is read past the
// plane; columns already taken are skipped); a plane of < L values reads past its group.
// (Inlined into its callers, or the rows and sums live on the stack: 40x slower.)
template <typename Floats, typename Ints, int L, typename Take>
[[gnu::always_inline]] inline void for_each_column(const float* group, int64_t plane, Take take) {
  for (int64_t c0 = 0; c0 < plane; c0 += L) {
    const int64_t start = plane < L ? 0 : (c0 + L <= plane ? c0 : plane - L);
    Floats rows[L];  // (loops over rows unrolled, so that rows stays in registers)
#pragma GCC unroll 16
    for (int l = 0; l < L; ++l) __builtin_memcpy(&rows[l], group + l * plane + start, sizeof(Floats));
    transpose_block<Floats, Ints, L>(rows);
    const int64_t first = c0 - start, last = plane - start < L ? plane - start : L;
#pragma GCC unroll 16
    for (int j = 0; j < L; ++j)
      if (j >= first && j < last) take(rows[j], start + j);
  }
}

// Global average pooling of planes of at most kGlobalSumBlock values (simd.h), L planes at a time
// (a register's lanes: float32 and bfloat16 16 with AVX-512, 8 with AVX2; float64 8 and 4; float32
// also 4 in 128-bit registers, the quads, which a Zen 1 ran in 0.6 of the 8 lanes' time: its
// vector units are 128 bits wide and its 256-bit lane-crossing shuffles several micro-ops each;
// pool2d.cpp measures which is faster), in the
// order of every global sum (pool2d.cpp, sum_along_plane): value k of a plane into partial sum k
// mod 16, the 16 partial sums then added pairwise (i += i + s, s = 8, 4, 2, 1). Each plane's
// partial sums are 16 / L registers along the plane, its last values a load of 16 that runs past
// it with the lanes past the plane dropped (+0 in their place: a partial sum no value reaches is
// +0, as in the in-order sum, and +0 added to one that started at +0, so is never -0, changes
// nothing); the pairwise adds of s >= L add a plane's registers, those of s < L run while the L
// planes' partial sums are transposed (transpose_adding_halves: each add serves all L planes;
// adding after a whole transpose, from +0, took 1.4x as long on 3x3 planes). Memory-bound on ResNet's
// 7x7 and 14x14 planes with the next group prefetched (without the prefetch 1.5x torch's time;
// adding each plane's values in order, lanes across planes, 2x). One plane at a time: all L
// planes' partial sums side by side need 16 registers, all AVX2 has (spilled, 3x3 planes ran
// 1.4x slower than in order). Values / Lanes: GCC vectors of L accumulators
// (float or double) and of L integers as wide; Element: float, double, or bfloat16's or
// float16's bits (uint16_t, Float16Bits; summed in float). Returns the planes done (a multiple of L).
template <typename Values, typename Lanes, int L, typename Element>
int64_t global_pool_groups(const Element* x, int64_t planes, int64_t plane, double divisor, int64_t readable,
                           Element* y) {
  static_assert(sizeof(Lanes) == sizeof(Values) && 16 % L == 0);
  constexpr int kRegisters = 16 / L;
  const int64_t whole = plane / 16 * 16, rest = plane - whole;  // values in whole loads of 16, after them
  const int64_t groups = readable_groups(planes, plane, readable, L, rest > 0 ? 16 - rest : 0);
  Lanes inside[kRegisters];  // lanes of the last load that lie in the plane
#pragma GCC unroll 4
  for (int r = 0; r < kRegisters; ++r)
    inside[r] = (lane_numbers<Lanes, L>() + r * L) < static_cast<decltype(Lanes{}[0] + 0)>(rest);
  const Values count = Values{} + static_cast<decltype(Values{}[0] + 0)>(divisor);
  // Planes of < 16 values (ResNet's 3x3) are one masked load of 16 each, of which only the
  // registers that reach into the plane (kLive, compiled apart: no loop over whole loads, no
  // prefetch, as a group is a few cache lines the hardware's prefetcher follows; 128x512 planes of
  // 3x3 took 112-117 us instead of 150-230 on a Zen 3, one thread), the last one alone masked;
  // the registers past the plane, +0, are not added. A partial sum is then a plane's values
  // alone, and may be -0 where the in-order sum from +0 has +0; a sum is -0 only when all its
  // terms are, so the one +0 added to the group's sums at the end gives the in-order bits (the
  // quads' 3x3 planes took 0.75 of the time that loading and adding all 16 values did, Zen 1).
  auto run_groups = [&](auto live_registers) {
    constexpr int kLive = decltype(live_registers)::value;  // 0: planes of >= 16 values
    for (int64_t q = 0; q < groups; ++q) {
      const Element* group = x + q * L * plane;
      Values sums[L];  // plane l's partial sums 0 .. L - 1 (after the adds of s >= L)
#pragma GCC unroll 16
      for (int l = 0; l < L; ++l) {
        const Element* values = group + l * plane;
        Values part[kRegisters] = {};  // partial sums r*L .. r*L + L - 1
        if constexpr (kLive > 0) {
#pragma GCC unroll 4
          for (int r = 0; r < kLive; ++r) {
            const Values v = load_values<Values, Lanes, L>(values + r * L);
            part[r] = r + 1 < kLive ? v : (inside[r] ? v : Values{});
          }
        } else {
          for (int64_t k = 0; k < whole; k += 16)
#pragma GCC unroll 4
            for (int r = 0; r < kRegisters; ++r) {
              part[r] += load_values<Values, Lanes, L>(values + k + r * L);
              __builtin_prefetch(values + L * plane + k + r * L);  // the next group's
            }
          if (rest > 0)
#pragma GCC unroll 4
            for (int r = 0; r < kRegisters; ++r) {
              __builtin_prefetch(values + L * plane + whole + r * L);
              part[r] += inside[r] ? load_values<Values, Lanes, L>(values + whole + r * L) : Values{};
            }
        }
#pragma GCC unroll 4
        for (int step = 8; step >= L; step /= 2)  // partial sum i += i + step, within the plane's registers
#pragma GCC unroll 2
          for (int r = 0; r < step / L; ++r)
            if (kLive == 0 || r + step / L < kLive) part[r] += part[r + step / L];
        sums[l] = part[0];
      }
      transpose_adding_halves<Values, Lanes, L>(sums);  // the adds of s < L; lane l of sums[0]: plane l's sum
      if constexpr (kLive > 0) sums[0] += Values{};  // (-0 to +0: above)
      store_values<Values, Lanes, L>(y + L * q, sums[0] / count);
    }
  };
  if (whole > 0 || rest == 0) {
    run_groups(std::integral_constant<int, 0>{});
  } else {
    const int64_t live = (rest + L - 1) / L;  // 1 .. kRegisters
    if (live == 1) run_groups(std::integral_constant<int, 1>{});
    if constexpr (kRegisters >= 2) if (live == 2) run_groups(std::integral_constant<int, 2>{});
    if constexpr (kRegisters >= 3) if (live == 3) run_groups(std::integral_constant<int, 3>{});
    if constexpr (kRegisters >= 4) if (live == 4) run_groups(std::integral_constant<int, 4>{});
  }
  return groups * L;
}

// Max pooling whose one window covers the whole plane (global max pooling), float32, L planes
// at a time, columns in order (for_each_column): lane l keeps plane l's maximum and its index by
// torch's rule (a value replaces the best when greater or NaN; the best starts at -inf with index
// 0), the plane kernel's results exactly. Planes of < 2^31 values. Returns the planes done.
template <typename Floats, typename Ints, typename Longs, int L>
int64_t global_max_groups(const float* x, int64_t planes, int64_t plane, int64_t readable, float* y,
                          int64_t* indices) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats) &&
                sizeof(Longs) == 2 * sizeof(Floats));
  const int64_t groups = readable_groups(planes, plane, readable, L, plane < L ? L - plane : 0);
  for (int64_t q = 0; q < groups; ++q) {
    Floats best = Floats{} - __builtin_inff();
    Ints best_index = Ints{};
    for_each_column<Floats, Ints, L>(x + q * L * plane, plane, [&](const Floats& column, int64_t k) {
      const Ints takes = (column > best) | (column != column);
      best = takes ? column : best;
      best_index = takes ? Ints{} + static_cast<int32_t>(k) : best_index;
    });
    const Longs wide = __builtin_convertvector(best_index, Longs);
    __builtin_memcpy(y + L * q, &best, sizeof best);
    __builtin_memcpy(indices + L * q, &wide, sizeof wide);
  }
  return groups * L;
}

// `count` vectors, vector(t) holding value t of L planes (lane l: plane l), stored plane-major:
// y[l * count + t]. L x L blocks transposed in registers; the last block ends at the plane's end
// (it overlaps the one before, whose values it writes again). count >= L.
template <typename Floats, typename Ints, int L, typename Vector>
[[gnu::always_inline]] inline void store_planes(Vector vector, int64_t count, float* y) {
  for (int64_t c0 = 0; c0 < count; c0 += L) {
    const int64_t start = c0 + L <= count ? c0 : count - L;
    Floats rows[L];
#pragma GCC unroll 16
    for (int j = 0; j < L; ++j) rows[j] = vector(start + j);
    transpose_block<Floats, Ints, L>(rows);
#pragma GCC unroll 16
    for (int l = 0; l < L; ++l) __builtin_memcpy(y + l * count + start, &rows[l], sizeof(Floats));
  }
}

// Whether v is 2^e, e in [-126, 127] (its inverse, 2^-e, a float too).
inline bool is_power_of_two(float v) {
  uint32_t bits;
  __builtin_memcpy(&bits, &v, sizeof bits);
  const uint32_t sign_and_exponent = bits >> 23;
  return (bits & 0x7FFFFF) == 0 && sign_and_exponent != 0 && sign_and_exponent < 255;
}

// 2x2 average pooling with stride 2 (pool2d.cpp's tiled_2x2) of short planes (simd.h,
// AvgPool2x2Groups), L planes at a time: their pixels transposed into pixel-major vectors (lane
// l: plane l; for_each_column), each window summed as the plane kernel and torch sum it,
// (((0 + x00) + x01) + x10) + x11, divided by the divisor, for all L planes at once, and the
// outputs transposed back. On LeNet's 10x10 planes (rows of 5 outputs) the plane kernel's loop
// over a row is all remainder (simd.h, kShortPoolRow).
template <typename Floats, typename Ints, int L>
void avg_pool_2x2_groups(const float* x, int64_t groups, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                         float divisor, float* y) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats));
  const int64_t plane = H * W, outputs = Ho * Wo;
  Floats pixels[kShortPoolPlane], means[kShortPoolPlane / 4];
  // A power-of-two divisor (4, unless overridden) divides as its inverse multiplies, exactly: the
  // same rounding of the same quotient (~5% faster on LeNet's planes; the transposes bound it).
  const bool power_of_two = is_power_of_two(divisor);
  auto run = [&](auto by_inverse) {
    const Floats count = Floats{} + (by_inverse ? 1.0f / divisor : divisor);
    for (int64_t q = 0; q < groups; ++q) {
      for_each_column<Floats, Ints, L>(x + q * L * plane, plane, [&](const Floats& column, int64_t k) { pixels[k] = column; });
      for (int64_t oh = 0; oh < Ho; ++oh)
        for (int64_t ow = 0; ow < Wo; ++ow) {
          const Floats* corner = pixels + 2 * oh * W + 2 * ow;
          const Floats sum = (((Floats{} + corner[0]) + corner[1]) + corner[W]) + corner[W + 1];
          means[oh * Wo + ow] = by_inverse ? sum * count : sum / count;
        }
      store_planes<Floats, Ints, L>([&](int64_t t) { return means[t]; }, outputs, y + q * L * outputs);
    }
  };
  power_of_two ? run(std::true_type{}) : run(std::false_type{});
}

// Its gradient, likewise: L planes of dy transposed into output-major vectors, each output's
// share 0 + dy / divisor (as the plane kernel: -0 becomes +0), and each pixel of dx, L planes at
// a time, its window's share (0 in an odd last row or column that no window covers), transposed
// back. Every pixel of dx is written once.
template <typename Floats, typename Ints, int L>
void avg_unpool_2x2_groups(const float* dy, int64_t groups, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                           float divisor, float* dx) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats));
  const int64_t plane = H * W, outputs = Ho * Wo;
  int32_t window_of[kShortPoolPlane];  // pixel k's output, or -1 outside every window
  for (int64_t k = 0; k < plane; ++k) {
    const int64_t h = k / W, w = k % W;
    window_of[k] = h < 2 * Ho && w < 2 * Wo ? static_cast<int32_t>(h / 2 * Wo + w / 2) : -1;
  }
  Floats shares[kShortPoolPlane / 4];
  const bool power_of_two = is_power_of_two(divisor);  // (as the forward)
  auto run = [&](auto by_inverse) {
    const Floats count = Floats{} + (by_inverse ? 1.0f / divisor : divisor);
    for (int64_t q = 0; q < groups; ++q) {
      for_each_column<Floats, Ints, L>(dy + q * L * outputs, outputs, [&](const Floats& column, int64_t t) {
        shares[t] = Floats{} + (by_inverse ? column * count : column / count);
      });
      store_planes<Floats, Ints, L>([&](int64_t k) { return window_of[k] >= 0 ? shares[window_of[k]] : Floats{}; },
                                    plane, dx + q * L * plane);
    }
  };
  power_of_two ? run(std::true_type{}) : run(std::false_type{});
}

// 2x2 average pooling with stride 2 (pool2d.cpp's tiled_2x2) along the output rows, no
// transposes: output row oh of a plane from input rows 2oh and 2oh + 1, L outputs at a time.
// The 2L pixels of each input row under them are two vectors, split into even and odd pixels
// within 128-bit blocks (one vshufps each: block j of the split holds pairs 2j, 2j + 1 of the
// first vector, then pairs L/2 + 2j, L/2 + 2j + 1 of the second), each window summed as the plane
// kernel sums it, (((0 + x00) + x01) + x10) + x11, divided, and the pairs put in order by one
// permute of 64-bit pieces. A vector that runs past its row reads the next row's pixels (or past
// the last plane, only within `readable` floats of x; else the plane kernel's loop does those
// outputs) and stores outputs of the next row, which its own vector overwrites afterwards; the
// last outputs of the `planes` planes are computed one by one. The groups' transposes (above) cost
// 17 8x8 transposes for eight 10x10 planes, their cross-block steps several micro-ops each on
// CPUs with 128-bit vector units (AMD Zen 1).
template <typename Floats, typename Ints, int L>
struct RowPairLanes {
  // lane i of the even (odd) pixels: pixel 2i (2i + 1) of 2L in the split's order
  static Ints split(int odd) {
    Ints idx;
    for (int i = 0; i < L; ++i) {
      const int block = i / 4, k = i % 4;
      idx[i] = (k < 2 ? 0 : L) + 4 * block + 2 * (k % 2) + odd;
    }
    return idx;
  }
  // output o's lane in the split's order
  static Ints order() {
    Ints idx;
    for (int o = 0; o < L; ++o) {
      const int half = o < L / 2 ? 0 : 1, p = o - half * (L / 2);
      idx[o] = 4 * (p / 2) + 2 * half + p % 2;
    }
    return idx;
  }
  // lanes 2i and 2i + 1 of the first (second) half: lane i (L/2 + i) of a vector
  static Ints twice(int second) {
    Ints idx;
    for (int i = 0; i < L; ++i) idx[i] = second * (L / 2) + i / 2;
    return idx;
  }
};

template <typename Floats, typename Ints, int L>
void avg_pool_2x2_rows(const float* x, int64_t planes, int64_t H, int64_t W, int64_t Ho, int64_t Wo,
                       float divisor, int64_t readable, float* y) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats) && L % 4 == 0);
  using Lanes = RowPairLanes<Floats, Ints, L>;
  const Ints even = Lanes::split(0), odd = Lanes::split(1), order = Lanes::order();
  const int64_t outputs = planes * Ho * Wo;
  auto run = [&](auto by_inverse) {
    const Floats count = Floats{} + (by_inverse ? 1.0f / divisor : divisor);
    auto window_sums = [&](const float* top, const float* bottom) {
      Floats t0, t1, b0, b1;
      __builtin_memcpy(&t0, top, sizeof t0);
      __builtin_memcpy(&t1, top + L, sizeof t1);
      __builtin_memcpy(&b0, bottom, sizeof b0);
      __builtin_memcpy(&b1, bottom + L, sizeof b1);
      const Floats sum = (((Floats{} + __builtin_shuffle(t0, t1, even)) + __builtin_shuffle(t0, t1, odd)) +
                          __builtin_shuffle(b0, b1, even)) + __builtin_shuffle(b0, b1, odd);
      return __builtin_shuffle(by_inverse ? sum * count : sum / count, order);
    };
    // The first planes, whose every vector reads inside x and writes inside y, without a check a
    // vector (a row of at most L outputs, one vector without a loop: on LeNet's 10x10 planes on a
    // Zen 3, 1.9x faster alone and 1.3x in the extension, where the checks and the loop over a
    // row's one vector held up every row). (No more than `planes`: y holds that many.)
    const int64_t last = (Wo - 1) / L * L;  // a row's last vector's first output
    const int64_t unchecked = std::min(within(readable, (2 * Ho - 1) * W + 2 * last + 2 * L, H * W),
                                       within(outputs, (Ho - 1) * Wo + last + L, Ho * Wo));
    auto unchecked_planes = [&](auto one_vector) {
      for (int64_t p = 0; p < unchecked; ++p)
        for (int64_t oh = 0; oh < Ho; ++oh) {
          const float* top = x + p * H * W + 2 * oh * W;
          float* row = y + (p * Ho + oh) * Wo;
          for (int64_t ow = 0; ow < (one_vector ? 1 : Wo); ow += L) {
            const Floats means = window_sums(top + 2 * ow, top + W + 2 * ow);
            __builtin_memcpy(row + ow, &means, sizeof means);
          }
        }
    };
    Wo <= L ? unchecked_planes(std::true_type{}) : unchecked_planes(std::false_type{});
    for (int64_t p = unchecked; p < planes; ++p)
      for (int64_t oh = 0; oh < Ho; ++oh) {
        const float* top = x + p * H * W + 2 * oh * W;
        const int64_t first = (p * Ho + oh) * Wo;  // the row's first output
        for (int64_t ow = 0; ow < Wo; ow += L) {
          const bool in_x = (top - x) + W + 2 * ow + 2 * L <= readable;
          if (in_x && first + ow + L <= outputs) {
            const Floats means = window_sums(top + 2 * ow, top + W + 2 * ow);
            __builtin_memcpy(y + first + ow, &means, sizeof means);
            continue;
          }
          // the planes' last outputs (or pixels at the end of x): the plane kernel's loop
          for (int64_t o = ow; o < Wo; ++o) {
            const float* t = top + 2 * o;
            const float sum = (((0.0f + t[0]) + t[1]) + t[W]) + t[W + 1];
            y[first + o] = by_inverse ? sum * (1.0f / divisor) : sum / divisor;
          }
          break;
        }
      }
  };
  is_power_of_two(divisor) ? run(std::true_type{}) : run(std::false_type{});
}

// Its gradient where the windows tile the plane exactly (H = 2 Ho, W = 2 Wo): L outputs' shares
// 0 + dy / divisor, each twice in a row (two permutes), stored into both input rows. A row's last
// vectors run past it: the top row's into the bottom row, written after it, the bottom row's
// into the next top row, likewise; the planes' last pixels are written one by one, and dy is read
// only within `readable` floats.
template <typename Floats, typename Ints, int L>
void avg_unpool_2x2_rows(const float* dy, int64_t planes, int64_t Ho, int64_t Wo, float divisor, int64_t readable,
                         float* dx) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats));
  using Lanes = RowPairLanes<Floats, Ints, L>;
  const Ints first_half = Lanes::twice(0), second_half = Lanes::twice(1);
  const int64_t W = 2 * Wo, pixels = planes * 4 * Ho * Wo;
  auto run = [&](auto by_inverse) {
    const Floats count = Floats{} + (by_inverse ? 1.0f / divisor : divisor);
    const float scalar_count = by_inverse ? 1.0f / divisor : divisor;
    auto share = [&](float g) { return 0.0f + (by_inverse ? g * scalar_count : g / scalar_count); };
    // shares of the L outputs at g, each twice in a row, into 2L pixels of a row at out
    auto unpool = [&](const float* g, float* out) {
      Floats v;
      __builtin_memcpy(&v, g, sizeof v);
      const Floats shares = Floats{} + (by_inverse ? v * count : v / count);
      const Floats lo = __builtin_shuffle(shares, first_half), hi = __builtin_shuffle(shares, second_half);
      __builtin_memcpy(out, &lo, sizeof lo);
      __builtin_memcpy(out + L, &hi, sizeof hi);
    };
    // The first row pairs, whose every vector reads inside dy and writes inside dx, without a
    // check a vector (as the forward). Rows in order: a vector that runs past its row is
    // overwritten by the next row's.
    const int64_t rows = planes * Ho, last = (Wo - 1) / L * L;
    const int64_t unchecked = std::min({rows, within(readable, last + L, Wo), within(pixels, W + 2 * last + 2 * L, 2 * W)});
    auto unchecked_rows = [&](auto one_vector) {
      for (int64_t r = 0; r < unchecked; ++r)
        for (int row = 0; row < 2; ++row)
          for (int64_t ow = 0; ow < (one_vector ? 1 : Wo); ow += L) unpool(dy + r * Wo + ow, dx + (2 * r + row) * W + 2 * ow);
    };
    Wo <= L ? unchecked_rows(std::true_type{}) : unchecked_rows(std::false_type{});
    for (int64_t r = unchecked; r < rows; ++r) {  // row pairs: planes' rows follow each other
      const float* g = dy + r * Wo;
      float* top = dx + 2 * r * W;
      for (int row = 0; row < 2; ++row) {
        float* out = top + row * W;
        for (int64_t ow = 0; ow < Wo; ow += L) {
          if ((g - dy) + ow + L <= readable && (out - dx) + 2 * ow + 2 * L <= pixels) {
            unpool(g + ow, out + 2 * ow);
            continue;
          }
          for (int64_t o = ow; o < Wo; ++o) out[2 * o] = out[2 * o + 1] = share(g[o]);
          break;
        }
      }
    }
  };
  is_power_of_two(divisor) ? run(std::true_type{}) : run(std::false_type{});
}

// Max pooling's gradient where 2x2 windows with stride 2 tile the plane exactly (H = 2 Ho,
// W = 2 Wo), along the output rows: per vector of L outputs, each gradient goes to the pixel its
// index points at among its window's four and +0 to the other three (bits masked, as pool2d.cpp's
// max_unpool_plane_2x2: the same bits), each pixel written once:
//
//   offset_i = indices[o_i] - (2 oh W + 2 ow_i)        in {0, 1, W, W + 1} for a pixel of its window
//   top row:    pixel 2 ow_i <- dy_i if offset_i == 0,  pixel 2 ow_i + 1 <- dy_i if offset_i == 1
//   bottom row: pixel 2 ow_i <- dy_i if offset_i == W,  pixel 2 ow_i + 1 <- dy_i if offset_i == W + 1
//
// (a row's pairs interleaved into two vectors). The offsets are worked out in 32 bits from the
// indices' low halves; an index whose high half is not 0 is none of its window's pixels (planes
// of fewer than 2^31 pixels; GCC's 64-bit compares on AVX2 came out as scalar code). Rows of at
// least L outputs take vectors inside the row, the last one overlapping the one before where L
// does not divide Wo (the same values written twice; vectors from a row's last to its first ran
// at half the speed on 56-output rows, the reads no longer in order). A shorter row is one vector
// that runs past it (its lanes from Wo on unchecked): the top row's pixels into the bottom row,
// stored after it, the bottom row's into the next pair's top row, likewise; there the last row
// pairs, whose vector would read past `readable` values of dy and indices or write past the
// `planes` planes of dx, go one output at a time. Returns false when an index is none of its
// window's pixels (the caller then scatters the planes in general, as torch would).
template <typename Floats, typename Ints, int L>
bool max_unpool_2x2_rows(const float* dy, const int64_t* indices, int64_t planes, int64_t Ho, int64_t Wo,
                         int64_t readable, float* dx) {
  static_assert(sizeof(Floats) == L * sizeof(float) && sizeof(Ints) == sizeof(Floats) && L % 2 == 0);
  Ints low, high, interleave_low, interleave_high, lane_pixel, lane;
  for (int j = 0; j < L; ++j) {
    low[j] = 2 * j;  // the halves of L int64 read as 2L int32 (little-endian)
    high[j] = 2 * j + 1;
    interleave_low[j] = (j % 2 ? L : 0) + j / 2;  // a0 b0 a1 b1 ... from vectors a, b
    interleave_high[j] = interleave_low[j] + L / 2;
    lane_pixel[j] = 2 * j;  // lane j's window starts 2j pixels after the vector's first
    lane[j] = j;
  }
  const int64_t W = 2 * Wo, rows = planes * Ho;
  const int32_t bottom = static_cast<int32_t>(W);
  Ints strays = Ints{};
  // the L outputs at o, windows from `corner` (lane 0's top left pixel within its plane) on, the
  // `checked` lanes' indices checked; their pixels into the top row at top and the bottom row after it
  auto unpool = [&](int64_t o, int64_t corner, Ints checked, float* top) {
    Floats v;
    Ints first_half, second_half;
    __builtin_memcpy(&v, dy + o, sizeof v);
    __builtin_memcpy(&first_half, indices + o, sizeof first_half);
    __builtin_memcpy(&second_half, indices + o + L / 2, sizeof second_half);
    const Ints at = __builtin_shuffle(first_half, second_half, low) - static_cast<int32_t>(corner) - lane_pixel;
    const Ints bits = (Ints)v, pick[2][2] = {{at == 0, at == 1}, {at == bottom, at == bottom + 1}};
    const Ints in_window = pick[0][0] | pick[0][1] | pick[1][0] | pick[1][1];
    strays |= ((__builtin_shuffle(first_half, second_half, high) != 0) | ~in_window) & checked;
    for (int row = 0; row < 2; ++row) {
      const Ints left = bits & pick[row][0], right = bits & pick[row][1];
      const Floats first = (Floats)__builtin_shuffle(left, right, interleave_low);
      const Floats second = (Floats)__builtin_shuffle(left, right, interleave_high);
      __builtin_memcpy(top + row * W, &first, sizeof first);
      __builtin_memcpy(top + row * W + L, &second, sizeof second);
    }
  };
  int64_t r = 0, oh = 0;  // oh: row r's row within its plane
  auto next_row = [&] { ++r, oh = oh + 1 == Ho ? 0 : oh + 1; };
  if (Wo >= L) {
    for (; r < rows; next_row())
      for (int64_t ow = 0; ow < Wo; ow += L) {
        const int64_t start = std::min(ow, Wo - L);
        unpool(r * Wo + start, 2 * oh * W + 2 * start, Ints{} - 1, dx + 2 * r * W + 2 * start);
      }
  } else {
    const int64_t unchecked = std::min(within(readable, L, Wo), within(planes * 4 * Ho * Wo, W + 2 * L, 2 * W));
    for (const Ints in_row = lane < static_cast<int32_t>(Wo); r < unchecked; next_row())
      unpool(r * Wo, 2 * oh * W, in_row, dx + 2 * r * W);
    for (; r < rows; next_row())
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const int64_t o = r * Wo + ow, offset = indices[o] - (2 * oh * W + 2 * ow);
        float* pair = dx + 2 * r * W + 2 * ow;
        pair[0] = offset == 0 ? dy[o] : 0.0f;
        pair[1] = offset == 1 ? dy[o] : 0.0f;
        pair[W] = offset == W ? dy[o] : 0.0f;
        pair[W + 1] = offset == W + 1 ? dy[o] : 0.0f;
        if (offset != 0 && offset != 1 && offset != W && offset != W + 1) return false;
      }
  }
  for (int j = 0; j < L; ++j)
    if (strays[j] != 0) return false;
  return true;
}

// Global average pooling in float32 of one plane (of more than kGlobalSumBlock values, or one of
// the last planes the kernel above leaves), along the plane: 16 partial sums (value k into sum k mod 16, here 16 / L registers of L lanes), in blocks
// of kGlobalSumBlock values whose partial sums are added into 16 totals in order, the totals
// then added pairwise (lane i += lane i + s, s = 8, 4, 2, 1), as the scalar kernel does. One
// running sum over a 512x512 plane strayed from the mean by more than 1e-5, and lanes over
// planes left a batch of a few planes on one lane's latency. Returns the plane's sum.
template <typename Floats, int L>
float global_sum_along_plane(const float* x, int64_t plane) {
  static_assert(sizeof(Floats) == L * sizeof(float) && 16 % L == 0 && kGlobalSumBlock % 16 == 0);
  constexpr int kRegisters = 16 / L;
  Floats total[kRegisters] = {};
  for (int64_t k0 = 0; k0 < plane; k0 += kGlobalSumBlock) {
    const int64_t end = k0 + kGlobalSumBlock < plane ? k0 + kGlobalSumBlock : plane;
    Floats part[kRegisters] = {};
    int64_t k = k0;
    for (; k + 16 <= end; k += 16) {
      __builtin_prefetch(x + k + 512);  // 2 KiB ahead (the hardware's prefetch alone left it at 2/3 of torch's speed)
#pragma GCC unroll 2
      for (int r = 0; r < kRegisters; ++r) {
        Floats v;
        __builtin_memcpy(&v, x + k + r * L, sizeof v);
        part[r] += v;
      }
    }
    float lanes[16];
    __builtin_memcpy(lanes, part, sizeof lanes);
    for (int64_t t = 0; k + t < end; ++t) lanes[t] += x[k + t];  // the block's last < 16 values
    __builtin_memcpy(part, lanes, sizeof lanes);
#pragma GCC unroll 2
    for (int r = 0; r < kRegisters; ++r) total[r] += part[r];
  }
  float lanes[16];
  __builtin_memcpy(lanes, total, sizeof lanes);
  for (int step = 8; step >= 1; step /= 2)
    for (int i = 0; i < step; ++i) lanes[i] += lanes[i + step];
  return lanes[0];
}

// Every kernel above with L float lanes (16 on AVX-512, 8 on AVX2; the float64 kernel with L / 2),
// compiled for the ISA of the file that includes this one, as pool2d.cpp takes them (simd.h),
// named `isa`. The AVX2 file also builds the 16-lane set: the AVX-512 kernels' source run on a CPU
// without AVX-512 (CUCONV_CPU_POOL_LANES=16, for the tests; GCC splits each vector in two).
template <int L>
struct PoolLanes;
template <>
struct PoolLanes<16> {
  using Floats = PoolFloats;
  using Ints = PoolInts;
  using Longs = PoolLongs;
  using Doubles = PoolDoubles;
  using DoubleLanes = PoolLongs8;
};
template <>
struct PoolLanes<8> {
  using Floats = PoolFloats8;
  using Ints = PoolInts8;
  using Longs = PoolLongs8;
  using Doubles = PoolDoubles4;
  using DoubleLanes = PoolLongs4;
};

template <int L>
PoolVectorKernels pool_vector_kernels_with_lanes(const char* isa) {
  using F = typename PoolLanes<L>::Floats;
  using I = typename PoolLanes<L>::Ints;
  using N = typename PoolLanes<L>::Longs;
  PoolVectorKernels k;
  k.isa = isa;
  k.nhwc = {&max_pool_pixel_nhwc<F, I, N, L, float>, nullptr, L};
  k.nhwc_bf16 = {&max_pool_pixel_nhwc<F, I, N, L, uint16_t>, nullptr, L};
  k.nhwc_half = {nullptr, &avg_pool_pixel_nhwc<F, I, L, Float16Bits>, L};
  k.global_unpool = {&global_unpool_groups<F, I, L>, L};
  k.global_unpool_quads = {&global_unpool_quads, 4};
  k.global_pool = &global_pool_groups<F, I, L, float>;
  k.global_pool_quads = &global_pool_groups<PoolFloats4, PoolInts4, 4, float>;
  k.global_pool_double =
      &global_pool_groups<typename PoolLanes<L>::Doubles, typename PoolLanes<L>::DoubleLanes, L / 2, double>;
  k.global_pool_bf16 = &global_pool_groups<F, I, L, uint16_t>;
  k.global_pool_half = &global_pool_groups<F, I, L, Float16Bits>;  // (pool2d.cpp keeps float16's where F16C is)
  k.global_max = &global_max_groups<F, I, N, L>;
  k.global_sum_along_plane = &global_sum_along_plane<F, L>;
  k.avg_2x2 = {&avg_pool_2x2_groups<F, I, L>, &avg_unpool_2x2_groups<F, I, L>, L};
  k.avg_2x2_rows = {&avg_pool_2x2_rows<F, I, L>, &avg_unpool_2x2_rows<F, I, L>};
  k.max_unpool_2x2_rows = &max_unpool_2x2_rows<F, I, L>;
  return k;
}
