// Direct convolution: the drivers around the register tiles of direct_tile.h (float32, and
// bfloat16 pairs: the same tiles on 32-bit values that hold two bfloat16, direct_conv.h).
//
// Layout: each thread copies the samples it works on zero-padded into buffers of its own (in
// cache; no fresh pages per call), so every tap of every output pixel is in bounds. NCHW
// ([C, Hp, Wp]): tap k = (c*kH + i)*kW + j (the weight's own order) sits at
//   taps[k] = (c*Hp + i*dH)*Wp + j*dW
// from the window origin (oh*sH)*Wp + ow*sW of its pixel; NHWC ([Hp, Wp, C], bfloat16 pairs):
// tap (i, j, c) at (i*dH*Wp + j*dW)*C + c from (oh*sH*Wp + ow*sW)*C. Output channels go in
// panels of NV vectors (up to 4 x 16 with AVX-512, 2 x 8 with AVX2), and the weights are packed
// per panel as [K][NV*lanes], tap-major with zeros past the last channel. Taps over the padding
// are multiplied like any other, as in the im2col path, so Inf/NaN weights give the NaNs torch
// gives (0 * Inf); on NHWC pixels, with finite weights only, an output row skips the kernel
// rows in the padding.
//
// Forward: threads take chunks of output rows (row = n*H_out + oh; parallel.h), and those in
// groups of rows (of one sample for NCHW planes; across samples for NHWC pixels, which small
// images need); each row is cut into tiles of Q pixels (the last one shorter). Per panel, the
// taps go in blocks whose weights stay in L1, each block running over every tile of the group
// (forward_blocking), which leaves the panel's rows pixel-major; a writer of the output's
// layout takes them from there: whole blocks transposed into NCHW planes (or into a stage
// streamed past the caches: OutputStores), or rounded into NHWC bfloat16 pixels as they are.
// Weight gradient: threads take a fixed split of the output rows (counted across images), in
// runs of a sample's rows or, on small images, of several samples' (kPixelsPerCall); per run,
// grad_output's rows go pixel-major as [panel][pixel][NV*lanes] and each tile of T taps sums
// over them; the partial sums of the split are added in order (deterministic).
// Input gradient (stride 1): grad_input[n, c] = sum_{o,i,j} w[o, c, kH-1-i, kW-1-j] *
// grad_padded[n, o, ih + i*dH, iw + j*dW] with grad_output padded by dH*(kH-1) - pH
// (likewise in width): the forward pass with in and out channels swapped and the
// kernel flipped.

#include "direct_conv.h"

#include "../stable.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <functional>
#include <vector>

#include "gemm.h"
#include "parallel.h"
#include "simd.h"
#include "streaming.h"

namespace cuconv {

#if CUCONV_X86_SIMD
DirectTiles avx512_direct_tiles();             // simd_avx512.cpp
DirectTiles avx2_direct_tiles();               // simd_avx2.cpp
DirectTiles avx512_bf16_direct_pair_tiles();  // simd_avx512.cpp
#endif

namespace {

// The tiles for this CPU (and CUCONV_CPU_ISA), or null where there are none. Each table
// is built on first use only: its builder is compiled for its ISA (and would raise
// SIGILL on a CPU without it).
const DirectTiles* cpu_direct_tiles() {
#if CUCONV_X86_SIMD
  switch (cpu_isa()) {
    case CpuIsa::kAvx512: {
      static const DirectTiles avx512 = avx512_direct_tiles();
      return &avx512;
    }
    case CpuIsa::kAvx2: {
      static const DirectTiles avx2 = avx2_direct_tiles();
      return &avx2;
    }
    default: break;
  }
#endif
  return nullptr;
}

// The tiles on bfloat16 pairs (forward and weight) where the CPU has AVX512-BF16
// (bf16_dot_products()) and the direct kernels run, else null.
const DirectTiles* cpu_direct_pair_tiles() {
#if CUCONV_X86_SIMD
  if (cpu_direct_tiles() != nullptr && direct_conv_mode() != DirectMode::kNever && bf16_dot_products()) {
    static const DirectTiles pairs = avx512_bf16_direct_pair_tiles();
    return &pairs;
  }
#endif
  return nullptr;
}

// The tiles a direct pass runs (noted as the direct path's last use).
const DirectTiles& tiles_or_fail() {
  const DirectTiles* tiles = cpu_direct_tiles();
  CUCONV_CHECK(tiles != nullptr, "cuconv: the direct convolution kernels need AVX2 or AVX-512");
  note_kernel_use(KernelPath::kDirect, tiles->isa);
  note_kernel_use(KernelPath::kDirectTiles, "channels");  // (the row tiles' drivers note "rows")
  return *tiles;
}

// The same for the bfloat16 pair tiles.
const DirectTiles& pair_tiles_or_fail() {
  const DirectTiles* tiles = cpu_direct_pair_tiles();
  CUCONV_CHECK(tiles != nullptr, "cuconv: the direct kernels on bfloat16 pairs need AVX512-BF16");
  note_kernel_use(KernelPath::kDirect, tiles->isa);
  note_kernel_use(KernelPath::kDirectTiles, "channels");  // (the pairs have no row tiles)
  return *tiles;
}

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

// One sample's planes into the interior of its zero-padded copy [C, hp, wp] (the border is left
// as it is: zero); hp and wp default to the padded size, and may be larger (the row tiles').
void copy_into_padding(const DirectConv& p, const float* in, float* padded, int64_t hp = -1, int64_t wp = -1) {
  if (hp < 0) hp = padded_h(p), wp = padded_w(p);
  const DirectTiles::CopyRows copy_rows = cpu_direct_tiles()->copy_rows;
  for (int64_t c = 0; c < p.in_channels; ++c)
    copy_rows(in + c * p.height * p.width, p.height, p.width, padded + (c * hp + p.pad_h) * wp + p.pad_w, wp);
}

// Output channels [first, first + count), in `vectors` vectors, of the group whose input channels
// start at `input_offset` in a pixel (DirectConv::groups; 0 for one group).
struct Panel {
  int64_t first, count, vectors, input_offset = 0;
};

std::vector<Panel> channel_panels(int64_t channels, const DirectTiles& tiles) {
  std::vector<Panel> panels;
  const int64_t width = tiles.max_vectors * tiles.lanes;
  for (int64_t first = 0; first < channels; first += width) {
    const int64_t count = std::min(width, channels - first);
    panels.push_back({first, count, (count + tiles.lanes - 1) / tiles.lanes});
  }
  return panels;
}

// The panels of each of p.groups groups in turn (group g's: its output channels from
// g * out_channels, its input channels from g * in_channels of a pixel).
std::vector<Panel> group_panels(const DirectConv& p, const DirectTiles& tiles) {
  const std::vector<Panel> one = channel_panels(p.out_channels, tiles);
  std::vector<Panel> panels;
  for (int64_t g = 0; g < p.groups; ++g)
    for (const Panel& panel : one)
      panels.push_back({g * p.out_channels + panel.first, panel.count, panel.vectors, g * p.in_channels});
  return panels;
}

// Each panel's weights as [K][NV*lanes], output channels along the lanes (zeros past the last):
// the weight's rows of its channels transposed, in registers (a plain loop, one store per
// element a cache line apart, took 3% of ResNet's b4.conv1 on one thread while the other waited).
std::vector<PackedBuffer<float>> packed_weights(const DirectConv& p, const float* weight,
                                               const std::vector<Panel>& panels, const DirectTiles& tiles) {
  const int64_t k_count = taps_of(p);
  const TransposeFloats transpose = cpu_transpose_floats();
  std::vector<PackedBuffer<float>> packed(panels.size());
  torch::stable::parallel_for(0, static_cast<int64_t>(panels.size()), 1, [&](int64_t begin, int64_t end) {
    for (int64_t pi = begin; pi < end; ++pi) {
      const Panel& panel = panels[pi];
      const int64_t width = panel.vectors * tiles.lanes;
      packed[pi].resize(k_count * width);
      transpose(weight + panel.first * k_count, k_count, panel.count, k_count, width, packed[pi].data(), width);
    }
  });
  return packed;
}

// The input gradient's problem: grad_output (O channels) in, grad_input (C channels) out.
}  // namespace

DirectMode direct_conv_mode() {
  if (cpu_direct_tiles() == nullptr) return DirectMode::kNever;
  const char* setting = std::getenv("CUCONV_CPU_DIRECT");
  if (setting == nullptr || *setting == '\0') return DirectMode::kAuto;
  CUCONV_CHECK_VALUE(std::strcmp(setting, "0") == 0 || std::strcmp(setting, "1") == 0,
                    "cuconv: expected the environment variable CUCONV_CPU_DIRECT to be 0 or 1, but got '", setting,
                    "'");
  return *setting == '1' ? DirectMode::kAlways : DirectMode::kNever;
}

namespace {

// The fraction of the lanes' multiplies that are real work: channel tiles waste the lanes past
// the output channels; row tiles the columns past a row's end and the rows past the last band
// (a narrower tile takes the channels past the last whole group of row_channels).
double used(int64_t count, int64_t tile) { return static_cast<double>(count) / static_cast<double>((count + tile - 1) / tile * tile); }

bool row_tiles_suit(const DirectConv& p, const DirectTiles& tiles) {
  if (tiles.row_channels == 0 || p.stride_w != 1) return false;
  const double channel_use = used(p.out_channels, tiles.lanes);
  const double row_use = used(p.out_w, tiles.lanes) * used(p.out_h, tiles.row_rows);
  return row_use > channel_use;
}

// The forward pass by row tiles (direct_tile.h): threads take (sample, band of row_rows output
// rows) items; each runs every channel group (as even as the widest tile allows, DirectTiles::row)
// and column vector of its band, the tile writing its outputs. Each thread copies a sample
// zero-padded into a buffer of its own (one sample: small, and in cache), with room past the
// last vector and band, so every read is in bounds.
void row_forward(const DirectConv& p, const float* in, const float* weight, const float* bias, float* out,
                 const DirectTiles& tiles) {
  note_kernel_use(KernelPath::kDirectTiles, "rows");
  const int64_t L = tiles.lanes, R = tiles.row_rows;
  const int64_t C = p.in_channels, O = p.out_channels, kh = p.kernel_h, kw = p.kernel_w;
  const int64_t groups = (O + tiles.row_channels - 1) / tiles.row_channels, OT = (O + groups - 1) / groups;
  const int64_t vectors = (p.out_w + L - 1) / L, bands = (p.out_h + R - 1) / R;
  const int64_t wp = std::max(p.width + 2 * p.pad_w, vectors * L + (kw - 1) * p.dilation_w);
  const int64_t hp = std::max(p.height + 2 * p.pad_h, (bands * R - 1) * p.stride_h + (kh - 1) * p.dilation_h + 1);
  // weights of channel group g (its `width` channels) as [C][kH][kW][width], from g * taps * OT
  const int64_t taps = C * kh * kw;
  PackedBuffer<float> w(O * taps);
  for (int64_t o = 0; o < O; ++o) {
    const int64_t width = std::min(OT, O - o / OT * OT);
    for (int64_t k = 0; k < taps; ++k) w[o / OT * taps * OT + k * width + o % OT] = weight[o * taps + k];
  }
  const int64_t plane_out = p.out_h * p.out_w;
  torch::stable::parallel_for(0, p.batch * bands, 1, [&](int64_t first, int64_t last) {
    PackedBuffer<float> x(C * hp * wp, 0.f), partial(R * OT * L);  // x's border stays zero
    int64_t padded_sample = -1;
    for (int64_t item = first; item < last; ++item) {
      const int64_t n = item / bands, oh0 = item % bands * R, rows = std::min(R, p.out_h - oh0);
      if (n != padded_sample) {
        copy_into_padding(p, in + n * p.in_stride(), x.data(), hp, wp);
        padded_sample = n;
      }
      const float* band = x.data() + oh0 * p.stride_h * wp;
      for (int64_t g = 0; g < groups; ++g) {
        const int64_t channels = std::min(OT, O - g * OT);
        for (int64_t v = 0; v < vectors; ++v) {
          const int64_t ow0 = v * L;
          const RowTileOutput to{out + n * p.out_stride() + g * OT * plane_out + oh0 * p.out_w + ow0, rows,
                                 std::min(L, p.out_w - ow0), p.out_w, plane_out,
                                 bias != nullptr ? bias + g * OT : nullptr};
          tiles.row[channels](band + ow0, p.stride_h * wp, hp * wp, p.dilation_h * wp, p.dilation_w, C, kh, kw,
                              w.data() + g * taps * OT, partial.data(), to);
        }
      }
    }
  });
}

// How the forward pass cuts its work for the caches. A panel's weights are taps x its width
// floats, and past L1 every tile would read them all from L2 again (ResNet's b4.conv1: 295 KB
// per 64-channel panel, for 6 pixels). So the taps go in blocks whose weights fill half of L1,
// each block running over the tiles of a group of rows (at least 8 tiles, where a sample has the
// rows, or where the output's rows may cross samples, its next samples' rows) before the next
// block adds its sums to theirs (each block's from zero: shorter chains of additions,
// direct_tile.h). A group's rows also leave to_planes one run of pixels per plane. (The weights of
// a 512-channel layer on 3x3 images, 4.7 MB in bfloat16 pairs, came from L3 once per sample's 3
// rows when groups stayed within a sample.)
struct ForwardBlocking {
  int64_t taps, group_rows;
};

ForwardBlocking forward_blocking(const DirectConv& p, const DirectTiles& tiles, bool rows_cross_samples) {
  constexpr int64_t kTilesPerGroup = 8;
  const int64_t width = tiles.max_vectors * tiles.lanes, q = tiles.pixels[tiles.max_vectors];
  const int64_t fit = std::max<int64_t>(16, l1_data_cache_bytes() / 2 / (width * static_cast<int64_t>(sizeof(float))));
  const int64_t tiles_per_row = (p.out_w + q - 1) / q;
  const int64_t rows = (kTilesPerGroup + tiles_per_row - 1) / tiles_per_row;
  return {std::min(fit, taps_of(p)), rows_cross_samples ? rows : std::clamp<int64_t>(rows, 1, p.out_h)};
}

}  // namespace

bool direct_conv_forward_can_stream(const DirectConv& p) {
  const DirectTiles* tiles = cpu_direct_tiles();
  return tiles != nullptr && !row_tiles_suit(p, *tiles);
}

namespace {

// Where the forward pass reads the input, per layout, as the tiles address it: window origins
// row_step / column_step elements apart for adjacent output rows / columns, tap k (in the
// weights' order) at taps[k] from its window's origin, in a sample zero-padded by copy_padded
// where the layer pads (one per thread, in cache), else read in place.
//   NCHW ([C][Hp][Wp]): tap (c, i, j) at (c*Hp + i*dH)*Wp + j*dW,  steps sH*Wp and sW
//   NHWC ([Hp][Wp][C]): tap (i, j, c) at (i*dH*Wp + j*dW)*C + c,   steps sH*Wp*C and sW*C
// Output row oh's taps are [row_taps[oh].begin, row_taps[oh].end) of them (all, unless the
// layout skips the rows of the kernel that fall in the padding: below).
struct TapRange {
  int64_t begin, end;
};
struct ForwardInput {
  const float* data;  // sample 0
  int64_t row_step, column_step;
  std::vector<int64_t> taps;
  void (*copy_padded)(const DirectConv& p, const float* sample, float* padded);
  std::vector<TapRange> row_taps;
};

ForwardInput nchw_input(const DirectConv& p, const float* in) {
  CUCONV_CHECK(p.groups == 1, "cuconv: internal error: the NCHW direct kernels take one group a pass");
  return {in, p.stride_h * padded_w(p), p.stride_w, tap_offsets(p),
          [](const DirectConv& q, const float* sample, float* padded) { copy_into_padding(q, sample, padded); },
          std::vector<TapRange>(p.out_h, TapRange{0, taps_of(p)})};
}

// An NHWC tensor's elements from one pixel to the next: its channels, or where `p` is one group of
// a grouped channels_last layer (read in place), the whole layer's (its sample stride over a plane).
int64_t input_pixel_stride(const DirectConv& p) { return p.in_stride() / (p.height * p.width); }
int64_t output_pixel_stride(const DirectConv& p) { return p.out_stride() / (p.out_h * p.out_w); }

// Tap (c, i, j)'s offset from its window's origin in an NHWC sample of `row` elements a row and
// `pixel` a pixel ([Hp][Wp][C] zero-padded: Wp*C and C).
int64_t nhwc_tap_offset(const DirectConv& p, int64_t c, int64_t i, int64_t j, int64_t row, int64_t pixel) {
  return i * p.dilation_h * row + j * p.dilation_w * pixel + c;
}
int64_t nhwc_tap_offset(const DirectConv& p, int64_t c, int64_t i, int64_t j) {
  return nhwc_tap_offset(p, c, i, j, padded_w(p) * p.in_channels, p.in_channels);
}

// One NHWC sample into the interior of its zero-padded copy [Hp][Wp][C] (the border is left as
// it is: zero), C the channels of all p.groups groups, a whole pixel's: a grouped layer's sample
// is copied once for them all, a row at a time.
void copy_into_nhwc_padding(const DirectConv& p, const float* sample, float* padded) {
  const int64_t C = p.groups * p.in_channels;
  CUCONV_CHECK(input_pixel_stride(p) == C, "cuconv: internal error: a padded NHWC pass takes every group at once");
  const int64_t row = p.width * C;
  cpu_direct_tiles()->copy_rows(sample, p.height, row, padded + (p.pad_h * padded_w(p) + p.pad_w) * C, padded_w(p) * C);
}

// In NHWC the taps of one kernel row i are a contiguous run, [i*kW*C, (i+1)*kW*C): where
// `skip_padding_rows`, output row oh takes only the kernel rows whose input row is inside the
// image (ih = oh*sH - pH + i*dH), and the others' products (zeros times weights) are never made.
// On a 3x3 image with a 3x3 kernel, 2 of its 9 kernel-row products; on 6x6, 2 of 18. (An Inf or
// NaN weight times a zero is NaN, as torch has it: the caller skips only with finite weights.)
// An unpadded sample is read in place, its pixels input_pixel_stride(p) elements apart; a padded
// one's copy holds every group's channels. The taps are one group's (a panel adds its group's
// input_offset).
ForwardInput nhwc_input(const DirectConv& p, const float* in, bool skip_padding_rows) {
  const int64_t C = p.in_channels, row_taps = p.kernel_w * C;
  const bool pads = p.pad_h > 0 || p.pad_w > 0;
  const int64_t pixel = pads ? p.groups * C : input_pixel_stride(p), row = padded_w(p) * pixel;
  std::vector<int64_t> taps;
  taps.reserve(taps_of(p));
  for (int64_t i = 0; i < p.kernel_h; ++i)
    for (int64_t j = 0; j < p.kernel_w; ++j)
      for (int64_t c = 0; c < C; ++c) taps.push_back(nhwc_tap_offset(p, c, i, j, row, pixel));
  std::vector<TapRange> ranges(p.out_h, TapRange{0, taps_of(p)});
  for (int64_t oh = 0; skip_padding_rows && oh < p.out_h; ++oh) {
    int64_t first = p.kernel_h, last = -1;  // the kernel rows inside the image
    for (int64_t i = 0; i < p.kernel_h; ++i) {
      const int64_t ih = oh * p.stride_h - p.pad_h + i * p.dilation_h;
      if (ih >= 0 && ih < p.height) first = std::min(first, i), last = i;
    }
    ranges[oh] = last < 0 ? TapRange{0, 0} : TapRange{first * row_taps, (last + 1) * row_taps};
  }
  return {in, p.stride_h * row, p.stride_w * pixel, std::move(taps), copy_into_nhwc_padding, std::move(ranges)};
}

// The forward pass's outputs. panel_forward leaves each panel's sums for a group of rows of one
// sample pixel-major (`rows`: [pixels][width], the group's pixels in order), and a writer of
// the thread's (Output::Writer) takes them from there; its prefetch(call, calls) runs before
// each of the `calls` tiles of the panel and group, to fetch the lines write() will store to.

// NCHW planes of float, or of bfloat16 (Out = uint16_t: their bits, the sums rounded once), cached
// (the lines fetched ahead) or streamed past the caches through a stage: to_planes /
// to_bfloat16_planes transposes each run of `pixels` (one per channel of the panel) into them.
template <typename Out>
struct PlaneOutput {
  const DirectTiles& tiles;
  const DirectConv& p;
  Out* out;
  const float* bias;  // may be null
  bool stream;

  class Writer {
   public:
    Writer(const PlaneOutput& o, int64_t group_pixels)
        : o_(o), stage_(o.stream ? o.tiles.max_vectors * o.tiles.lanes * group_pixels : 0) {}
    ~Writer() {
      if (o_.stream) stream_fence();
    }
    static constexpr bool kRowsCrossSamples = false;  // (a plane's run is one sample's)
    static constexpr bool kStoresInPlace = false;     // (the tiles' rows are transposed into planes)
    void start(const Panel& panel, int64_t first_row, int64_t rows) {
      panel_ = &panel, pixels_ = rows * o_.p.out_w;
      const int64_t n = first_row / o_.p.out_h, oh0 = first_row % o_.p.out_h;
      y_rows_ = o_.out + n * o_.p.out_stride() + panel.first * plane() + oh0 * o_.p.out_w;
    }
    // Meanwhile the group's output lines are fetched, a few planes' before each tile: to_planes
    // stores to them all at once, and where they are not in cache those stores fill the core's
    // store buffer, the tiles' next stores waiting behind them (VGG's 64 -> 128 layer at 28x28:
    // 39 ms in one block of taps, 46 in blocks, 35.6 in blocks with the lines fetched; ResNet's
    // stem, cached, 15.7 -> 6.6). (Written inline: GCC drops a call to a function whose only
    // effect is a prefetch.)
    void prefetch(int64_t call, int64_t calls) const {
      for (int64_t o = call * panel_->count / calls; !o_.stream && o < (call + 1) * panel_->count / calls; ++o) {
        const uintptr_t first = reinterpret_cast<uintptr_t>(y_rows_ + o * plane());
        for (uintptr_t line = first & ~uintptr_t{63}; line < first + pixels_ * sizeof(Out); line += 64)
          __builtin_prefetch(reinterpret_cast<const void*>(line), /*write=*/1, /*locality=*/3);
      }
    }
    void write(const float* rows, int64_t width) {
      const float* panel_bias = o_.bias != nullptr ? o_.bias + panel_->first : nullptr;
      if (!o_.stream) return to_planes(rows, width, panel_bias, y_rows_, plane());
      to_planes(rows, width, panel_bias, stage_.data(), pixels_);
      for (int64_t c = 0; c < panel_->count; ++c)
        stream_copy(y_rows_ + c * plane(), stage_.data() + c * pixels_, pixels_ * static_cast<int64_t>(sizeof(Out)));
    }

   private:
    int64_t plane() const { return o_.p.out_h * o_.p.out_w; }
    void to_planes(const float* rows, int64_t width, const float* bias, Out* y, int64_t y_plane) const {
      if constexpr (sizeof(Out) == sizeof(float)) {
        o_.tiles.to_planes(rows, pixels_, width, panel_->count, bias, y, y_plane);
      } else {
        o_.tiles.to_bfloat16_planes(rows, pixels_, width, panel_->count, bias, y, y_plane);
      }
    }
    const PlaneOutput& o_;
    PackedBuffer<Out> stage_;
    const Panel* panel_ = nullptr;
    int64_t pixels_ = 0;
    Out* y_rows_ = nullptr;
  };
};

// NHWC pixels of float, or of bfloat16 (Out = uint16_t: their bits, the sums rounded once): each
// pixel's sums plus bias (to_pixels / to_bfloat16_pixels), the panel's channels of the pixel at
// once. The pixels are output_pixel_stride(p) apart (one group's channels of a grouped layer's
// output, in place). Output pixel (oh, ow) goes to pixel (oh * step_h, ow * step_w) of an image of
// `placement`'s size (the layer's output, steps 1, by default).
template <typename Out>
struct PixelOutput {
  const DirectTiles& tiles;
  const DirectConv& p;
  Out* out;
  const float* bias;  // may be null
  PixelPlacement placement{p.out_h, p.out_w, 1, 1};

  class Writer {
   public:
    Writer(const PixelOutput& o, int64_t) : o_(o) {}
    static constexpr bool kRowsCrossSamples = true;  // (each row placed on its own)
    // Float pixels take the tiles' sums in place (their stores spread among the products, not in
    // one burst after them: 3-5% of a grouped 16 -> 16 layer's forward pass) where the panel fills
    // its vectors, so that no lane past its channels is stored: in_place(), then the tiles store
    // row g's pixel ow at pixel(g, ow), pixel_step() apart, the last block adding panel_bias().
    static constexpr bool kStoresInPlace = sizeof(Out) == sizeof(float);
    void start(const Panel& panel, int64_t first_row, int64_t rows) { panel_ = &panel, first_row_ = first_row, rows_ = rows; }
    bool in_place() const { return panel_->count % o_.tiles.lanes == 0; }
    Out* pixel(int64_t g, int64_t ow) const { return row_pixels(g) + ow * pixel_step(); }
    // From one of a row's output pixels to the next.
    int64_t pixel_step() const { return o_.placement.step_w * output_pixel_stride(o_.p); }
    const float* panel_bias() const { return o_.bias != nullptr ? o_.bias + panel_->first : nullptr; }
    // (no prefetch: the output's lines fetched for writing while the tiles run, as PlaneOutput's,
    // measured no faster on a grouped 16 -> 16 layer, one thread or two)
    void prefetch(int64_t, int64_t) const {}
    void write(const float* rows, int64_t width) const {
      const DirectConv& p = o_.p;
      const float* bias = o_.bias != nullptr ? o_.bias + panel_->first : nullptr;
      for (int64_t r = 0; r < rows_; ++r) {
        const float* sums = rows + r * p.out_w * width;
        Out* y = row_pixels(r);
        if constexpr (sizeof(Out) == sizeof(float)) {
          o_.tiles.to_pixels(sums, p.out_w, width, panel_->count, bias, y, pixel_step());
        } else {
          o_.tiles.to_bfloat16_pixels(sums, p.out_w, width, panel_->count, bias, y, pixel_step());
        }
      }
    }

   private:
    // Where row r of the group's rows starts: the panel's first channel of its first pixel.
    Out* row_pixels(int64_t r) const {
      const DirectConv& p = o_.p;
      const PixelPlacement& at = o_.placement;
      const int64_t n = (first_row_ + r) / p.out_h, oh = (first_row_ + r) % p.out_h;
      return o_.out + ((n * at.height + oh * at.step_h) * at.width) * output_pixel_stride(p) + panel_->first;
    }

    const PixelOutput& o_;
    const Panel* panel_ = nullptr;
    int64_t first_row_ = 0, rows_ = 0;
  };
};

// Zeroes the pixels of an NHWC bfloat16 output that `at` places no output pixel of `p` on: those
// off the steps (the placement covers every pixel on them: direct_conv_forward_pairs_nhwc checks).
void zero_unplaced_pixels(const DirectConv& p, const PixelPlacement& at, uint16_t* out) {
  const int64_t O = p.out_channels;
  torch::stable::parallel_for(0, p.batch * at.height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      uint16_t* y = out + row * at.width * O;
      if (row % at.height % at.step_h != 0) {
        std::fill_n(y, at.width * O, uint16_t{0});
        continue;
      }
      for (int64_t w = 0; w < at.width; ++w)
        if (w % at.step_w != 0) std::fill_n(y + w * O, O, uint16_t{0});
    }
  });
}

// The forward pass by channel panels (the file's comment), on `tiles`: the float tiles, or the
// bfloat16 pair tiles, whose 32-bit values (pairs) it moves as floats; `weight` [O][K] in the
// order of input.taps ([groups * O][K]: NHWC passes may take a grouped layer's groups at once,
// each row of rows computed for every group's panels while its sample is in cache).
template <typename Output>
void panel_forward(const DirectTiles& tiles, const DirectConv& p, const ForwardInput& input, const float* weight,
                   const Output& output) {
  const std::vector<Panel> panels = group_panels(p, tiles);
  const std::vector<PackedBuffer<float>> w = packed_weights(p, weight, panels, tiles);
  const int64_t k_count = taps_of(p);
  const int64_t sample_in = p.groups * p.in_channels * padded_h(p) * padded_w(p);
  const bool pads = p.pad_h > 0 || p.pad_w > 0;
  constexpr bool cross = Output::Writer::kRowsCrossSamples;
  const ForwardBlocking blocking = forward_blocking(p, tiles, cross);
  // Each panel's rows of a group are computed pixel-major into `rows` (the tiles' own layout; the
  // group's rows follow one another), then written out by the thread's writer.
  const int64_t max_width = tiles.max_vectors * tiles.lanes, group_pixels = blocking.group_rows * p.out_w;
  const int64_t rows_size = (group_pixels + tiles.lanes - 1) / tiles.lanes * tiles.lanes * max_width;  // whole blocks
  // the tiles compiled for the column step where there are some (1 and 2), else the run-time one
  const int64_t step = input.column_step;
  const DirectTiles::Forward(*by_vectors)[DirectTiles::kMaxPixels + 1] =
      step == 1 ? tiles.forward_stride1 : step == 2 ? tiles.forward_stride2 : tiles.forward;
  // A padded layer's thread copies each sample it reaches zero-padded into a buffer of its own
  // (in cache, and no fresh pages per call): one per sample a group can span (sample n in slot
  // n % slots, kept while it is used).
  const int64_t slots = pads ? (cross ? (blocking.group_rows + p.out_h - 1) / p.out_h + 1 : 1) : 0;
  // Rows are independent: threads take chunks of them (parallel.h); a grain of a few rows keeps
  // threads busy at batch 1.
  parallel_chunks(0, p.batch * p.out_h, 4, [&](ChunkQueue& chunks) {
    PackedBuffer<float> rows(rows_size, 0.f);
    PackedBuffer<float> padded(slots * sample_in, 0.f);  // the borders stay zero
    std::vector<int64_t> held(slots, -1);                // the sample in each slot
    std::vector<const float*> x_rows(blocking.group_rows);
    auto sample = [&](int64_t n) -> const float* {
      if (!pads) return input.data + n * p.in_stride();
      float* slot = padded.data() + n % slots * sample_in;
      if (held[n % slots] != n) {
        input.copy_padded(p, input.data + n * p.in_stride(), slot);
        held[n % slots] = n;
      }
      return slot;
    };
    typename Output::Writer writer(output, group_pixels);
    for (int64_t row_begin, row_end; chunks.next(row_begin, row_end);) {
      // groups of rows [r, r + group) (of one sample, unless the output's rows cross samples)
      for (int64_t r = row_begin, group; r < row_end; r += group) {
        group = std::min(blocking.group_rows, row_end - r);
        if (!cross) group = std::min(group, p.out_h - r % p.out_h);
        for (int64_t g = 0; g < group; ++g) x_rows[g] = sample((r + g) / p.out_h) + (r + g) % p.out_h * input.row_step;
        for (size_t pi = 0; pi < panels.size(); ++pi) {
          const Panel& panel = panels[pi];
          const int64_t width = panel.vectors * tiles.lanes, q_max = tiles.pixels[panel.vectors];
          const DirectTiles::Forward* run = by_vectors[panel.vectors];
          writer.start(panel, r, group);
          // (the tiles store in place where the writer takes it and every row has taps: a row of
          // sums of nothing goes through write())
          bool in_place = false;
          if constexpr (Output::Writer::kStoresInPlace) {
            in_place = writer.in_place();
            for (int64_t g = 0; g < group; ++g)
              in_place = in_place && input.row_taps[(r + g) % p.out_h].begin < input.row_taps[(r + g) % p.out_h].end;
          }
          // Each block of taps runs over every tile of the group, adding to the sums the last left.
          const int64_t tiles_per_row = (p.out_w + q_max - 1) / q_max;
          const int64_t calls = (k_count + blocking.taps - 1) / blocking.taps * group * tiles_per_row;
          int64_t call = 0;
          for (int64_t k0 = 0; k0 < k_count; k0 += blocking.taps) {
            for (int64_t g = 0; g < group; ++g) {
              // the block's taps that this row takes (each row's first block stores its sums)
              const TapRange& row = input.row_taps[(r + g) % p.out_h];
              const int64_t begin = std::max(k0, row.begin), end = std::min(k0 + blocking.taps, row.end);
              for (int64_t ow = 0; ow < p.out_w; ow += q_max) {
                writer.prefetch(call++, calls);
                if (begin >= end) continue;
                float* sums = rows.data() + (g * p.out_w + ow) * width;
                int64_t sums_step = width;
                const float* bias = nullptr;
                if constexpr (Output::Writer::kStoresInPlace) {
                  if (in_place) {
                    sums = writer.pixel(g, ow), sums_step = writer.pixel_step();
                    bias = end == row.end ? writer.panel_bias() : nullptr;
                  }
                }
                run[std::min(q_max, p.out_w - ow)](x_rows[g] + panel.input_offset + ow * step, step,
                                                   input.taps.data() + begin, end - begin, w[pi].data() + begin * width,
                                                   sums, sums_step, /*accumulate=*/begin > row.begin, bias);
              }
            }
          }
          if (in_place) continue;
          for (int64_t g = 0; g < group; ++g)  // (rows whose every tap is in the padding: sums of nothing)
            if (input.row_taps[(r + g) % p.out_h].begin >= input.row_taps[(r + g) % p.out_h].end)
              std::fill_n(rows.data() + g * p.out_w * width, p.out_w * width, 0.f);
          writer.write(rows.data(), width);
        }
      }
    }
  });
}

}  // namespace

void direct_conv_forward(const DirectConv& p, const float* in, const float* weight, const float* bias,
                         float* out, OutputStores stores) {
  const DirectTiles& tiles = tiles_or_fail();
  if (row_tiles_suit(p, tiles)) return row_forward(p, in, weight, bias, out, tiles);
  panel_forward(tiles, p, nchw_input(p, in), weight,
                PlaneOutput<float>{tiles, p, out, bias, stores == OutputStores::kStreamed});
}

bool direct_conv_pairs_available() { return cpu_direct_pair_tiles() != nullptr; }

void interleave_channel_pairs(const uint16_t* x, int64_t count, int64_t channels, int64_t plane, uint32_t* pairs) {
  const int64_t pair_count = (channels + 1) / 2;
  torch::stable::parallel_for(0, count * pair_count, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const int64_t n = item / pair_count, c = item % pair_count * 2;
      const uint16_t* low = x + (n * channels + c) * plane;
      uint32_t* out = pairs + item * plane;
      if (c + 1 < channels) {
        const uint16_t* high = low + plane;
        for (int64_t i = 0; i < plane; ++i) out[i] = low[i] | static_cast<uint32_t>(high[i]) << 16;
      } else {
        std::copy_n(low, plane, out);  // (a zero channel past an odd count)
      }
    }
  });
}

namespace {

// The forward tiles take channel pairs for channels: the layer with ceil(C/2) of them (one group of
// a grouped layer: its samples the whole layer's pairs apart; its output, bfloat16, as it is).
DirectConv channel_pair_problem(const DirectConv& p) {
  DirectConv pairs = p;
  pairs.in_channels = (p.in_channels + 1) / 2;
  pairs.in_sample_stride = p.in_sample_stride / 2;
  return pairs;
}

}  // namespace

void direct_conv_forward_pairs(const DirectConv& p, const uint32_t* in_pairs, const uint32_t* weight_pairs,
                               const float* bias, uint16_t* out, OutputStores stores) {
  const DirectTiles& tiles = pair_tiles_or_fail();
  const DirectConv pairs = channel_pair_problem(p);
  panel_forward(tiles, pairs, nchw_input(pairs, reinterpret_cast<const float*>(in_pairs)),
                reinterpret_cast<const float*>(weight_pairs),
                PlaneOutput<uint16_t>{tiles, pairs, out, bias, stores == OutputStores::kStreamed});
}

void channel_pairs_innermost(const uint16_t* x, int64_t count, int64_t channels, int64_t plane, bool channels_last,
                             uint32_t* pairs) {
  const int64_t pair_count = (channels + 1) / 2;
  const int64_t channel_step = channels_last ? 1 : plane, position_step = channels_last ? channels : 1;
  torch::stable::parallel_for(0, count * plane, 64, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const uint16_t* values = x + item / plane * channels * plane + item % plane * position_step;
      uint32_t* out = pairs + item * pair_count;
      for (int64_t c = 0; c + 1 < channels; c += 2)
        out[c / 2] = values[c * channel_step] | static_cast<uint32_t>(values[(c + 1) * channel_step]) << 16;
      if (channels % 2 != 0) out[pair_count - 1] = values[(channels - 1) * channel_step];  // (a zero channel past the last)
    }
  });
}

void direct_conv_forward_pairs_nhwc(const DirectConv& p, const uint32_t* in_pairs, const uint32_t* weight_pairs,
                                    const float* bias, uint16_t* out, bool skip_padding_rows,
                                    const PixelPlacement* placement) {
  const DirectTiles& tiles = pair_tiles_or_fail();
  const DirectConv pairs = channel_pair_problem(p);
  const PixelPlacement at = placement != nullptr ? *placement : PixelPlacement{p.out_h, p.out_w, 1, 1};
  if (placement != nullptr) {
    CUCONV_CHECK(p.groups == 1, "cuconv: internal error: a placement is for a layer of one group");
    CUCONV_CHECK((p.out_h - 1) * at.step_h < at.height && at.height <= p.out_h * at.step_h &&
                     (p.out_w - 1) * at.step_w < at.width && at.width <= p.out_w * at.step_w,
                 "cuconv: internal error: a placement must put an output pixel on every pixel on its steps");
    zero_unplaced_pixels(p, at, out);
  }
  panel_forward(tiles, pairs, nhwc_input(pairs, reinterpret_cast<const float*>(in_pairs), skip_padding_rows),
                reinterpret_cast<const float*>(weight_pairs), PixelOutput<uint16_t>{tiles, pairs, out, bias, at});
}

namespace {

// OIHW weights as [O][kH][kW][C], the order of nhwc_input's taps.
std::vector<float> channels_innermost(const float* weight, int64_t O, int64_t C, int64_t kernel_taps) {
  std::vector<float> w(O * C * kernel_taps);
  for (int64_t o = 0; o < O; ++o)
    for (int64_t c = 0; c < C; ++c)
      for (int64_t k = 0; k < kernel_taps; ++k) w[(o * kernel_taps + k) * C + c] = weight[(o * C + c) * kernel_taps + k];
  return w;
}

}  // namespace

void direct_conv_forward_nhwc(const DirectConv& p, const float* in, const float* weight, const float* bias, float* out,
                              bool skip_padding_rows) {
  const DirectTiles& tiles = tiles_or_fail();
  const std::vector<float> w =
      channels_innermost(weight, p.groups * p.out_channels, p.in_channels, p.kernel_h * p.kernel_w);
  panel_forward(tiles, p, nhwc_input(p, in, skip_padding_rows), w.data(), PixelOutput<float>{tiles, p, out, bias});
}

void direct_conv_backward_input_nhwc(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in) {
  CUCONV_CHECK(direct_conv_backward_input_suits(p), "cuconv: internal error: no direct input gradient for this layer");
  // (the padding's zeros skipped: the weights are finite, the caller's promise)
  direct_conv_forward_nhwc(input_gradient_as_forward(p), grad_out, flipped_kernel(p, weight).data(), nullptr, grad_in,
                           /*skip_padding_rows=*/true);
}

namespace {

// The weight gradient's operands as the weight tiles read them, per layout: sample n of the input
// zero-padded (in place, or written into `buffer`, a padded sample's size, where `needs_buffer`),
// tap k = (c, i, j) (the weights' order) at taps[k] from its pixel's window origin, the origins
// row_step / column_step apart for adjacent output rows / columns, and grad_output's output rows
// [first, first + count) (counted across samples: row n*H_out + oh) for a panel's channels,
// pixel-major ([pixel][width], zeros past the panel's channels).
//   NCHW ([C][Hp][Wp]): tap at (c*Hp + i*dH)*Wp + j*dW,  steps sH*Wp and sW
//   NHWC ([Hp][Wp][C]): tap at (i*dH*Wp + j*dW)*C + c,   steps sH*Wp*C and sW*C
using GradRows = std::function<void(const Panel& panel, int64_t width, int64_t first, int64_t count, float* rows)>;
struct WeightOperands {
  std::function<const float*(int64_t n, float* buffer)> sample;
  bool needs_buffer;
  std::vector<int64_t> taps;
  int64_t row_step, column_step;
  GradRows grad_rows;
};

// grad_output's rows as NCHW planes: transposed, one run of a sample's rows at a time (element by
// element: 8% of LeNet's step).
GradRows grad_rows_from_planes(const DirectConv& p, const float* grad_out) {
  return [&p, grad_out, transpose = cpu_transpose_floats()](const Panel& panel, int64_t width, int64_t first,
                                                             int64_t count, float* rows) {
    const int64_t plane = p.out_h * p.out_w;
    for (int64_t row = first; row < first + count;) {
      const int64_t n = row / p.out_h, oh = row % p.out_h, run = std::min(p.out_h - oh, first + count - row);
      transpose(grad_out + n * p.out_stride() + oh * p.out_w + panel.first * plane, plane, panel.count, run * p.out_w,
                width, rows + (row - first) * p.out_w * width, width);
      row += run;
    }
  };
}

// The weight gradient by channel panels (the file's comment) on `tiles`: the float tiles, or the
// bfloat16 pair tiles with `p` the layer of pixel pairs (direct_conv_backward_weight_pairs).
// Each tile call sums a run of output rows into the partial sums: a whole sample's, or on small
// images several samples' (at least kPixelsPerCall pixels), as the partial sums of a panel are
// taps x its width floats (1.2 MB for a 512-channel 3x3 layer's 64-channel panel) and every call
// reads and writes them (the bfloat16 weight gradient of a 512-channel layer on 3x3 images, one
// sample a call, took 31 ms, where torch takes ~12).
void panel_backward_weight(const DirectTiles& tiles, const DirectConv& p, const WeightOperands& operands,
                           float* grad_weight) {
  constexpr int64_t kPixelsPerCall = 64;
  const std::vector<Panel> panels = group_panels(p, tiles);
  const std::vector<int64_t>& taps = operands.taps;
  const int64_t k_count = taps_of(p), plane = p.out_h * p.out_w;
  const int64_t samples_per_call = (kPixelsPerCall + plane - 1) / plane, rows_per_call = samples_per_call * p.out_h;
  const int64_t sample_in = p.groups * p.in_channels * padded_h(p) * padded_w(p);
  // Per panel: taps rounded up to whole tap tiles (the last tile repeats the last tap
  // into rows that are never read), and where the panel starts in the arrays.
  std::vector<int64_t> rows(panels.size()), partial_at(panels.size() + 1, 0), grad_at(panels.size() + 1, 0);
  for (size_t pi = 0; pi < panels.size(); ++pi) {
    const int64_t t = tiles.taps[panels[pi].vectors], width = panels[pi].vectors * tiles.lanes;
    rows[pi] = (k_count + t - 1) / t * t;
    partial_at[pi + 1] = partial_at[pi] + rows[pi] * width;
    grad_at[pi + 1] = grad_at[pi] + rows_per_call * p.out_w * width;
  }
  // A fixed split of the output rows (counted across images, so one image splits too),
  // one partial sum each, added in order: deterministic.
  const int64_t total_rows = p.batch * p.out_h;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(torch::stable::get_num_threads()), total_rows));
  // the samples a call's rows can span: padded copies of them, sample n in slot n % slots
  const int64_t slots = operands.needs_buffer ? samples_per_call + 1 : 0;
  PackedBuffer<float> partial(parts * partial_at.back(), 0.f);
  torch::stable::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
    PackedBuffer<float> grad_t(grad_at.back());
    PackedBuffer<float> padded(slots * sample_in, 0.f);  // (as the forward pass's)
    std::vector<int64_t> held(slots, -1);
    std::vector<const float*> x_rows(rows_per_call);
    std::vector<int64_t> tile_taps(16);
    auto sample = [&](int64_t n) {
      if (!operands.needs_buffer) return operands.sample(n, nullptr);
      float* slot = padded.data() + n % slots * sample_in;
      if (held[n % slots] != n) {
        operands.sample(n, slot);
        held[n % slots] = n;
      }
      return static_cast<const float*>(slot);
    };
    for (int64_t part = part_begin; part < part_end; ++part) {
      float* sums = partial.data() + part * partial_at.back();
      const int64_t last = (part + 1) * total_rows / parts;
      for (int64_t row = part * total_rows / parts; row < last;) {
        // output rows [row, row + count), of one sample or of several
        const int64_t count = std::min(rows_per_call, last - row);
        for (int64_t r = 0; r < count; ++r)
          x_rows[r] = sample((row + r) / p.out_h) + (row + r) % p.out_h * operands.row_step;
        for (size_t pi = 0; pi < panels.size(); ++pi) {
          const Panel& panel = panels[pi];
          const int64_t width = panel.vectors * tiles.lanes, t_count = tiles.taps[panel.vectors];
          float* panel_grad = grad_t.data() + grad_at[pi];
          operands.grad_rows(panel, width, row, count, panel_grad);
          for (int64_t k0 = 0; k0 < k_count; k0 += t_count) {
            for (int64_t t = 0; t < t_count; ++t) tile_taps[t] = taps[std::min(k0 + t, k_count - 1)] + panel.input_offset;
            tiles.weight[panel.vectors](x_rows.data(), count, p.out_w, operands.column_step, tile_taps.data(),
                                        panel_grad, sums + partial_at[pi] + k0 * width);
          }
        }
        row += count;
      }
    }
  });
  // grad_weight[o][k] = the parts' sums added in order; read along the panels' rows (a tap's
  // channels), whose output channels' rows take the writes a tap apart (read down a panel's
  // column instead, a lane every `width` floats, this took ~3 of a 512-channel 3x3 layer's 28 ms)
  const int64_t k_blocks = (k_count + 63) / 64;
  torch::stable::parallel_for(0, static_cast<int64_t>(panels.size()) * k_blocks, 1, [&](int64_t begin, int64_t end) {
    for (int64_t item = begin; item < end; ++item) {
      const size_t pi = item / k_blocks;
      const Panel& panel = panels[pi];
      const int64_t width = panel.vectors * tiles.lanes, k0 = item % k_blocks * 64;
      for (int64_t k = k0; k < std::min(k_count, k0 + 64); ++k) {
        const float* row = partial.data() + partial_at[pi] + k * width;
        for (int64_t lane = 0; lane < panel.count; ++lane) {
          float total = 0.f;
          for (int64_t part = 0; part < parts; ++part) total += row[part * partial_at.back() + lane];
          grad_weight[(panel.first + lane) * k_count + k] = total;
        }
      }
    }
  });
}

// Whether the row weight tiles fill more lanes than the channel panels: stride-1 columns, fewer
// output channels than a vector's lanes, and a row's vectors fuller than the output channels'
// (the row_tiles_suit of the weight gradient). Their partial sums hold a vector per tap and output
// channel (the panels' a lane), so they run only where a thread's partial sums stay in L2.
bool row_weight_tiles_suit(const DirectConv& p, const DirectTiles& tiles) {
  const int64_t partial_bytes = taps_of(p) * p.out_channels * tiles.lanes * static_cast<int64_t>(sizeof(float));
  return tiles.row_weight_channels > 0 && p.stride_w == 1 && p.out_channels < tiles.lanes &&
         used(p.out_w, tiles.lanes) > used(p.out_channels, tiles.lanes) && partial_bytes <= l2_cache_bytes() / 2;
}

// The weight gradient by row weight tiles (direct_tile.h), NCHW: as panel_backward_weight, a fixed
// split of the output rows (counted across samples), one partial sum each, added in order; a call
// sums a run of rows (of one sample, or of several on small images) for a group of up to
// row_weight_channels output channels and a block of taps, reading grad_output's planes in place.
// The runs are short enough that a group's grad_output rows stay in L1 across its tap blocks; each
// lane's chain of additions is a run's rows x a row's vectors products long (the L1 bound keeps it
// under kChainProducts where an L1 holds 32 KB or more; the bound is kept explicit for the
// rest, as long as one row's vectors, a 16th of a channel panel's chain for the row, fit it).
void row_backward_weight(const DirectTiles& tiles, const DirectConv& p, const float* in, const float* grad_out,
                         float* grad_weight) {
  note_kernel_use(KernelPath::kDirectTiles, "rows");
  const int64_t L = tiles.lanes, O = p.out_channels, k_count = taps_of(p), plane = p.out_h * p.out_w;
  const bool pads = p.pad_h > 0 || p.pad_w > 0;
  const std::vector<int64_t> taps = tap_offsets(p);
  // groups of output channels, each with its taps rounded up to whole tiles (the last tile repeats
  // the last tap into rows that are never read), and where its partial sums [k][OT][L] start
  struct Group {
    int64_t first, count, tile_taps, at;
  };
  std::vector<Group> groups;
  int64_t partial_size = 0;
  for (int64_t first = 0; first < O; first += tiles.row_weight_channels) {
    const int64_t count = std::min(tiles.row_weight_channels, O - first), t = tiles.row_weight_taps[count];
    groups.push_back({first, count, t, partial_size});
    partial_size += (k_count + t - 1) / t * t * count * L;
  }
  const int64_t group_bytes = tiles.row_weight_channels * p.out_w * static_cast<int64_t>(sizeof(float));
  const int64_t row_vectors = (p.out_w + L - 1) / L;
  const int64_t rows_per_call = std::max<int64_t>(1, std::min(l1_data_cache_bytes() / 2 / group_bytes, kChainProducts / row_vectors));
  const int64_t total_rows = p.batch * p.out_h;
  const int64_t parts = std::max<int64_t>(1, std::min<int64_t>(static_cast<int64_t>(torch::stable::get_num_threads()), total_rows));
  const int64_t sample_in = p.in_channels * padded_h(p) * padded_w(p);
  const int64_t slots = pads ? (rows_per_call + p.out_h - 1) / p.out_h + 1 : 0;  // the samples a call's rows span
  PackedBuffer<float> partial(parts * partial_size, 0.f);
  torch::stable::parallel_for(0, parts, 1, [&](int64_t part_begin, int64_t part_end) {
    PackedBuffer<float> padded(slots * sample_in, 0.f);  // (borders stay zero)
    std::vector<int64_t> held(slots, -1);
    std::vector<const float*> x_rows(rows_per_call), g_rows(rows_per_call);
    std::vector<int64_t> tile_taps(*std::max_element(std::begin(tiles.row_weight_taps), std::end(tiles.row_weight_taps)));
    auto sample = [&](int64_t n) {
      const float* x = in + n * p.in_stride();
      if (!pads) return x;
      float* slot = padded.data() + n % slots * sample_in;
      if (held[n % slots] != n) {
        copy_into_padding(p, x, slot);
        held[n % slots] = n;
      }
      return static_cast<const float*>(slot);
    };
    for (int64_t part = part_begin; part < part_end; ++part) {
      float* sums = partial.data() + part * partial_size;
      const int64_t last = (part + 1) * total_rows / parts;
      for (int64_t row = part * total_rows / parts; row < last;) {
        const int64_t count = std::min(rows_per_call, last - row);
        for (int64_t r = 0; r < count; ++r)
          x_rows[r] = sample((row + r) / p.out_h) + (row + r) % p.out_h * p.stride_h * padded_w(p);
        for (const Group& group : groups) {
          const int64_t t_count = group.tile_taps;
          for (int64_t r = 0; r < count; ++r) {  // the group's first channel, row (n, oh)
            const int64_t n = (row + r) / p.out_h, oh = (row + r) % p.out_h;
            g_rows[r] = grad_out + n * p.out_stride() + group.first * plane + oh * p.out_w;
          }
          for (int64_t k0 = 0; k0 < k_count; k0 += t_count) {
            for (int64_t t = 0; t < t_count; ++t) tile_taps[t] = taps[std::min(k0 + t, k_count - 1)];
            tiles.row_weight[group.count](x_rows.data(), g_rows.data(), count, p.out_w, plane, tile_taps.data(),
                                          sums + group.at + k0 * group.count * L);
          }
        }
        row += count;
      }
    }
  });
  // grad_weight[o][k] = the parts' sums added in order, each its lanes in order
  torch::stable::parallel_for(0, O, 1, [&](int64_t begin, int64_t end) {
    for (const Group& group : groups)
      for (int64_t o = std::max(begin, group.first); o < std::min(end, group.first + group.count); ++o)
        for (int64_t k = 0; k < k_count; ++k) {
          float total = 0.f;
          for (int64_t part = 0; part < parts; ++part) {
            const float* lanes = partial.data() + part * partial_size + group.at + (k * group.count + o - group.first) * L;
            for (int64_t lane = 0; lane < L; ++lane) total += lanes[lane];
          }
          grad_weight[o * k_count + k] = total;
        }
  });
}

}  // namespace

void direct_conv_backward_weight(const DirectConv& p, const float* in, const float* grad_out,
                                 float* grad_weight) {
  const DirectTiles& tiles = tiles_or_fail();
  CUCONV_CHECK(p.groups == 1, "cuconv: internal error: the NCHW direct kernels take one group a pass");
  if (row_weight_tiles_suit(p, tiles)) return row_backward_weight(tiles, p, in, grad_out, grad_weight);
  const bool pads = p.pad_h > 0 || p.pad_w > 0;
  const WeightOperands operands{[&](int64_t n, float* buffer) {
                                  const float* sample = in + n * p.in_stride();
                                  if (!pads) return sample;
                                  copy_into_padding(p, sample, buffer);
                                  return static_cast<const float*>(buffer);
                                },
                                pads,
                                tap_offsets(p),
                                p.stride_h * padded_w(p),
                                p.stride_w,
                                grad_rows_from_planes(p, grad_out)};
  panel_backward_weight(tiles, p, operands, grad_weight);
}

void pair_adjacent_columns(const uint16_t* planes, int64_t count, int64_t height, int64_t width, uint32_t* pairs) {
  const int64_t pair_width = (width + 1) / 2;
  torch::stable::parallel_for(0, count * height, 16, [&](int64_t begin, int64_t end) {
    for (int64_t row = begin; row < end; ++row) {
      const uint16_t* in = planes + row * width;
      uint32_t* out = pairs + row * pair_width;
      for (int64_t m = 0; m < width / 2; ++m) out[m] = in[2 * m] | static_cast<uint32_t>(in[2 * m + 1]) << 16;
      if (width % 2 != 0) out[pair_width - 1] = in[width - 1];  // (a zero pixel after the last)
    }
  });
}

namespace {

// One bfloat16 sample's zero-padded planes as column pairs, [C][Hp][Wp]: the value at column w
// and the one sW columns right (zero past the padded row), so that output pixels 2m and 2m + 1
// read tap (c, i, j) as one value, at the float kernels' offset from pixel 2m's origin.
void column_pairs(const DirectConv& p, const uint16_t* sample, uint32_t* out) {
  const int64_t hp = padded_h(p), wp = padded_w(p);
  for (int64_t c = 0; c < p.in_channels; ++c)
    for (int64_t h = 0; h < hp; ++h) {
      uint32_t* row = out + (c * hp + h) * wp;
      const int64_t ih = h - p.pad_h;
      if (ih < 0 || ih >= p.height) {
        std::fill(row, row + wp, 0u);
        continue;
      }
      const uint16_t* x = sample + (c * p.height + ih) * p.width;
      auto at = [&](int64_t w) -> uint32_t {
        const int64_t iw = w - p.pad_w;
        return iw >= 0 && iw < p.width ? x[iw] : 0u;
      };
      for (int64_t w = 0; w < wp; ++w) row[w] = at(w) | at(w + p.stride_w) << 16;
    }
}

}  // namespace

namespace {

// The weight tiles take pixel pairs for pixels: ceil(W_out / 2) of them a row, 2 * sW columns apart
// (one group of a grouped layer: its samples of grad_output's pairs the whole layer's planes apart).
DirectConv pixel_pair_problem(const DirectConv& p) {
  CUCONV_CHECK(p.groups == 1, "cuconv: internal error: the pair weight gradients take one group a pass");
  DirectConv pairs = p;
  pairs.out_w = (p.out_w + 1) / 2;
  pairs.stride_w = 2 * p.stride_w;
  pairs.in_sample_stride = 0;  // (the input is read through column_pairs' copies)
  pairs.out_sample_stride = p.out_sample_stride / (p.out_h * p.out_w) * p.out_h * pairs.out_w;
  return pairs;
}

// One bfloat16 NHWC sample zero-padded as column pairs, [Hp][Wp][C]: channel c of the pixel at
// column w and of the one sW columns right (zero past the padded row), as column_pairs pairs
// them in NCHW; a pixel's channels are a contiguous run in both.
void column_pairs_nhwc(const DirectConv& p, const uint16_t* sample, const uint16_t* zeros, uint32_t* out) {
  const int64_t C = p.in_channels, hp = padded_h(p), wp = padded_w(p), stride = input_pixel_stride(p);
  auto pixel = [&](int64_t ih, int64_t w) {
    const int64_t iw = w - p.pad_w;
    return iw >= 0 && iw < p.width ? sample + (ih * p.width + iw) * stride : zeros;
  };
  for (int64_t h = 0; h < hp; ++h) {
    uint32_t* row = out + h * wp * C;
    const int64_t ih = h - p.pad_h;
    if (ih < 0 || ih >= p.height) {
      std::fill(row, row + wp * C, 0u);
      continue;
    }
    for (int64_t w = 0; w < wp; ++w) {
      const uint16_t *low = pixel(ih, w), *high = pixel(ih, w + p.stride_w);
      for (int64_t c = 0; c < C; ++c) row[w * C + c] = low[c] | static_cast<uint32_t>(high[c]) << 16;
    }
  }
}

}  // namespace

void direct_conv_backward_weight_pairs(const DirectConv& p, const uint16_t* in, const uint32_t* grad_out_pairs,
                                       float* grad_weight) {
  const DirectTiles& tiles = pair_tiles_or_fail();
  const DirectConv pairs = pixel_pair_problem(p);
  const WeightOperands operands{[&](int64_t n, float* buffer) {
                                  column_pairs(p, in + n * p.in_stride(), reinterpret_cast<uint32_t*>(buffer));
                                  return static_cast<const float*>(buffer);
                                },
                                true,
                                tap_offsets(pairs),
                                pairs.stride_h * padded_w(pairs),
                                pairs.stride_w,
                                grad_rows_from_planes(pairs, reinterpret_cast<const float*>(grad_out_pairs))};
  panel_backward_weight(tiles, pairs, operands, grad_weight);
}

void direct_conv_backward_weight_pairs_nhwc(const DirectConv& p, const uint16_t* in, const uint16_t* grad_out,
                                            float* grad_weight) {
  const DirectTiles& tiles = pair_tiles_or_fail();
  const DirectConv pairs = pixel_pair_problem(p);
  const int64_t C = p.in_channels, O = p.out_channels, wp = padded_w(p);
  std::vector<int64_t> taps;  // tap (c, i, j) of a [Hp][Wp][C] sample (any order would do: each tap sums apart)
  taps.reserve(taps_of(p));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < p.kernel_h; ++i)
      for (int64_t j = 0; j < p.kernel_w; ++j) taps.push_back(nhwc_tap_offset(p, c, i, j));
  const std::vector<uint16_t> zeros(std::max(C, O), 0);
  const WeightOperands operands{
      [&](int64_t n, float* buffer) {
        column_pairs_nhwc(p, in + n * p.in_stride(), zeros.data(), reinterpret_cast<uint32_t*>(buffer));
        return static_cast<const float*>(buffer);
      },
      true,
      std::move(taps),
      p.stride_h * wp * C,
      pairs.stride_w * C,
      // grad_output's adjacent pixels (2m, 2m + 1) of a row paired channel by channel, the panel's
      // channels of each pair a row of `width` (zeros past them, and for an odd row's missing pixel)
      // (pixels output_pixel_stride apart: a group's channels of a grouped layer's, in place)
      [&](const Panel& panel, int64_t width, int64_t first, int64_t count, float* rows) {
        uint32_t* out = reinterpret_cast<uint32_t*>(rows);
        const int64_t pixel = output_pixel_stride(p);
        for (int64_t row = first; row < first + count; ++row) {
          const int64_t n = row / p.out_h, oh = row % p.out_h;
          const uint16_t* dy_row = grad_out + n * p.out_stride() + oh * p.out_w * pixel + panel.first;
          for (int64_t m = 0; m < pairs.out_w; ++m, out += width) {
            const uint16_t *low = dy_row + 2 * m * pixel, *high = 2 * m + 1 < p.out_w ? low + pixel : zeros.data();
            for (int64_t o = 0; o < panel.count; ++o) out[o] = low[o] | static_cast<uint32_t>(high[o]) << 16;
            std::fill(out + panel.count, out + width, 0u);
          }
        }
      }};
  panel_backward_weight(tiles, pairs, operands, grad_weight);
}

void direct_conv_backward_weight_nhwc(const DirectConv& p, const float* in, const float* grad_out, float* grad_weight) {
  const int64_t C = p.in_channels;
  const bool pads = p.pad_h > 0 || p.pad_w > 0;
  const int64_t pixel = pads ? p.groups * C : input_pixel_stride(p), row = padded_w(p) * pixel;
  const int64_t out_pixel = output_pixel_stride(p);
  std::vector<int64_t> taps;  // tap (c, i, j), the weight's order
  taps.reserve(taps_of(p));
  for (int64_t c = 0; c < C; ++c)
    for (int64_t i = 0; i < p.kernel_h; ++i)
      for (int64_t j = 0; j < p.kernel_w; ++j) taps.push_back(nhwc_tap_offset(p, c, i, j, row, pixel));
  const WeightOperands operands{
      [&](int64_t n, float* buffer) {
        const float* sample = in + n * p.in_stride();
        if (!pads) return sample;
        copy_into_nhwc_padding(p, sample, buffer);
        return static_cast<const float*>(buffer);
      },
      pads,
      std::move(taps),
      p.stride_h * row,
      p.stride_w * pixel,
      // grad_output's rows, NHWC already pixel-major: the panel's channels of each pixel, zeros past them
      [&](const Panel& panel, int64_t width, int64_t first, int64_t count, float* rows) {
        for (int64_t r = first; r < first + count; ++r) {
          const int64_t n = r / p.out_h, oh = r % p.out_h;
          const float* dy = grad_out + n * p.out_stride() + oh * p.out_w * out_pixel + panel.first;
          for (int64_t ow = 0; ow < p.out_w; ++ow, rows += width) {
            std::copy_n(dy + ow * out_pixel, panel.count, rows);
            std::fill(rows + panel.count, rows + width, 0.f);
          }
        }
      }};
  panel_backward_weight(tiles_or_fail(), p, operands, grad_weight);
}

bool direct_conv_backward_input_suits(const DirectConv& p) {
  return p.stride_h == 1 && p.stride_w == 1 && p.pad_h <= p.dilation_h * (p.kernel_h - 1) &&
         p.pad_w <= p.dilation_w * (p.kernel_w - 1);
}

void direct_conv_backward_input(const DirectConv& p, const float* grad_out, const float* weight, float* grad_in,
                                OutputStores stores) {
  CUCONV_CHECK(direct_conv_backward_input_suits(p), "cuconv: internal error: no direct input gradient for this layer");
  direct_conv_forward(input_gradient_as_forward(p), grad_out, flipped_kernel(p, weight).data(), nullptr, grad_in,
                      stores);
}

}  // namespace cuconv
