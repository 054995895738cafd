// The register tile of cuconv's GEMM (gemm.h), written once for every vector ISA.
//
// Included by simd_avx512.cpp and simd_avx2.cpp *after* their `#pragma GCC target`,
// so each instantiation is compiled for that ISA. It must not include any header
// itself: an inline library function compiled here with AVX-512 could be the copy
// the linker keeps for the whole program (and crash on a CPU without AVX-512).
//
// Isa provides: T (element), V (vector), kLanes, zero(), load(p), store(p, v),
// set1(x), fma(a, b, c) = a*b + c, add(a, b).
//
// Tile: MR rows x NV vectors (NR = NV * kLanes columns). Per k, NV loads of B and MR
// broadcasts of A feed MR*NV independent FMAs; MR*NV + NV + 1 vector registers must
// fit the ISA's register file (32 for AVX-512, 16 for AVX2).

// The three tiles below share their accumulators' start and end: MR x NV vectors, zeroed, and
// written to C (row stride ldc), added to it when accumulating, else plus a bias per row
// (row_bias[r]) or per column (column_bias[j]) where one is given.
template <class Isa, int MR, int NV>
__attribute__((always_inline)) inline void zero_tile(typename Isa::V (&acc)[MR][NV]) {
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[r][v] = Isa::zero();
}

template <class Isa, int MR, int NV>
__attribute__((always_inline)) inline void store_tile(typename Isa::V (&acc)[MR][NV], typename Isa::T* c, int64_t ldc,
                                                      bool accumulate, const typename Isa::T* row_bias,
                                                      const typename Isa::T* column_bias) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
#pragma GCC unroll 16
  for (int r = 0; r < MR; ++r) {
    typename Isa::T* row = c + r * ldc;
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      V out = acc[r][v];
      if (accumulate) {
        out = Isa::add(Isa::load(row + v * L), out);
      } else if (row_bias != nullptr) {
        out = Isa::add(out, Isa::set1(row_bias[r]));
      } else if (column_bias != nullptr) {
        out = Isa::add(out, Isa::load(column_bias + v * L));
      }
      Isa::store(row + v * L, out);
    }
  }
}

template <class Isa, int MR, int NV>
void register_tile(int64_t depth, const typename Isa::T* a, const typename Isa::T* b,
                   typename Isa::T* c, int64_t ldc, bool accumulate, const typename Isa::T* bias) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  V acc[MR][NV];
  zero_tile<Isa, MR, NV>(acc);

  for (int64_t k = 0; k < depth; ++k) {
    V bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = Isa::load(b + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const V ar = Isa::set1(a[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Isa::fma(ar, bk[v], acc[r][v]);
    }
    a += MR;
    b += NV * L;
  }

  store_tile<Isa, MR, NV>(acc, c, ldc, accumulate, bias, nullptr);
}

// The indirect form (gemm.h, IndirectTileKernel): A's rows are read through MR pointers per
// tap, straight from the NHWC input, instead of from a packed panel; B as above.
template <class Isa, int MR, int NV>
void indirect_tile(int64_t taps, int64_t channels, const typename Isa::T* const* rows, const typename Isa::T* b,
                   typename Isa::T* c, int64_t ldc, bool accumulate, const typename Isa::T* bias) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  V acc[MR][NV];
  zero_tile<Isa, MR, NV>(acc);

  for (int64_t t = 0; t < taps; ++t, rows += MR) {
    const typename Isa::T* a[MR];
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) a[r] = rows[r];
    for (int64_t k = 0; k < channels; ++k) {
      V bk[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) bk[v] = Isa::load(b + v * L);
#pragma GCC unroll 16
      for (int r = 0; r < MR; ++r) {
        const V ar = Isa::set1(a[r][k]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[r][v] = Isa::fma(ar, bk[v], acc[r][v]);
      }
      b += NV * L;
    }
  }

  store_tile<Isa, MR, NV>(acc, c, ldc, accumulate, nullptr, bias);
}

// B's rows through pointers (gemm.h, RowsBTileKernel): per k, NV loads from row k's pointer
// (an NHWC pixel's channels, read in place) instead of the packed panel; A's MR values of each k
// a_step apart (MR: packed as above; or rows of a matrix read in place).
template <class Isa, int MR, int NV>
void rows_b_tile(int64_t depth, const typename Isa::T* a, int64_t a_step, const typename Isa::T* const* b_rows,
                 int64_t b_offset, typename Isa::T* c, int64_t ldc, bool accumulate) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  V acc[MR][NV];
  zero_tile<Isa, MR, NV>(acc);

  for (int64_t k = 0; k < depth; ++k) {
    const typename Isa::T* b = b_rows[k] + b_offset;
    V bk[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) bk[v] = Isa::load(b + v * L);
#pragma GCC unroll 16
    for (int r = 0; r < MR; ++r) {
      const V ar = Isa::set1(a[r]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[r][v] = Isa::fma(ar, bk[v], acc[r][v]);
    }
    a += a_step;
  }

  store_tile<Isa, MR, NV>(acc, c, ldc, accumulate, nullptr, nullptr);
}
