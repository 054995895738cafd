// The transforms of the Winograd forward pass (winograd_forward.cpp), written once for every
// vector width: included by simd_avx512.cpp (16 floats), simd_avx2.cpp (8) and
// winograd_forward.cpp (4, the portable build) inside their anonymous namespaces, so each file
// keeps its own copy compiled for its ISA. As gemm_tile.h: no #include here.
//
// With channels innermost (NHWC) each transform is the 4x4 algebra of winograd.cpp done on
// whole vectors of channels: no gathering of patches, no scattering of output tiles. Element
// e = 4i + j of a 4x4 patch or sum is row i, column j.

// V = B^T d B of one input patch, channel by channel: d[e] points at the channels of patch
// element e (an input pixel, or a row of zeros in the padding); element e of V goes to
// v + e * v_stride. B^T = [1 0 -1 0; 0 1 1 0; 0 -1 1 0; 0 1 0 -1].
template <typename V>
inline void winograd_patch_columns(const float* const* d, int64_t c, float* v, int64_t v_stride) {
  V t[16];  // B^T d
  for (int j = 0; j < 4; ++j) {
    V d0, d1, d2, d3;
    __builtin_memcpy(&d0, d[j] + c, sizeof(V));
    __builtin_memcpy(&d1, d[4 + j] + c, sizeof(V));
    __builtin_memcpy(&d2, d[8 + j] + c, sizeof(V));
    __builtin_memcpy(&d3, d[12 + j] + c, sizeof(V));
    t[j] = d0 - d2;
    t[4 + j] = d1 + d2;
    t[8 + j] = d2 - d1;
    t[12 + j] = d1 - d3;
  }
  for (int i = 0; i < 4; ++i) {
    const V r[4] = {t[4 * i] - t[4 * i + 2], t[4 * i + 1] + t[4 * i + 2], t[4 * i + 2] - t[4 * i + 1],
                    t[4 * i + 1] - t[4 * i + 3]};
    for (int j = 0; j < 4; ++j) __builtin_memcpy(v + (4 * i + j) * v_stride + c, &r[j], sizeof(V));
  }
}

// Y = A^T m A (+ bias) of one tile's 16 sums, channel by channel: sum e at m + e * m_stride,
// output pixel (r, s) of the tile to y[2r + s] (null where it lies past the image's last row or
// column). A^T = [1 1 1 0; 0 1 -1 -1].
template <typename V>
inline void winograd_sum_columns(const float* m, int64_t m_stride, int64_t c, const float* bias, float* const* y) {
  V s[16];
  for (int e = 0; e < 16; ++e) __builtin_memcpy(&s[e], m + e * m_stride + c, sizeof(V));
  V b{};
  if (bias != nullptr) __builtin_memcpy(&b, bias + c, sizeof(V));
  V t[8];  // A^T m
  for (int j = 0; j < 4; ++j) {
    t[j] = s[j] + s[4 + j] + s[8 + j];
    t[4 + j] = s[4 + j] - s[8 + j] - s[12 + j];
  }
  for (int i = 0; i < 2; ++i) {
    const V r[2] = {t[4 * i] + t[4 * i + 1] + t[4 * i + 2] + b, t[4 * i + 1] - t[4 * i + 2] - t[4 * i + 3] + b};
    for (int j = 0; j < 2; ++j)
      if (y[2 * i + j] != nullptr) __builtin_memcpy(y[2 * i + j] + c, &r[j], sizeof(V));
  }
}

// D = H e H^T of one tile's 2x2 of grad_output, channel by channel: e[2r + s] points at the
// channels of its pixel (r, s) (a row of zeros past the image); element e of D goes to
// d + e * d_stride. H = [1 0; 1/2 1/2; 1/2 -1/2; 0 1].
template <typename V>
inline void winograd_gradient_columns(const float* const* e, int64_t c, float* d, int64_t d_stride) {
  V g[4];
  for (int k = 0; k < 4; ++k) __builtin_memcpy(&g[k], e[k] + c, sizeof(V));
  V t[8];  // H e, 4x2
  for (int j = 0; j < 2; ++j) {
    t[j] = g[j];
    t[2 + j] = 0.5f * (g[j] + g[2 + j]);
    t[4 + j] = 0.5f * (g[j] - g[2 + j]);
    t[6 + j] = g[2 + j];
  }
  for (int i = 0; i < 4; ++i) {
    const V r[4] = {t[2 * i], 0.5f * (t[2 * i] + t[2 * i + 1]), 0.5f * (t[2 * i] - t[2 * i + 1]), t[2 * i + 1]};
    for (int j = 0; j < 4; ++j) __builtin_memcpy(d + (4 * i + j) * d_stride + c, &r[j], sizeof(V));
  }
}

// The transforms over `channels` channels: kLanes at a time, then one by one. (GCC's vector
// types, declared here rather than in the templates: a dependent one passed on as a template
// argument loses its vector_size and becomes a plain float.)
typedef float WinogradLanes4 __attribute__((vector_size(16)));
typedef float WinogradLanes8 __attribute__((vector_size(32)));
typedef float WinogradLanes16 __attribute__((vector_size(64)));
template <int kLanes>
using WinogradLanes = std::conditional_t<kLanes == 16, WinogradLanes16,
                                         std::conditional_t<kLanes == 8, WinogradLanes8, WinogradLanes4>>;

template <int kLanes>
void winograd_patch_nhwc(const float* const* d, int64_t channels, float* v, int64_t v_stride) {
  using Lanes = WinogradLanes<kLanes>;
  static_assert(sizeof(Lanes) == kLanes * sizeof(float));
  int64_t c = 0;
  for (; c + kLanes <= channels; c += kLanes) winograd_patch_columns<Lanes>(d, c, v, v_stride);
  for (; c < channels; ++c) winograd_patch_columns<float>(d, c, v, v_stride);
}

template <int kLanes>
void winograd_sums_nhwc(const float* m, int64_t m_stride, int64_t channels, const float* bias, float* const* y) {
  using Lanes = WinogradLanes<kLanes>;
  static_assert(sizeof(Lanes) == kLanes * sizeof(float));
  int64_t c = 0;
  for (; c + kLanes <= channels; c += kLanes) winograd_sum_columns<Lanes>(m, m_stride, c, bias, y);
  for (; c < channels; ++c) winograd_sum_columns<float>(m, m_stride, c, bias, y);
}

template <int kLanes>
void winograd_gradient_nhwc(const float* const* e, int64_t channels, float* d, int64_t d_stride) {
  using Lanes = WinogradLanes<kLanes>;
  int64_t c = 0;
  for (; c + kLanes <= channels; c += kLanes) winograd_gradient_columns<Lanes>(e, c, d, d_stride);
  for (; c < channels; ++c) winograd_gradient_columns<float>(e, c, d, d_stride);
}
