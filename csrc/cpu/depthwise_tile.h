// The row kernels of the depthwise convolution (depthwise.cpp), written once for every vector
// ISA: included by simd_avx512.cpp and simd_avx2.cpp after their `#pragma GCC target`, and by
// depthwise.cpp for the portable build (16-byte vectors: CPUs without AVX2, and
// CUCONV_CPU_ISA=generic), inside their anonymous namespaces. As gemm_tile.h: no
// #include here; DepthwiseTaps (simd.h) must be declared before.
//
// Isa provides: T (float or double), V (a vector of kLanes of them), kRegisters, zero(), load(p),
// store(p, v), fma(a, b, c) = a*b + c, add(a, b), and load_first(p, n) / store_first(p, v, n)
// for the first n < kLanes lanes (the channels past the last whole vector); for bfloat16 rows
// also Floats / Ints / Shorts (bfloat16_vector.h, which must be included before).
//
// The rows (source, output, dy) are of DepthwiseIsa::S: T, or uint16_t for bfloat16's bits,
// widened to floats as they are loaded and rounded as they are stored (channels_last bfloat16
// layers read and write their tensors in place, half the bytes of float copies); the weights,
// bias and sums are T.
//
// Channels are innermost (NHWC rows, `source_stride` elements from pixel to pixel), so every
// operation is on whole vectors of channels and a depthwise tap is one vector FMA. Per row:
//
//   forward-type (forward pass, and the input gradient in gather form):
//     out[u*out_step + c] = bias[c] + sum_k w_k[c] * src_k[(u*step + offset_k)*stride + c]
//     over the taps k whose column u*step + offset_k lies in [0, source_width)
//   weight-type (weight gradient):
//     sums_k[c] += sum_u dy[u*dy_step + c] * src_k[(u*step + offset_k)*stride + c]   (same taps)
//
// Register tiles: forward, 4 output pixels x up to 4 channel vectors (each tap's weight vectors
// loaded once for the 4 pixels; where three taps read three adjacent source pixels and adjacent
// outputs read adjacent pixels, each source pixel is loaded once for all three taps: 3 weight and
// 6 source loads for 12 FMAs a vector, where one tap at a time takes 3 and 12); weight, up to 6
// taps x 4 channel vectors (AVX-512) or 8 taps x 1-2 (each dy vector loaded once for the taps).
// The output pixels whose every tap is in bounds (the row's interior, DepthwiseTaps::interior)
// run these tiles without bounds checks; the few at the row's ends run one pixel at a time,
// skipping the taps that fall in the padding.

// The ISA with the rows' element type S.
template <class Isa, typename Rows>
struct DepthwiseIsa : Isa {
  using S = Rows;
};
template <class Isa>
using DepthwiseRow = DepthwiseTaps<typename Isa::T, typename Isa::S>;

// A whole vector of channels, or the first `lanes` of one, of T or of bfloat16 bits.
template <class Isa, bool kWhole, typename E>
inline typename Isa::V depthwise_load(const E* p, int64_t lanes) {
  if constexpr (std::is_same_v<E, uint16_t>) {
    typename Isa::Shorts halves{};
    __builtin_memcpy(&halves, p, (kWhole ? Isa::kLanes : lanes) * sizeof(uint16_t));
    return (typename Isa::V)widen_bfloat16<Isa>(halves);
  } else if constexpr (kWhole) {
    return Isa::load(p);
  } else {
    return Isa::load_first(p, lanes);
  }
}
template <class Isa, bool kWhole, typename E>
inline void depthwise_store(E* p, typename Isa::V v, int64_t lanes) {
  if constexpr (std::is_same_v<E, uint16_t>) {
    const typename Isa::Shorts halves = round_to_bfloat16<Isa>((typename Isa::Floats)v);
    __builtin_memcpy(p, &halves, (kWhole ? Isa::kLanes : lanes) * sizeof(uint16_t));
  } else if constexpr (kWhole) {
    Isa::store(p, v);
  } else {
    Isa::store_first(p, v, lanes);
  }
}

// Whether the ISA writes whole vectors past the caches (Isa::stream: AVX2's kernels; AVX-512's
// lost where the output fitted the L3, thirty-sixth session, and have not been measured past it).
template <class Isa, typename = void>
struct StreamsVectors : std::false_type {};
template <class Isa>
struct StreamsVectors<Isa, std::void_t<decltype(Isa::stream(std::declval<typename Isa::T*>(),
                                                           std::declval<typename Isa::V>()))>> : std::true_type {};

// Three taps k, k + 1, k + 2 reading adjacent source pixels, adjacent outputs reading adjacent
// pixels (source_step 1: a stride-1 row, or the input gradient's gather form): source pixel m,
// loaded once, serves output q = m - t with tap k + t (up to three FMAs); each accumulator still
// takes its taps in order. `src` is tap k's source for the tile's first output pixel.
template <class Isa, int Q, int NV, bool kWhole>
__attribute__((always_inline)) inline void depthwise_triple_fmas(const DepthwiseRow<Isa>& r, int64_t k,
                                                                 const typename Isa::S* src, int64_t step, int64_t c,
                                                                 int64_t lanes, typename Isa::V (&acc)[Q][NV]) {
  using V = typename Isa::V;
  constexpr int64_t L = Isa::kLanes;
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    V wv[3];
#pragma GCC unroll 3
    for (int t = 0; t < 3; ++t) wv[t] = depthwise_load<Isa, kWhole>(r.weights[k + t] + c + v * L, lanes);
#pragma GCC unroll 10
    for (int m = 0; m < Q + 2; ++m) {
      const V x = depthwise_load<Isa, kWhole>(src + m * step + v * L, lanes);
#pragma GCC unroll 3
      for (int t = 0; t < 3; ++t)
        if (m - t >= 0 && m - t < Q) acc[m - t][v] = Isa::fma(wv[t], x, acc[m - t][v]);
    }
  }
}

// Whether the row's nine taps are three such triples (depthwise_triple_fmas) at stride 1 along
// the row: a stride-1 3x3 row with its three source rows in the image (or a 1x9 row), and the
// input gradient's gather form of such a layer.
template <class Isa>
bool three_triples(const DepthwiseRow<Isa>& r) {
  if (r.taps != 9 || r.source_step != 1) return false;
  for (int64_t k = 0; k < 9; k += 3)
    if (r.origins[k + 1] != r.origins[k] + r.source_stride || r.origins[k + 2] != r.origins[k] + 2 * r.source_stride)
      return false;
  return true;
}

// Forward tile: Q interior output pixels u0 .. u0 + Q - 1 x NV channel vectors from channel c
// (with kWhole false: NV = 1 vector of `lanes` channels). Each tap's NV weight vectors serve
// the Q pixels; the tap's bookkeeping (its source, offset, weights) serves Q x NV FMAs. With
// kThreeTriples (three_triples(r)) the taps are walked as three triples known when compiled:
// no per-tile test of the taps' addresses and no loop over them (3x3 depthwise layers, the
// common case: the forward and the input gradient of stride-1 layers 8-20% faster on a Zen 3,
// benchmarks/NOTES.md, forty-sixth session).
template <class Isa, int Q, int NV, bool kWhole, bool kThreeTriples = false>
inline void depthwise_forward_tile(const DepthwiseRow<Isa>& r, int64_t u0, int64_t c, int64_t lanes,
                                   const typename Isa::T* bias, typename Isa::S* out, int64_t out_step) {
  using V = typename Isa::V;
  constexpr int64_t L = Isa::kLanes;
  V acc[Q][NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) {
    const V b = bias != nullptr ? depthwise_load<Isa, kWhole>(bias + c + v * L, lanes) : Isa::zero();
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) acc[q][v] = b;
  }
  const int64_t step = r.source_step * r.source_stride, first = u0 * step + c;
  if constexpr (kThreeTriples) {
#pragma GCC unroll 3
    for (int k = 0; k < 9; k += 3) depthwise_triple_fmas<Isa, Q, NV, kWhole>(r, k, r.base + (r.origins[k] + first), step, c, lanes, acc);
  } else {
    for (int64_t k = 0; k < r.taps;) {
      const typename Isa::S* src = r.base + (r.origins[k] + first);
      if (k + 3 <= r.taps && r.source_step == 1 && r.origins[k + 1] == r.origins[k] + r.source_stride &&
          r.origins[k + 2] == r.origins[k] + 2 * r.source_stride) {
        // (the addresses are compared, so taps of different rows of a narrow image qualify too)
        depthwise_triple_fmas<Isa, Q, NV, kWhole>(r, k, src, step, c, lanes, acc);
        k += 3;
        continue;
      }
      const typename Isa::T* w = r.weights[k] + c;
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) {
        const V wv = depthwise_load<Isa, kWhole>(w + v * L, lanes);
#pragma GCC unroll 8
        for (int q = 0; q < Q; ++q)
          acc[q][v] = Isa::fma(wv, depthwise_load<Isa, kWhole>(src + q * step + v * L, lanes), acc[q][v]);
      }
      ++k;
    }
  }
  if constexpr (kWhole && StreamsVectors<Isa>::value && std::is_same_v<typename Isa::S, typename Isa::T>) {
    if (r.stream) {  // (a row of an output larger than the cache: depthwise.cpp, streams_rows)
#pragma GCC unroll 8
      for (int q = 0; q < Q; ++q)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) Isa::stream(out + (u0 + q) * out_step + c + v * L, acc[q][v]);
      return;
    }
  }
#pragma GCC unroll 8
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) depthwise_store<Isa, kWhole>(out + (u0 + q) * out_step + c + v * L, acc[q][v], lanes);
}

// One output pixel at a row's end, NV channel vectors: the taps in the padding are skipped.
template <class Isa, int NV, bool kWhole>
inline void depthwise_forward_edge(const DepthwiseRow<Isa>& r, int64_t u, int64_t c, int64_t lanes,
                                   const typename Isa::T* bias, typename Isa::S* out, int64_t out_step) {
  using V = typename Isa::V;
  constexpr int64_t L = Isa::kLanes;
  V acc[NV];
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) acc[v] = bias != nullptr ? depthwise_load<Isa, kWhole>(bias + c + v * L, lanes) : Isa::zero();
  for (int64_t k = 0; k < r.taps; ++k) {
    const int64_t column = u * r.source_step + r.offsets[k];
    if (column < 0 || column >= r.source_width) continue;
    const typename Isa::S* src = r.base + (r.origins[k] + u * r.source_step * r.source_stride + c);
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v)
      acc[v] = Isa::fma(depthwise_load<Isa, kWhole>(r.weights[k] + c + v * L, lanes),
                        depthwise_load<Isa, kWhole>(src + v * L, lanes), acc[v]);
  }
#pragma GCC unroll 4
  for (int v = 0; v < NV; ++v) depthwise_store<Isa, kWhole>(out + u * out_step + c + v * L, acc[v], lanes);
}

// Every output pixel of the row for `groups` groups of NV channel vectors from channel c (NV * L
// channels apart): the ends one pixel at a time, the interior in tiles of 4 pixels (then 2, 1),
// each pixel or tile for every group before the next (a pixel's channels are one run of memory,
// read in order: group by group along the row, wide pixels were read with a stride the hardware
// prefetchers dropped at each page).
template <class Isa, int NV, bool kWhole, bool kThreeTriples = false>
void depthwise_forward_channels(const DepthwiseRow<Isa>& r, int64_t c, int64_t groups, int64_t lanes,
                                const typename Isa::T* bias, typename Isa::S* out, int64_t out_step) {
  constexpr int64_t G = NV * Isa::kLanes;
  const int64_t end = c + groups * G;
  const OutputRange interior = r.interior;
  auto edge = [&](int64_t u) {
    for (int64_t cg = c; cg < end; cg += G) depthwise_forward_edge<Isa, NV, kWhole>(r, u, cg, lanes, bias, out, out_step);
  };
  for (int64_t u = 0; u < interior.begin; ++u) edge(u);
  int64_t u = interior.begin;
  for (; u + 4 <= interior.end; u += 4)
    for (int64_t cg = c; cg < end; cg += G)
      depthwise_forward_tile<Isa, 4, NV, kWhole, kThreeTriples>(r, u, cg, lanes, bias, out, out_step);
  if (u + 2 <= interior.end) {
    for (int64_t cg = c; cg < end; cg += G)
      depthwise_forward_tile<Isa, 2, NV, kWhole, kThreeTriples>(r, u, cg, lanes, bias, out, out_step);
    u += 2;
  }
  if (u < interior.end)
    for (int64_t cg = c; cg < end; cg += G)
      depthwise_forward_tile<Isa, 1, NV, kWhole, kThreeTriples>(r, u, cg, lanes, bias, out, out_step);
  for (u = interior.end; u < r.count; ++u) edge(u);
}

// The row's channels: groups of kMaxVectors whole vectors (4 x 4 accumulators with AVX-512's 32
// registers, 4 x 2 with 16), then the 1-3 whole vectors left, then the last part-filled vector.
template <class Isa>
void depthwise_forward_row(const DepthwiseRow<Isa>& r, const typename Isa::T* bias,
                           typename Isa::S* out, int64_t out_step) {
  constexpr int64_t L = Isa::kLanes, kMaxVectors = Isa::kRegisters >= 32 ? 4 : 2;
  const int64_t groups = r.channels / (kMaxVectors * L);
  if (groups > 0) {
    if (three_triples<Isa>(r))
      depthwise_forward_channels<Isa, kMaxVectors, true, true>(r, 0, groups, L, bias, out, out_step);
    else
      depthwise_forward_channels<Isa, kMaxVectors, true>(r, 0, groups, L, bias, out, out_step);
  }
  int64_t c = groups * kMaxVectors * L;
  switch ((r.channels - c) / L) {
    case 3: depthwise_forward_channels<Isa, 3, true>(r, c, 1, L, bias, out, out_step); break;
    case 2: depthwise_forward_channels<Isa, 2, true>(r, c, 1, L, bias, out, out_step); break;
    case 1: depthwise_forward_channels<Isa, 1, true>(r, c, 1, L, bias, out, out_step); break;
    default: break;
  }
  c += (r.channels - c) / L * L;
  if (c < r.channels) depthwise_forward_channels<Isa, 1, false>(r, c, 1, r.channels - c, bias, out, out_step);
}

// Weight tile: taps k0 .. k0 + K - 1 x NV channel vectors from channel c, summed over the row
// in order (the row's ends with their bounds checked), then added into the taps' sums. Each dy
// load serves K taps.
template <class Isa, int K, int NV, bool kWhole>
void depthwise_weight_tile(const DepthwiseRow<Isa>& r, int64_t k0, int64_t c, int64_t lanes,
                           const typename Isa::S* dy, int64_t dy_step) {
  using V = typename Isa::V;
  using T = typename Isa::T;
  using S = typename Isa::S;
  constexpr int64_t L = Isa::kLanes;
  const OutputRange interior = r.interior;
  V acc[K][NV];
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[k][v] = Isa::zero();
  auto edge = [&](int64_t u) {
    V d[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) d[v] = depthwise_load<Isa, kWhole>(dy + u * dy_step + c + v * L, lanes);
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k) {
      const int64_t column = u * r.source_step + r.offsets[k0 + k];
      if (column < 0 || column >= r.source_width) continue;
      const S* src = r.base + (r.origins[k0 + k] + u * r.source_step * r.source_stride + c);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[k][v] = Isa::fma(d[v], depthwise_load<Isa, kWhole>(src + v * L, lanes), acc[k][v]);
    }
  };
  for (int64_t u = 0; u < interior.begin; ++u) edge(u);
  if (interior.begin < interior.end) {
    const int64_t step = r.source_step * r.source_stride;
    const S* src[K];  // each tap's source at the first interior pixel
#pragma GCC unroll 8
    for (int k = 0; k < K; ++k)
      src[k] = r.base + (r.origins[k0 + k] + interior.begin * step + c);
    const S* g = dy + interior.begin * dy_step + c;
    for (int64_t i = 0; i < interior.end - interior.begin; ++i) {
      V d[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) d[v] = depthwise_load<Isa, kWhole>(g + i * dy_step + v * L, lanes);
#pragma GCC unroll 8
      for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v)
          acc[k][v] = Isa::fma(d[v], depthwise_load<Isa, kWhole>(src[k] + i * step + v * L, lanes), acc[k][v]);
    }
  }
  for (int64_t u = interior.end; u < r.count; ++u) edge(u);
#pragma GCC unroll 8
  for (int k = 0; k < K; ++k)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      T* sum = r.sums[k0 + k] + c + v * L;
      depthwise_store<Isa, kWhole>(sum, Isa::add(depthwise_load<Isa, kWhole>(sum, lanes), acc[k][v]), lanes);
    }
}

// The row's taps for NV channel vectors from channel c, in chunks of at most 8 taps (6 for 4
// vectors: 24 accumulators) of equal size (9 taps: 4 + 5, rather than 8 + a lone tap that would
// load dy for one FMA).
template <class Isa, int NV, bool kWhole>
void depthwise_weight_channels(const DepthwiseRow<Isa>& r, int64_t c, int64_t lanes,
                               const typename Isa::S* dy, int64_t dy_step) {
  constexpr int64_t kMaxTaps = NV >= 4 ? 6 : 8;
  const int64_t chunks = (r.taps + kMaxTaps - 1) / kMaxTaps;
  for (int64_t i = 0, k0 = 0; i < chunks; ++i) {
    const int64_t k1 = r.taps * (i + 1) / chunks;
    switch (k1 - k0) {  // a tile of the chunk's size: its accumulators stay in registers
      case 8: if constexpr (kMaxTaps >= 8) depthwise_weight_tile<Isa, 8, NV, kWhole>(r, k0, c, lanes, dy, dy_step); break;
      case 7: if constexpr (kMaxTaps >= 7) depthwise_weight_tile<Isa, 7, NV, kWhole>(r, k0, c, lanes, dy, dy_step); break;
      case 6: depthwise_weight_tile<Isa, 6, NV, kWhole>(r, k0, c, lanes, dy, dy_step); break;
      case 5: depthwise_weight_tile<Isa, 5, NV, kWhole>(r, k0, c, lanes, dy, dy_step); break;
      case 4: depthwise_weight_tile<Isa, 4, NV, kWhole>(r, k0, c, lanes, dy, dy_step); break;
      case 3: depthwise_weight_tile<Isa, 3, NV, kWhole>(r, k0, c, lanes, dy, dy_step); break;
      case 2: depthwise_weight_tile<Isa, 2, NV, kWhole>(r, k0, c, lanes, dy, dy_step); break;
      case 1: depthwise_weight_tile<Isa, 1, NV, kWhole>(r, k0, c, lanes, dy, dy_step); break;
      default: break;
    }
    k0 = k1;
  }
}

// The row's channels: with AVX-512's 32 registers four whole vectors at a time (6 x 4
// accumulators, each pixel's 256 bytes of channels read together), then pairs; single vectors
// (all of them with 16 registers); then the last part-filled one.
template <class Isa>
void depthwise_weight_row(const DepthwiseRow<Isa>& r, const typename Isa::S* dy, int64_t dy_step) {
  constexpr int64_t L = Isa::kLanes;
  int64_t c = 0;
  if constexpr (Isa::kRegisters >= 32)
    for (; c + 4 * L <= r.channels; c += 4 * L) depthwise_weight_channels<Isa, 4, true>(r, c, L, dy, dy_step);
  if constexpr (Isa::kRegisters >= 32)
    for (; c + 2 * L <= r.channels; c += 2 * L) depthwise_weight_channels<Isa, 2, true>(r, c, L, dy, dy_step);
  for (; c + L <= r.channels; c += L) depthwise_weight_channels<Isa, 1, true>(r, c, L, dy, dy_step);
  if (c < r.channels) depthwise_weight_channels<Isa, 1, false>(r, c, r.channels - c, dy, dy_step);
}

// This ISA's row kernels for T = Isa::T and rows of S.
template <class Isa, typename S = typename Isa::T>
DepthwiseKernels<typename Isa::T, S> depthwise_kernels_of(const char* isa) {
  using RowsIsa = DepthwiseIsa<Isa, S>;
  return {&depthwise_forward_row<RowsIsa>, &depthwise_weight_row<RowsIsa>, Isa::kLanes, isa,
          StreamsVectors<Isa>::value && std::is_same_v<S, typename Isa::T>};
}
