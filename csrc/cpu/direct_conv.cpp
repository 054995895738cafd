// Direct float32 convolution with AVX2 register tiles, for layers with 4..16
// output channels (see direct_conv.h for when and why).
//
// Layout: the input is zero-padded once into [N, C, Hp, Wp], so every tap of every
// output pixel is in bounds. A tap k = (c*kH + i)*kW + j (the weight's own order)
// sits at the fixed offset
//   taps[k] = (c*Hp + i*dH)*Wp + j*dW
// from the pixel's window origin (oh*sH)*Wp + ow*sW, and the weights are packed as
// [K][V*8]: tap-major, output channels along the 8-float lanes of V = 1 or 2
// vectors (zeros past C_out). Taps over the padding are multiplied like any other,
// as in the im2col path, so Inf/NaN weights give the NaNs torch gives (0 * Inf).
//
// Forward tile (kPixels output pixels of one row x all output channels):
//   for each tap k:  w = packed[k]  (V vectors)
//                    for each pixel q: acc[q] += w * broadcast(x[origin_q + taps[k]])
// 6 pixels x 2 vectors = 12 accumulators + 2 weights + 1 broadcast = 15 of the 16
// ymm registers; every weight load feeds 6 FMAs, every input load 1 or 2.
//
// Weight-gradient tile (kTaps taps x all output channels), summed over a sample:
//   for each pixel p: g = grad_out[p] (V vectors, from a [P][V*8] transposed copy)
//                     for each tap t: acc[t] += g * broadcast(x[origin_p + taps[t]])
//
// The input gradient keeps the im2col + GEMM + col2im path of conv2d.cpp.

#include "direct_conv.h"
#include "gemm.h"

#include <ATen/Parallel.h>
#include <c10/util/Exception.h>

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <vector>

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#define CUCONV_DIRECT_X86 1
#include <immintrin.h>
#else
#define CUCONV_DIRECT_X86 0  // other CPUs take the im2col path
#endif

namespace cuconv {

#if CUCONV_DIRECT_X86
namespace {

bool direct_conv_switched_off() {
  const char* setting = std::getenv("CUCONV_CPU_DIRECT");
  return setting != nullptr && std::strcmp(setting, "0") == 0;
}

constexpr int64_t kLanes = 8;   // floats per ymm register
constexpr int kPixels = 6;      // output pixels per forward tile
constexpr int kTaps = 6;        // taps per weight-gradient tile

int64_t vectors_for(int64_t channels) { return channels > kLanes ? 2 : 1; }
int64_t taps_of(const DirectConv& p) { return p.in_channels * p.kernel_h * p.kernel_w; }
int64_t padded_h(const DirectConv& p) { return p.height + 2 * p.pad_h; }
int64_t padded_w(const DirectConv& p) { return p.width + 2 * p.pad_w; }

std::vector<int64_t> tap_offsets(const DirectConv& p) {
  std::vector<int64_t> taps;
  taps.reserve(taps_of(p));
  for (int64_t c = 0; c < p.in_channels; ++c)
    for (int64_t i = 0; i < p.kernel_h; ++i)
      for (int64_t j = 0; j < p.kernel_w; ++j)
        taps.push_back((c * padded_h(p) + i * p.dilation_h) * padded_w(p) + j * p.dilation_w);
  return taps;
}

// The input with its zero border, [N, C, Hp, Wp]; the input itself when unpadded.
const float* padded_input(const DirectConv& p, const float* in, std::vector<float>& buffer) {
  if (p.pad_h == 0 && p.pad_w == 0) return in;
  const int64_t hp = padded_h(p), wp = padded_w(p), planes = p.batch * p.in_channels;
  buffer.assign(planes * hp * wp, 0.f);
  at::parallel_for(0, planes, 16, [&](int64_t begin, int64_t end) {
    for (int64_t plane = begin; plane < end; ++plane)
      for (int64_t h = 0; h < p.height; ++h)
        std::memcpy(&buffer[(plane * hp + h + p.pad_h) * wp + p.pad_w],
                    in + (plane * p.height + h) * p.width, p.width * sizeof(float));
  });
  return buffer.data();
}

// Weights as [K][V*8], output channels along the lanes.
std::vector<float> packed_weights(const DirectConv& p, const float* weight) {
  const int64_t lanes = vectors_for(p.out_channels) * kLanes, k_count = taps_of(p);
  std::vector<float> packed(k_count * lanes, 0.f);
  for (int64_t o = 0; o < p.out_channels; ++o)
    for (int64_t k = 0; k < k_count; ++k) packed[k * lanes + o] = weight[o * k_count + k];
  return packed;
}

template <int V, int Q>
__attribute__((target("avx2,fma"))) inline void forward_tile(const float* origin, int64_t stride_w,
                                                             const int64_t* taps, int64_t k_count,
                                                             const float* w, const float* bias,
                                                             float* tile) {
  __m256 acc[Q][V];
#pragma GCC unroll 2
  for (int v = 0; v < V; ++v) {
    const __m256 b = _mm256_loadu_ps(bias + v * kLanes);
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) acc[q][v] = b;
  }
  for (int64_t k = 0; k < k_count; ++k) {
    const float* x = origin + taps[k];
    __m256 wv[V];
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) wv[v] = _mm256_loadu_ps(w + (k * V + v) * kLanes);
#pragma GCC unroll 8
    for (int q = 0; q < Q; ++q) {
      const __m256 xq = _mm256_broadcast_ss(x + q * stride_w);
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) acc[q][v] = _mm256_fmadd_ps(wv[v], xq, acc[q][v]);
    }
  }
  for (int q = 0; q < Q; ++q)
    for (int v = 0; v < V; ++v) _mm256_storeu_ps(tile + (q * V + v) * kLanes, acc[q][v]);
}

// Output rows [row_begin, row_end), counted across samples (row = n*H_out + oh).
template <int V>
__attribute__((target("avx2,fma"))) void forward_rows(const DirectConv& p, const float* xp,
                                                      const int64_t* taps, const float* w,
                                                      const float* bias, float* out,
                                                      int64_t row_begin, int64_t row_end) {
  alignas(32) float tile[kPixels * V * kLanes];
  const int64_t k_count = taps_of(p), plane = p.out_h * p.out_w;
  const int64_t sample_in = p.in_channels * padded_h(p) * padded_w(p);
  for (int64_t row = row_begin; row < row_end; ++row) {
    const int64_t n = row / p.out_h, oh = row % p.out_h;
    const float* x_row = xp + n * sample_in + oh * p.stride_h * padded_w(p);
    float* y_row = out + n * p.out_channels * plane + oh * p.out_w;
    for (int64_t ow = 0; ow < p.out_w; ow += kPixels) {
      const float* origin = x_row + ow * p.stride_w;
      const int64_t q_count = std::min<int64_t>(kPixels, p.out_w - ow);
      switch (q_count) {  // full tiles, then the row's remainder
        case 6: forward_tile<V, 6>(origin, p.stride_w, taps, k_count, w, bias, tile); break;
        case 5: forward_tile<V, 5>(origin, p.stride_w, taps, k_count, w, bias, tile); break;
        case 4: forward_tile<V, 4>(origin, p.stride_w, taps, k_count, w, bias, tile); break;
        case 3: forward_tile<V, 3>(origin, p.stride_w, taps, k_count, w, bias, tile); break;
        case 2: forward_tile<V, 2>(origin, p.stride_w, taps, k_count, w, bias, tile); break;
        default: forward_tile<V, 1>(origin, p.stride_w, taps, k_count, w, bias, tile); break;
      }
      for (int64_t o = 0; o < p.out_channels; ++o)
        for (int64_t q = 0; q < q_count; ++q) y_row[o * plane + ow + q] = tile[q * V * kLanes + o];
    }
  }
}

// Plain scalar arguments and fully unrolled tile loops keep the accumulators in
// registers (GCC spilled them to the stack after every FMA otherwise).
template <int V, int T>
__attribute__((target("avx2,fma"))) inline void weight_tile(const float* x_sample, int64_t out_h, int64_t out_w,
                                                            int64_t row_step, int64_t stride_w,
                                                            const int64_t* taps, const float* grad_t,
                                                            float* partial) {
  __m256 acc[T][V];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) acc[t][v] = _mm256_setzero_ps();
  int64_t tap[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) tap[t] = taps[t];
  for (int64_t oh = 0; oh < out_h; ++oh) {
    const float* x_row = x_sample + oh * row_step;
    const float* g_row = grad_t + oh * out_w * V * kLanes;
    for (int64_t ow = 0; ow < out_w; ++ow) {
      const float* origin = x_row + ow * stride_w;
      __m256 g[V];
#pragma GCC unroll 2
      for (int v = 0; v < V; ++v) g[v] = _mm256_loadu_ps(g_row + (ow * V + v) * kLanes);
#pragma GCC unroll 8
      for (int t = 0; t < T; ++t) {
        const __m256 xt = _mm256_broadcast_ss(origin + tap[t]);
#pragma GCC unroll 2
        for (int v = 0; v < V; ++v) acc[t][v] = _mm256_fmadd_ps(g[v], xt, acc[t][v]);
      }
    }
  }
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t)
#pragma GCC unroll 2
    for (int v = 0; v < V; ++v) {
      float* dst = partial + (t * V + v) * kLanes;
      _mm256_storeu_ps(dst, _mm256_add_ps(_mm256_loadu_ps(dst), acc[t][v]));
    }
}

// Adds samples [n_begin, n_end)'s weight gradient into partial [K][V*8].
template <int V>
__attribute__((target("avx2,fma"))) void weight_samples(const DirectConv& p, const float* xp,
                                                        const int64_t* taps, const float* grad_out,
                                                        int64_t n_begin, int64_t n_end, float* partial) {
  const int64_t k_count = taps_of(p), plane = p.out_h * p.out_w;
  const int64_t sample_in = p.in_channels * padded_h(p) * padded_w(p);
  const int64_t row_step = p.stride_h * padded_w(p);
  std::vector<float> grad_t(plane * V * kLanes, 0.f);  // lanes past C_out stay 0
  for (int64_t n = n_begin; n < n_end; ++n) {
    const float* g = grad_out + n * p.out_channels * plane;
    for (int64_t o = 0; o < p.out_channels; ++o)
      for (int64_t pix = 0; pix < plane; ++pix) grad_t[pix * V * kLanes + o] = g[o * plane + pix];
    const float* x_sample = xp + n * sample_in;
    for (int64_t k = 0; k < k_count; k += kTaps) {
      float* dst = partial + k * V * kLanes;
      switch (std::min<int64_t>(kTaps, k_count - k)) {
        case 6: weight_tile<V, 6>(x_sample, p.out_h, p.out_w, row_step, p.stride_w, taps + k, grad_t.data(), dst); break;
        case 5: weight_tile<V, 5>(x_sample, p.out_h, p.out_w, row_step, p.stride_w, taps + k, grad_t.data(), dst); break;
        case 4: weight_tile<V, 4>(x_sample, p.out_h, p.out_w, row_step, p.stride_w, taps + k, grad_t.data(), dst); break;
        case 3: weight_tile<V, 3>(x_sample, p.out_h, p.out_w, row_step, p.stride_w, taps + k, grad_t.data(), dst); break;
        case 2: weight_tile<V, 2>(x_sample, p.out_h, p.out_w, row_step, p.stride_w, taps + k, grad_t.data(), dst); break;
        default: weight_tile<V, 1>(x_sample, p.out_h, p.out_w, row_step, p.stride_w, taps + k, grad_t.data(), dst); break;
      }
    }
  }
}

}  // namespace

bool direct_conv_suits(int64_t out_channels) {
  return !direct_conv_switched_off() && cpu_isa() >= CpuIsa::kAvx2 && out_channels >= 4 && out_channels <= 2 * kLanes;
}

void direct_conv_forward(const DirectConv& p, const float* in, const float* weight,
                         const float* bias, float* out) {
  const int64_t vectors = vectors_for(p.out_channels);
  std::vector<float> padded, bias_lanes(vectors * kLanes, 0.f);
  if (bias != nullptr) std::copy(bias, bias + p.out_channels, bias_lanes.begin());
  const float* xp = padded_input(p, in, padded);
  const std::vector<int64_t> taps = tap_offsets(p);
  const std::vector<float> w = packed_weights(p, weight);
  // Rows are independent; a grain of a few rows keeps threads busy at batch 1.
  at::parallel_for(0, p.batch * p.out_h, 4, [&](int64_t begin, int64_t end) {
    if (vectors == 2) {
      forward_rows<2>(p, xp, taps.data(), w.data(), bias_lanes.data(), out, begin, end);
    } else {
      forward_rows<1>(p, xp, taps.data(), w.data(), bias_lanes.data(), out, begin, end);
    }
  });
}

void direct_conv_backward_weight(const DirectConv& p, const float* in, const float* grad_out,
                                 float* grad_weight) {
  const int64_t vectors = vectors_for(p.out_channels), lanes = vectors * kLanes, k_count = taps_of(p);
  std::vector<float> padded;
  const float* xp = padded_input(p, in, padded);
  const std::vector<int64_t> taps = tap_offsets(p);
  // A fixed split of the batch, one partial sum each, added in order: deterministic.
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(at::get_num_threads(), p.batch));
  std::vector<float> partial(parts * k_count * lanes, 0.f);
  at::parallel_for(0, parts, 1, [&](int64_t begin, int64_t end) {
    for (int64_t part = begin; part < end; ++part) {
      const int64_t n_begin = part * p.batch / parts, n_end = (part + 1) * p.batch / parts;
      float* sum = partial.data() + part * k_count * lanes;
      if (vectors == 2) {
        weight_samples<2>(p, xp, taps.data(), grad_out, n_begin, n_end, sum);
      } else {
        weight_samples<1>(p, xp, taps.data(), grad_out, n_begin, n_end, sum);
      }
    }
  });
  for (int64_t o = 0; o < p.out_channels; ++o)
    for (int64_t k = 0; k < k_count; ++k) {
      float total = 0.f;
      for (int64_t part = 0; part < parts; ++part) total += partial[(part * k_count + k) * lanes + o];
      grad_weight[o * k_count + k] = total;
    }
}

#else  // !CUCONV_DIRECT_X86

bool direct_conv_suits(int64_t) { return false; }
void direct_conv_forward(const DirectConv&, const float*, const float*, const float*, float*) {
  TORCH_CHECK(false, "cuconv: the direct convolution kernels need an x86-64 CPU");
}
void direct_conv_backward_weight(const DirectConv&, const float*, const float*, float*) {
  TORCH_CHECK(false, "cuconv: the direct convolution kernels need an x86-64 CPU");
}

#endif  // CUCONV_DIRECT_X86

}  // namespace cuconv
