#pragma once
// Direct (im2col-free) float32 convolution on the CPU, groups = 1: forward, weight
// gradient, and input gradient for stride 1. A matrix product whose pixel operand is
// read in place (direct_tile.h): no column matrix and no packing of the input, only a
// zero-padded copy of it, the weights packed along output channels and, for the weight
// gradient, grad_output transposed. Vector register tiles for AVX-512 and AVX2
// (simd_avx512.cpp, simd_avx2.cpp); other CPUs and dtypes take the im2col path.
// conv2d.cpp decides per pass which path runs (run_float_pass there, measured: tuner.h).

#include <cstdint>
#include <vector>

namespace cuconv {

// Forward tiles vectorise along output channels; where a layer has too few of them to fill a
// vector (LeNet: 6 and 16) and a stride-1 row fills it better, along output columns instead
// (the row tile: the lane use of each decides, as gemm.h's tile choice does).
//
// One convolution over NCHW-contiguous float planes, groups = 1:
//   out[n, o, oh, ow] = bias[o] + sum_{c,i,j} w[o, c, i, j] * in_padded[n, c, oh*sH + i*dH, ow*sW + j*dW]
// where in_padded is `in` with pad_h/pad_w zero rows/columns on each side.
struct DirectConv {
  int64_t batch, in_channels, height, width, out_channels, out_h, out_w;
  int64_t kernel_h, kernel_w, stride_h, stride_w, pad_h, pad_w, dilation_h, dilation_w;
  // Elements from one sample of `in` / `out` to the next; 0 for contiguous tensors. One group of
  // a grouped layer, read and written in place, has the whole layer's (conv2d.cpp). Only the
  // direct kernels below read these: the other kernels taking a DirectConv need contiguous tensors.
  int64_t in_sample_stride = 0, out_sample_stride = 0;
  // The groups of a grouped channels_last layer that one pass takes, side by side in every pixel
  // (`p` is one group's problem, its sample strides the whole layer's): group g's input channels
  // from g * in_channels of a pixel, its output channels from g * out_channels, its weights
  // from row g * out_channels. Only the float NHWC passes and the bfloat16 NHWC forward pass take
  // more than 1 (the sample's pixels are then read, or zero-padded, once for all its groups).
  int64_t groups = 1;

  int64_t in_stride() const { return in_sample_stride != 0 ? in_sample_stride : in_channels * height * width; }
  int64_t out_stride() const { return out_sample_stride != 0 ? out_sample_stride : out_channels * out_h * out_w; }
};

// When the direct kernels run: where they measure faster on this machine (auto; tuner.h),
// wherever they can (always: CUCONV_CPU_DIRECT=1, for tests and comparisons), or never
// (CUCONV_CPU_DIRECT=0, or a CPU without AVX2, or CUCONV_CPU_ISA=generic). Any other
// value of CUCONV_CPU_DIRECT is an error.
enum class DirectMode { kAuto, kAlways, kNever };
DirectMode direct_conv_mode();

// How the forward pass writes its output planes: through the caches, or past them with
// non-temporal stores (streaming.h: each panel's row staged in L1, then whole lines per plane
// row). Streaming saves the read each ordinary store makes of its line first, and pays where
// writing a large output is what limits the pass (few input channels and a large image, as
// ResNet's stem) on a machine whose caches the output does not stay in; conv2d.cpp measures both
// (tuner.h). The row tiles (row_tiles_suit) write through the caches either way.
enum class OutputStores { kCached, kStreamed };

// Whether `stores` changes how this layer's forward pass writes (not for the row tiles).
bool direct_conv_forward_can_stream(const DirectConv& p);

// Forward pass; `weight` is [out_channels, in_channels, kH, kW], `bias` may be null.
void direct_conv_forward(const DirectConv& p, const float* in, const float* weight, const float* bias,
                         float* out, OutputStores stores);

// bfloat16 forward on pairs of input channels (AVX512-BF16's vdpbf16ps, as oneDNN's bfloat16
// kernels: two products a lane per instruction, twice the float tiles' work): the float forward
// with channel pairs for channels, each 32-bit value holding channel 2c in its low half and
// 2c + 1 in its high half (a zero channel past an odd count). `in_pairs` is
// [N][ceil(C/2)][H][W] and `weight_pairs` [O][ceil(C/2)][kH][kW] such values
// (interleave_channel_pairs), `p` the layer as it is (C channels, contiguous); the float sums plus
// bias (float, may be null) rounded once to bfloat16 (to nearest, ties to even, as torch rounds)
// into the NCHW `out` (their bits), written as `stores` says. The products of bfloat16 are exact in
// float, so the sums are the float kernels' up to the order of each pair's two products and the
// instruction's flushing of subnormal values to zero (oneDNN's too).
bool direct_conv_pairs_available();  // AVX512-BF16, and the direct kernels not switched off
void direct_conv_forward_pairs(const DirectConv& p, const uint32_t* in_pairs, const uint32_t* weight_pairs,
                               const float* bias, uint16_t* out, OutputStores stores);

// The same on pairs of input channels with the channels innermost (NHWC), as oneDNN's bfloat16
// kernels read a channels_last tensor: `in_pairs` [N][H][W][ceil(C/2)] (a channels_last tensor of
// even C is that as it is) and `weight_pairs` [O][kH][kW][ceil(C/2)] (channel_pairs_innermost); the
// float sums plus bias (may be null) rounded once to bfloat16 (to nearest, ties to even, as torch
// rounds) into the NHWC `out` [N][H_out][W_out][O] (their bits). Written through the caches.
// Where `skip_padding_rows` (the weights all finite), the products of kernel rows that fall in the
// padding are not made (their zeros would only add zero).
// With a `placement`, output pixel (oh, ow) goes to pixel (oh * step_h, ow * step_w) of an NHWC
// image of height x width pixels instead, and every other pixel of it is zero: the input gradient
// of a strided 1x1 layer without padding, a 1x1 forward pass over grad_output (conv2d.cpp).
struct PixelPlacement {
  int64_t height, width, step_h, step_w;
};
void direct_conv_forward_pairs_nhwc(const DirectConv& p, const uint32_t* in_pairs, const uint32_t* weight_pairs,
                                    const float* bias, uint16_t* out, bool skip_padding_rows,
                                    const PixelPlacement* placement = nullptr);

// float32 with the channels innermost (NHWC): the float tiles on nhwc pixels, also for the groups
// of a grouped channels_last layer read and written in place. `p` is then one group's problem (its
// channels), its sample strides the whole layer's (H*W*C_total and H_out*W_out*O_total, as
// group_problem in conv2d.cpp sets them; 0 for a layer of one group), and `in` / `out` (`grad_*`)
// point at the first group's first channel of sample 0, the pass taking p.groups groups from
// there; weights are OIHW, as torch's ([groups * O][C][kH][kW]). The sums are the
// NCHW direct kernels' up to the order of the taps (here kernel row, column, then channel).
// Forward: where `skip_padding_rows` (the weights all finite), the products of kernel rows that fall
// in the padding are not made.
void direct_conv_forward_nhwc(const DirectConv& p, const float* in, const float* weight, const float* bias, float* out,
                              bool skip_padding_rows);
// Input gradient (direct_conv_backward_input_suits; finite weights only: the padding's rows are skipped).
void direct_conv_backward_input_nhwc(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in);
// Weight gradient, into the group's OIHW `grad_weight` (every element written), in a fixed order.
void direct_conv_backward_weight_nhwc(const DirectConv& p, const float* in, const float* grad_out, float* grad_weight);

// `count` blocks of `plane` positions of `channels` bfloat16 values (their bits; channel-major as
// NCHW or OIHW, or position-major as NHWC where `channels_last`) as [count][plane][ceil(channels/2)]
// channel pairs (a zero channel past an odd count), as direct_conv_forward_pairs_nhwc reads them.
void channel_pairs_innermost(const uint16_t* x, int64_t count, int64_t channels, int64_t plane, bool channels_last,
                             uint32_t* pairs);

// `count` blocks of `channels` planes of `plane` bfloat16 values (their bits; NCHW) as `count`
// blocks of ceil(channels / 2) planes of channel pairs, as direct_conv_forward_pairs reads them.
void interleave_channel_pairs(const uint16_t* x, int64_t count, int64_t channels, int64_t plane, uint32_t* pairs);

// bfloat16 weight gradient on pairs of output pixels: the float weight tiles over pixel pairs
// (2m, 2m + 1) of each output row, `grad_out_pairs` [N][O][H_out][ceil(W_out/2)] such pairs
// (pair_adjacent_columns; a zero pixel after an odd row's last), the input (bfloat16 bits,
// contiguous NCHW) read as pairs of the columns the two pixels' taps meet. The sums are float,
// into `grad_weight` [O][C][kH][kW]. An odd row's missing pixel multiplies its zero gradient by
// the input value one stride past the row's last window: NaN where that value is Inf or NaN, so
// the caller runs another kernel then.
void direct_conv_backward_weight_pairs(const DirectConv& p, const uint16_t* in, const uint32_t* grad_out_pairs,
                                       float* grad_weight);

// The same with the channels innermost: `in` [N][H][W][C] and `grad_out` [N][H_out][W_out][O]
// NHWC bfloat16 (their bits; channels_last tensors as they are), the input read as pairs of the
// columns the two pixels' taps meet (NHWC), grad_output's adjacent pixels paired as the tiles go.
// The same caveat for an odd row's missing pixel.
void direct_conv_backward_weight_pairs_nhwc(const DirectConv& p, const uint16_t* in, const uint16_t* grad_out,
                                            float* grad_weight);

// `count` planes of `height` rows of `width` bfloat16 values as rows of ceil(width / 2) pairs of
// adjacent values (a zero after an odd row's last).
void pair_adjacent_columns(const uint16_t* planes, int64_t count, int64_t height, int64_t width, uint32_t* pairs);

// Weight gradient: grad_w[o, c, i, j] = sum_{n,oh,ow} grad_out[n, o, oh, ow] * in_padded[...],
// summed in a fixed order (deterministic for a given thread count).
void direct_conv_backward_weight(const DirectConv& p, const float* in, const float* grad_out, float* grad_weight);

// Whether the input gradient can run as a direct convolution: stride 1, and padding no
// larger than the dilated kernel's reach (direct_conv_mode() aside).
bool direct_conv_backward_input_suits(const DirectConv& p);

// Input gradient for stride 1: the forward convolution of grad_out, padded by
// dilation*(k-1) - padding, with the weights transposed and flipped (written as `stores` says).
void direct_conv_backward_input(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in,
                                OutputStores stores);

// The stride-1 input gradient as a forward pass (direct, Winograd and NHWC kernels use it):
//   grad_in[n, c] = sum_{o,i,j} flipped[c, o, i, j] * grad_padded[n, o, ih + i*dH, iw + j*dW]
// over grad_out padded by dilation*(k-1) - padding, with flipped[c, o, i, j] =
// weight[o, c, kH-1-i, kW-1-j]: the layer below, with in and out channels swapped.
inline DirectConv input_gradient_as_forward(const DirectConv& p) {
  return DirectConv{p.batch,    p.out_channels, p.out_h,    p.out_w,    p.in_channels,
                    p.height,   p.width,        p.kernel_h, p.kernel_w, 1,
                    1,          p.dilation_h * (p.kernel_h - 1) - p.pad_h,
                    p.dilation_w * (p.kernel_w - 1) - p.pad_w,         p.dilation_h, p.dilation_w,
                    p.out_sample_stride, p.in_sample_stride, p.groups};
}
// (each of p.groups groups' weights in turn: [groups * C][O][kH][kW])
template <typename T>
std::vector<T> flipped_kernel(const DirectConv& p, const T* weight) {
  const int64_t C = p.in_channels, O = p.out_channels, kh = p.kernel_h, kw = p.kernel_w, size = C * O * kh * kw;
  std::vector<T> flipped(p.groups * size);
  for (int64_t g = 0; g < p.groups; ++g)
    for (int64_t o = 0; o < O; ++o)
      for (int64_t c = 0; c < C; ++c)
        for (int64_t i = 0; i < kh; ++i)
          for (int64_t j = 0; j < kw; ++j)
            flipped[g * size + ((c * O + o) * kh + i) * kw + j] =
                weight[g * size + ((o * C + c) * kh + (kh - 1 - i)) * kw + (kw - 1 - j)];
  return flipped;
}

// A float sum's rounding error grows with the length of its chain of additions: the tiles sum a
// block of products into accumulators from zero, then add those sums to the others' (a
// 512-channel 3x3 layer's 4,608 taps in one chain were 7-8x as far from float64). The weight and
// row tiles' chains (and the row weight tiles' lanes, by the rows they are given) hold about
// kChainProducts products.
constexpr int64_t kChainProducts = 512;

// Where a row tile (DirectTiles::row) writes its rows x OT channels x cols outputs, bias added
// (bias may be null): output (r, o, l) at y[o * plane + r * row_stride + l], for r < rows <= R
// and l < cols <= kLanes.
struct RowTileOutput {
  float* y;
  int64_t rows, cols, row_stride, plane;
  const float* bias;
};

// The register tiles of one vector ISA (simd_avx512.cpp, simd_avx2.cpp), indexed by
// NV = 1..max_vectors, the vectors of output channels in a panel, and for the forward
// tiles by the pixels q = 1..Q they take (a row's last tile may be short). A forward tile
// sums `depth` taps from zero, or with `accumulate` onto the sums already in `tile` (the
// next block of taps: direct_tile.h); a weight tile sums over `rows` output rows, of one sample
// or several, x_rows[r] the first window origin of row r; a forward tile stores pixel q's sums at
// tile + q * out_step, adding `bias` (may be null).
struct DirectTiles {
  using Forward = void (*)(const float* origin, int64_t stride, const int64_t* taps, int64_t depth,
                           const float* weights, float* tile, int64_t out_step, bool accumulate, const float* bias);
  using Weight = void (*)(const float* const* x_rows, int64_t rows, int64_t out_w, int64_t stride, const int64_t* taps,
                          const float* grad_t, float* partial);
  using Row = void (*)(const float* origin, int64_t row_step, int64_t plane, int64_t tap_row, int64_t tap_col,
                       int64_t channels, int64_t kernel_h, int64_t kernel_w, const float* weights, float* partial,
                       const RowTileOutput& out);
  using ToPlanes = void (*)(const float* row, int64_t pixels, int64_t width, int64_t count, const float* bias,
                            float* y, int64_t plane);
  static constexpr int kMaxVectors = 4, kMaxPixels = 12;
  const char* isa = nullptr;  // "avx512" or "avx2"
  int64_t lanes = 0, max_vectors = 0;
  int64_t pixels[kMaxVectors + 1] = {}, taps[kMaxVectors + 1] = {};  // Q and T for each NV
  // by column stride: any (a run-time step), and 1 and 2 known at compile time (constant
  // displacements for the broadcasts: AVX2's 2 x 6 tile issues ~5 instructions a cycle, and an
  // address add per pixel and tap was a sixth of them)
  Forward forward[kMaxVectors + 1][kMaxPixels + 1] = {}, forward_stride1[kMaxVectors + 1][kMaxPixels + 1] = {},
          forward_stride2[kMaxVectors + 1][kMaxPixels + 1] = {};
  Weight weight[kMaxVectors + 1] = {};
  ToPlanes to_planes = nullptr;  // a pixel-major output row into NCHW planes (direct_row_to_planes)
  using ToBFloat16Planes = void (*)(const float* row, int64_t pixels, int64_t width, int64_t count, const float* bias,
                                    uint16_t* y, int64_t plane);
  ToBFloat16Planes to_bfloat16_planes = nullptr;  // the same rounded to bfloat16
  using ToBFloat16Pixels = void (*)(const float* row, int64_t pixels, int64_t width, int64_t count, const float* bias,
                                    uint16_t* y, int64_t pixel_stride);
  ToBFloat16Pixels to_bfloat16_pixels = nullptr;  // the same row rounded into NHWC bfloat16 (direct_row_to_bfloat16_pixels)
  using ToPixels = void (*)(const float* row, int64_t pixels, int64_t width, int64_t count, const float* bias, float* y,
                            int64_t pixel_stride);
  ToPixels to_pixels = nullptr;  // the same row into NHWC float (direct_row_to_pixels)
  using CopyRows = void (*)(const float* in, int64_t rows, int64_t width, float* out, int64_t out_stride);
  CopyRows copy_rows = nullptr;  // contiguous rows of floats to rows a stride apart (direct_copy_rows)
  // the row tiles (vectors along output columns), for few channels: row[OT] takes row_rows output
  // rows x OT output channels, OT = 1..row_channels (0: none; wider layers go in as few groups of
  // at most row_channels as they need, their widths as even as they divide: 7 channels as 4 + 3,
  // not 6 + 1, whose tile would have 1 x R chains waiting on their FMAs' latency)
  static constexpr int kMaxRowChannels = 6;
  Row row[kMaxRowChannels + 1] = {};
  int64_t row_rows = 0, row_channels = 0;
  // the row weight tiles (vectors along output columns, for few output channels): row_weight[OT]
  // sums row_weight_taps[OT] taps x OT channels, OT = 1..row_weight_channels (0: none)
  using RowWeight = void (*)(const float* const* x_rows, const float* const* g_rows, int64_t rows, int64_t out_w,
                             int64_t g_plane, const int64_t* taps, float* partial);
  static constexpr int kMaxRowWeightChannels = 8;
  RowWeight row_weight[kMaxRowWeightChannels + 1] = {};
  int64_t row_weight_taps[kMaxRowWeightChannels + 1] = {}, row_weight_channels = 0;
};

}  // namespace cuconv
