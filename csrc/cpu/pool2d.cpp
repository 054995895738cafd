// Max, average and adaptive average pooling on the CPU.
//
// Index math: output cell (oh, ow) of a plane sees the input window
//   rows  oh*sH - pH + i*dH, i in [0, kH)      (dH = 1 for average pooling)
//   cols  ow*sW - pW + j*dW, j in [0, kW)
// clipped to the input. Adaptive pooling uses the window
//   rows [floor(oh*H/H_out), ceil((oh+1)*H/H_out)), likewise for columns.
//
// Layout and threads: a channels_last input runs NHWC kernels (section "channels_last"
// below) and gives channels_last results, as torch; any other is made NCHW-contiguous and
// the N*C planes are split across threads; each plane is one call of a *_plane function below.
// Forward: each output row is computed for all its columns at once: for every
// kernel offset (i, j) the loop runs over the output columns ow, reading input row
// ih = oh*sH - pH + i*dH at ow*sW - pW + j*dW. That inner loop streams memory and
// vectorises, where a loop over one window at a time would not. Everything that does
// not change from row to row (which outputs a kernel column reaches, divisors,
// adaptive windows) is worked out once per call.
// Backward: each plane of the input gradient is zeroed and filled while it is in
// cache (one write of grad_input to memory, not a zero pass and a scatter pass),
// each output gradient going into its window within the plane, so no two threads
// touch the same memory and the sums are deterministic.
// The *_plane functions are compiled for AVX-512, AVX2 and the baseline x86-64, and
// the best one the CPU has runs (CUCONV_VECTOR_CLONES).
// Accumulation is in opmath_t (float for bfloat16/half), and every output
// element is rounded to its type once.


#include <algorithm>
#include <atomic>
#include <cmath>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <limits>
#include <type_traits>
#include <vector>

#include "../ops.h"
#include "../shape.h"
#include "gemm.h"
#include "opmath.h"
#include "simd.h"
#include "streaming.h"
#include "tuner.h"
#include "window.h"

namespace cuconv {
namespace {

// Grain for parallel_for over planes: enough work per task to pay for a thread.
int64_t plane_grain(int64_t plane_elements) {
  return std::max<int64_t>(1, 32768 / std::max<int64_t>(1, plane_elements));
}

// Where one thread's plane kernels write their planes: into the output itself, or, for an output
// larger than the last-level cache whose planes fit the buffer limit (by default half of L2), into
// a plane buffer of the thread's own which finish() then streams out past the caches
// (streaming.h). The gradients (grad_input: 4x the forward output) take it: VGG's and ResNet's
// max pooling backward 3-16% faster on a Zen 3 (NCHW planes), 10% on ResNet's stem in
// channels_last (a sample of NHWC pixels a "plane": 576 KB, computed in the last-level cache);
// the forward outputs measured no faster (4-8% slower), so they do not.
template <typename T>
class PlaneOutput {
 public:
  // output_bytes: the whole output's size; plane: its plane's, in elements; buffer_limit: the
  // largest plane, in bytes, that is computed in a buffer
  PlaneOutput(int64_t output_bytes, int64_t plane, int64_t buffer_limit = l2_cache_bytes() / 2)
      : stream_(streams_output(output_bytes) && plane * static_cast<int64_t>(sizeof(T)) <= buffer_limit),
        buffer_(stream_ ? plane : 0) {}
  ~PlaneOutput() {
    if (stream_) stream_fence();  // (as the thread's share of the planes ends)
  }
  // Whether the planes go through the buffer.
  bool streams() const { return stream_; }
  // Where the plane that belongs at `destination` is to be written.
  T* target(T* destination) { return stream_ ? buffer_.data() : destination; }
  // That plane, written, to its destination.
  void finish(T* destination) {
    if (stream_) stream_copy(destination, buffer_.data(), static_cast<int64_t>(buffer_.size() * sizeof(T)));
  }

 private:
  bool stream_;
  std::vector<T> buffer_;
};

// The window geometry of max / average pooling, with what does not change from row
// to row worked out once.
struct PoolGeometry {
  int64_t H, W, Ho, Wo, kH, kW, sH, sW, pH, pW, dH, dW;
  PoolGeometry(int64_t in_h, int64_t in_w, int64_t out_h, int64_t out_w, IntArrayRef kernel,
               IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation)
      : H(in_h), W(in_w), Ho(out_h), Wo(out_w), kH(kernel[0]), kW(kernel[1]), sH(stride[0]),
        sW(stride[1]), pH(padding[0]), pW(padding[1]), dH(dilation[0]), dW(dilation[1]) {
    for (int64_t j = 0; j < std::min<int64_t>(kW, kTabledColumns); ++j)
      reach_.push_back(in_bounds_outputs(column_offset(j), sW, W, Wo));
  }
  // The outputs ow whose column at kernel column j is in [0, W): tabled once for the first
  // kTabledColumns kernel columns (every row uses them), worked out where used past them (a
  // kernel 50 million columns wide, global pooling of a signal, had an 800 MB table).
  OutputRange reach(int64_t j) const {
    return j < kTabledColumns ? reach_[j] : in_bounds_outputs(column_offset(j), sW, W, Wo);
  }
  // Input column of output column ow at kernel column j is ow*sW + column_offset(j).
  int64_t column_offset(int64_t j) const { return j * dW - pW; }
  // Window rows of output row oh inside the input: first_row, first_row + dH, ... < end_row.
  int64_t first_row(int64_t oh) const {
    const int64_t h0 = oh * sH - pH;
    return h0 >= 0 ? h0 : h0 + (-h0 + dH - 1) / dH * dH;
  }
  int64_t end_row(int64_t oh) const { return std::min(oh * sH - pH + (kH - 1) * dH + 1, H); }

 private:
  static constexpr int64_t kTabledColumns = 1024;
  std::vector<OutputRange> reach_;
};

// ---------------------------------------------------------------------------
// Max pooling

// Torch's rule for the running maximum of a window, "v replaces best when v > best or v
// is NaN", as integer operations on the bits of a float or double, for the 2x2 kernel
// below: its float selects compiled to branches, which random data mispredicts half
// the time (5x slower on VGG's 14x14 planes); these compile to blends and cmov.
template <typename T>
struct MaxRule {
  using Bits = std::conditional_t<sizeof(T) == 4, int32_t, int64_t>;
  static constexpr Bits kMagnitude = std::numeric_limits<Bits>::max();  // every bit but the sign
  static constexpr Bits kInfinity = static_cast<Bits>(sizeof(T) == 4 ? 0x7F800000LL : 0x7FF0000000000000LL);

  static Bits bits(T v) {
    Bits b;
    std::memcpy(&b, &v, sizeof b);
    return b;
  }
  static T value(Bits b) {
    T v;
    std::memcpy(&v, &b, sizeof v);
    return v;
  }
  static bool is_nan(Bits b) { return (b & kMagnitude) > kInfinity; }
  // An integer that orders like the value, with -0 equal to +0 (NaN excluded).
  static Bits order(Bits b) {
    const Bits sign = b >> (8 * sizeof(Bits) - 1);  // all ones if negative
    return ((b & kMagnitude) ^ sign) - sign;
  }
  // All ones where v replaces best, else zero.
  static Bits takes(Bits v, Bits best) {
    return -static_cast<Bits>(((order(v) > order(best)) & !is_nan(best)) | is_nan(v));
  }
  template <typename I>
  static I select(Bits mask, I a, I b) {
    return (a & static_cast<I>(mask)) | (b & ~static_cast<I>(mask));
  }
};

// The same rule for integer values (no NaN): v replaces best when v > best. The mask is signed,
// so that it widens to all ones for the 32-bit index select.
template <typename T>
struct IntegerMaxRule {
  using Bits = T;
  static Bits bits(T v) { return v; }
  static T value(Bits b) { return b; }
  static std::make_signed_t<T> takes(Bits v, Bits best) { return -static_cast<std::make_signed_t<T>>(v > best); }
  template <typename I>
  static I select(std::make_signed_t<T> mask, I a, I b) {
    return static_cast<I>((a & static_cast<I>(mask)) | (b & ~static_cast<I>(mask)));
  }
};

template <typename T>
using MaxRuleOf = std::conditional_t<std::is_integral_v<T>, IntegerMaxRule<T>, MaxRule<T>>;

// Where a running maximum starts: -inf, or an integer type's lowest value (as torch).
template <typename T>
constexpr T lowest_for_max() {
  return std::numeric_limits<T>::has_infinity ? -std::numeric_limits<T>::infinity() : std::numeric_limits<T>::lowest();
}

// One plane. `first_column[ow]` is the first in-bounds column of window ow: as torch, a
// window whose values are all -inf reports its first in-bounds pixel. `best` and
// `best_index` are scratch rows of Wo. (Float selects here, not MaxRule: this loop
// vectorises with them, and measured 1.4x faster on ResNet's 3x3 stem pooling.)
template <typename scalar_t, typename index_t>
CUCONV_VECTOR_CLONES void max_pool_plane(const PoolGeometry& g, const int64_t* first_column, const scalar_t* x,
                                         scalar_t* y, int64_t* indices, opmath_t<scalar_t>* __restrict__ best,
                                         index_t* __restrict__ best_index) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t sW = g.sW;
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t h0 = g.first_row(oh), h1 = g.end_row(oh);
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      best[ow] = lowest_for_max<acc_t>();
      best_index[ow] = static_cast<index_t>(h0 * g.W + first_column[ow]);
    }
    // Window pixels in torch's order (rows, then columns): the first maximum wins,
    // and NaN always wins, so it propagates.
    for (int64_t ih = h0; ih < h1; ih += g.dH) {
      const scalar_t* row = x + ih * g.W;
      for (int64_t j = 0; j < g.kW; ++j) {
        const int64_t offset = g.column_offset(j);
        const OutputRange reach = g.reach(j);
        const index_t base = static_cast<index_t>(ih * g.W + offset);
        for (int64_t ow = reach.begin; ow < reach.end; ++ow) {
          const acc_t v = static_cast<acc_t>(row[ow * sW + offset]);  // (strided: c10's conversion, opmath.h)
          const bool take = (v > best[ow]) | (v != v);  // | rather than ||: no branches
          best[ow] = take ? v : best[ow];
          best_index[ow] = take ? static_cast<index_t>(base + ow * sW) : best_index[ow];
        }
      }
    }
    scalar_t* __restrict__ y_row = y + oh * g.Wo;
    int64_t* __restrict__ index_row = indices + oh * g.Wo;
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      y_row[ow] = static_cast<scalar_t>(best[ow]);
      index_row[ow] = best_index[ow];
    }
  }
}

// Windows three columns wide with column stride 2 and padding 1 on planes of even width
// (ResNet's 3x3 stem pooling): the general kernel above reads every other pixel one lane at
// a time (2.5x slower than the channels_last kernel on ResNet's stem). With Wo = W/2, window
// column ow of input row ih reads columns 2ow-1, 2ow, 2ow+1, which in the flattened plane
// are pixels 2t-1, 2t, 2t+1 of t = ih*Wo + ow; so
//   pass 1: each row's maximum of those three, row_best[t] at pixel row_index[t], is one
//           vector loop over the whole plane (a row's first window, whose left column is
//           padding, is redone from its two pixels);
//   pass 2: each output takes the maximum over its window's rows of pass 1's results.
// Same winner as torch's row-major scan (the last NaN, else the first maximum) whichever
// the order of passes: rows are compared with the same rule, top to bottom.
bool separable_stride2(const PoolGeometry& g) {
  return g.kW == 3 && g.sW == 2 && g.pW == 1 && g.dW == 1 && g.W % 2 == 0 && g.Wo == g.W / 2 &&
         g.H * g.W <= std::numeric_limits<int32_t>::max();
}

template <typename scalar_t>
CUCONV_VECTOR_CLONES void max_pool_plane_stride2(const PoolGeometry& g, const scalar_t* __restrict__ x,
                                                 scalar_t* __restrict__ y, int64_t* __restrict__ indices,
                                                 opmath_t<scalar_t>* __restrict__ row_best,
                                                 int32_t* __restrict__ row_index, opmath_t<scalar_t>* __restrict__ best,
                                                 int32_t* __restrict__ best_index) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t Wo = g.Wo, windows = g.H * Wo;
  for (int64_t t = 1; t < windows; ++t) {
    acc_t max = to_opmath(x[2 * t - 1]);
    int32_t at = static_cast<int32_t>(2 * t - 1);
    const acc_t middle = to_opmath(x[2 * t]), right = to_opmath(x[2 * t + 1]);
    bool take = (middle > max) | (middle != middle);  // | rather than ||: no branches
    max = take ? middle : max;
    at = take ? at + 1 : at;
    take = (right > max) | (right != right);
    row_best[t] = take ? right : max;
    row_index[t] = take ? static_cast<int32_t>(2 * t + 1) : at;
  }
  for (int64_t t = 0; t < windows; t += Wo) {
    const acc_t middle = to_opmath(x[2 * t]), right = to_opmath(x[2 * t + 1]);
    const bool take = (right > middle) | (right != right);
    row_best[t] = take ? right : middle;
    row_index[t] = static_cast<int32_t>(take ? 2 * t + 1 : 2 * t);
  }
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t h0 = g.first_row(oh), h1 = g.end_row(oh);
    std::copy_n(row_best + h0 * Wo, Wo, best);
    std::copy_n(row_index + h0 * Wo, Wo, best_index);
    for (int64_t ih = h0 + g.dH; ih < h1; ih += g.dH) {
      const acc_t* v = row_best + ih * Wo;
      const int32_t* v_index = row_index + ih * Wo;
      for (int64_t ow = 0; ow < Wo; ++ow) {
        const bool take = (v[ow] > best[ow]) | (v[ow] != v[ow]);
        best[ow] = take ? v[ow] : best[ow];
        best_index[ow] = take ? v_index[ow] : best_index[ow];
      }
    }
    for (int64_t ow = 0; ow < Wo; ++ow) {
      y[oh * Wo + ow] = from_opmath<scalar_t>(best[ow]);
      indices[oh * Wo + ow] = best_index[ow];
    }
  }
}

// The scatter kernels below add several outputs' gradients into one input pixel where
// windows overlap. They sum in the op-math type: into dx itself for float and double,
// and for half types into a float plane rounded into dx once (rounding after every add
// would make the error grow with the overlap). unpool(target) fills one plane.
template <typename scalar_t, typename Unpool>
void unpool_in_opmath(int64_t plane_in, scalar_t* dx, std::vector<opmath_t<scalar_t>>& buffer,
                      Unpool unpool) {
  using acc_t = opmath_t<scalar_t>;
  if constexpr (std::is_same_v<scalar_t, acc_t>) {
    unpool(dx);
  } else {
    buffer.resize(plane_in);
    unpool(buffer.data());
    std::transform(buffer.begin(), buffer.end(), dx, [](acc_t v) { return from_opmath<scalar_t>(v); });
  }
}

// One plane of the input gradient: zero, then each output gradient to its argmax. The first
// index outside the plane is skipped and returned (the caller raises once all threads are
// done: an exception must not cross the thread pool).
template <typename scalar_t>
std::optional<int64_t> max_unpool_plane(int64_t plane_in, int64_t plane_out, const scalar_t* dy,
                                        const int64_t* indices, opmath_t<scalar_t>* dx) {
  using acc_t = opmath_t<scalar_t>;
  std::fill_n(dx, plane_in, acc_t(0));
  std::optional<int64_t> bad;
  for (int64_t o = 0; o < plane_out; ++o) {
    const int64_t target = indices[o];
    if (target < 0 || target >= plane_in) {
      if (!bad) bad = target;
      continue;
    }
    dx[target] += to_opmath(dy[o]);
  }
  return bad;
}

// ---------------------------------------------------------------------------
// Average pooling

// Clipped window [start, end) of one output index along one axis (dilation 1),
// and the window length counted with the padding (for count_include_pad).
struct AvgWindow {
  int64_t start, end, padded_size;
  bool empty() const { return start >= end; }
};
AvgWindow avg_window(int64_t o, int64_t kernel, int64_t stride, int64_t pad, int64_t in) {
  const int64_t start = o * stride - pad;
  const int64_t end = std::min(start + kernel, in + pad);
  return {std::max<int64_t>(start, 0), std::min(end, in), end - start};
}

// The windows of every output row and column, and the divisor
// torch.nn.functional.avg_pool2d uses: divisor_override, or row_factor[oh] * col_factor[ow]
// (window sizes with or without the padding). A window wholly in the ceil-mode
// overhang averages nothing: its sum is 0, and its divisor is taken as 1.
struct AvgPlan {
  std::vector<AvgWindow> rows, cols;
  std::vector<double> row_factor, col_factor;
  double divisor_override;  // 0: none

  AvgPlan(const PoolGeometry& g, bool count_include_pad, std::optional<int64_t> divisor_override)
      : divisor_override(divisor_override.value_or(0)) {
    for (int64_t oh = 0; oh < g.Ho; ++oh) rows.push_back(avg_window(oh, g.kH, g.sH, g.pH, g.H));
    for (int64_t ow = 0; ow < g.Wo; ++ow) cols.push_back(avg_window(ow, g.kW, g.sW, g.pW, g.W));
    auto factor = [&](const AvgWindow& w) { return w.empty() ? 0.0 : count_include_pad ? w.padded_size : w.end - w.start; };
    for (const AvgWindow& r : rows) row_factor.push_back(factor(r));
    for (const AvgWindow& c : cols) col_factor.push_back(factor(c));
  }
  // Divisor of window (oh, ow), given row_factor[oh]; written to vectorise over ow.
  double divisor(double row, int64_t ow) const {
    const double size = row * col_factor[ow];
    return divisor_override != 0 ? divisor_override : size == 0 ? 1.0 : size;
  }
};

template <typename scalar_t>
CUCONV_VECTOR_CLONES void avg_pool_plane(const PoolGeometry& g, const AvgPlan& plan, const scalar_t* x,
                                         scalar_t* y, opmath_t<scalar_t>* __restrict__ sum) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    std::fill_n(sum, g.Wo, acc_t(0));
    for (int64_t ih = plan.rows[oh].start; ih < plan.rows[oh].end; ++ih) {
      const scalar_t* row = x + ih * g.W;
      for (int64_t j = 0; j < g.kW; ++j) {
        const int64_t offset = g.column_offset(j);
        const OutputRange reach = g.reach(j);
        for (int64_t ow = reach.begin; ow < reach.end; ++ow) sum[ow] += static_cast<acc_t>(row[ow * g.sW + offset]);
      }
    }
    scalar_t* __restrict__ y_row = y + oh * g.Wo;
    const double row = plan.row_factor[oh];
    for (int64_t ow = 0; ow < g.Wo; ++ow) y_row[ow] = static_cast<scalar_t>(sum[ow] / static_cast<acc_t>(plan.divisor(row, ow)));
  }
}

// One plane of the input gradient: each pixel of a window gets the output's share.
// For a fixed kernel column j the columns ow*sW + j - pW are distinct, so the inner
// loop has no conflicts.
template <typename scalar_t>
CUCONV_VECTOR_CLONES void avg_unpool_plane(const PoolGeometry& g, const AvgPlan& plan, const scalar_t* dy,
                                           opmath_t<scalar_t>* dx, opmath_t<scalar_t>* share) {
  using acc_t = opmath_t<scalar_t>;
  std::fill_n(dx, g.H * g.W, acc_t(0));
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const double row = plan.row_factor[oh];
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      share[ow] = to_opmath(dy[oh * g.Wo + ow]) / static_cast<acc_t>(plan.divisor(row, ow));
    }
    for (int64_t ih = plan.rows[oh].start; ih < plan.rows[oh].end; ++ih) {
      acc_t* row = dx + ih * g.W;
      for (int64_t j = 0; j < g.kW; ++j) {
        const int64_t offset = g.column_offset(j);
        const OutputRange reach = g.reach(j);
        const acc_t* __restrict__ s = share;
        for (int64_t ow = reach.begin; ow < reach.end; ++ow) row[ow * g.sW + offset] += s[ow];
      }
    }
  }
}

// ---------------------------------------------------------------------------
// 2x2 windows with stride 2, no padding, each inside the input (LeNet's average
// pooling, VGG's max pooling, adaptive pooling that halves): every output reads two
// pixels of two rows, unrolled, so the loop over ow is one vector loop. Same order
// of operations as the general kernels above, so the same results.

bool tiled_2x2(const PoolGeometry& g) {
  return g.kH == 2 && g.kW == 2 && g.sH == 2 && g.sW == 2 && g.pH == 0 && g.pW == 0 && g.dH == 1 &&
         g.dW == 1 && 2 * g.Ho <= g.H && 2 * g.Wo <= g.W && g.H * g.W <= std::numeric_limits<int32_t>::max();
}

// Max pooling: rows shorter than this many outputs (one AVX-512 vector of floats) are
// pooled as one run over the whole plane, windows found through a table of their
// top-left pixels (gathers), rather than row by row with a scalar end to every row:
// 2.4x faster on VGG's 14x14 planes, 1.6x slower than rows on 112-wide ones.
constexpr int64_t kShortRow = 16;

// Top-left pixel of every window of the plane, in output order.
std::vector<int32_t> window_origins_2x2(const PoolGeometry& g) {
  std::vector<int32_t> origins;
  for (int64_t oh = 0; oh < g.Ho; ++oh)
    for (int64_t ow = 0; ow < g.Wo; ++ow) origins.push_back(static_cast<int32_t>(2 * oh * g.W + 2 * ow));
  return origins;
}

// The 2x2 windows with top-left pixels origin(0), ..., origin(count - 1) of plane x
// give y[0..count). origin is a function: affine (one output row; the loads are
// strided vector loads) or a table (gathers). (Loops in functions with __restrict__
// parameters: GCC vectorises them only when it knows outputs and inputs do not overlap.)
template <typename scalar_t, typename Origin>
CUCONV_INLINE_INTO_CLONES void max_pool_windows_2x2(const scalar_t* __restrict__ x, Origin origin, int64_t count,
                                                    int64_t W, scalar_t* __restrict__ y,
                                                    int64_t* __restrict__ indices) {
  using acc_t = opmath_t<scalar_t>;
  using Rule = MaxRuleOf<acc_t>;
  for (int64_t t = 0; t < count; ++t) {
    const int64_t first = origin(t);
    const int32_t index = static_cast<int32_t>(first), row = static_cast<int32_t>(W);
    // Pixels in torch's order; the first one is where -inf would be after it. (No
    // helper lambda here: GCC would not vectorise the loop with one.)
    auto best = Rule::bits(static_cast<acc_t>(x[first]));  // (strided: c10's conversion, opmath.h)
    int32_t at = index;
    auto v = Rule::bits(static_cast<acc_t>(x[first + 1]));
    auto take = Rule::takes(v, best);
    best = Rule::select(take, v, best);
    at = Rule::select(take, index + 1, at);
    v = Rule::bits(static_cast<acc_t>(x[first + W]));
    take = Rule::takes(v, best);
    best = Rule::select(take, v, best);
    at = Rule::select(take, index + row, at);
    v = Rule::bits(static_cast<acc_t>(x[first + W + 1]));
    take = Rule::takes(v, best);
    best = Rule::select(take, v, best);
    at = Rule::select(take, index + row + 1, at);
    y[t] = static_cast<scalar_t>(Rule::value(best));
    indices[t] = at;
  }
}

template <typename scalar_t>
CUCONV_INLINE_INTO_CLONES void avg_pool_row_2x2(const scalar_t* __restrict__ r0, const scalar_t* __restrict__ r1,
                                                opmath_t<scalar_t> divisor, int64_t Wo, scalar_t* __restrict__ y) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t ow = 0; ow < Wo; ++ow) {
    const acc_t sum = acc_t(0) + static_cast<acc_t>(r0[2 * ow]) + static_cast<acc_t>(r0[2 * ow + 1]) +
                      static_cast<acc_t>(r1[2 * ow]) + static_cast<acc_t>(r1[2 * ow + 1]);  // (strided, opmath.h)
    y[ow] = static_cast<scalar_t>(sum / divisor);
  }
}

// Calls pool(origin, count, out_offset) over the plane: once with the table `origins`
// when given (short rows), else once per output row.
template <typename Pool>
CUCONV_INLINE_INTO_CLONES void for_each_window_run_2x2(const PoolGeometry& g, const int32_t* origins, Pool pool) {
  if (origins != nullptr) {
    pool([origins](int64_t t) { return static_cast<int64_t>(origins[t]); }, g.Ho * g.Wo, int64_t{0});
    return;
  }
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t top = 2 * oh * g.W;
    pool([top](int64_t ow) { return top + 2 * ow; }, g.Wo, oh * g.Wo);
  }
}

template <typename scalar_t>
CUCONV_INLINE_INTO_CLONES void avg_unpool_row_2x2(const scalar_t* __restrict__ dy, opmath_t<scalar_t> divisor,
                                                  int64_t Wo, scalar_t* __restrict__ r0, scalar_t* __restrict__ r1) {
  using acc_t = opmath_t<scalar_t>;
  for (int64_t ow = 0; ow < Wo; ++ow) {
    const scalar_t share = static_cast<scalar_t>(acc_t(0) + static_cast<acc_t>(dy[ow]) / divisor);
    r0[2 * ow] = r0[2 * ow + 1] = r1[2 * ow] = r1[2 * ow + 1] = share;
  }
}

// An odd last column or row is in no window: its gradient is zero.
template <typename scalar_t>
void zero_outside_2x2(const PoolGeometry& g, scalar_t* dx) {
  for (int64_t ih = 0; ih < 2 * g.Ho; ++ih) std::fill(dx + ih * g.W + 2 * g.Wo, dx + (ih + 1) * g.W, scalar_t(0));
  std::fill(dx + 2 * g.Ho * g.W, dx + g.H * g.W, scalar_t(0));
}

template <typename scalar_t>
CUCONV_VECTOR_CLONES void max_pool_plane_2x2(const PoolGeometry& g, const int32_t* origins, const scalar_t* x,
                                             scalar_t* y, int64_t* indices) {
  for_each_window_run_2x2(g, origins, [&](auto origin, int64_t count, int64_t out) __attribute__((always_inline)) {
    max_pool_windows_2x2(x, origin, count, g.W, y + out, indices + out);
  });
}

// v where keep is true, else +0, by masking v's bits: a float select here compiles to a
// branch, which random indices mispredict half the time.
template <typename T>
CUCONV_INLINE_INTO_CLONES T kept_or_zero(T v, bool keep) {
  using Bits = std::conditional_t<sizeof(T) == 8, uint64_t, std::conditional_t<sizeof(T) == 4, uint32_t, uint16_t>>;
  Bits bits;
  std::memcpy(&bits, &v, sizeof bits);
  bits &= static_cast<Bits>(-static_cast<Bits>(keep));
  std::memcpy(&v, &bits, sizeof bits);
  return v;
}

// Writes every pixel of the plane once: each window's four pixels get the output gradient
// where the index points and zero elsewhere (a vector loop with no zero pass before it and
// no scattered stores). Returns false when an index is not a pixel of its window (the caller
// then scatters the plane in general, as torch would).
template <typename scalar_t>
CUCONV_VECTOR_CLONES bool max_unpool_plane_2x2(const PoolGeometry& g, const scalar_t* __restrict__ dy,
                                               const int64_t* __restrict__ indices, scalar_t* __restrict__ dx) {
  const int64_t W = g.W;
  int64_t strays = 0;
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t top = 2 * oh * W;
    scalar_t* __restrict__ r0 = dx + top;
    scalar_t* __restrict__ r1 = r0 + W;
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      const int64_t o = oh * g.Wo + ow, offset = indices[o] - (top + 2 * ow);
      const scalar_t v = dy[o];
      r0[2 * ow] = kept_or_zero(v, offset == 0);
      r0[2 * ow + 1] = kept_or_zero(v, offset == 1);
      r1[2 * ow] = kept_or_zero(v, offset == W);
      r1[2 * ow + 1] = kept_or_zero(v, offset == W + 1);
      strays += (offset != 0) & (offset != 1) & (offset != W) & (offset != W + 1);
    }
  }
  zero_outside_2x2(g, dx);
  return strays == 0;
}

template <typename scalar_t>
CUCONV_VECTOR_CLONES void avg_pool_plane_2x2(const PoolGeometry& g, double divisor, const scalar_t* x, scalar_t* y) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t top = 2 * oh * g.W;
    avg_pool_row_2x2(x + top, x + top + g.W, static_cast<opmath_t<scalar_t>>(divisor), g.Wo, y + oh * g.Wo);
  }
}

template <typename scalar_t>
CUCONV_VECTOR_CLONES void avg_unpool_plane_2x2(const PoolGeometry& g, double divisor, const scalar_t* dy,
                                               scalar_t* dx) {
  for (int64_t oh = 0; oh < g.Ho; ++oh) {
    const int64_t top = 2 * oh * g.W;
    avg_unpool_row_2x2(dy + oh * g.Wo, static_cast<opmath_t<scalar_t>>(divisor), g.Wo, dx + top,
                       dx + top + g.W);
  }
  zero_outside_2x2(g, dx);
}

// ---------------------------------------------------------------------------
// All planes of one op: threads take whole planes.

// CUCONV_CPU_POOL_LANES=16, a test switch: on an AVX2 CPU, pooling's vector kernels with the 16
// lanes of AVX-512 (simd.h), so that the AVX-512 kernels' source runs where AVX-512 is missing.
bool sixteen_pool_lanes() {
  const char* setting = std::getenv("CUCONV_CPU_POOL_LANES");
  if (setting == nullptr || *setting == '\0') return false;
  CUCONV_CHECK_VALUE(std::strcmp(setting, "16") == 0,
                     "cuconv: expected the environment variable CUCONV_CPU_POOL_LANES to be 16 or unset, but got '",
                     setting, "'");
  return true;
}

// Pooling's vector kernels of this CPU's ISA (simd.h), none for the generic one; noted as used
// (cuconv._C.cpu_kernels()["last_pool"]).
PoolVectorKernels pool_vector_kernels() {
  PoolVectorKernels kernels;
  [[maybe_unused]] const bool sixteen = sixteen_pool_lanes();  // (checked on every CPU)
#if CUCONV_X86_SIMD
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: kernels = avx512_pool_vector_kernels(); break;
    case CpuIsa::kAvx2: kernels = sixteen ? avx2_pool_vector_kernels_16_lanes() : avx2_pool_vector_kernels(); break;
    default: break;
  }
  if (!__builtin_cpu_supports("f16c")) {
    kernels.global_pool_half = nullptr;
    kernels.nhwc_half = {};
  }
#endif
  note_kernel_use(KernelPath::kPool, kernels.isa);
  return kernels;
}

// The vector kernels of this CPU for tiled 2x2 windows on short planes (simd.h: float32, planes
// of at most kShortPoolPlane values, rows of at most kShortPoolRow outputs, at least a
// register's lanes of outputs), or none.
template <typename scalar_t>
AvgPool2x2Groups short_plane_kernels_2x2(const PoolGeometry& g) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    const AvgPool2x2Groups kernels = pool_vector_kernels().avg_2x2;
    if (tiled_2x2(g) && g.H * g.W <= kShortPoolPlane && g.Wo <= kShortPoolRow && g.Ho * g.Wo >= kernels.planes)
      return kernels;
  }
  return {};
}

// The vector kernels of this CPU for tiled 2x2 windows along the rows (simd.h: float32; the
// gradient where the windows tile the plane exactly), or none.
template <typename scalar_t>
AvgPool2x2Rows row_kernels_2x2(const PoolGeometry& g, bool gradient) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (tiled_2x2(g) && (!gradient || (g.H == 2 * g.Ho && g.W == 2 * g.Wo))) return pool_vector_kernels().avg_2x2_rows;
  }
  return {};
}

// This CPU's vector kernel for max pooling's gradient along the rows (simd.h: float32, where
// the 2x2 windows tile the plane exactly), or none.
template <typename scalar_t>
MaxUnpool2x2Rows max_unpool_row_kernel(const PoolGeometry& g) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (tiled_2x2(g) && g.H == 2 * g.Ho && g.W == 2 * g.Wo) return pool_vector_kernels().max_unpool_2x2_rows;
  }
  return nullptr;
}

// Tiled 2x2 average pooling of float32 planes has up to three kernels: groups of a register's
// lanes of planes transposed (short planes), the rows, and the plane kernel. Which is fastest
// depends on the plane's size and on the CPU (the groups took 0.42-0.89 of the plane kernel's
// time on 8x8 to 12x12 planes on a Zen 3, 1.06-1.3 on 14x14 and 16x16; their transposes cost a
// Zen 1 several micro-ops a step), so it is measured per shape (tuner.h: pool_groups, pool_rows,
// pool_planes); with CUCONV_CPU_TUNE=0 the groups run where they can, else the plane kernel.
// run(kernel) does the whole pass with one of them (the plane kernel also takes the planes the
// groups leave); all three sum and divide in the same order: the same results, bit for bit.
enum class TiledKernel { kGroups, kRows, kPlanes };

template <typename Run>
void run_2x2_kernel(const char* pass, const PoolGeometry& g, int64_t planes, bool groups, bool rows, Run run) {
  if (!tuning_enabled() || (!groups && !rows)) return run(groups ? TiledKernel::kGroups : TiledKernel::kPlanes);
  std::vector<Candidate> candidates;
  if (groups) candidates.push_back({kernel_name(KernelName::kPoolGroups), [&] { run(TiledKernel::kGroups); }});
  if (rows) candidates.push_back({kernel_name(KernelName::kPoolRows), [&] { run(TiledKernel::kRows); }});
  candidates.push_back({kernel_name(KernelName::kPoolPlanes), [&] { run(TiledKernel::kPlanes); }});
  char key[200];
  std::snprintf(key, sizeof key, "%s float32 planes=%lld H=%lld W=%lld threads=%d isa=%s", pass,
                static_cast<long long>(planes), static_cast<long long>(g.H), static_cast<long long>(g.W),
                static_cast<int>(torch::stable::get_num_threads()), pool_vector_kernels().isa);
  run_tuned(key, candidates);
}

// The first planes of [begin, end), whole groups of `kernels.planes`, by `run` (the vector
// kernels above); returns where the rest begins.
template <typename Run>
int64_t in_plane_groups(const AvgPool2x2Groups& kernels, int64_t begin, int64_t end, Run run) {
  if (kernels.planes == 0) return begin;
  const int64_t groups = (end - begin) / kernels.planes;
  if (groups > 0) run(groups);
  return begin + groups * kernels.planes;
}

template <typename scalar_t>
void avg_pool_planes(const PoolGeometry& g, const AvgPlan& plan, int64_t planes, const scalar_t* x, scalar_t* y) {
  using acc_t = opmath_t<scalar_t>;
  const bool tiled = tiled_2x2(g);
  const AvgPool2x2Groups short_planes = short_plane_kernels_2x2<scalar_t>(g);
  const AvgPool2x2Rows rows = row_kernels_2x2<scalar_t>(g, false);
  const float divisor = static_cast<float>(plan.divisor(plan.row_factor[0], 0));
  run_2x2_kernel("avg_pool2d_2x2_forward", g, planes, short_planes.planes != 0, rows.pool != nullptr,
                 [&](TiledKernel kernel) {
    torch::stable::parallel_for(0, planes, plane_grain(g.H * g.W), [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (kernel == TiledKernel::kRows) {
          rows.pool(x + begin * g.H * g.W, end - begin, g.H, g.W, g.Ho, g.Wo, divisor, (planes - begin) * g.H * g.W,
                    y + begin * g.Ho * g.Wo);
          return;
        }
        if (kernel == TiledKernel::kGroups)
          begin = in_plane_groups(short_planes, begin, end, [&](int64_t groups) {
            short_planes.pool(x + begin * g.H * g.W, groups, g.H, g.W, g.Ho, g.Wo, divisor, y + begin * g.Ho * g.Wo);
          });
      }
      std::vector<acc_t> sum(g.Wo);
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* x_plane = x + plane * g.H * g.W;
        scalar_t* y_plane = y + plane * g.Ho * g.Wo;
        if (tiled) {
          avg_pool_plane_2x2(g, plan.divisor(plan.row_factor[0], 0), x_plane, y_plane);
        } else {
          avg_pool_plane(g, plan, x_plane, y_plane, sum.data());
        }
      }
    });
  });
}

template <typename scalar_t>
void avg_unpool_planes(const PoolGeometry& g, const AvgPlan& plan, int64_t planes, const scalar_t* dy,
                       scalar_t* dx) {
  using acc_t = opmath_t<scalar_t>;
  const bool tiled = tiled_2x2(g);
  const AvgPool2x2Groups short_planes = short_plane_kernels_2x2<scalar_t>(g);
  const AvgPool2x2Rows rows = row_kernels_2x2<scalar_t>(g, true);
  const float divisor = static_cast<float>(plan.divisor(plan.row_factor[0], 0));
  run_2x2_kernel("avg_pool2d_2x2_backward", g, planes, short_planes.planes != 0, rows.unpool != nullptr,
                 [&](TiledKernel kernel) {
    torch::stable::parallel_for(0, planes, plane_grain(g.H * g.W), [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (kernel == TiledKernel::kRows) {
          rows.unpool(dy + begin * g.Ho * g.Wo, end - begin, g.Ho, g.Wo, divisor, (planes - begin) * g.Ho * g.Wo,
                      dx + begin * g.H * g.W);
          return;
        }
        if (kernel == TiledKernel::kGroups)
          begin = in_plane_groups(short_planes, begin, end, [&](int64_t groups) {
            short_planes.unpool(dy + begin * g.Ho * g.Wo, groups, g.H, g.W, g.Ho, g.Wo, divisor,
                                dx + begin * g.H * g.W);
          });
      }
      std::vector<acc_t> share(g.Wo), buffer;
      PlaneOutput<scalar_t> output(planes * g.H * g.W * static_cast<int64_t>(sizeof(scalar_t)), g.H * g.W);
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* dy_plane = dy + plane * g.Ho * g.Wo;
        scalar_t* dx_plane = output.target(dx + plane * g.H * g.W);
        if (tiled) {
          avg_unpool_plane_2x2(g, plan.divisor(plan.row_factor[0], 0), dy_plane, dx_plane);
        } else {
          unpool_in_opmath(g.H * g.W, dx_plane, buffer,
                           [&](acc_t* target) { avg_unpool_plane(g, plan, dy_plane, target, share.data()); });
        }
        output.finish(dx + plane * g.H * g.W);
      }
    });
  });
}

// Max pooling's gradient of NCHW planes: each plane's pixels from dy at the indices (the first
// index outside its plane noted in any_bad and bad_index). Tiled 2x2 windows of float32 have a
// second kernel along the rows (vectors of a row's outputs, which the plane kernel's loop leaves
// scalar on rows shorter than a vector: VGG's last pooling, 7 outputs a row), measured against
// the plane kernel per shape as average pooling's (run_2x2_kernel).
template <typename scalar_t>
void max_unpool_planes(const PoolGeometry& g, int64_t planes, const scalar_t* dy, const int64_t* indices,
                       scalar_t* dx, std::atomic<bool>& any_bad, std::atomic<int64_t>& bad_index) {
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  const bool tiled = tiled_2x2(g);
  const MaxUnpool2x2Rows rows = max_unpool_row_kernel<scalar_t>(g);
  run_2x2_kernel("max_pool2d_2x2_backward", g, planes, false, rows != nullptr, [&](TiledKernel kernel) {
    torch::stable::parallel_for(0, planes, plane_grain(plane_in), [&](int64_t begin, int64_t end) {
      PlaneOutput<scalar_t> output(planes * plane_in * static_cast<int64_t>(sizeof(scalar_t)), plane_in);
      // the rows kernel on the whole range, or on each plane where the planes are streamed (its
      // own stores took 1.3x the time on VGG's first pooling's gradient, 411 MB, on a Zen 3);
      // false, an index off its window: the plane kernels redo those planes
      auto by_rows = [&](int64_t first, int64_t count, scalar_t* target) {
        if constexpr (std::is_same_v<scalar_t, float>) {
          return kernel == TiledKernel::kRows && rows(dy + first * plane_out, indices + first * plane_out, count, g.Ho,
                                                      g.Wo, (planes - first) * plane_out, target);
        }
        return false;
      };
      if (!output.streams() && by_rows(begin, end - begin, dx + begin * plane_in)) return;
      std::vector<opmath_t<scalar_t>> buffer;
      for (int64_t plane = begin; plane < end; ++plane) {
        const scalar_t* dy_plane = dy + plane * plane_out;
        const int64_t* idx_plane = indices + plane * plane_out;
        scalar_t* dx_plane = output.target(dx + plane * plane_in);
        if (output.streams() && by_rows(plane, 1, dx_plane)) {
          output.finish(dx + plane * plane_in);
          continue;
        }
        if (!tiled || !max_unpool_plane_2x2(g, dy_plane, idx_plane, dx_plane)) {
          unpool_in_opmath(plane_in, dx_plane, buffer, [&](auto* target) {
            const std::optional<int64_t> bad = max_unpool_plane(plane_in, plane_out, dy_plane, idx_plane, target);
            if (bad && !any_bad.exchange(true)) bad_index.store(*bad);
          });
        }
        output.finish(dx + plane * plane_in);
      }
    });
  });
}

// ---------------------------------------------------------------------------
// Adaptive average pooling. Where the output size divides the input size, the
// windows are plain pooling windows (kernel = stride = in / out) and the average
// pooling kernels above run; a 1x1 output (global pooling) sums whole planes.

struct AdaptiveWindows {
  std::vector<int64_t> start, end;
  AdaptiveWindows(int64_t out, int64_t in) {
    for (int64_t o = 0; o < out; ++o) {
      start.push_back(adaptive_start(o, out, in));
      end.push_back(adaptive_end(o, out, in));
    }
  }
};

template <typename scalar_t>
void adaptive_pool_plane(const AdaptiveWindows& rows, const AdaptiveWindows& cols, int64_t W,
                         const scalar_t* x, scalar_t* y) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t Ho = rows.start.size(), Wo = cols.start.size();
  for (int64_t oh = 0; oh < Ho; ++oh)
    for (int64_t ow = 0; ow < Wo; ++ow) {
      acc_t sum = 0;
      for (int64_t ih = rows.start[oh]; ih < rows.end[oh]; ++ih)
        for (int64_t iw = cols.start[ow]; iw < cols.end[ow]; ++iw) sum += static_cast<acc_t>(x[ih * W + iw]);  // (short runs: c10's conversion, opmath.h)
      const int64_t count = (rows.end[oh] - rows.start[oh]) * (cols.end[ow] - cols.start[ow]);
      y[oh * Wo + ow] = static_cast<scalar_t>(sum / static_cast<acc_t>(count));
    }
}

template <typename scalar_t>
void adaptive_unpool_plane(const AdaptiveWindows& rows, const AdaptiveWindows& cols, int64_t H, int64_t W,
                           const scalar_t* dy, opmath_t<scalar_t>* dx) {
  using acc_t = opmath_t<scalar_t>;
  const int64_t Ho = rows.start.size(), Wo = cols.start.size();
  std::fill_n(dx, H * W, acc_t(0));
  for (int64_t oh = 0; oh < Ho; ++oh)
    for (int64_t ow = 0; ow < Wo; ++ow) {
      const int64_t count = (rows.end[oh] - rows.start[oh]) * (cols.end[ow] - cols.start[ow]);
      const acc_t share = to_opmath(dy[oh * Wo + ow]) / static_cast<acc_t>(count);
      for (int64_t ih = rows.start[oh]; ih < rows.end[oh]; ++ih)
        for (int64_t iw = cols.start[ow]; iw < cols.end[ow]; ++iw) dx[ih * W + iw] += share;
    }
}

// Global average pooling: plane p of x (size `plane`) averages to y[p]. Every plane is summed in
// one order, on every ISA and for every dtype (sum_along_plane below): 16 partial sums along the
// plane (value k into sum k mod 16) per block of kGlobalSumBlock values (simd.h), the blocks'
// partial sums added into 16 totals in order, the totals added pairwise. float32 takes the
// vector kernels of this CPU (pool_tile.h: a register's lanes of planes of up to a block at once,
// or one larger plane's 16 sums in registers; the same sums), the rest (other types, the last
// planes) the loop below (a 56x56 plane's one running sum ran 10x slower than torch's mean).
// Planes [begin, end) of x by `kernel` (float32 only; none for other types): the planes done.
template <typename scalar_t>
int64_t global_max_planes(GlobalMaxGroups kernel, int64_t begin, int64_t end, int64_t planes, int64_t plane,
                          const scalar_t* x, scalar_t* y, int64_t* indices) {
  if constexpr (std::is_same_v<scalar_t, float>) {
    if (kernel != nullptr)
      return kernel(x + begin * plane, end - begin, plane, (planes - begin) * plane, y + begin, indices + begin);
  }
  return 0;
}

// The sum of a plane in the order above: 16 partial sums along the plane (value k into sum k mod
// 16) in blocks of kGlobalSumBlock, added into 16 totals, the totals added pairwise.
template <typename scalar_t>
opmath_t<scalar_t> sum_along_plane(const scalar_t* x, int64_t plane) {
  using acc_t = opmath_t<scalar_t>;
  acc_t total[16] = {};
  for (int64_t k0 = 0; k0 < plane; k0 += kGlobalSumBlock) {
    const int64_t end = std::min(plane, k0 + kGlobalSumBlock);
    acc_t part[16] = {};
    int64_t k = k0;
    for (; k + 16 <= end; k += 16)  // (16 at a time: a loop the compiler vectorises)
      for (int r = 0; r < 16; ++r) part[r] += to_opmath(x[k + r]);
    for (int64_t t = 0; k + t < end; ++t) part[t] += to_opmath(x[k + t]);
    for (int r = 0; r < 16; ++r) total[r] += part[r];
  }
  for (int step = 8; step >= 1; step /= 2)
    for (int i = 0; i < step; ++i) total[i] += total[i + step];
  return total[0];
}

// Planes [begin, end) in that order. Planes of up to a block of values, kTogether at a time, side
// by side (so that no add waits on the one before, and the compiler vectorises across planes; one
// plane at a time, a 3x3 plane's float64 mean took 35 ns); the pairwise adds skip the partial
// sums past a plane's end, which hold +0 and whose adds would change nothing (a partial sum is
// never -0). Larger planes, and the range's last few, one by one (float32: by the vector kernel
// `along_plane` of this CPU).
template <typename scalar_t>
CUCONV_VECTOR_CLONES void global_pool_range(int64_t begin, int64_t end, int64_t plane, double divisor,
                                            const scalar_t* x, scalar_t* y, GlobalSumAlongPlane along_plane) {
  using acc_t = opmath_t<scalar_t>;
  const acc_t count = static_cast<acc_t>(divisor);
  constexpr int kTogether = 8;
  int64_t p = begin;
  if (plane <= kGlobalSumBlock) {
    const int64_t filled = std::min<int64_t>(plane, 16);  // partial sums that receive values
    for (; p + kTogether <= end; p += kTogether) {
      acc_t part[16][kTogether] = {};
      for (int64_t k = 0; k < plane; ++k)
        for (int i = 0; i < kTogether; ++i) part[k % 16][i] += to_opmath(x[(p + i) * plane + k]);
      for (int step = 8; step >= 1; step /= 2)
        for (int j = 0; j < step && j + step < filled; ++j)
          for (int i = 0; i < kTogether; ++i) part[j][i] += part[j + step][i];
      for (int i = 0; i < kTogether; ++i) y[p + i] = from_opmath<scalar_t>(part[0][i] / count);
    }
  }
  for (; p < end; ++p) {
    acc_t sum;
    if constexpr (std::is_same_v<scalar_t, float>)
      sum = along_plane != nullptr ? along_plane(x + p * plane, plane) : sum_along_plane(x + p * plane, plane);
    else
      sum = sum_along_plane(x + p * plane, plane);
    y[p] = from_opmath<scalar_t>(sum / count);
  }
}

// The element type the vector kernels read for scalar_t: bfloat16 and float16 as their bits.
template <typename scalar_t>
using VectorElement = std::conditional_t<std::is_same_v<scalar_t, c10::BFloat16>, uint16_t,
                                         std::conditional_t<std::is_same_v<scalar_t, c10::Half>, Float16Bits, scalar_t>>;

// The vector kernel of this CPU for planes of scalar_t (simd.h), or null (the generic ISA, and
// float16 on a CPU without F16C).
template <typename scalar_t>
GlobalPoolGroups<VectorElement<scalar_t>> global_pool_groups_of() {
  if constexpr (std::is_same_v<scalar_t, float>) return pool_vector_kernels().global_pool;
  else if constexpr (std::is_same_v<scalar_t, double>) return pool_vector_kernels().global_pool_double;
  else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) return pool_vector_kernels().global_pool_bf16;
  else if constexpr (std::is_same_v<scalar_t, c10::Half>) return pool_vector_kernels().global_pool_half;
  else return nullptr;
}

// The channels_last kernels of this CPU for scalar_t (simd.h), or none (the generic ISA, other
// dtypes, and float16 on a CPU without F16C).
template <typename scalar_t>
PoolPixelNhwc<VectorElement<scalar_t>> nhwc_kernels_of() {
  if constexpr (std::is_same_v<scalar_t, float>) return pool_vector_kernels().nhwc;
  else if constexpr (std::is_same_v<scalar_t, c10::BFloat16>) return pool_vector_kernels().nhwc_bf16;
  else if constexpr (std::is_same_v<scalar_t, c10::Half>) return pool_vector_kernels().nhwc_half;
  else return {};
}

// Global pooling of small float32 planes and its gradient have two vector kernels each (pool_tile.h):
// groups of a register's lanes of planes, and quads, 4 planes in 128-bit registers. Which is
// faster depends on the CPU (a Zen 1, whose vector units are 128 bits wide, ran the quads in 0.6
// of the groups' time forward and 0.4 backward on ResNet's 3x3 planes) and on the plane's size,
// so it is measured per shape as the tiled 2x2 kernels are (run_2x2_kernel; tuner.h:
// pool_groups, pool_quads); with CUCONV_CPU_TUNE=0 the groups run. Both sum (divide, store) in
// the same order: the same bits. run(quads) does the whole pass with one of them.
template <typename Run>
void run_global_kernel(const char* pass, int64_t planes, int64_t plane, Run run) {
  if (!tuning_enabled()) return run(false);
  char key[160];
  std::snprintf(key, sizeof key, "%s float32 planes=%lld plane=%lld threads=%d isa=%s", pass,
                static_cast<long long>(planes), static_cast<long long>(plane),
                static_cast<int>(torch::stable::get_num_threads()), pool_vector_kernels().isa);
  run_tuned(key, {{kernel_name(KernelName::kPoolGroups), [&] { run(false); }},
                  {kernel_name(KernelName::kPoolQuads), [&] { run(true); }}});
}

template <typename scalar_t>
void global_pool(int64_t planes, int64_t plane, double divisor, const scalar_t* x, scalar_t* y) {
  using Element = VectorElement<scalar_t>;
  const GlobalPoolGroups<Element> groups_kernel = plane <= kGlobalSumBlock ? global_pool_groups_of<scalar_t>() : nullptr;
  GlobalSumAlongPlane along_plane = nullptr;
  if constexpr (std::is_same_v<scalar_t, float>) along_plane = pool_vector_kernels().global_sum_along_plane;
  auto run = [&](GlobalPoolGroups<Element> kernel) {
    torch::stable::parallel_for(0, planes, plane_grain(plane), [&](int64_t begin, int64_t end) {
      if (kernel != nullptr)
        begin += kernel(reinterpret_cast<const Element*>(x + begin * plane), end - begin, plane, divisor,
                        (planes - begin) * plane, reinterpret_cast<Element*>(y + begin));
      global_pool_range(begin, end, plane, divisor, x, y, along_plane);
    });
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    const GlobalPoolGroups<float> quads = pool_vector_kernels().global_pool_quads;
    if (groups_kernel != nullptr && quads != nullptr)
      return run_global_kernel("global_avg_pool_forward", planes, plane,
                               [&](bool use_quads) { run(use_quads ? quads : groups_kernel); });
  }
  run(groups_kernel);
}

// Its gradient: every element of plane p gets dy[p] / divisor. Planes of at most kSpan
// elements are written as one store of kSpan copies each (a vector store, not one per
// element: 2x faster on ResNet's 3x3 planes) that runs into the next plane, which the next
// store overwrites (planes in increasing order); the range's last planes, whose span would
// leave the range (another thread's), are filled exactly.
template <typename scalar_t>
CUCONV_VECTOR_CLONES void global_unpool_range(int64_t begin, int64_t end, int64_t plane, double divisor, const scalar_t* dy,
                                              scalar_t* dx) {
  using acc_t = opmath_t<scalar_t>;
  constexpr int64_t kSpan = 16;
  auto share = [&](int64_t p) {
    return from_opmath<scalar_t>(acc_t(0) + to_opmath(dy[p]) / static_cast<acc_t>(divisor));
  };
  int64_t p = begin;
  if (plane <= kSpan) {
    for (; p < end && p * plane + kSpan <= end * plane; ++p) {
      const scalar_t value = share(p);
      scalar_t* d = dx + p * plane;
      for (int64_t k = 0; k < kSpan; ++k) d[k] = value;
    }
  }
  for (; p < end; ++p) std::fill_n(dx + p * plane, plane, share(p));
}

// float32 planes of at most 16 values take a vector kernel of this CPU (pool_tile.h: AVX-512 or
// AVX2), groups of a register's lanes of planes or quads, whichever measured faster for the shape
// (run_global_kernel), 2x faster again; the range's last planes the kernel above.
template <typename scalar_t>
void global_unpool(int64_t planes, int64_t plane, double divisor, const scalar_t* dy, scalar_t* dx) {
  auto run = [&](GlobalUnpoolGroups kernel) {
    torch::stable::parallel_for(0, planes, plane_grain(plane), [&](int64_t begin, int64_t end) {
      if constexpr (std::is_same_v<scalar_t, float>) {
        if (kernel.run != nullptr) {
          const int64_t groups = (end - begin) / kernel.planes;
          kernel.run(dy + begin, groups, plane, static_cast<float>(divisor), dx + begin * plane);
          begin += groups * kernel.planes;
        }
      }
      global_unpool_range(begin, end, plane, divisor, dy, dx);
    });
  };
  if constexpr (std::is_same_v<scalar_t, float>) {
    const GlobalUnpoolGroups groups = pool_vector_kernels().global_unpool, quads = pool_vector_kernels().global_unpool_quads;
    if (plane <= 16 && groups.run != nullptr && quads.run != nullptr)
      return run_global_kernel("global_avg_pool_backward", planes, plane,
                               [&](bool use_quads) { run(use_quads ? quads : groups); });
  }
  run(GlobalUnpoolGroups{});
}

// Adaptive windows as plain pooling windows, when the output size divides the input size.
std::optional<PoolGeometry> adaptive_as_pooling(int64_t H, int64_t W, int64_t Ho, int64_t Wo) {
  if (Ho == 0 || Wo == 0 || H % Ho != 0 || W % Wo != 0) return std::nullopt;
  const int64_t kernel[] = {H / Ho, W / Wo}, zero[] = {0, 0}, one[] = {1, 1};
  return PoolGeometry(H, W, Ho, Wo, kernel, kernel, zero, one);
}

// ---------------------------------------------------------------------------
// channels_last (NHWC): a pixel's C channels are contiguous, so every loop below runs over
// channels innermost (the vector axis), window by window; the output is NHWC too, as
// torch's. Index math as above, with x[n, ih, iw, c] at ((n*H + ih)*W + iw)*C + c; max
// pooling's indices are ih*W + iw, as in NCHW. Forward: the N*Ho output rows are split
// across threads; backward: whole samples (windows overlap), each sample's gradient
// zeroed and filled while in cache (half types through a float buffer, rounded once).

// The windows of average and adaptive pooling as [row_start, row_end) x [col_start,
// col_end) with each output's divisor: one table for both, worked out once per call.
struct WindowTable {
  int64_t Ho, Wo;
  std::vector<int64_t> row_start, row_end, col_start, col_end;
  std::vector<double> divisor;  // [Ho * Wo]

  WindowTable(const PoolGeometry& g, const AvgPlan& plan) : Ho(g.Ho), Wo(g.Wo) {
    for (const AvgWindow& r : plan.rows) row_start.push_back(r.start), row_end.push_back(r.end);
    for (const AvgWindow& c : plan.cols) col_start.push_back(c.start), col_end.push_back(c.end);
    for (int64_t oh = 0; oh < Ho; ++oh)
      for (int64_t ow = 0; ow < Wo; ++ow) divisor.push_back(plan.divisor(plan.row_factor[oh], ow));
  }
  WindowTable(const AdaptiveWindows& rows, const AdaptiveWindows& cols)
      : Ho(rows.start.size()), Wo(cols.start.size()), row_start(rows.start), row_end(rows.end),
        col_start(cols.start), col_end(cols.end) {
    for (int64_t oh = 0; oh < Ho; ++oh)
      for (int64_t ow = 0; ow < Wo; ++ow)
        divisor.push_back(static_cast<double>((row_end[oh] - row_start[oh]) * (col_end[ow] - col_start[ow])));
  }
  // Whether no two windows share a pixel (global pooling's one window, windows that tile the
  // plane): the gradient's pixels then each take one share, stored rather than added.
  bool disjoint() const {
    for (int64_t oh = 1; oh < Ho; ++oh)
      if (row_start[oh] < row_end[oh - 1]) return false;
    for (int64_t ow = 1; ow < Wo; ++ow)
      if (col_start[ow] < col_end[ow - 1]) return false;
    return true;
  }
  // The pixels of an H x W plane that some window holds, if they are disjoint.
  int64_t covered_if_disjoint() const {
    int64_t rows = 0, cols = 0;
    for (int64_t oh = 0; oh < Ho; ++oh) rows += std::max<int64_t>(0, row_end[oh] - row_start[oh]);
    for (int64_t ow = 0; ow < Wo; ++ow) cols += std::max<int64_t>(0, col_end[ow] - col_start[ow]);
    return rows * cols;
  }
  // The most pixels a window holds (the work of an output pixel, for the grain of the work split).
  int64_t largest_window() const {
    int64_t rows = 1, cols = 1;
    for (int64_t oh = 0; oh < Ho; ++oh) rows = std::max(rows, row_end[oh] - row_start[oh]);
    for (int64_t ow = 0; ow < Wo; ++ow) cols = std::max(cols, col_end[ow] - col_start[ow]);
    return rows * cols;
  }
};

// How the NHWC loop below keeps a window's running maximum, with torch's rule (v replaces best
// when v > best or v is NaN): as the op-math value; float16 as its bits, never converted (the
// conversion costs more than the compare, opmath.h), compared by a key that orders as the values
// do (sign and magnitude to two's complement: -0 and +0 tie), NaN apart.
template <typename T>
struct RunningMax {
  using type = opmath_t<T>;
  static type of(T v) { return to_opmath(v); }
  static T value(type m) { return from_opmath<T>(m); }
  static bool takes(type v, type best) { return (v > best) | (v != v); }
};
template <>
struct RunningMax<c10::Half> {
  using type = int16_t;
  static type of(c10::Half v) { return static_cast<int16_t>(v.x); }
  static c10::Half value(type m) { return c10::Half(static_cast<uint16_t>(m), c10::Half::from_bits()); }
  static bool takes(type v, type best) {
    const int16_t magnitude_v = v & 0x7FFF, magnitude_best = best & 0x7FFF;
    const int16_t sign_v = v >> 15, sign_best = best >> 15;  // all ones if negative
    const int16_t key_v = (magnitude_v ^ sign_v) - sign_v, key_best = (magnitude_best ^ sign_best) - sign_best;
    const bool nan_v = magnitude_v > 0x7C00, nan_best = magnitude_best > 0x7C00;
    return ((key_v > key_best) & !nan_v & !nan_best) | nan_v;
  }
};

// One pixel's C channels px into the running maxima of a window. (A function of its own with
// __restrict__ pointers: inside the row kernel GCC compiled this loop to scalar code with
// branches for some types, 3x slower.)
template <typename scalar_t, typename index_t>
CUCONV_INLINE_INTO_CLONES void take_pixel_maxima(const scalar_t* __restrict__ px, index_t position, int64_t C,
                                                 typename RunningMax<scalar_t>::type* __restrict__ best,
                                                 index_t* __restrict__ best_index) {
  using Max = RunningMax<scalar_t>;
  for (int64_t c = 0; c < C; ++c) {
    const typename Max::type v = Max::of(px[c]);
    const bool takes = Max::takes(v, best[c]);
    best[c] = takes ? v : best[c];
    best_index[c] = takes ? position : best_index[c];
  }
}

// Output row oh of max pooling over one sample: y and indices hold Wo x C values. Per output
// pixel, the window's in-bounds pixels are listed once (`window`; the first stands for an all
// -inf window, as torch). float32 and bfloat16 with 32-bit indices run the vector kernels of
// this CPU where there are (`vector`, pool_tile.h: a register of channels at a time over the
// whole window); other channels keep the running maximum and its index (index_t: 32 bits
// where the plane allows, so the compare-and-select vectorises in lanes of one width) in
// `best` (RunningMax) / `best_index`, written out once.
template <typename scalar_t, typename index_t>
CUCONV_VECTOR_CLONES void max_pool_row_nhwc(const PoolGeometry& g, int64_t C, int64_t oh, const scalar_t* x,
                                            scalar_t* __restrict__ y, int64_t* __restrict__ indices,
                                            const PoolPixelNhwc<VectorElement<scalar_t>>& vector,
                                            index_t* __restrict__ window,
                                            typename RunningMax<scalar_t>::type* __restrict__ best,
                                            index_t* __restrict__ best_index) {
  using Max = RunningMax<scalar_t>;
  for (int64_t ow = 0; ow < g.Wo; ++ow) {
    int64_t taps = 0;
    for (int64_t ih = g.first_row(oh); ih < g.end_row(oh); ih += g.dH)
      for (int64_t j = 0; j < g.kW; ++j) {
        const int64_t iw = ow * g.sW + g.column_offset(j);
        if (iw >= 0 && iw < g.W) window[taps++] = static_cast<index_t>(ih * g.W + iw);
      }
    int64_t c0 = 0;
    if constexpr (std::is_same_v<index_t, int32_t>) {
      using Element = VectorElement<scalar_t>;
      if (vector.max != nullptr)
        c0 = vector.max(reinterpret_cast<const Element*>(x), C, window, taps, reinterpret_cast<Element*>(y + ow * C),
                        indices + ow * C);
    }
    if (c0 == C) continue;
    const scalar_t* first = x + window[0] * C;
    for (int64_t c = c0; c < C; ++c) best[c] = Max::of(first[c]), best_index[c] = window[0];
    for (int64_t t = 1; t < taps; ++t) take_pixel_maxima(x + window[t] * C + c0, window[t], C - c0, best + c0, best_index + c0);
    for (int64_t c = c0; c < C; ++c) y[ow * C + c] = Max::value(best[c]), indices[ow * C + c] = best_index[c];
  }
}

template <typename scalar_t>
void max_pool_nhwc(const PoolGeometry& g, int64_t N, int64_t C, const scalar_t* x, scalar_t* y, int64_t* indices) {
  const auto vector = nhwc_kernels_of<scalar_t>();
  auto run = [&](auto index_zero) {
    using index_t = decltype(index_zero);
    // (the grain counts the values an output row reads: global pooling's one row reads the sample)
    torch::stable::parallel_for(0, N * g.Ho, plane_grain(g.Wo * C * g.kH * g.kW), [&](int64_t begin, int64_t end) {
      std::vector<index_t> window(g.kH * g.kW), best_index(C);
      std::vector<typename RunningMax<scalar_t>::type> best(C);
      for (int64_t row = begin; row < end; ++row) {
        const int64_t out = row * g.Wo * C;
        max_pool_row_nhwc(g, C, row % g.Ho, x + row / g.Ho * g.H * g.W * C, y + out, indices + out, vector,
                          window.data(), best.data(), best_index.data());
      }
    });
  };
  g.H * g.W <= std::numeric_limits<int32_t>::max() ? run(int32_t{0}) : run(int64_t{0});
}

// Tiled 2x2 windows (tiled_2x2), channels innermost: every element of dx is written once, the
// gradient where the index is that pixel and 0 elsewhere in its window (no zeroing pass, no
// scatter; the compare-and-select loop over channels vectorises). Returns false when an index
// is not a pixel of its window (the caller then scatters the sample in general, as torch would).
template <typename scalar_t>
CUCONV_VECTOR_CLONES bool max_unpool_sample_nhwc_2x2(const PoolGeometry& g, int64_t C, const scalar_t* dy,
                                                     const int64_t* indices, scalar_t* __restrict__ dx) {
  int64_t missed = 0;
  for (int64_t oh = 0; oh < g.Ho; ++oh)
    for (int64_t ow = 0; ow < g.Wo; ++ow) {
      const int64_t corner = 2 * oh * g.W + 2 * ow, W = g.W, o = (oh * g.Wo + ow) * C;
      scalar_t *d00 = dx + corner * C, *d01 = d00 + C, *d10 = d00 + W * C, *d11 = d10 + C;
      for (int64_t c = 0; c < C; ++c) {
        const int64_t at = indices[o + c] - corner;
        const scalar_t v = dy[o + c];
        d00[c] = at == 0 ? v : scalar_t(0);
        d01[c] = at == 1 ? v : scalar_t(0);
        d10[c] = at == W ? v : scalar_t(0);
        d11[c] = at == W + 1 ? v : scalar_t(0);
        missed += (at != 0) & (at != 1) & (at != W) & (at != W + 1);
      }
    }
  // a last row or column that no window covers (odd H or W) gets no gradient
  for (int64_t h = 0; h < g.H; ++h) {
    const int64_t from = h < 2 * g.Ho ? 2 * g.Wo : 0;
    std::fill(dx + (h * g.W + from) * C, dx + (h + 1) * g.W * C, scalar_t(0));
  }
  return missed == 0;
}

// The first index outside the plane is skipped and returned, as max_unpool_plane.
template <typename scalar_t>
CUCONV_VECTOR_CLONES std::optional<int64_t> max_unpool_sample_nhwc(int64_t plane_in, int64_t plane_out, int64_t C,
                                                                   const scalar_t* dy, const int64_t* indices,
                                                                   opmath_t<scalar_t>* __restrict__ dx) {
  using acc_t = opmath_t<scalar_t>;
  std::fill_n(dx, plane_in * C, acc_t(0));
  std::optional<int64_t> bad;
  for (int64_t p = 0; p < plane_out * C; p += C)
    for (int64_t c = 0; c < C; ++c) {
      const int64_t target = indices[p + c];
      if (target < 0 || target >= plane_in) {
        if (!bad) bad = target;
        continue;
      }
      dx[target * C + c] += to_opmath(dy[p + c]);
    }
  return bad;
}

// y[n, oh, ow, :] = the window's sum / its divisor, each channel's pixels added in (row, column)
// order from 0. float16 runs the vector kernel of this CPU where there is one (`vector`,
// pool_tile.h, converted in registers by F16C).
// Otherwise blocks of kBlock channels are summed in registers over the whole window (a sum kept
// in memory waits on its own store every pixel: global pooling of 28x28 planes took 2.5x
// torch's time), the channels past the last block in `sum`.
template <typename scalar_t>
CUCONV_VECTOR_CLONES void avg_pool_row_nhwc(const WindowTable& t, int64_t W, int64_t C, int64_t oh, const scalar_t* x,
                                            scalar_t* __restrict__ y, opmath_t<scalar_t>* __restrict__ sum,
                                            const PoolPixelNhwc<VectorElement<scalar_t>>& vector) {
  using acc_t = opmath_t<scalar_t>;
  // (float and double only: half types, converted in the loop, measured slower so; the vector
  // kernel of float32 and bfloat16, pool_tile.h, measured no faster than these loops)
  constexpr int64_t kBlock = std::is_same_v<scalar_t, acc_t> ? 256 / sizeof(acc_t) : 0;  // (8 AVX2 registers)
  for (int64_t ow = 0; ow < t.Wo; ++ow) {
    const acc_t divisor = static_cast<acc_t>(t.divisor[oh * t.Wo + ow]);
    auto for_each_pixel = [&](auto add) __attribute__((always_inline)) {
      for (int64_t ih = t.row_start[oh]; ih < t.row_end[oh]; ++ih)
        for (int64_t iw = t.col_start[ow]; iw < t.col_end[ow]; ++iw) add(x + (ih * W + iw) * C);
    };
    int64_t c0 = 0;
    if (vector.avg != nullptr) {
      using Element = VectorElement<scalar_t>;
      const PoolRectangle window{t.row_start[oh], t.row_end[oh], t.col_start[ow], t.col_end[ow], W};
      c0 = vector.avg(reinterpret_cast<const Element*>(x), C, window, static_cast<float>(divisor),
                      reinterpret_cast<Element*>(y + ow * C));
    }
    for (; kBlock > 0 && c0 + kBlock <= C; c0 += kBlock) {
      acc_t block[kBlock > 0 ? kBlock : 1] = {};
      for_each_pixel([&](const scalar_t* px) __attribute__((always_inline)) {
#pragma GCC unroll 64
        for (int64_t c = 0; c < kBlock; ++c) block[c] += to_opmath(px[c0 + c]);
      });
#pragma GCC unroll 64
      for (int64_t c = 0; c < kBlock; ++c) y[ow * C + c0 + c] = from_opmath<scalar_t>(block[c] / divisor);
    }
    if (c0 == C) continue;
    std::fill(sum + c0, sum + C, acc_t(0));
    for_each_pixel([&](const scalar_t* px) __attribute__((always_inline)) {
      for (int64_t c = c0; c < C; ++c) sum[c] += to_opmath(px[c]);
    });
    for (int64_t c = c0; c < C; ++c) y[ow * C + c] = from_opmath<scalar_t>(sum[c] / divisor);
  }
}

template <typename scalar_t>
void avg_pool_nhwc(const WindowTable& t, int64_t N, int64_t H, int64_t W, int64_t C, const scalar_t* x, scalar_t* y) {
  const PoolPixelNhwc<VectorElement<scalar_t>> vector = nhwc_kernels_of<scalar_t>();
  // (the grain counts the values an output row reads: global pooling's one row reads the sample)
  torch::stable::parallel_for(0, N * t.Ho, plane_grain(t.Wo * C * t.largest_window()), [&](int64_t begin, int64_t end) {
    std::vector<opmath_t<scalar_t>> sum(C);
    for (int64_t row = begin; row < end; ++row) {
      const int64_t n = row / t.Ho, oh = row % t.Ho;
      avg_pool_row_nhwc(t, W, C, oh, x + n * H * W * C, y + row * t.Wo * C, sum.data(), vector);
    }
  });
}

// dx of one sample: every pixel of a window gets the output's share. Where no two windows share
// a pixel (disjoint), each pixel's share is stored once, 0 + share as the sum from 0 has it, and
// only a plane that the windows do not cover is zeroed first (the gradient op of ResNet's
// global pooling, 128 x 512 x 3 x 3 channels_last, took 104 us instead of 143 on a Zen 1).
template <typename scalar_t>
CUCONV_VECTOR_CLONES void avg_unpool_sample_nhwc(const WindowTable& t, bool disjoint, int64_t H, int64_t W,
                                                 int64_t C, const scalar_t* dy, opmath_t<scalar_t>* __restrict__ dx,
                                                 opmath_t<scalar_t>* __restrict__ share) {
  using acc_t = opmath_t<scalar_t>;
  if (disjoint) {
    if (t.covered_if_disjoint() < H * W) std::fill_n(dx, H * W * C, acc_t(0));
    for (int64_t oh = 0; oh < t.Ho; ++oh)
      for (int64_t ow = 0; ow < t.Wo; ++ow) {
        const acc_t divisor = static_cast<acc_t>(t.divisor[oh * t.Wo + ow]);
        const scalar_t* g = dy + (oh * t.Wo + ow) * C;
        for (int64_t c = 0; c < C; ++c) share[c] = acc_t(0) + to_opmath(g[c]) / divisor;
        for (int64_t ih = t.row_start[oh]; ih < t.row_end[oh]; ++ih)
          for (int64_t iw = t.col_start[ow]; iw < t.col_end[ow]; ++iw) std::copy_n(share, C, dx + (ih * W + iw) * C);
      }
    return;
  }
  std::fill_n(dx, H * W * C, acc_t(0));
  for (int64_t oh = 0; oh < t.Ho; ++oh)
    for (int64_t ow = 0; ow < t.Wo; ++ow) {
      const acc_t divisor = static_cast<acc_t>(t.divisor[oh * t.Wo + ow]);
      const scalar_t* g = dy + (oh * t.Wo + ow) * C;
      for (int64_t c = 0; c < C; ++c) share[c] = to_opmath(g[c]) / divisor;
      for (int64_t ih = t.row_start[oh]; ih < t.row_end[oh]; ++ih)
        for (int64_t iw = t.col_start[ow]; iw < t.col_end[ow]; ++iw) {
          acc_t* px = dx + (ih * W + iw) * C;
          for (int64_t c = 0; c < C; ++c) px[c] += share[c];
        }
    }
}

template <typename scalar_t>
void avg_unpool_nhwc(const WindowTable& t, int64_t N, int64_t H, int64_t W, int64_t C, const scalar_t* dy,
                     scalar_t* dx) {
  const bool disjoint = t.disjoint();
  torch::stable::parallel_for(0, N, 1, [&](int64_t begin, int64_t end) {
    std::vector<opmath_t<scalar_t>> buffer, share(C);
    for (int64_t n = begin; n < end; ++n) {
      unpool_in_opmath(H * W * C, dx + n * H * W * C, buffer, [&](auto* target) {
        avg_unpool_sample_nhwc(t, disjoint, H, W, C, dy + n * t.Ho * t.Wo * C, target, share.data());
      });
    }
  });
}

// Which kernels a channels_last tensor takes: the NHWC ones, except with one channel, where
// NHWC and NCHW are the same order in memory and the plane kernels (vectorised within a plane;
// the NHWC ones along channels, here one) write it; their results are channels_last all the same.
bool runs_nhwc(const Tensor& t) { return is_channels_last(t) && t.size(1) > 1; }

// A tensor of t's values laid out channels_last (t itself when it is).
Tensor channels_last_or_copy(const Tensor& t) {
  if (is_channels_last(t)) return t;
  Tensor copy = empty_channels_last_like(t, t.sizes());
  torch::stable::copy_(copy, t);
  return copy;
}

// Average pooling whose one window per plane covers the whole plane (a 7x7 kernel on 7x7
// planes: global pooling written as avg_pool2d) is global pooling with the plan's divisor: the
// same sums in the same order, 16 planes at a time (the plane kernels above vectorise along
// output columns, and one column left each sum waiting on its adds: 7x slower than torch).
bool window_is_whole_plane(const PoolGeometry& g, const AvgPlan& plan) {
  return g.Ho == 1 && g.Wo == 1 && plan.rows[0].start == 0 && plan.rows[0].end == g.H && plan.cols[0].start == 0 &&
         plan.cols[0].end == g.W;
}

// ---------------------------------------------------------------------------
// float16 as float32. The kernels above convert float16 value by value with c10's conversion
// wherever they read with a stride (NCHW windows) or scatter (every gradient): float16 pooling
// took 2-8x the float32 kernels' time (thirty-second session). So a float16 pass runs the float32
// one on chunks of samples converted by torch's copy (F16C), and its results are copied back,
// rounded to nearest even: the same sums in the same order, so the same bits as rounding the
// float32 result (a NaN's payload is kept, where c10's conversion writes 0x7E00). Not where
// float16 has fast kernels of its own:
// - channels_last max pooling's forward (it compares the values' bits, RunningMax), and average
//   pooling's (half_avg_pool_runs_natively: the vector kernel converts in registers with F16C,
//   pool_tile.h);
// - channels_last max pooling's gradient of tiled 2x2 windows (VGG's layer in the benchmark
//   suite: forward+backward 0.72 of torch's time so, 1.15 through float32 copies);
// - NCHW global average pooling of small planes (F16C, pool_tile.h) and its gradient (a fill).
// Chunks of about a quarter of the last-level cache in float32, so that the copies are read back
// from cache (CUCONV_CPU_HALF_CHUNK=n, a test switch, makes them n samples).

// Sizes with the batch replaced.
std::vector<int64_t> with_batch(IntArrayRef sizes, int64_t batch) {
  std::vector<int64_t> out(sizes.begin(), sizes.end());
  out[0] = batch;
  return out;
}

// Samples [first, first + count) of t, as float32 in t's layout (the whole tensor's: a chunk of
// one sample of a batch-strided tensor could pass for channels_last).
Tensor float_samples(const Tensor& t, int64_t first, int64_t count) {
  Tensor whole = t;
  const Tensor part = torch::stable::narrow(whole, 0, first, count);
  Tensor copy = empty_in_layout_of(t, part.sizes(), ScalarType::Float);
  torch::stable::copy_(copy, part);
  return copy;
}

// The results of `run(first, count)` (the float32 pass over samples [first, first + count); float
// results become float16, indices stay int64) over all `batch` samples, chunk by chunk; a sample's
// float32 inputs and outputs take `sample_bytes`.
std::vector<Tensor> via_float(int64_t batch, int64_t sample_bytes,
                              const std::function<std::vector<Tensor>(int64_t first, int64_t count)>& run) {
  const int64_t chunk = samples_per_chunk(sample_bytes, batch, 0.25, "CUCONV_CPU_HALF_CHUNK");
  std::vector<Tensor> parts = run(0, std::min(chunk, batch));
  std::vector<Tensor> results;
  for (const Tensor& part : parts) {  // (laid out as the float32 pass lays out its own: NCHW or NHWC)
    const ScalarType dtype = part.scalar_type() == ScalarType::Float ? ScalarType::Half : part.scalar_type();
    results.push_back(empty_strided_like(part, with_batch(part.sizes(), batch), part.strides(), dtype));
  }
  for (int64_t first = 0; first < batch; first += chunk) {
    if (first > 0) parts = run(first, std::min(chunk, batch - first));
    for (size_t i = 0; i < parts.size(); ++i) {
      Tensor slice = torch::stable::narrow(results[i], 0, first, parts[i].size(0));
      torch::stable::copy_(slice, parts[i]);
    }
  }
  return results;
}

// Whether average pooling of this float16 input runs kernels of its own (above) rather than
// via_float: the channels_last vector kernels (F16C) where a register's channels or more, NCHW
// global pooling's (F16C) on small planes.
bool half_avg_pool_runs_natively(const Tensor& input, bool whole_plane) {
  const int64_t plane = input.size(2) * input.size(3);
  const PoolVectorKernels kernels = pool_vector_kernels();
  if (runs_nhwc(input)) return kernels.nhwc_half.avg != nullptr && input.size(1) >= kernels.nhwc_half.lanes;
  return whole_plane && plane <= kGlobalSumBlock && kernels.global_pool_half != nullptr;
}

}  // namespace

std::tuple<Tensor, Tensor> max_pool2d_forward_cpu(const Tensor& input,
                                                          IntArrayRef kernel_size,
                                                          IntArrayRef stride, IntArrayRef padding,
                                                          IntArrayRef dilation, bool ceil_mode) {
  const char* op = "cuconv.max_pool2d";
  const auto s = check_max_pool2d(op, input, kernel_size, stride, padding, dilation, ceil_mode);
  const PoolGeometry g(s.in_h, s.in_w, s.out_h, s.out_w, kernel_size, stride, padding, dilation);
  if (input.scalar_type() == ScalarType::Half && !runs_nhwc(input)) {
    const int64_t sample_bytes = s.channels * (g.H * g.W + 3 * g.Ho * g.Wo) * 4;
    const std::vector<Tensor> results = via_float(s.batch, sample_bytes, [&](int64_t first, int64_t count) {
      const auto [y, indices] = max_pool2d_forward_cpu(float_samples(input, first, count), kernel_size, stride, padding,
                                                       dilation, ceil_mode);
      return std::vector<Tensor>{y, indices};
    });
    return {results[0], results[1]};
  }
  if (runs_nhwc(input)) {
    Tensor y = empty_channels_last_like(input, {s.batch, s.channels, s.out_h, s.out_w});
    Tensor indices = empty_channels_last_like(input, {s.batch, s.channels, s.out_h, s.out_w}, ScalarType::Long);
    CUCONV_DISPATCH_FLOATING_AND_INTEGER(input.scalar_type(), "max_pool2d_forward_cpu", [&] {
      max_pool_nhwc(g, s.batch, s.channels, input.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>(),
                    indices.mutable_data_ptr<int64_t>());
    });
    return {y, indices};
  }
  const Tensor x = contiguous_or_self(input);
  Tensor y = empty_in_layout_of(input, {s.batch, s.channels, s.out_h, s.out_w});
  Tensor indices = empty_in_layout_of(input, {s.batch, s.channels, s.out_h, s.out_w}, ScalarType::Long);

  std::vector<int64_t> first_column(g.Wo);
  for (int64_t ow = 0; ow < g.Wo; ++ow) {
    int64_t w0 = ow * g.sW - g.pW;
    while (w0 < 0) w0 += g.dW;
    first_column[ow] = w0;
  }
  // The running argmax is kept in 32 bits when the plane allows: a float value and an
  // int32 index share a vector lane width, so the select vectorises.
  const bool small_plane = g.H * g.W <= std::numeric_limits<int32_t>::max();
  const bool tiled = tiled_2x2(g), stride2 = separable_stride2(g);
  const std::vector<int32_t> origins = tiled && g.Wo < kShortRow ? window_origins_2x2(g) : std::vector<int32_t>();

  // A window over the whole plane (global max pooling) takes the float32 vector kernel of this
  // CPU (pool_tile.h: 16 planes at once, same results) where it has one; the plane kernel
  // vectorises along output columns, and one column was 2-5x slower than torch.
  const int64_t planes = s.batch * s.channels;
  const bool whole_plane = g.Ho == 1 && g.Wo == 1 && g.dH == 1 && g.dW == 1 && g.kH - g.pH >= g.H &&
                           g.kW - g.pW >= g.W && small_plane;
  const GlobalMaxGroups global_max = whole_plane ? pool_vector_kernels().global_max : nullptr;

  CUCONV_DISPATCH_FLOATING_AND_INTEGER(input.scalar_type(), "max_pool2d_forward_cpu", [&] {
    using acc_t = opmath_t<scalar_t>;
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    int64_t* idx_data = indices.mutable_data_ptr<int64_t>();
    auto run = [&](auto index_zero) {
      using index_t = decltype(index_zero);
      torch::stable::parallel_for(0, planes, plane_grain(g.H * g.W), [&](int64_t begin, int64_t end) {
        std::vector<acc_t> best(g.Wo);
        std::vector<index_t> best_index(g.Wo);
        std::vector<acc_t> row_best(stride2 ? g.H * g.Wo : 0);
        std::vector<int32_t> row_index(row_best.size()), stride2_index(stride2 ? g.Wo : 0);
        begin += global_max_planes(global_max, begin, end, planes, g.H * g.W, x_data, y_data, idx_data);
        for (int64_t plane = begin; plane < end; ++plane) {
          const scalar_t* x_plane = x_data + plane * g.H * g.W;
          const int64_t out = plane * g.Ho * g.Wo;
          if (stride2) {
            max_pool_plane_stride2(g, x_plane, y_data + out, idx_data + out, row_best.data(), row_index.data(),
                                   best.data(), stride2_index.data());
          } else if (tiled) {
            max_pool_plane_2x2(g, origins.empty() ? nullptr : origins.data(), x_plane, y_data + out, idx_data + out);
          } else {
            max_pool_plane(g, first_column.data(), x_plane, y_data + out, idx_data + out, best.data(),
                           best_index.data());
          }
        }
      });
    };
    small_plane ? run(int32_t{0}) : run(int64_t{0});
  });
  return {y, indices};
}

Tensor max_pool2d_backward_cpu(const Tensor& grad_output, const Tensor& indices,
                                   IntArrayRef input_size, IntArrayRef kernel_size,
                                   IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                                   bool ceil_mode) {
  const char* op = "cuconv.max_pool2d_backward";
  const auto s = check_max_pool2d_backward(op, grad_output, indices, input_size, kernel_size,
                                                    stride, padding, dilation, ceil_mode);
  const PoolGeometry g(s.in_h, s.in_w, s.out_h, s.out_w, kernel_size, stride, padding, dilation);
  const int64_t plane_in = g.H * g.W, plane_out = g.Ho * g.Wo;
  if (grad_output.scalar_type() == ScalarType::Half && !(runs_nhwc(grad_output) && tiled_2x2(g))) {
    return via_float(s.batch, s.channels * (plane_in + 3 * plane_out) * 4, [&](int64_t first, int64_t count) {
      Tensor all_indices = indices;
      return std::vector<Tensor>{max_pool2d_backward_cpu(
          float_samples(grad_output, first, count), torch::stable::narrow(all_indices, 0, first, count),
          with_batch(input_size, count), kernel_size, stride, padding, dilation, ceil_mode)};
    })[0];
  }
  if (runs_nhwc(grad_output)) {
    const Tensor idx = channels_last_or_copy(indices);
    Tensor dx = empty_channels_last_like(grad_output, input_size);
    CUCONV_DISPATCH_FLOATING(grad_output.scalar_type(), "max_pool2d_backward_cpu", [&] {
      const scalar_t* dy_data = grad_output.const_data_ptr<scalar_t>();
      const int64_t* idx_data = idx.const_data_ptr<int64_t>();
      scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
      const int64_t C = s.channels;
      const bool tiled = tiled_2x2(g);
      std::atomic<bool> any_bad{false};
      std::atomic<int64_t> bad_index{0};
      // (streamed a sample at a time, from a buffer of up to a quarter of each thread's share of
      // the last-level cache: ResNet's stem's samples are larger than a Zen 3's L2)
      const int64_t sample_buffer_limit = last_level_cache_bytes() / 4 / torch::stable::get_num_threads();
      torch::stable::parallel_for(0, s.batch, 1, [&](int64_t begin, int64_t end) {
        std::vector<opmath_t<scalar_t>> buffer;
        PlaneOutput<scalar_t> output(s.batch * plane_in * C * static_cast<int64_t>(sizeof(scalar_t)), plane_in * C,
                                     sample_buffer_limit);
        for (int64_t n = begin; n < end; ++n) {
          scalar_t* dx_n = output.target(dx_data + n * plane_in * C);
          if (!tiled || !max_unpool_sample_nhwc_2x2(g, C, dy_data + n * plane_out * C, idx_data + n * plane_out * C,
                                                     dx_n)) {
            unpool_in_opmath(plane_in * C, dx_n, buffer, [&](auto* target) {
              const std::optional<int64_t> bad = max_unpool_sample_nhwc(
                  plane_in, plane_out, C, dy_data + n * plane_out * C, idx_data + n * plane_out * C, target);
              if (bad && !any_bad.exchange(true)) bad_index.store(*bad);
            });
          }
          output.finish(dx_data + n * plane_in * C);
        }
      });
      CUCONV_CHECK_INDEX(!any_bad.load(), op, ": index ", bad_index.load(),
                         " in indices is outside the input plane of ", plane_in, " pixels");
    });
    return dx;
  }
  const Tensor dy = contiguous_or_self(grad_output);
  const Tensor idx = contiguous_or_self(indices);
  Tensor dx = empty_in_layout_of(grad_output, input_size);

  const int64_t planes = s.batch * s.channels;

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "max_pool2d_backward_cpu", [&] {
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    const int64_t* idx_data = idx.const_data_ptr<int64_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    std::atomic<bool> any_bad{false};
    std::atomic<int64_t> bad_index{0};
    max_unpool_planes(g, planes, dy_data, idx_data, dx_data, any_bad, bad_index);
    CUCONV_CHECK_INDEX(!any_bad.load(), op, ": index ", bad_index.load(),
                       " in indices is outside the input plane of ", plane_in, " pixels");
  });
  return dx;
}

Tensor avg_pool2d_forward_cpu(const Tensor& input, IntArrayRef kernel_size,
                                  IntArrayRef stride, IntArrayRef padding, bool ceil_mode,
                                  bool count_include_pad, std::optional<int64_t> divisor_override) {
  const char* op = "cuconv.avg_pool2d";
  const auto s = check_avg_pool2d(op, input, kernel_size, stride, padding, ceil_mode, divisor_override, Integers::kInt64);
  const int64_t no_dilation[] = {1, 1};
  const PoolGeometry g(s.in_h, s.in_w, s.out_h, s.out_w, kernel_size, stride, padding, no_dilation);
  const AvgPlan plan(g, count_include_pad, divisor_override);
  if (input.scalar_type() == ScalarType::Half && !half_avg_pool_runs_natively(input, window_is_whole_plane(g, plan))) {
    return via_float(s.batch, s.channels * (g.H * g.W + g.Ho * g.Wo) * 4, [&](int64_t first, int64_t count) {
      return std::vector<Tensor>{avg_pool2d_forward_cpu(float_samples(input, first, count), kernel_size, stride,
                                                        padding, ceil_mode, count_include_pad, divisor_override)};
    })[0];
  }
  // (int64 as torch's CPU average pooling: sums in int64, each divided by its window's divisor,
  // rounding toward zero)
  if (runs_nhwc(input)) {
    Tensor y = empty_channels_last_like(input, {s.batch, s.channels, s.out_h, s.out_w});
    CUCONV_DISPATCH_FLOATING_AND_INT64(input.scalar_type(), "avg_pool2d_forward_cpu", [&] {
      avg_pool_nhwc(WindowTable(g, plan), s.batch, g.H, g.W, s.channels, input.const_data_ptr<scalar_t>(),
                    y.mutable_data_ptr<scalar_t>());
    });
    return y;
  }
  const Tensor x = contiguous_or_self(input);
  Tensor y = empty_in_layout_of(input, {s.batch, s.channels, s.out_h, s.out_w});

  CUCONV_DISPATCH_FLOATING_AND_INT64(input.scalar_type(), "avg_pool2d_forward_cpu", [&] {
    if (window_is_whole_plane(g, plan))
      global_pool(s.batch * s.channels, g.H * g.W, plan.divisor(plan.row_factor[0], 0), x.const_data_ptr<scalar_t>(),
                  y.mutable_data_ptr<scalar_t>());
    else
      avg_pool_planes(g, plan, s.batch * s.channels, x.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>());
  });
  return y;
}

Tensor avg_pool2d_backward_cpu(const Tensor& grad_output, IntArrayRef input_size,
                                   IntArrayRef kernel_size, IntArrayRef stride,
                                   IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                                   std::optional<int64_t> divisor_override) {
  const char* op = "cuconv.avg_pool2d_backward";
  const auto s = check_avg_pool2d_backward(op, grad_output, input_size, kernel_size, stride, padding,
                                                    ceil_mode, divisor_override);
  const int64_t no_dilation[] = {1, 1};
  const PoolGeometry g(s.in_h, s.in_w, s.out_h, s.out_w, kernel_size, stride, padding, no_dilation);
  const AvgPlan plan(g, count_include_pad, divisor_override);
  if (grad_output.scalar_type() == ScalarType::Half && (runs_nhwc(grad_output) || !window_is_whole_plane(g, plan))) {
    return via_float(s.batch, s.channels * (g.H * g.W + g.Ho * g.Wo) * 4, [&](int64_t first, int64_t count) {
      return std::vector<Tensor>{avg_pool2d_backward_cpu(float_samples(grad_output, first, count),
                                                         with_batch(input_size, count), kernel_size, stride, padding,
                                                         ceil_mode, count_include_pad, divisor_override)};
    })[0];
  }
  if (runs_nhwc(grad_output)) {
    Tensor dx = empty_channels_last_like(grad_output, input_size);
    CUCONV_DISPATCH_FLOATING(grad_output.scalar_type(), "avg_pool2d_backward_cpu", [&] {
      avg_unpool_nhwc(WindowTable(g, plan), s.batch, g.H, g.W, s.channels, grad_output.const_data_ptr<scalar_t>(),
                      dx.mutable_data_ptr<scalar_t>());
    });
    return dx;
  }
  const Tensor dy = contiguous_or_self(grad_output);
  Tensor dx = empty_in_layout_of(grad_output, input_size);

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "avg_pool2d_backward_cpu", [&] {
    if (window_is_whole_plane(g, plan))
      global_unpool(s.batch * s.channels, g.H * g.W, plan.divisor(plan.row_factor[0], 0), dy.const_data_ptr<scalar_t>(),
                    dx.mutable_data_ptr<scalar_t>());
    else
      avg_unpool_planes(g, plan, s.batch * s.channels, dy.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>());
  });
  return dx;
}

Tensor adaptive_avg_pool2d_forward_cpu(const Tensor& input, IntArrayRef output_size) {
  const char* op = "cuconv.adaptive_avg_pool2d";
  check_adaptive_avg_pool2d(op, input, output_size);
  const int64_t N = input.size(0), C = input.size(1), H = input.size(2), W = input.size(3);
  const int64_t Ho = output_size[0], Wo = output_size[1];
  if (input.scalar_type() == ScalarType::Half && !half_avg_pool_runs_natively(input, Ho == 1 && Wo == 1)) {
    return via_float(N, C * (H * W + Ho * Wo) * 4, [&](int64_t first, int64_t count) {
      return std::vector<Tensor>{adaptive_avg_pool2d_forward_cpu(float_samples(input, first, count), output_size)};
    })[0];
  }
  if (runs_nhwc(input)) {
    Tensor y = empty_channels_last_like(input, {N, C, Ho, Wo});
    CUCONV_DISPATCH_FLOATING(input.scalar_type(), "adaptive_avg_pool2d_forward_cpu", [&] {
      avg_pool_nhwc(WindowTable(AdaptiveWindows(Ho, H), AdaptiveWindows(Wo, W)), N, H, W, C,
                    input.const_data_ptr<scalar_t>(), y.mutable_data_ptr<scalar_t>());
    });
    return y;
  }
  const Tensor x = contiguous_or_self(input);
  Tensor y = empty_in_layout_of(input, {N, C, Ho, Wo});
  const std::optional<PoolGeometry> as_pooling = adaptive_as_pooling(H, W, Ho, Wo);

  CUCONV_DISPATCH_FLOATING(input.scalar_type(), "adaptive_avg_pool2d_forward_cpu", [&] {
    const scalar_t* x_data = x.const_data_ptr<scalar_t>();
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    if (Ho == 1 && Wo == 1) {
      global_pool(N * C, H * W, static_cast<double>(H * W), x_data, y_data);
    } else if (as_pooling.has_value()) {
      avg_pool_planes(*as_pooling, AvgPlan(*as_pooling, true, std::nullopt), N * C, x_data, y_data);
    } else {
      const AdaptiveWindows rows(Ho, H);
      const AdaptiveWindows cols(Wo, W);
      torch::stable::parallel_for(0, N * C, plane_grain(H * W), [&](int64_t begin, int64_t end) {
        for (int64_t plane = begin; plane < end; ++plane) {
          adaptive_pool_plane(rows, cols, W, x_data + plane * H * W, y_data + plane * Ho * Wo);
        }
      });
    }
  });
  return y;
}

Tensor adaptive_avg_pool2d_backward_cpu(const Tensor& grad_output, IntArrayRef input_size) {
  const char* op = "cuconv.adaptive_avg_pool2d_backward";
  check_adaptive_backward(op, grad_output.sizes(), input_size);
  const int64_t N = input_size[0], C = input_size[1], H = input_size[2], W = input_size[3];
  const int64_t Ho = grad_output.size(2), Wo = grad_output.size(3);
  if (grad_output.scalar_type() == ScalarType::Half && (runs_nhwc(grad_output) || !(Ho == 1 && Wo == 1))) {
    return via_float(N, C * (H * W + Ho * Wo) * 4, [&](int64_t first, int64_t count) {
      return std::vector<Tensor>{
          adaptive_avg_pool2d_backward_cpu(float_samples(grad_output, first, count), with_batch(input_size, count))};
    })[0];
  }
  if (runs_nhwc(grad_output)) {
    Tensor dx = empty_channels_last_like(grad_output, input_size);
    CUCONV_DISPATCH_FLOATING(grad_output.scalar_type(), "adaptive_avg_pool2d_backward_cpu", [&] {
      avg_unpool_nhwc(WindowTable(AdaptiveWindows(Ho, H), AdaptiveWindows(Wo, W)), N, H, W, C,
                      grad_output.const_data_ptr<scalar_t>(), dx.mutable_data_ptr<scalar_t>());
    });
    return dx;
  }
  const Tensor dy = contiguous_or_self(grad_output);
  Tensor dx = empty_in_layout_of(grad_output, input_size);
  const std::optional<PoolGeometry> as_pooling = adaptive_as_pooling(H, W, Ho, Wo);

  CUCONV_DISPATCH_FLOATING(dy.scalar_type(), "adaptive_avg_pool2d_backward_cpu", [&] {
    const scalar_t* dy_data = dy.const_data_ptr<scalar_t>();
    scalar_t* dx_data = dx.mutable_data_ptr<scalar_t>();
    if (Ho == 1 && Wo == 1) {
      global_unpool(N * C, H * W, static_cast<double>(H * W), dy_data, dx_data);
    } else if (as_pooling.has_value()) {
      avg_unpool_planes(*as_pooling, AvgPlan(*as_pooling, true, std::nullopt), N * C, dy_data, dx_data);
    } else {
      const AdaptiveWindows rows(Ho, H);
      const AdaptiveWindows cols(Wo, W);
      torch::stable::parallel_for(0, N * C, plane_grain(H * W), [&](int64_t begin, int64_t end) {
        std::vector<opmath_t<scalar_t>> buffer;
        for (int64_t plane = begin; plane < end; ++plane) {
          const scalar_t* dy_plane = dy_data + plane * Ho * Wo;
          unpool_in_opmath(H * W, dx_data + plane * H * W, buffer, [&](auto* target) {
            adaptive_unpool_plane(rows, cols, H, W, dy_plane, target);
          });
        }
      });
    }
  });
  return dx;
}

}  // namespace cuconv
