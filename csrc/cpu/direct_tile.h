// The register tiles of cuconv's direct convolution (direct_conv.h), written once for
// every vector ISA. Included by simd_avx512.cpp and simd_avx2.cpp *after* their
// `#pragma GCC target`; like gemm_tile.h it must not include any header itself.
//
// Isa provides: V (vector of floats), kLanes, Floats / Ints / Shorts (GCC vector types of a
// register's lanes), zero(), load(p), store(p, v), set1(x), fma(a, b, c) = a*b + c, add(a, b),
// load_first(p, n). DirectTiles (direct_conv.h) must be declared before.
//
// The direct convolution is a matrix product whose pixel operand is never packed:
// every use of an input pixel is a broadcast, and a broadcast can read from anywhere.
// Vectors run along output channels (NV vectors of kLanes channels: a channel panel).
//
// Forward tile, Q consecutive output pixels of a row x NV channel vectors, over taps [0, depth)
// (a block of the layer's taps: taps and weights point at its first), stored into `tile` or, to
// go on after an earlier block, added to the sums it left there (each block a chain of additions
// of its own, below; direct_conv.cpp's blocks are of 16 to a few hundred taps, as L1 holds them),
// pixel q's sums at tile + q * out_step (a row buffer's NV * kLanes, or an NHWC output's pixel
// stride: the sums stored in place), plus `bias` (NV vectors) where it is not null (the last block):
//   for each tap k:  w = weights[k] (NV vectors)
//                    for q: acc[q][:] += w * x[origin + q*stride + taps[k]]
// Weight tile, T taps x NV channel vectors, summed over the output pixels of a run of rows:
//   for each pixel:  g = grad_t[pixel] (NV vectors, grad_output transposed)
//                    for t: acc[t][:] += g * x[origin(pixel) + taps[t]]
// Q*NV (or T*NV) accumulators + NV + 1 vectors must fit the register file.

// (kChainProducts, the length of the tiles' chains of additions: direct_conv.h)

// kStride: the column stride when known at compile time (1 or 2), else 0 and `stride` is used.
template <class Isa, int NV, int Q, int kStride>
void direct_forward_tile(const float* origin, int64_t stride, const int64_t* taps, int64_t depth,
                         const float* weights, float* tile, int64_t out_step, bool accumulate, const float* bias) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  const int64_t step = kStride > 0 ? kStride : stride;
  V acc[Q][NV];
#pragma GCC unroll 16
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[q][v] = Isa::zero();
  for (int64_t k = 0; k < depth; ++k) {
    const float* x = origin + taps[k];
    V w[NV];
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) w[v] = Isa::load(weights + (k * NV + v) * L);
#pragma GCC unroll 16
    for (int q = 0; q < Q; ++q) {
      const V xq = Isa::set1(x[q * step]);
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) acc[q][v] = Isa::fma(w[v], xq, acc[q][v]);
    }
  }
#pragma GCC unroll 16
  for (int q = 0; q < Q; ++q)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* sum = tile + q * out_step + v * L;
      const V total = accumulate ? Isa::add(Isa::load(sum), acc[q][v]) : acc[q][v];
      Isa::store(sum, bias != nullptr ? Isa::add(total, Isa::load(bias + v * L)) : total);
    }
}

// Adds acc to partial[T][NV*kLanes] and zeroes it.
template <class Isa, int NV, int T>
inline void add_weight_sums(typename Isa::V (&acc)[T][NV], float* partial) {
  constexpr int L = Isa::kLanes;
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) {
      float* sum = partial + (t * NV + v) * L;
      Isa::store(sum, Isa::add(Isa::load(sum), acc[t][v]));
      acc[t][v] = Isa::zero();
    }
}

// Adds the sums over `rows` output rows (of one image, or of several: x_rows[r] is row r's first
// window origin) into partial[T][NV*kLanes], in chains of rows of about kChainProducts pixels (at
// least one row). The taps live in a local array and every loop over t and v is unrolled, so the
// accumulators stay in registers.
template <class Isa, int NV, int T>
void direct_weight_tile(const float* const* x_rows, int64_t rows, int64_t out_w, int64_t stride,
                        const int64_t* taps, const float* grad_t, float* partial) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  V acc[T][NV];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 4
    for (int v = 0; v < NV; ++v) acc[t][v] = Isa::zero();
  int64_t tap[T];
#pragma GCC unroll 16
  for (int t = 0; t < T; ++t) tap[t] = taps[t];
  int64_t chained = 0;  // pixels in the accumulators' chain
  for (int64_t r = 0; r < rows; ++r) {
    const float* x_row = x_rows[r];
    const float* g_row = grad_t + r * out_w * NV * L;
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const float* origin = x_row + ow * stride;
      V g[NV];
#pragma GCC unroll 4
      for (int v = 0; v < NV; ++v) g[v] = Isa::load(g_row + (ow * NV + v) * L);
#pragma GCC unroll 16
      for (int t = 0; t < T; ++t) {
        const V xt = Isa::set1(origin[tap[t]]);
#pragma GCC unroll 4
        for (int v = 0; v < NV; ++v) acc[t][v] = Isa::fma(g[v], xt, acc[t][v]);
      }
    }
    chained += out_w;
    if (chained >= kChainProducts) {
      add_weight_sums<Isa, NV, T>(acc, partial);
      chained = 0;
    }
  }
  if (chained > 0) add_weight_sums<Isa, NV, T>(acc, partial);
}

// Row tile, for layers with few output channels (LeNet's): vectors run along an output row
// instead, R output rows x OT output channels x one vector of kLanes consecutive columns:
//   for each tap (c, i, j):  for r: v[r] = x[origin + r*row_step + c*plane + i*tap_row + j*tap_col]
//                            for o: w = weights[(c, i, j)][o]      (one broadcast, R products)
//                                   acc[r][o] += w * v[r]          (kLanes columns, stride 1)
// weights: [C][kH][kW][OT] (zeros past the channels in use). R*OT accumulators + R + 1 vectors
// must fit the register file (the R loads of a tap kept, one broadcast at a time: AVX2's 16
// registers then hold 2 x 6, which LeNet's 6 channels fill in one tile; on 2 x 4 and a 2 x 2 for
// the rest, 4 chains of FMAs waiting on their latency, its second layer's input gradient took
// 1.5-1.8x as long on a Zen 3). The channels are
// summed in chains of at most ~kChainProducts products, each from zero: all but the last
// chain's sums kept in `partial` ([R][OT][kLanes]), the last's added to them and written out.
template <class Isa, int R, int OT>
void direct_row_tile(const float* origin, int64_t row_step, int64_t plane, int64_t tap_row, int64_t tap_col,
                     int64_t channels, int64_t kernel_h, int64_t kernel_w, const float* weights, float* partial,
                     const RowTileOutput& out) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  const int64_t chain_channels = kChainProducts / (kernel_h * kernel_w) > 0 ? kChainProducts / (kernel_h * kernel_w) : 1;
  for (int64_t c0 = 0; c0 < channels; c0 += chain_channels) {
    const int64_t c_end = c0 + chain_channels < channels ? c0 + chain_channels : channels;
    V acc[R][OT];
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int o = 0; o < OT; ++o) acc[r][o] = Isa::zero();
    for (int64_t c = c0; c < c_end; ++c)
      for (int64_t i = 0; i < kernel_h; ++i) {
        const float* x = origin + c * plane + i * tap_row;
        for (int64_t j = 0; j < kernel_w; ++j, weights += OT) {
          V v[R];
#pragma GCC unroll 8
          for (int r = 0; r < R; ++r) {
            v[r] = Isa::load(x + r * row_step + j * tap_col);
            // one load into a register for the OT products (GCC otherwise folds the load into
            // each FMA: OT loads of the vector, R*OT + OT loads a tap, and the tile load-bound)
            asm("" : "+v"(v[r]));
          }
#pragma GCC unroll 8
          for (int o = 0; o < OT; ++o) {
            const V w = Isa::set1(weights[o]);
#pragma GCC unroll 8
            for (int r = 0; r < R; ++r) acc[r][o] = Isa::fma(w, v[r], acc[r][o]);
          }
        }
      }
    const bool last_chain = c_end == channels;
#pragma GCC unroll 8
    for (int r = 0; r < R; ++r)
#pragma GCC unroll 8
      for (int o = 0; o < OT; ++o) {
        float* kept = partial + (r * OT + o) * L;
        const V sum = c0 > 0 ? Isa::add(Isa::load(kept), acc[r][o]) : acc[r][o];
        if (!last_chain) {
          Isa::store(kept, sum);
        } else if (r < out.rows) {
          const V y = Isa::add(sum, Isa::set1(out.bias != nullptr ? out.bias[o] : 0.f));
          float* to = out.y + o * out.plane + r * out.row_stride;
          if (out.cols == L) Isa::store(to, y);
          else Isa::store_first(to, y, out.cols);
        }
      }
  }
}

// Row weight tile, the weight gradient's counterpart of the row tile (LeNet's first layer: 6
// output channels fill 6 of AVX-512's 16 lanes in a channel vector, 28 columns 28 of 32 in two
// row vectors). Vectors run along output rows (column stride 1); T taps x OT output channels of
// one vector each, summed over the columns of `rows` output rows:
//   for each row r, each vector of kLanes columns from c0:
//     g[o] = grad_out[o][row r][c0, c0 + kLanes)              (OT loads, g_plane apart)
//     for t: x = in_padded[x_rows[r] + taps[t] + c0, + kLanes)  (one load)
//            acc[t][o] += g[o] * x
// A row's last vector loads only its columns, in g and x alike (the rest zero: 0 * 0, never an
// Inf or NaN column past the row). The lanes' sums are added to partial[T][OT][kLanes]; the
// caller adds the lanes up, and keeps each lane's chain of products short by the rows it passes
// (a call's rows x vectors a row). T*OT accumulators + OT + 1 vectors must fit the register file
// (AVX2's 3 x 4 fills all 16: the last vector's mask is reloaded from the stack a tap).
template <class Isa, int OT, int T>
void direct_row_weight_tile(const float* const* x_rows, const float* const* g_rows, int64_t rows, int64_t out_w,
                            int64_t g_plane, const int64_t* taps, float* partial) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  V acc[T][OT];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int o = 0; o < OT; ++o) acc[t][o] = Isa::zero();
  int64_t tap[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) tap[t] = taps[t];
  const int64_t whole = out_w / L * L, tail = out_w - whole;
  for (int64_t r = 0; r < rows; ++r) {
    const float* x_row = x_rows[r];
    const float* g_row = g_rows[r];
    for (int64_t c0 = 0; c0 < whole; c0 += L) {
      V g[OT];
#pragma GCC unroll 8
      for (int o = 0; o < OT; ++o) g[o] = Isa::load(g_row + o * g_plane + c0);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const V x = Isa::load(x_row + tap[t] + c0);
#pragma GCC unroll 8
        for (int o = 0; o < OT; ++o) acc[t][o] = Isa::fma(g[o], x, acc[t][o]);
      }
    }
    if (tail > 0) {
      V g[OT];
#pragma GCC unroll 8
      for (int o = 0; o < OT; ++o) g[o] = Isa::load_first(g_row + o * g_plane + whole, tail);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const V x = Isa::load_first(x_row + tap[t] + whole, tail);
#pragma GCC unroll 8
        for (int o = 0; o < OT; ++o) acc[t][o] = Isa::fma(g[o], x, acc[t][o]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
    for (int o = 0; o < OT; ++o) {
      float* sum = partial + (t * OT + o) * L;
      Isa::store(sum, Isa::add(Isa::load(sum), acc[t][o]));
    }
}

// An output row's sums into the NCHW output, plus bias: y[o * plane + q] = row[q * width + o] +
// bias[o] for channels o < count and pixels q < pixels; `Out` float, or uint16_t for bfloat16
// (round_to_bfloat16). The forward tiles leave a row pixel-major (each pixel's channels together,
// `width` apart), the output wants it channel-major: blocks of kLanes pixels x kLanes channels are
// transposed in registers into one vector per channel and stored whole, the row's last pixels
// (fewer than kLanes) by a masked store. `row` holds whole blocks (rows past `pixels` are read, not
// stored). bias may be null. (Transposing each tile of Q pixels as it came, kLanes - Q of its lanes
// wasted, took 37% of the ResNet stem's time with AVX2; element by element, as long as the
// products.)
template <class Isa, typename Out>
void direct_row_to_planes(const float* row, int64_t pixels, int64_t width, int64_t count, const float* bias,
                          Out* y, int64_t plane) {
  using Floats = typename Isa::Floats;
  constexpr int L = Isa::kLanes;
  for (int64_t o0 = 0; o0 < count; o0 += L) {
    const int64_t channels = count - o0 < L ? count - o0 : L;
    for (int64_t q0 = 0; q0 < pixels; q0 += L) {
      Floats block[L];
#pragma GCC unroll 16
      for (int q = 0; q < L; ++q) __builtin_memcpy(&block[q], row + (q0 + q) * width + o0, sizeof(Floats));
      transpose_block<Floats, typename Isa::Ints, L>(block);
      const int64_t left = pixels - q0;
#pragma GCC unroll 16
      for (int o = 0; o < L; ++o) {
        if (o < channels) {
          const Floats sums = block[o] + (bias != nullptr ? bias[o0 + o] : 0.f);
          Out* out = y + (o0 + o) * plane + q0;
          if constexpr (sizeof(Out) == sizeof(float)) {
            if (left >= L) {
              __builtin_memcpy(out, &sums, sizeof sums);
            } else {
              // (a loop here compiled to a memcpy call per channel: 20% of LeNet's conv2)
              Isa::store_first(out, (typename Isa::V)sums, left);
            }
          } else {
            const typename Isa::Shorts halves = round_to_bfloat16<Isa>(sums);
            if (left >= L) {
              __builtin_memcpy(out, &halves, sizeof halves);
            } else {
#pragma GCC unroll 16
              for (int q = 0; q < L; ++q)
                if (q < left) out[q] = static_cast<uint16_t>(halves[q]);
            }
          }
        }
      }
    }
  }
}

// An output row's sums plus bias into NHWC float pixels: y[q * pixel_stride + o] = row[q * width + o]
// + bias[o] for channels o < count and pixels q < pixels, a vector of kLanes channels at a time
// (the last one masked). bias may be null.
template <class Isa>
void direct_row_to_pixels(const float* row, int64_t pixels, int64_t width, int64_t count, const float* bias, float* y,
                          int64_t pixel_stride) {
  using V = typename Isa::V;
  constexpr int L = Isa::kLanes;
  const int64_t vectors = (count + L - 1) / L, last = count - (vectors - 1) * L;  // channels of the last vector
  V b[DirectTiles::kMaxVectors];
  for (int64_t v = 0; v < vectors; ++v)
    b[v] = bias == nullptr ? Isa::zero() : v + 1 < vectors || last == L ? Isa::load(bias + v * L)
                                                                        : Isa::load_first(bias + v * L, last);
  for (int64_t q = 0; q < pixels; ++q)
    for (int64_t v = 0; v < vectors; ++v) {
      const V sums = Isa::add(Isa::load(row + q * width + v * L), b[v]);  // (lanes past count: the tiles' zeros)
      if (v + 1 < vectors || last == L) {
        Isa::store(y + q * pixel_stride + v * L, sums);
      } else {
        Isa::store_first(y + q * pixel_stride + v * L, sums, last);
      }
    }
}

// `rows` rows of `width` floats, one after another in `in`, into rows `out_stride` floats apart
// from `out`: a plane into its zero-padded copy (a memcpy call a row, 12 floats each, took a sixth
// of a grouped 12x12 layer's NCHW forward pass; a pixel's channels a call, 9% of an NHWC one's).
template <class Isa>
void direct_copy_rows(const float* in, int64_t rows, int64_t width, float* out, int64_t out_stride) {
  constexpr int L = Isa::kLanes;
  for (int64_t r = 0; r < rows; ++r, in += width, out += out_stride) {
    int64_t c = 0;
    for (; c + L <= width; c += L) Isa::store(out + c, Isa::load(in + c));
    if (c < width) Isa::store_first(out + c, Isa::load_first(in + c, width - c), width - c);
  }
}

// An output row's sums plus bias rounded into NHWC bfloat16 (their bits): y[q * pixel_stride + o]
// = round(row[q * width + o] + bias[o]) for channels o < count and pixels q < pixels
// (round_to_bfloat16), a vector of kLanes channels at a time. The forward tiles leave a row pixel-major, as NHWC
// wants it: no transpose. bias may be null.
template <class Isa>
void direct_row_to_bfloat16_pixels(const float* row, int64_t pixels, int64_t width, int64_t count,
                                   const float* bias, uint16_t* y, int64_t pixel_stride) {
  using Floats = typename Isa::Floats;
  constexpr int L = Isa::kLanes;
  const int64_t vectors = (count + L - 1) / L, last = count - (vectors - 1) * L;  // channels of the last vector
  Floats b[DirectTiles::kMaxVectors] = {};
  for (int64_t v = 0; bias != nullptr && v < vectors; ++v)
    b[v] = (Floats)(v + 1 < vectors || last == L ? Isa::load(bias + v * L) : Isa::load_first(bias + v * L, last));
  for (int64_t q = 0; q < pixels; ++q) {
    for (int64_t v = 0; v < vectors; ++v) {
      Floats sums;
      __builtin_memcpy(&sums, row + q * width + v * L, sizeof sums);  // (lanes past count: the tiles' zeros)
      const typename Isa::Shorts halves = round_to_bfloat16<Isa>(sums + b[v]);
      uint16_t* out = y + q * pixel_stride + v * L;
      if (v + 1 < vectors || last == L) {
        __builtin_memcpy(out, &halves, sizeof halves);
      } else {
        for (int64_t o = 0; o < last; ++o) out[o] = static_cast<uint16_t>(halves[o]);
      }
    }
  }
}

// table[q] = the forward tile of q pixels, for q = 1..Q (a row's last tile may be short).
template <class Isa, int NV, int Q, int kStride>
void fill_forward_tiles(DirectTiles::Forward* table) {
  table[Q] = &direct_forward_tile<Isa, NV, Q, kStride>;
  if constexpr (Q > 1) fill_forward_tiles<Isa, NV, Q - 1, kStride>(table);
}

// Fills the entries of `tiles` for NV channel vectors: Q pixels (forward), T taps (weight).
template <class Isa, int NV, int Q, int T>
void fill_direct_tiles(DirectTiles& tiles) {
  tiles.pixels[NV] = Q;
  tiles.taps[NV] = T;
  fill_forward_tiles<Isa, NV, Q, 0>(tiles.forward[NV]);
  fill_forward_tiles<Isa, NV, Q, 1>(tiles.forward_stride1[NV]);
  fill_forward_tiles<Isa, NV, Q, 2>(tiles.forward_stride2[NV]);
  tiles.weight[NV] = &direct_weight_tile<Isa, NV, T>;
  tiles.to_planes = &direct_row_to_planes<Isa, float>;
  tiles.to_bfloat16_planes = &direct_row_to_planes<Isa, uint16_t>;
  tiles.to_bfloat16_pixels = &direct_row_to_bfloat16_pixels<Isa>;
  tiles.to_pixels = &direct_row_to_pixels<Isa>;
  tiles.copy_rows = &direct_copy_rows<Isa>;
}

// Fills the row tiles of R rows x 1..OT output channels (row_channels = OT, the widest).
template <class Isa, int R, int OT>
void fill_row_tiles(DirectTiles& tiles) {
  static_assert(OT <= DirectTiles::kMaxRowChannels, "DirectTiles::row holds kMaxRowChannels widths");
  tiles.row[OT] = &direct_row_tile<Isa, R, OT>;
  if (tiles.row_channels < OT) tiles.row_channels = OT;
  tiles.row_rows = R;
  if constexpr (OT > 1) fill_row_tiles<Isa, R, OT - 1>(tiles);
}

// Fills the row weight tiles of 1..OT output channels, T taps for OT (the group's full width; it
// sets row_weight_channels) and Ts... for the narrower ones, as the register file allows each.
template <class Isa, int OT, int T, int... Ts>
void fill_row_weight_tiles(DirectTiles& tiles) {
  static_assert(sizeof...(Ts) == OT - 1, "one tap count for each of 1..OT output channels");
  static_assert(OT <= DirectTiles::kMaxRowWeightChannels, "DirectTiles::row_weight holds kMaxRowWeightChannels widths");
  tiles.row_weight[OT] = &direct_row_weight_tile<Isa, OT, T>;
  tiles.row_weight_taps[OT] = T;
  if (tiles.row_weight_channels < OT) tiles.row_weight_channels = OT;
  if constexpr (sizeof...(Ts) > 0) fill_row_weight_tiles<Isa, OT - 1, Ts...>(tiles);
}
