// Integer convolution on the CPU (uint8, int8, int16, int32, int64), as torch's CPU convolution
// takes them; forward only (integer tensors take no gradient).
//
// Index math, for sample n, output channel o of group g = o / O_g (C_g = C_in/groups input
// channels per group, O_g = C_out/groups output channels):
//
//   y[n, o, oh, ow] = bias[o] + sum over c < C_g, i < kH, j < kW of
//                     x[n, g*C_g + c, oh*sH - pH + i*dH, ow*sW - pW + j*dW] * w[o, c, i, j]
//
// taps in the padding adding nothing. The arithmetic is modulo 2^bits, as torch's (overflow wraps
// around, two's complement): products and sums in an unsigned type (wrapping_sum_t, whose
// arithmetic wraps by definition: a signed type's overflow is undefined behaviour), truncated to
// the dtype at the end. A sum modulo 2^16 (or more) truncates to the same value modulo 2^8 whatever
// the order of its terms, so every order of summation gives torch's bits.
//
// Two direct loop nests (no im2col, no GEMM), by the output channels per group O_g; both read the
// input through its strides (any layout, no copy) and write the output in the input's layout:
//   channel vectors (O_g >= kChannelLanes): one output row (n, oh) per task; the sums of each of
//     its pixels' O_g channels side by side, and every input pixel in reach of a tap times the
//     tap's O_g weights (transposed to lie side by side): a vector loop over the channels;
//   padded planes (fewer: depthwise filters, one-channel maps): one sample and group (n, g) per
//     task; each input channel copied once into a zero-padded plane, and for each output channel
//     and tap (i, j) the output plane adds the shifted input plane times the weight: a vector
//     loop over the pixels (padded_planes says how).
// Tasks are shared out over the threads; each thread sums into a buffer of its own.

#include <algorithm>
#include <cstdint>
#include <type_traits>
#include <vector>

#include "../shape.h"
#include "conv2d_integer.h"
#include "parallel.h"
#include "simd.h"

namespace cuconv {
namespace {

// The type the sums are computed in: unsigned (wrapping) and as wide as the dtype, but 16 bits for
// the 8-bit types (twice the vector lanes of 32-bit sums; modulo 2^16 they reduce to the same
// value modulo 2^8).
template <typename T>
using wrapping_sum_t = std::conditional_t<(sizeof(T) <= 2), uint16_t, std::conditional_t<(sizeof(T) == 4), uint32_t, uint64_t>>;

// sum + a*b modulo 2^bits of sum_t. (uint16_t operands would be promoted to int, whose overflow is
// undefined: the arithmetic is done in unsigned types of at least 32 bits.)
template <typename sum_t>
CUCONV_INLINE_INTO_CLONES sum_t wrapping_madd(sum_t sum, sum_t a, sum_t b) {
  using wide_t = std::conditional_t<(sizeof(sum_t) < 4), uint32_t, sum_t>;
  return static_cast<sum_t>(static_cast<wide_t>(sum) + static_cast<wide_t>(a) * static_cast<wide_t>(b));
}

// The outputs [first, last) along one axis whose tap at `offset` (= i*d - p) lands inside the
// input's `size` pixels: 0 <= out*stride + offset < size.
struct Reach {
  int64_t first, last;
};

Reach reach(int64_t size, int64_t offset, int64_t stride, int64_t outputs) {
  const int64_t first = offset >= 0 ? 0 : (-offset + stride - 1) / stride;
  const int64_t last = size - offset <= 0 ? 0 : (size - 1 - offset) / stride + 1;
  return {std::min(first, outputs), std::clamp(last, std::min(first, outputs), outputs)};
}

// Output channels per group from which the channel-vector loop runs: a 256-bit register of 32-bit
// sums (a rule of the vector width, not a tuned constant).
constexpr int64_t kChannelLanes = 8;

// The convolution's sizes and the strides of its input and output, in plain int64.
struct IntegerConv {
  int64_t batch, C, O, groups, H, W, Ho, Wo, kH, kW, sH, sW, pH, pW, dH, dW;  // C, O: per group
  int64_t x_n, x_c, x_h, x_w, y_n, y_c, y_h, y_w;                             // element strides
  // Enough multiply-adds per task to pay for a thread: the grain of `work` per task.
  static int64_t grain(int64_t work) { return std::max<int64_t>(1, 65536 / std::max<int64_t>(1, work)); }
};

// Channel vectors, output row (n, oh): the weights as sums, transposed to
// w_t[(((g*C + c)*kH + i)*kW + j)*O + o]; `sums` holds Wo*O. (Compiled for each vector ISA: the
// baseline x86-64's SSE2 has no 32-bit vector multiply.)
template <typename T, typename sum_t = wrapping_sum_t<T>>
CUCONV_VECTOR_CLONES void channel_vector_row(const IntegerConv& p, const T* x, const sum_t* w_t, const T* bias,
                                             int64_t n, int64_t oh, sum_t* __restrict__ sums, T* y) {
  for (int64_t g = 0; g < p.groups; ++g) {
    for (int64_t ow = 0; ow < p.Wo; ++ow)
      for (int64_t o = 0; o < p.O; ++o) sums[ow * p.O + o] = bias != nullptr ? static_cast<sum_t>(bias[g * p.O + o]) : sum_t(0);
    for (int64_t c = 0; c < p.C; ++c) {
      for (int64_t i = 0; i < p.kH; ++i) {
        const int64_t ih = oh * p.sH - p.pH + i * p.dH;
        if (ih < 0 || ih >= p.H) continue;
        const T* x_row = x + n * p.x_n + (g * p.C + c) * p.x_c + ih * p.x_h;
        for (int64_t j = 0; j < p.kW; ++j) {
          const Reach cols = reach(p.W, j * p.dW - p.pW, p.sW, p.Wo);
          const sum_t* __restrict__ weights = w_t + (((g * p.C + c) * p.kH + i) * p.kW + j) * p.O;
          for (int64_t ow = cols.first; ow < cols.last; ++ow) {
            const sum_t pixel = static_cast<sum_t>(x_row[(ow * p.sW + j * p.dW - p.pW) * p.x_w]);
            sum_t* __restrict__ pixel_sums = sums + ow * p.O;
            for (int64_t o = 0; o < p.O; ++o) pixel_sums[o] = wrapping_madd(pixel_sums[o], pixel, weights[o]);
          }
        }
      }
    }
    T* y_row = y + n * p.y_n + g * p.O * p.y_c + oh * p.y_h;
    for (int64_t ow = 0; ow < p.Wo; ++ow)
      for (int64_t o = 0; o < p.O; ++o) y_row[o * p.y_c + ow * p.y_w] = static_cast<T>(sums[ow * p.O + o]);  // (mod 2^bits)
  }
}

template <typename T>
void conv_by_channel_vectors(const IntegerConv& p, const T* x, const T* w, const T* bias, T* y) {
  using sum_t = wrapping_sum_t<T>;
  std::vector<sum_t> w_t(p.groups * p.C * p.kH * p.kW * p.O);
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t o = 0; o < p.O; ++o)
      for (int64_t k = 0; k < p.C * p.kH * p.kW; ++k)
        w_t[(g * p.C * p.kH * p.kW + k) * p.O + o] = static_cast<sum_t>(w[(g * p.O + o) * p.C * p.kH * p.kW + k]);
  parallel_chunks(0, p.batch * p.Ho, IntegerConv::grain(p.groups * p.C * p.kH * p.kW * p.Wo * p.O),
                  [&](ChunkQueue& chunks) {
    std::vector<sum_t> sums(p.Wo * p.O);  // one group's channels of one output row
    for (int64_t begin, end; chunks.next(begin, end);)
      for (int64_t row = begin; row < end; ++row)
        channel_vector_row(p, x, w_t.data(), bias, row / p.Ho, row % p.Ho, sums.data(), y);
  });
}

// Padded planes, sample n and group g, all O (< kChannelLanes) output channels at once: each
// input channel is copied once into `padded` (Hp x Wp, zeros around, widened to sum_t), so that
// no tap needs bounds. Output (oh, ow) of tap (i, j) reads padded[(oh*sH + i*dH)*Wp + ow*sW + j*dW].
// With stride 1 the sums live on a grid Wp wide (columns past Wo unused), where a tap is one run
// over the whole plane: sums[q] += padded[q + i*dH*Wp + j*dW] for q < (Ho-1)*Wp + Wo, a long
// vector loop (LeNet's 28-pixel rows were too short for one); otherwise row by row.
template <typename T, typename sum_t = wrapping_sum_t<T>>
CUCONV_VECTOR_CLONES void padded_planes(const IntegerConv& p, const T* x, const T* w, const T* bias, int64_t n,
                                        int64_t g, sum_t* __restrict__ padded, sum_t* __restrict__ sums, T* y) {
  const int64_t Hp = p.H + 2 * p.pH, Wp = p.W + 2 * p.pW;
  const bool unit_stride = p.sH == 1 && p.sW == 1;
  const int64_t pitch = unit_stride ? Wp : p.Wo, plane = p.Ho * pitch;  // (of the sums)
  for (int64_t o = 0; o < p.O; ++o)
    std::fill(sums + o * plane, sums + (o + 1) * plane, bias != nullptr ? static_cast<sum_t>(bias[g * p.O + o]) : sum_t(0));
  std::fill(padded, padded + Hp * Wp, sum_t(0));
  for (int64_t c = 0; c < p.C; ++c) {
    const T* x_plane = x + n * p.x_n + (g * p.C + c) * p.x_c;
    for (int64_t ih = 0; ih < p.H; ++ih)
      for (int64_t iw = 0; iw < p.W; ++iw)
        padded[(ih + p.pH) * Wp + iw + p.pW] = static_cast<sum_t>(x_plane[ih * p.x_h + iw * p.x_w]);
    for (int64_t o = 0; o < p.O; ++o) {
      const T* taps = w + ((g * p.O + o) * p.C + c) * p.kH * p.kW;
      sum_t* __restrict__ out = sums + o * plane;
      for (int64_t i = 0; i < p.kH; ++i)
        for (int64_t j = 0; j < p.kW; ++j) {
          const sum_t weight = static_cast<sum_t>(taps[i * p.kW + j]);
          const sum_t* __restrict__ in = padded + i * p.dH * Wp + j * p.dW;
          if (unit_stride) {
            for (int64_t q = 0; q < (p.Ho - 1) * Wp + p.Wo; ++q) out[q] = wrapping_madd(out[q], in[q], weight);
          } else {
            for (int64_t oh = 0; oh < p.Ho; ++oh)
              for (int64_t ow = 0; ow < p.Wo; ++ow)
                out[oh * pitch + ow] = wrapping_madd(out[oh * pitch + ow], in[oh * p.sH * Wp + ow * p.sW], weight);
          }
        }
    }
  }
  for (int64_t o = 0; o < p.O; ++o) {
    T* y_plane = y + n * p.y_n + (g * p.O + o) * p.y_c;
    for (int64_t oh = 0; oh < p.Ho; ++oh)
      for (int64_t ow = 0; ow < p.Wo; ++ow)
        y_plane[oh * p.y_h + ow * p.y_w] = static_cast<T>(sums[o * plane + oh * pitch + ow]);  // (mod 2^bits)
  }
}

template <typename T>
void conv_by_padded_planes(const IntegerConv& p, const T* x, const T* w, const T* bias, T* y) {
  const int64_t Hp = p.H + 2 * p.pH, Wp = p.W + 2 * p.pW;
  parallel_chunks(0, p.batch * p.groups, IntegerConv::grain(p.O * p.C * p.kH * p.kW * p.Ho * p.Wo),
                  [&](ChunkQueue& chunks) {
    std::vector<wrapping_sum_t<T>> padded(Hp * Wp), sums(p.O * p.Ho * std::max(Wp, p.Wo));
    for (int64_t begin, end; chunks.next(begin, end);)
      for (int64_t task = begin; task < end; ++task)
        padded_planes(p, x, w, bias, task / p.groups, task % p.groups, padded.data(), sums.data(), y);
  });
}

}  // namespace

Tensor integer_conv2d_forward(const Conv2dShape& shape, const Tensor& input, const Tensor& weight, const Tensor& bias,
                              IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation) {
  const Tensor w = contiguous_or_self(weight), b = bias.defined() ? contiguous_or_self(bias) : Tensor();
  // channels_last in, channels_last out (as torch)
  Tensor y = empty_in_layout_of(input, {shape.batch, shape.out_channels, shape.out_h, shape.out_w});
  const IntegerConv p{shape.batch, shape.in_channels / shape.groups, shape.out_channels / shape.groups, shape.groups,
                      shape.in_h, shape.in_w, shape.out_h, shape.out_w, shape.kernel_h, shape.kernel_w,
                      stride[0], stride[1], padding[0], padding[1], dilation[0], dilation[1],
                      input.stride(0), input.stride(1), input.stride(2), input.stride(3),
                      y.stride(0), y.stride(1), y.stride(2), y.stride(3)};
  if (y.numel() == 0) return y;
  CUCONV_DISPATCH_INTEGER(input.scalar_type(), "cuconv.conv2d", [&] {
    const scalar_t* x_data = input.const_data_ptr<scalar_t>();
    const scalar_t* w_data = w.const_data_ptr<scalar_t>();
    const scalar_t* b_data = b.defined() ? b.const_data_ptr<scalar_t>() : nullptr;
    scalar_t* y_data = y.mutable_data_ptr<scalar_t>();
    if (p.O >= kChannelLanes) conv_by_channel_vectors(p, x_data, w_data, b_data, y_data);
    else conv_by_padded_planes(p, x_data, w_data, b_data, y_data);
  });
  return y;
}

}  // namespace cuconv
