// Depthwise convolution on the CPU (depthwise.h). Output channel o = g*M + m reads input
// channel g = o / M alone:
//
//   y[n, o, oh, ow] = bias[o] + sum_{i,j} w[o, 0, i, j] * x[n, o/M, oh*sH - pH + i*dH, ow*sW - pW + j*dW]
//
// Channels are the vector axis (a tap is one FMA over a vector of channels), so the row
// kernels (depthwise_tile.h, per ISA) read and write NHWC rows: a channels_last tensor of float
// or double in place, and of bfloat16 too where every tensor of the pass is channels_last and
// M = 1 (the kernels widen its values as they load them and round as they store: half the bytes
// of float copies); anything else (NCHW, float16, and the input of a layer with M > 1, whose
// channels are repeated M times) through a staged copy of the rows and channels a work item
// needs, transposed to NHWC and converted to float or double; staged outputs are transposed back.
// Each work item is (sample, block of output channels, band of rows), sized so that its staged
// rows stay in L2 and every thread has several.
//
//   forward          y row oh    = forward_row over the taps (i, j) whose input row is inside
//   input gradient   dx row ih, columns iw = r + sW*u of each residue r < sW (gather form):
//                    the taps with (ih + pH - i*dH) divisible by sH and (r + pW - j*dW) by sW
//                    read dy[(ih + pH - i*dH)/sH, u + (r + pW - j*dW)/sW]: a forward_row with
//                    no bias that writes every element once (no scatter, no zeroing)
//   weight gradient  dw[o, t] = sum over (n, oh, ow) of dy * x at tap t: weight_row per output
//                    row into per-part sums (parts of ~kPartPixels output pixels, fixed by the
//                    shape), added in part order: deterministic at any thread count
//
// With M > 1 the input gradient is computed per output channel and the M channels of each
// input channel are added when the staged rows are written back.

#include "depthwise.h"

#include <algorithm>
#include <cstring>
#include <numeric>
#include <type_traits>
#include <vector>

#include "gemm.h"  // cpu_isa, l2_cache_bytes, note_kernel_use, cpu_transpose_floats
#include "opmath.h"
#include "parallel.h"
#include "simd.h"
#include "streaming.h"
#include "window.h"

namespace cuconv {
namespace {

// The portable row kernels: GCC vectors of 16 bytes (SSE2 on any x86-64), no fused multiply-add.
template <typename Scalar, int Lanes>
struct PortableVector {
  using T = Scalar;
  typedef Scalar V __attribute__((vector_size(sizeof(Scalar) * Lanes)));
  // float lanes as bfloat16_vector.h wants them (bfloat16 rows: Scalar float)
  typedef float Floats __attribute__((vector_size(sizeof(float) * Lanes)));
  typedef int32_t Ints __attribute__((vector_size(sizeof(int32_t) * Lanes)));
  typedef int16_t Shorts __attribute__((vector_size(sizeof(int16_t) * Lanes)));
  static constexpr int kLanes = Lanes;
  static constexpr int kRegisters = 16;
  static V zero() { return V{}; }
  static V load(const T* p) {
    V v;
    std::memcpy(&v, p, sizeof v);
    return v;
  }
  static void store(T* p, V v) { std::memcpy(p, &v, sizeof v); }
  static V fma(V a, V b, V c) { return a * b + c; }
  static V add(V a, V b) { return a + b; }
  static V load_first(const T* p, int64_t n) {
    V v{};
    std::memcpy(&v, p, static_cast<size_t>(n) * sizeof(T));
    return v;
  }
  static void store_first(T* p, V v, int64_t n) { std::memcpy(p, &v, static_cast<size_t>(n) * sizeof(T)); }
  // (templates: GCC checks __builtin_convertvector's operand in a class template's plain members)
  template <typename H>
  static Ints widen_shorts(H h) { return __builtin_convertvector(h, Ints); }
  template <typename I>
  static Shorts narrow_ints(I i) { return __builtin_convertvector(i, Shorts); }
};

#include "bfloat16_vector.h"
#include "depthwise_tile.h"

// The row kernels for T and rows of K (T, or uint16_t: bfloat16's bits).
template <typename T, typename K>
DepthwiseKernels<T, K> kernels_for_this_cpu() {
#if CUCONV_X86_SIMD
  switch (cpu_isa()) {
    case CpuIsa::kAvx512:
      if constexpr (std::is_same_v<K, uint16_t>) return avx512_depthwise_kernels_bfloat16();
      else if constexpr (std::is_same_v<T, float>) return avx512_depthwise_kernels_float();
      else return avx512_depthwise_kernels_double();
    case CpuIsa::kAvx2:
      if constexpr (std::is_same_v<K, uint16_t>) return avx2_depthwise_kernels_bfloat16();
      else if constexpr (std::is_same_v<T, float>) return avx2_depthwise_kernels_float();
      else return avx2_depthwise_kernels_double();
    default: break;
  }
#endif
  return depthwise_kernels_of<PortableVector<T, 16 / sizeof(T)>, K>("generic");
}

// Calls f with a value of the type the row kernels read and write a pass's rows as: bfloat16's
// bits where they can do so in place (`in_place`: every tensor of the pass channels_last and
// M = 1), else the op-math type (staged copies for the half types).
template <typename S, typename F>
void with_row_type(bool in_place, F&& f) {
  if constexpr (std::is_same_v<S, c10::BFloat16>) {
    if (in_place) return f(uint16_t{});
  }
  f(opmath_t<S>{});
}

// Output pixels per part of the weight gradient's reduction: enough work per part to pay for a
// thread, and small enough that a batch splits into parts for many threads; and at most
// kPartValues values in all the parts' sums (large kernels: fewer, larger parts).
constexpr int64_t kPartPixels = 1024;
constexpr int64_t kPartValues = int64_t{1} << 22;

// A 4-D tensor's elements, NCHW or NHWC (contiguous in that layout).
template <typename S>
struct Image {
  S* data;
  int64_t batch, channels, height, width;
  bool nhwc;
  S* at(int64_t n, int64_t c, int64_t h, int64_t w) const {
    return data + (nhwc ? ((n * height + h) * width + w) * channels + c : ((n * channels + c) * height + h) * width + w);
  }
};

template <typename S>
Image<S> image_of(S* data, const Tensor& t, bool nhwc) {
  return {data, t.size(0), t.size(1), t.size(2), t.size(3), nhwc};
}

// Rows of one sample and block of channels as the row kernels read or write them: NHWC,
// `stride` elements from pixel to pixel, the block's first channel at each pixel's start.
template <typename P>
struct Rows {
  P* first_row;
  int64_t first, row_elements, stride;
  P* row(int64_t h) const { return first_row + (h - first) * row_elements; }
};

// The rows straight in an NHWC tensor, from channel c0, as the kernels' type P (S itself, or
// bfloat16's bits).
template <typename P, typename S>
Rows<P> rows_in_place(const Image<S>& image, int64_t n, int64_t c0) {
  static_assert(sizeof(P) == sizeof(S));
  return {reinterpret_cast<P*>(image.at(n, c0, 0, 0)), 0, image.width * image.channels, image.channels};
}

// A work item's staging buffers: the rows the kernels read or write, and (float16, bfloat16
// NCHW) the planes' values as floats before the transpose.
template <typename T>
struct Staging {
  std::vector<T> rows;
  std::vector<float> planes;
};

// Rows [h0, h1) of channels [c0, c0 + count) copied into the staging rows as T, NHWC with
// `count` channels a pixel; channel k of the block reads the tensor's channel (c0 + k) / repeat.
// The common cases (repeat 1, T float) copy runs of values with the vectorised conversions
// (opmath.h) and NCHW planes through the register transpose (gemm.h): value by value, bfloat16
// layers took 2.3-2.8x torch's time in NCHW, up to 7x in channels_last.
template <typename T, typename S>
Rows<const T> staged_rows(const Image<const S>& image, int64_t n, int64_t h0, int64_t h1, int64_t c0, int64_t count,
                          int64_t repeat, Staging<T>& staging) {
  const int64_t W = image.width, pixels = std::max<int64_t>(0, h1 - h0) * W;
  std::vector<T>& buffer = staging.rows;
  buffer.resize(static_cast<size_t>(pixels * count));
  const Rows<const T> rows{buffer.data(), h0, W * count, count};
  if constexpr (std::is_same_v<T, float>) {
    if (repeat == 1 && pixels > 0) {
      if (image.nhwc) {
        to_opmath_runs(image.at(n, c0, h0, 0), image.channels, pixels, count, buffer.data());  // a pixel's block a run
      } else {
        // the band's rows are contiguous in each plane: `count` planes of `pixels` values to as
        // many pixels of `count` channels, in registers (gemm.h); other types as floats first
        const float* planes;
        int64_t plane_stride;
        if constexpr (std::is_same_v<S, float>) {
          planes = image.at(n, c0, h0, 0);
          plane_stride = image.height * W;
        } else {
          staging.planes.resize(static_cast<size_t>(count * pixels));
          to_opmath_runs(image.at(n, c0, h0, 0), image.height * W, count, pixels, staging.planes.data());
          planes = staging.planes.data();
          plane_stride = pixels;
        }
        cpu_transpose_floats()(planes, plane_stride, count, pixels, count, buffer.data(), count);
      }
      return rows;
    }
  }
  for (int64_t h = h0; h < h1; ++h) {
    T* row = buffer.data() + (h - h0) * W * count;
    if (image.nhwc) {
      for (int64_t w = 0; w < W; ++w) {
        const S* pixel = image.at(n, 0, h, w);
        for (int64_t k = 0; k < count; ++k) row[w * count + k] = to_opmath(pixel[(c0 + k) / repeat]);
      }
    } else {
      for (int64_t k = 0; k < count; ++k) {
        const S* plane_row = image.at(n, (c0 + k) / repeat, h, 0);
        for (int64_t w = 0; w < W; ++w) row[w * count + k] = to_opmath(plane_row[w]);
      }
    }
  }
  return rows;
}

// Rows [h0, h1) of `count` channels a pixel in the staging rows, for a kernel to write.
template <typename T>
Rows<T> buffer_rows(Staging<T>& staging, int64_t h0, int64_t h1, int64_t width, int64_t count) {
  staging.rows.resize(static_cast<size_t>(std::max<int64_t>(0, h1 - h0) * width * count));
  return {staging.rows.data(), h0, width * count, count};
}

// Writes staged rows [h0, h1) back into the tensor: its channel c0 / sum_of + k is the sum of
// the block's channels k*sum_of .. k*sum_of + sum_of - 1 (the M output channels of one input
// channel, for the input gradient), converted to the tensor's dtype (as staged_rows: runs and
// the register transpose where sum_of is 1 and T float).
template <typename T, typename S>
void write_back(const Rows<T>& rows, int64_t h0, int64_t h1, const Image<S>& image, int64_t n, int64_t c0,
                int64_t count, int64_t sum_of, Staging<T>& staging) {
  const int64_t W = image.width, channels = count / sum_of, first = c0 / sum_of;
  const int64_t pixels = std::max<int64_t>(0, h1 - h0) * W;
  if constexpr (std::is_same_v<T, float>) {
    if (sum_of == 1 && pixels > 0) {
      const T* staged = rows.row(h0);
      S* target = image.at(n, c0, h0, 0);
      if (image.nhwc) {
        from_opmath_runs(staged, pixels, count, target, image.channels);
      } else if constexpr (std::is_same_v<S, float>) {
        cpu_transpose_floats()(staged, count, pixels, count, pixels, target, image.height * W);
      } else {
        staging.planes.resize(static_cast<size_t>(count * pixels));
        cpu_transpose_floats()(staged, count, pixels, count, pixels, staging.planes.data(), pixels);
        from_opmath_runs(staging.planes.data(), count, pixels, target, image.height * W);
      }
      return;
    }
  }
  auto value = [&](const T* pixel, int64_t k) {
    T total = pixel[k * sum_of];
    for (int64_t m = 1; m < sum_of; ++m) total += pixel[k * sum_of + m];
    return from_opmath<S>(total);
  };
  for (int64_t h = h0; h < h1; ++h) {
    const T* row = rows.row(h);
    if (image.nhwc) {
      for (int64_t w = 0; w < W; ++w) {
        S* pixel = image.at(n, first, h, w);
        for (int64_t k = 0; k < channels; ++k) pixel[k] = value(row + w * count, k);
      }
    } else {
      for (int64_t k = 0; k < channels; ++k) {
        S* plane_row = image.at(n, first + k, h, 0);
        for (int64_t w = 0; w < W; ++w) plane_row[w] = value(row + w * count, k);
      }
    }
  }
}

// How the work is cut: output channels in blocks of `block` (a multiple of M), rows in bands of
// `band` (of `rows`), over `batch` samples; items = batch * blocks * bands.
struct Split {
  int64_t block, blocks, band, bands;
  int64_t items(int64_t batch) const { return batch * blocks * bands; }
};

// Whether a pass writes its NHWC output `out` (of `elements` values of T, rows of `channels`
// values a pixel, in place, whole pixels a work item, pixels written in order) past the caches:
// where it is larger than the last-level cache (streaming.h) and every whole vector of a pixel
// is aligned to its size (a non-temporal store's condition). depthwise.56.cl's forward pass
// (103 MB out) on a Zen 3: 0.81 of the time on one thread and 0.74 on two with the rows left to
// the hardware, 0.84 and 1.0 with them fetched in software (benchmarks/NOTES.md, forty-fourth
// session).
template <typename T, typename K>
bool streams_rows(const DepthwiseKernels<T, K>& kernels, const void* out, int64_t elements, int64_t channels) {
  const int64_t vector_bytes = kernels.lanes * static_cast<int64_t>(sizeof(T));
  return kernels.streams && channels % kernels.lanes == 0 && reinterpret_cast<uintptr_t>(out) % vector_bytes == 0 &&
         streams_output(elements * static_cast<int64_t>(sizeof(T)));
}

// Output channels per block: about `wanted`, a multiple of the multiplier M (the input gradient
// adds each input channel's M) and, where that is not much more, of the vector width too (M = 3
// in blocks of 30 left a part-filled register in every block).
int64_t channel_block(int64_t channels, int64_t multiplier, int64_t lanes, int64_t wanted) {
  const int64_t both = std::lcm(multiplier, lanes);
  const int64_t block = both <= 2 * wanted ? std::max(both, wanted / both * both)
                                           : std::max(multiplier, wanted / multiplier * multiplier);
  return std::min(channels, block);
}

// `staged_row_elements`: values per row (and channel) of the operands that are staged, if any
// (0 when nothing is): a band's staged rows should stay within a quarter of the L2. Rows read and
// written in place take whole pixels (every channel): an item's rows are then one run of memory,
// which the hardware prefetchers follow (blocks of 64 of 256 channels read 256 bytes of every
// 1 KB pixel, a stride the prefetchers gave up on at each page: the loads waited on memory).
Split split_work(int64_t batch, int64_t channels, int64_t multiplier, int64_t rows, int64_t lanes,
                 int64_t staged_row_elements, int64_t value_bytes) {
  Split s;
  s.block = staged_row_elements > 0 ? channel_block(channels, multiplier, lanes, 2 * lanes) : channels;
  s.blocks = (channels + s.block - 1) / s.block;
  s.band = rows;
  if (staged_row_elements > 0) {
    const int64_t fit = l2_cache_bytes() / 4 / std::max<int64_t>(1, staged_row_elements * s.block * value_bytes);
    s.band = std::clamp<int64_t>(fit, 1, rows);
  }
  const int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  const int64_t bands_for_threads = (2 * threads + batch * s.blocks - 1) / std::max<int64_t>(1, batch * s.blocks);
  s.band = std::min(s.band, std::max<int64_t>(1, (rows + bands_for_threads - 1) / bands_for_threads));
  s.bands = (rows + s.band - 1) / s.band;
  return s;
}

// The weights as T, tap-major: wt[t*O + o] = w[o, 0, t] (a tap's weights are one vector load).
template <typename T, typename S>
std::vector<T> tap_major_weights(const DirectConv& p, const S* w) {
  const int64_t taps = p.kernel_h * p.kernel_w, O = p.out_channels;
  std::vector<T> wt(static_cast<size_t>(taps * O));
  for (int64_t o = 0; o < O; ++o)
    for (int64_t t = 0; t < taps; ++t) wt[t * O + o] = static_cast<T>(w[o * taps + t]);
  return wt;
}

// Rows read in place are fetched ahead in software. The row kernels read a pixel's channels a
// line or four at a time across a tile's six pixels and three rows; where a pixel is wide (256
// float channels: 1 KB) the hardware prefetchers do not follow that order, and every row read
// for the first time waited on memory (depthwise.14.cl's forward pass limited to AVX2: 80 us a
// sample, 33 with its rows in cache; benchmarks/NOTES.md, forty-first session). So each row of
// a pass fetches the source rows that the pass's row kRowsAhead later reads first, counting rows
// on across samples (a thread's next work item is mostly the next band or sample).
constexpr int64_t kRowsAhead = 2;

// The source rows that row `row` of a pass reads first: after those of the row before, up to
// last_read(row), the last source row (clamped to the image) that a row reads.
template <typename LastRead>
OutputRange first_reads(int64_t row, const LastRead& last_read) {
  const int64_t first = row == 0 ? 0 : std::max<int64_t>(0, last_read(row - 1) + 1);
  return {first, std::max(first, last_read(row) + 1)};
}

// Prefetches the source rows that row `row` + kRowsAhead of sample n's pass (of `rows` rows a
// sample) reads first, whole NHWC rows; none past the batch. (Inline: GCC drops a call to a
// function whose only effect is a prefetch.)
template <typename S, typename LastRead>
inline __attribute__((always_inline)) void fetch_ahead(const Image<const S>& source, int64_t n, int64_t row,
                                                       int64_t rows, const LastRead& last_read) {
  const int64_t ahead = n * rows + row + kRowsAhead, sample = ahead / rows;
  if (sample >= source.batch) return;
  const OutputRange reads = first_reads(ahead % rows, last_read);
  const char* first = reinterpret_cast<const char*>(source.at(sample, 0, reads.begin, 0));
  const int64_t bytes = (reads.end - reads.begin) * source.width * source.channels * static_cast<int64_t>(sizeof(S));
  for (int64_t b = 0; b < bytes; b += 64) __builtin_prefetch(first + b);
}

// How a pass brought its rows into cache, and wrote them (cpu_kernels' last_depthwise_rows).
const char* rows_note(bool fetch, bool stream) {
  return fetch ? (stream ? "fetched, streamed" : "fetched") : (stream ? "hardware, streamed" : "hardware");
}

// A work item's lists of a row's taps, for DepthwiseTaps to point into.
template <typename T>
struct TapLists {
  std::vector<const T*> weights;
  std::vector<T*> sums;
  std::vector<int64_t> origins, offsets;
  explicit TapLists(int64_t taps) : weights(taps), sums(taps), origins(taps), offsets(taps) {}
};

// The taps of output row oh that read inside the image (rows of x), for channel block c0: each
// with its weights (wt, forward) or its sums (weight gradient).
template <typename T, typename K>
DepthwiseTaps<T, K> forward_taps(const DirectConv& p, int64_t oh, const Rows<const K>& x, const T* wt, T* sums,
                                 int64_t c0, int64_t count, OutputRange interior, TapLists<T>& lists) {
  std::vector<const T*>& weights = lists.weights;
  std::vector<T*>& sum_rows = lists.sums;
  std::vector<int64_t>&origins = lists.origins, &offsets = lists.offsets;
  int64_t k = 0;
  for (int64_t i = 0; i < p.kernel_h; ++i) {
    const int64_t ih = oh * p.stride_h - p.pad_h + i * p.dilation_h;
    if (ih < 0 || ih >= p.height) continue;
    for (int64_t j = 0; j < p.kernel_w; ++j, ++k) {
      const int64_t t = i * p.kernel_w + j;
      if (wt != nullptr) weights[k] = wt + t * p.out_channels + c0;
      if (sums != nullptr) sum_rows[k] = sums + t * p.out_channels + c0;
      offsets[k] = j * p.dilation_w - p.pad_w;
      origins[k] = (ih - x.first) * x.row_elements + offsets[k] * x.stride;
    }
  }
  DepthwiseTaps<T, K> row;
  row.taps = k;
  row.weights = weights.data();
  row.sums = sum_rows.data();
  row.base = x.first_row;
  row.origins = origins.data();
  row.offsets = offsets.data();
  row.source_step = p.stride_w;
  row.source_width = p.width;
  row.source_stride = x.stride;
  row.channels = count;
  row.count = p.out_w;
  row.interior = interior;
  return row;
}

// The output columns whose every tap reads inside the image (forward and weight gradient).
OutputRange forward_interior(const DirectConv& p) {
  std::vector<int64_t> offsets(p.kernel_w);
  for (int64_t j = 0; j < p.kernel_w; ++j) offsets[j] = j * p.dilation_w - p.pad_w;
  return depthwise_interior(offsets.data(), p.kernel_w, p.stride_w, p.width, p.out_w);
}

// The last input row that output row oh reads, clamped to the image (-1: none).
int64_t last_input_row_of(const DirectConv& p, int64_t oh) {
  return std::min(p.height - 1, oh * p.stride_h - p.pad_h + (p.kernel_h - 1) * p.dilation_h);
}

// The input rows that output rows [r0, r1) read: [first, last), clamped to the image.
OutputRange input_rows_of(const DirectConv& p, int64_t r0, int64_t r1) {
  const int64_t first = std::clamp<int64_t>(r0 * p.stride_h - p.pad_h, 0, p.height);
  const int64_t last = std::clamp<int64_t>((r1 - 1) * p.stride_h - p.pad_h + (p.kernel_h - 1) * p.dilation_h + 1, 0, p.height);
  return {first, std::max(first, last)};
}

// The passes below run their row kernels on rows of K: T (float, double), or bfloat16's bits
// (with_row_type), which they read and write in the tensors themselves (kInPlace: K as wide as
// S), where those are NHWC (and for the input, M = 1); other rows are staged, as T.
template <typename S, typename K>
constexpr bool kInPlace = sizeof(K) == sizeof(S);
template <typename S, typename K>
constexpr bool kStaged = std::is_same_v<K, opmath_t<S>>;  // may rows be staged (as T)

template <typename S, typename K>
void forward(const DirectConv& p, const Image<const S>& x, const S* w, const S* bias, const Image<S>& y,
             RowFetch row_fetch) {
  using T = opmath_t<S>;
  const DepthwiseKernels<T, K> kernels = kernels_for_this_cpu<T, K>();
  note_kernel_use(KernelPath::kDepthwise, kernels.isa);
  const int64_t M = p.out_channels / p.in_channels, taps = p.kernel_h * p.kernel_w;
  const std::vector<T> wt = tap_major_weights<T>(p, w);
  const OutputRange interior = forward_interior(p);
  std::vector<T> bt;
  if (bias != nullptr) bt.assign(bias, bias + p.out_channels);
  const bool x_in_place = x.nhwc && kInPlace<S, K> && M == 1, y_in_place = y.nhwc && kInPlace<S, K>;
  CUCONV_CHECK((kStaged<S, K>) || (x_in_place && y_in_place), "cuconv: depthwise rows of bfloat16 bits need NHWC ",
               "tensors and M = 1");
  // per output row: about sH * W values of x and out_w of y, where staged
  const Split s = split_work(p.batch, p.out_channels, M, p.out_h, kernels.lanes,
                             (x_in_place ? 0 : p.width * p.stride_h) + (y_in_place ? 0 : p.out_w), sizeof(T));
  const bool fetch = row_fetch == RowFetch::kSoftware && x_in_place && s.block == p.out_channels;
  const bool stream = y_in_place && s.block == p.out_channels &&
                      streams_rows(kernels, y.data, p.batch * p.out_h * p.out_w * p.out_channels, p.out_channels);
  note_kernel_use(KernelPath::kDepthwiseRows, rows_note(fetch, stream));
  auto last_input_row = [&](int64_t oh) { return last_input_row_of(p, oh); };
  parallel_for_chunks(0, s.items(p.batch), 1, [&](int64_t begin, int64_t end) {
    Staging<T> x_staging, y_staging;
    TapLists<T> lists(taps);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (s.blocks * s.bands), block = item / s.bands % s.blocks, band = item % s.bands;
      const int64_t c0 = block * s.block, count = std::min(s.block, p.out_channels - c0);
      const int64_t r0 = band * s.band, r1 = std::min(p.out_h, r0 + s.band);
      const OutputRange in = input_rows_of(p, r0, r1);
      Rows<const K> xr{};
      Rows<K> yr{};
      if constexpr (kInPlace<S, K>) {
        if (x_in_place) xr = rows_in_place<const K>(x, n, c0);
        if (y_in_place) yr = rows_in_place<K>(y, n, c0);
      }
      if constexpr (kStaged<S, K>) {
        if (!x_in_place) xr = staged_rows<T>(x, n, in.begin, in.end, c0, count, M, x_staging);
        if (!y_in_place) yr = buffer_rows(y_staging, r0, r1, p.out_w, count);
      }
      for (int64_t oh = r0; oh < r1; ++oh) {
        if (fetch) fetch_ahead(x, n, oh, p.out_h, last_input_row);
        DepthwiseTaps<T, K> row = forward_taps<T>(p, oh, xr, wt.data(), nullptr, c0, count, interior, lists);
        row.stream = stream;
        kernels.forward_row(row, bias != nullptr ? bt.data() + c0 : nullptr, yr.row(oh), yr.stride);
      }
      if constexpr (kStaged<S, K>) {
        if (!y_in_place) write_back(yr, r0, r1, y, n, c0, count, 1, y_staging);
      }
    }
    if (stream) stream_fence();
  });
}

template <typename S, typename K>
void backward_input(const DirectConv& p, const Image<const S>& dy, const S* w, const Image<S>& dx, RowFetch row_fetch) {
  using T = opmath_t<S>;
  const DepthwiseKernels<T, K> kernels = kernels_for_this_cpu<T, K>();
  note_kernel_use(KernelPath::kDepthwise, kernels.isa);
  const int64_t M = p.out_channels / p.in_channels, taps = p.kernel_h * p.kernel_w;
  const int64_t sH = p.stride_h, sW = p.stride_w;
  const std::vector<T> wt = tap_major_weights<T>(p, w);
  const bool dy_in_place = dy.nhwc && kInPlace<S, K>, dx_in_place = dx.nhwc && kInPlace<S, K> && M == 1;
  CUCONV_CHECK((kStaged<S, K>) || (dy_in_place && dx_in_place), "cuconv: depthwise rows of bfloat16 bits need NHWC ",
               "tensors and M = 1");
  // per residue of the input column: the columns u whose every tap reads inside grad_output
  std::vector<OutputRange> interiors;
  for (int64_t residue = 0; residue < std::min(sW, p.width); ++residue) {
    std::vector<int64_t> offsets;
    for (int64_t j = 0; j < p.kernel_w; ++j) {
      const int64_t columns_across = residue + p.pad_w - j * p.dilation_w;
      if (columns_across % sW == 0) offsets.push_back(columns_across / sW);
    }
    interiors.push_back(depthwise_interior(offsets.data(), static_cast<int64_t>(offsets.size()), 1, p.out_w,
                                           (p.width - residue + sW - 1) / sW));
  }
  // per input row: W values of dx and about out_w / sH of grad_output, where staged
  const Split s = split_work(p.batch, p.out_channels, M, p.height, kernels.lanes,
                             (dx_in_place ? 0 : p.width) + (dy_in_place ? 0 : (p.out_w + sH - 1) / sH), sizeof(T));
  const bool fetch = row_fetch == RowFetch::kSoftware && dy_in_place && s.block == p.out_channels;
  // (stride 1 only: a strided pass writes each row's pixels in sW interleaved sweeps, which would
  // stream each cache line in parts)
  const bool stream = dx_in_place && sW == 1 && s.block == p.out_channels &&
                      streams_rows(kernels, dx.data, p.batch * p.height * p.width * p.out_channels, p.out_channels);
  note_kernel_use(KernelPath::kDepthwiseRows, rows_note(fetch, stream));
  // input row ih gathers from grad_output rows up to (ih + pH) / sH (its first kernel row)
  auto last_dy_row = [&](int64_t ih) { return std::min(p.out_h - 1, (ih + p.pad_h) / sH); };
  parallel_for_chunks(0, s.items(p.batch), 1, [&](int64_t begin, int64_t end) {
    Staging<T> dy_staging, dx_staging;
    std::vector<const T*> weights(taps);
    std::vector<int64_t> origins(taps), offsets(taps);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / (s.blocks * s.bands), block = item / s.bands % s.blocks, band = item % s.bands;
      const int64_t c0 = block * s.block, count = std::min(s.block, p.out_channels - c0);
      const int64_t r0 = band * s.band, r1 = std::min(p.height, r0 + s.band);
      // the grad_output rows that input rows [r0, r1) gather from
      // (oh*sH = ih + pH - i*dH: the least oh from ih = r0 at the last tap row, the most from ih = r1 - 1 at the first)
      const int64_t lowest = r0 + p.pad_h - (p.kernel_h - 1) * p.dilation_h;
      const int64_t first = std::min(p.out_h, lowest <= 0 ? int64_t{0} : (lowest + sH - 1) / sH);
      const int64_t last = std::clamp<int64_t>((r1 - 1 + p.pad_h) / sH + 1, first, p.out_h);
      Rows<const K> dyr{};
      Rows<K> dxr{};
      if constexpr (kInPlace<S, K>) {
        if (dy_in_place) dyr = rows_in_place<const K>(dy, n, c0);
        if (dx_in_place) dxr = rows_in_place<K>(dx, n, c0);
      }
      if constexpr (kStaged<S, K>) {
        if (!dy_in_place) dyr = staged_rows<T>(dy, n, first, last, c0, count, 1, dy_staging);
        if (!dx_in_place) dxr = buffer_rows(dx_staging, r0, r1, p.width, count);
      }
      DepthwiseTaps<T, K> row;
      row.weights = weights.data();
      row.base = dyr.first_row;
      row.origins = origins.data();
      row.offsets = offsets.data();
      row.source_step = 1;
      row.source_width = p.out_w;
      row.source_stride = dyr.stride;
      row.channels = count;
      row.stream = stream;
      for (int64_t ih = r0; ih < r1; ++ih) {
        if (fetch) fetch_ahead(dy, n, ih, p.height, last_dy_row);
        for (int64_t residue = 0; residue < std::min(sW, p.width); ++residue) {
          int64_t k = 0;
          // taps from the last kernel row and column back, so that grad_output is read forwards
          for (int64_t i = p.kernel_h - 1; i >= 0; --i) {
            const int64_t rows_down = ih + p.pad_h - i * p.dilation_h;  // = oh * sH
            if (rows_down < 0 || rows_down % sH != 0 || rows_down / sH >= p.out_h) continue;
            for (int64_t j = p.kernel_w - 1; j >= 0; --j) {
              const int64_t columns_across = residue + p.pad_w - j * p.dilation_w;  // = (ow - u) * sW
              if (columns_across % sW != 0) continue;
              weights[k] = wt.data() + (i * p.kernel_w + j) * p.out_channels + c0;
              offsets[k] = columns_across / sW;
              origins[k] = (rows_down / sH - dyr.first) * dyr.row_elements + offsets[k] * dyr.stride;
              ++k;
            }
          }
          row.taps = k;
          row.count = (p.width - residue + sW - 1) / sW;
          row.interior = interiors[residue];
          kernels.forward_row(row, nullptr, dxr.row(ih) + residue * dxr.stride, sW * dxr.stride);
        }
      }
      if constexpr (kStaged<S, K>) {
        if (!dx_in_place) write_back(dxr, r0, r1, dx, n, c0, count, M, dx_staging);
      }
    }
    if (stream) stream_fence();
  });
}

template <typename S, typename K>
void backward_weight(const DirectConv& p, const Image<const S>& dy, const Image<const S>& x, S* dw) {
  using T = opmath_t<S>;
  const DepthwiseKernels<T, K> kernels = kernels_for_this_cpu<T, K>();
  note_kernel_use(KernelPath::kDepthwise, kernels.isa);
  const int64_t M = p.out_channels / p.in_channels, taps = p.kernel_h * p.kernel_w, O = p.out_channels;
  const bool dy_in_place = dy.nhwc && kInPlace<S, K>, x_in_place = x.nhwc && kInPlace<S, K> && M == 1;
  CUCONV_CHECK((kStaged<S, K>) || (dy_in_place && x_in_place), "cuconv: depthwise rows of bfloat16 bits need NHWC ",
               "tensors and M = 1");
  // parts: runs of output rows (counted across samples) of about kPartPixels pixels, as few as
  // keep their sums within kPartValues; both fixed by the shape alone
  const int64_t rows = p.batch * p.out_h, most_parts = std::max<int64_t>(1, kPartValues / (taps * O));
  int64_t rows_per_part = std::max<int64_t>(1, kPartPixels / p.out_w);
  rows_per_part = std::max(rows_per_part, (rows + most_parts - 1) / most_parts);
  const int64_t parts = std::max<int64_t>(1, (rows + rows_per_part - 1) / rows_per_part);
  // Blocks of 4 vectors of channels; rows read in place take whole pixels instead wherever the
  // parts alone give every thread work (as split_work: 64 of 256 channels read 256 bytes of every
  // 1 KB pixel, a stride the prefetchers give up on)
  const int64_t threads = static_cast<int64_t>(torch::stable::get_num_threads());
  const bool whole_pixels = dy_in_place && x_in_place && parts >= 2 * threads;
  const int64_t block = whole_pixels ? O : channel_block(O, M, kernels.lanes, 4 * kernels.lanes);
  const int64_t blocks = (O + block - 1) / block;
  std::vector<T> partial(static_cast<size_t>(parts * taps * O));  // each item zeroes its own sums
  const OutputRange interior = forward_interior(p);
  parallel_for_chunks(0, blocks * parts, 1, [&](int64_t begin, int64_t end) {
    Staging<T> dy_staging, x_staging;
    TapLists<T> lists(taps);
    for (int64_t item = begin; item < end; ++item) {
      const int64_t part = item % parts, c0 = item / parts * block, count = std::min(block, O - c0);
      T* sums = partial.data() + part * taps * O;
      for (int64_t t = 0; t < taps; ++t) std::fill_n(sums + t * O + c0, count, T(0));
      const int64_t row_end = std::min(rows, (part + 1) * rows_per_part);
      for (int64_t r = part * rows_per_part; r < row_end;) {  // one sample's run of rows at a time
        const int64_t n = r / p.out_h, r0 = r % p.out_h, r1 = std::min(p.out_h, r0 + (row_end - r));
        const OutputRange in = input_rows_of(p, r0, r1);
        Rows<const K> xr{}, dyr{};
        if constexpr (kInPlace<S, K>) {
          if (x_in_place) xr = rows_in_place<const K>(x, n, c0);
          if (dy_in_place) dyr = rows_in_place<const K>(dy, n, c0);
        }
        if constexpr (kStaged<S, K>) {
          if (!x_in_place) xr = staged_rows<T>(x, n, in.begin, in.end, c0, count, M, x_staging);
          if (!dy_in_place) dyr = staged_rows<T>(dy, n, r0, r1, c0, count, 1, dy_staging);
        }
        for (int64_t oh = r0; oh < r1; ++oh)
          kernels.weight_row(forward_taps<T>(p, oh, xr, nullptr, sums, c0, count, interior, lists), dyr.row(oh),
                             dyr.stride);
        r += r1 - r0;
      }
    }
  });
  // dw[o, t] = the parts' sums, added in part order
  torch::stable::parallel_for(0, O, 64, [&](int64_t first, int64_t last) {
    for (int64_t o = first; o < last; ++o)
      for (int64_t t = 0; t < taps; ++t) {
        T total = partial[t * O + o];
        for (int64_t part = 1; part < parts; ++part) total += partial[(part * taps + t) * O + o];
        dw[o * taps + t] = static_cast<S>(total);
      }
  });
}

// A tensor's data as NHWC (channels_last) or NCHW: a contiguous copy when it is neither.
Tensor in_kernel_layout(const Tensor& t) { return is_channels_last(t) ? t : contiguous_or_self(t); }

}  // namespace

bool depthwise_rows_fetchable(const DirectConv& p, const Tensor& source) {
  // in place: NHWC, M = 1, a type the row kernels read as it is (float16 rows are staged as float)
  const ScalarType dtype = source.scalar_type();
  return is_channels_last(source) && p.out_channels == p.in_channels &&
         (dtype == ScalarType::Float || dtype == ScalarType::Double || dtype == ScalarType::BFloat16);
}

Tensor depthwise_conv2d_forward(const DirectConv& p, const Tensor& input, const Tensor& weight, const Tensor& bias,
                                RowFetch fetch) {
  const Tensor x = in_kernel_layout(input), w = contiguous_or_self(weight);
  const Tensor b = bias.defined() ? contiguous_or_self(bias) : Tensor();
  const bool nhwc = is_channels_last(x);
  const int64_t sizes[4] = {p.batch, p.out_channels, p.out_h, p.out_w};
  Tensor y = nhwc ? empty_channels_last_like(x, IntArrayRef(sizes, 4)) : empty_like_with(x, IntArrayRef(sizes, 4));
  CUCONV_DISPATCH_FLOATING(x.scalar_type(), "cuconv.conv2d", [&] {
    with_row_type<scalar_t>(nhwc && p.out_channels == p.in_channels, [&](auto rows) {
      forward<scalar_t, decltype(rows)>(p, image_of(x.const_data_ptr<scalar_t>(), x, nhwc),
                                        w.const_data_ptr<scalar_t>(), b.defined() ? b.const_data_ptr<scalar_t>() : nullptr,
                                        image_of(y.mutable_data_ptr<scalar_t>(), y, nhwc), fetch);
    });
  });
  return y;
}

Tensor depthwise_conv2d_backward_input(const DirectConv& p, const Tensor& grad_output, const Tensor& weight,
                                       IntArrayRef input_size, RowFetch fetch) {
  const Tensor dy = in_kernel_layout(grad_output), w = contiguous_or_self(weight);
  const bool nhwc = is_channels_last(dy);
  Tensor dx = nhwc ? empty_channels_last_like(dy, input_size) : empty_like_with(dy, input_size);
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "cuconv.conv2d_backward_input", [&] {
    with_row_type<scalar_t>(nhwc && p.out_channels == p.in_channels, [&](auto rows) {
      backward_input<scalar_t, decltype(rows)>(p, image_of(dy.const_data_ptr<scalar_t>(), dy, nhwc),
                                               w.const_data_ptr<scalar_t>(),
                                               image_of(dx.mutable_data_ptr<scalar_t>(), dx, nhwc), fetch);
    });
  });
  return dx;
}

Tensor depthwise_conv2d_backward_weight(const DirectConv& p, const Tensor& grad_output, const Tensor& input,
                                        IntArrayRef weight_size) {
  const Tensor dy = in_kernel_layout(grad_output), x = in_kernel_layout(input);
  Tensor dw = empty_like_with(dy, weight_size);
  const bool nhwc = is_channels_last(dy) && is_channels_last(x);
  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "cuconv.conv2d_backward_weight", [&] {
    with_row_type<scalar_t>(nhwc && p.out_channels == p.in_channels, [&](auto rows) {
      backward_weight<scalar_t, decltype(rows)>(p, image_of(dy.const_data_ptr<scalar_t>(), dy, is_channels_last(dy)),
                                                image_of(x.const_data_ptr<scalar_t>(), x, is_channels_last(x)),
                                                dw.mutable_data_ptr<scalar_t>());
    });
  });
  return dw;
}

}  // namespace cuconv
