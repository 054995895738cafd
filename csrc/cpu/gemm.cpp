// cuconv's GEMM driver (gemm.h): the loop over register tiles, the choice of
// microkernel for this CPU, and the portable microkernel.

#include "gemm.h"
#include "simd.h"

#include "../stable.h"

#include <unistd.h>

#include <algorithm>
#include <atomic>
#include <cstring>
#include <cstdlib>
#include <fstream>
#include <string>
#include <type_traits>

namespace cuconv {

// Defined in simd_avx512.cpp and simd_avx2.cpp (x86-64 only).
Microkernel<float> avx512_microkernel_float();
Microkernel<double> avx512_microkernel_double();
Microkernel<float> avx2_microkernel_float();
Microkernel<double> avx2_microkernel_double();
Microkernel<float> avx512_microkernel_float_wide();
Microkernel<double> avx512_microkernel_double_wide();
PairTileKernel avx512_bf16_pair_tile(int64_t mr, int64_t nr);
TransposeFloats avx512_transpose_floats();
TransposeFloats avx2_transpose_floats();

namespace {

// Portable register tile: plain loops the compiler may vectorise for the baseline ISA.
template <typename T, int MR, int NR>
void portable_tile(int64_t depth, const T* a, const T* b, T* c, int64_t ldc, bool accumulate, const T* bias) {
  T acc[MR][NR] = {};
  for (int64_t k = 0; k < depth; ++k, a += MR, b += NR)
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) {
      T& out = c[r * ldc + j];
      out = accumulate ? out + acc[r][j] : (bias != nullptr ? acc[r][j] + bias[r] : acc[r][j]);
    }
}

// Its indirect form (gemm.h, IndirectTileKernel).
template <typename T, int MR, int NR>
void portable_indirect_tile(int64_t taps, int64_t channels, const T* const* rows, const T* b, T* c, int64_t ldc,
                            bool accumulate, const T* bias) {
  T acc[MR][NR] = {};
  for (int64_t t = 0; t < taps; ++t, rows += MR)
    for (int64_t k = 0; k < channels; ++k, b += NR)
      for (int r = 0; r < MR; ++r)
        for (int j = 0; j < NR; ++j) acc[r][j] += rows[r][k] * b[j];
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) {
      T& out = c[r * ldc + j];
      out = accumulate ? out + acc[r][j] : (bias != nullptr ? acc[r][j] + bias[j] : acc[r][j]);
    }
}

// And with B's rows through pointers (gemm.h, RowsBTileKernel).
template <typename T, int MR, int NR>
void portable_rows_b_tile(int64_t depth, const T* a, int64_t a_step, const T* const* b_rows, int64_t b_offset, T* c,
                          int64_t ldc, bool accumulate) {
  T acc[MR][NR] = {};
  for (int64_t k = 0; k < depth; ++k, a += a_step) {
    const T* b = b_rows[k] + b_offset;
    for (int r = 0; r < MR; ++r)
      for (int j = 0; j < NR; ++j) acc[r][j] += a[r] * b[j];
  }
  for (int r = 0; r < MR; ++r)
    for (int j = 0; j < NR; ++j) {
      T& out = c[r * ldc + j];
      out = accumulate ? out + acc[r][j] : acc[r][j];
    }
}

CpuIsa best_isa_of_this_cpu() {
#if CUCONV_X86_SIMD
  static const CpuIsa best = __builtin_cpu_supports("avx512f") ? CpuIsa::kAvx512
                             : __builtin_cpu_supports("avx2") && __builtin_cpu_supports("fma") ? CpuIsa::kAvx2
                                                                                               : CpuIsa::kGeneric;
  return best;
#else
  return CpuIsa::kGeneric;
#endif
}

bool cpu_has_avx512_bf16() {
#if CUCONV_X86_SIMD
  static const bool has = __builtin_cpu_supports("avx512f") && __builtin_cpu_supports("avx512bf16");
  return has;
#else
  return false;
#endif
}

// CUCONV_CPU_ISA's value ("" when unset), checked.
std::string isa_setting() {
  const char* setting = std::getenv("CUCONV_CPU_ISA");
  const std::string value(setting != nullptr ? setting : "");
  CUCONV_CHECK_VALUE(value.empty() || value == "avx512_bf16" || value == "avx512" || value == "avx2" ||
                         value == "generic",
                     "cuconv: expected the environment variable CUCONV_CPU_ISA to be avx512_bf16, avx512, avx2 or "
                     "generic, but got '", value, "'");
  return value;
}

}  // namespace

CpuIsa cpu_isa() {
  const std::string value = isa_setting();
  const CpuIsa wanted = value == "avx2" ? CpuIsa::kAvx2 : value == "generic" ? CpuIsa::kGeneric : CpuIsa::kAvx512;
  return std::min(wanted, best_isa_of_this_cpu());
}

bool bf16_dot_products() {
  const std::string value = isa_setting();
  return cpu_has_avx512_bf16() && (value.empty() || value == "avx512_bf16");
}

PairMicrokernel cpu_pair_microkernel(const Microkernel<float>& like) {
#if CUCONV_X86_SIMD
  if (bf16_dot_products()) {
    const PairTileKernel tile = avx512_bf16_pair_tile(like.mr, like.nr);
    if (tile != nullptr) return {like.mr, like.nr, tile, "avx512_bf16"};
  }
#endif
  return {};
}

// Two float rows of a panel (k and k + 1, or zeros past an odd depth) into one row of pairs: each
// float's upper half is its bfloat16 (the lower half is zero: the values came from bfloat16).
void narrow_to_pairs(const float* src, int64_t panels, int64_t src_panel_stride, int64_t width, int64_t depth,
                     uint16_t* dst) {
  const int64_t pairs = (depth + 1) / 2;
  for (int64_t q = 0; q < panels; ++q) {
    const float* panel = src + q * src_panel_stride;
    uint16_t* out = dst + q * pair_panel_size(width, depth);
    for (int64_t p = 0; p < pairs; ++p) {
      const float* even = panel + 2 * p * width;
      const float* odd = 2 * p + 1 < depth ? even + width : nullptr;
      uint16_t* row = out + 2 * p * width;
      for (int64_t j = 0; j < width; ++j) {
        uint32_t low, high = 0;
        std::memcpy(&low, even + j, sizeof low);
        if (odd != nullptr) std::memcpy(&high, odd + j, sizeof high);
        row[2 * j] = static_cast<uint16_t>(low >> 16);
        row[2 * j + 1] = static_cast<uint16_t>(high >> 16);
      }
    }
  }
}

namespace {

// The size of one data (or unified) cache of `level` (1, 2 or 3) as cpu0 sees it, or 0 where
// neither Linux's table nor glibc says. Linux's table first: it gives one cache instance (what a
// core can use), where glibc's sysconf gives an AMD package's whole L3 (all its CCXs: 256 MiB for
// a Zen 3 EPYC whose cores share 32 MiB).
int64_t read_cache_bytes(int level) {
  long bytes = 0;
  for (int index = 0; bytes <= 0 && index < 8; ++index) {
    const std::string dir = "/sys/devices/system/cpu/cpu0/cache/index" + std::to_string(index) + "/";
    std::ifstream level_file(dir + "level"), size_file(dir + "size"), type_file(dir + "type");
    int found = 0;
    std::string size, type;
    if (!(level_file >> found) || found != level || !(size_file >> size) || size.empty()) continue;
    if (type_file >> type && type == "Instruction") continue;
    const long value = std::atol(size.c_str());
    bytes = size.back() == 'K' ? value << 10 : size.back() == 'M' ? value << 20 : value;
  }
#if defined(_SC_LEVEL1_DCACHE_SIZE) && defined(_SC_LEVEL2_CACHE_SIZE) && defined(_SC_LEVEL3_CACHE_SIZE)
  if (bytes <= 0)  // 0 or -1 where unknown
    bytes = sysconf(level == 1 ? _SC_LEVEL1_DCACHE_SIZE : level == 2 ? _SC_LEVEL2_CACHE_SIZE : _SC_LEVEL3_CACHE_SIZE);
#endif
  return std::max<int64_t>(bytes, 0);
}

}  // namespace

int64_t l1_data_cache_bytes() {
  static const int64_t bytes = std::clamp<int64_t>(read_cache_bytes(1) > 0 ? read_cache_bytes(1) : 32 << 10,
                                                   int64_t{16} << 10, int64_t{256} << 10);
  return bytes;
}

int64_t l2_cache_bytes() {
  static const int64_t bytes = std::clamp<int64_t>(read_cache_bytes(2) > 0 ? read_cache_bytes(2) : 1 << 20,
                                                   int64_t{256} << 10, int64_t{8} << 20);
  return bytes;
}

int64_t last_level_cache_bytes() {
  static const int64_t bytes = std::max(read_cache_bytes(3), l2_cache_bytes());
  return bytes;
}

int64_t samples_per_chunk(int64_t sample_bytes, int64_t batch, double share, const char* setting) {
  const char* value = std::getenv(setting);
  if (value != nullptr && *value != '\0') {
    char* end = nullptr;
    const long long samples = std::strtoll(value, &end, 10);
    CUCONV_CHECK_VALUE(*end == '\0' && samples >= 1, "cuconv: expected the environment variable ", setting,
                       " to be a positive integer, but got '", std::string(value), "'");
    return std::min<int64_t>(samples, std::max<int64_t>(batch, 1));
  }
  const auto by_cache = static_cast<int64_t>(static_cast<double>(last_level_cache_bytes()) * share) /
                        std::max<int64_t>(sample_bytes, 1);
  return std::clamp<int64_t>(by_cache, 1, std::max<int64_t>(batch, 1));
}

namespace {
std::atomic<const char*> last_use[6] = {nullptr, nullptr, nullptr, nullptr, nullptr, nullptr};  // per KernelPath; names are string literals
}  // namespace

void note_kernel_use(KernelPath path, const char* isa) {
  last_use[static_cast<int>(path)].store(isa, std::memory_order_relaxed);
}
const char* last_kernel_use(KernelPath path) { return last_use[static_cast<int>(path)].load(std::memory_order_relaxed); }

namespace {
void portable_transpose_floats(const float* src, int64_t src_stride, int64_t rows, int64_t cols, int64_t stored,
                               float* dst, int64_t dst_stride) {
  for (int64_t q = 0; q < cols; ++q)
    for (int64_t r = 0; r < stored; ++r) dst[q * dst_stride + r] = r < rows ? src[r * src_stride + q] : 0.f;
}
}  // namespace

TransposeFloats cpu_transpose_floats() {
  switch (cpu_isa()) {
#if CUCONV_X86_SIMD
    case CpuIsa::kAvx512: return avx512_transpose_floats();
    case CpuIsa::kAvx2: return avx2_transpose_floats();
#endif
    default: return &portable_transpose_floats;
  }
}

template <>
Microkernel<float> cpu_microkernel<float>() {
  switch (cpu_isa()) {
#if CUCONV_X86_SIMD
    case CpuIsa::kAvx512: return avx512_microkernel_float();
    case CpuIsa::kAvx2: return avx2_microkernel_float();
#endif
    default:
      return {4, 16, 256, &portable_tile<float, 4, 16>, "generic", &portable_indirect_tile<float, 4, 16>,
              &portable_rows_b_tile<float, 4, 16>};
  }
}

template <>
Microkernel<double> cpu_microkernel<double>() {
  switch (cpu_isa()) {
#if CUCONV_X86_SIMD
    case CpuIsa::kAvx512: return avx512_microkernel_double();
    case CpuIsa::kAvx2: return avx2_microkernel_double();
#endif
    default:
      return {4, 8, 256, &portable_tile<double, 4, 8>, "generic", &portable_indirect_tile<double, 4, 8>,
              &portable_rows_b_tile<double, 4, 8>};
  }
}

template <typename T>
Microkernel<T> cpu_microkernel_for_columns(int64_t columns) {
  const Microkernel<T> standard = cpu_microkernel<T>();
#if CUCONV_X86_SIMD
  if (cpu_isa() == CpuIsa::kAvx512) {
    Microkernel<T> wide;
    if constexpr (std::is_same_v<T, float>) wide = avx512_microkernel_float_wide();
    else wide = avx512_microkernel_double_wide();
    // the fraction of the tiles' columns that is real work
    auto used = [columns](const Microkernel<T>& k) {
      return static_cast<double>(columns) / static_cast<double>((columns + k.nr - 1) / k.nr * k.nr);
    };
    if (used(wide) > used(standard)) return wide;
  }
#endif
  return standard;
}
template Microkernel<float> cpu_microkernel_for_columns<float>(int64_t);
template Microkernel<double> cpu_microkernel_for_columns<double>(int64_t);

namespace {

// Tiles in row-panel order: one A panel (MR x depth, L1) meets every B panel of the
// slice (depth x N, L2) before the next A panel is read. Edge tiles (past M or N) run
// the same kernel into a local tile, and only its valid part is added to C.
// tile(a_panel, b_panel, c, ldc, accumulate, bias) runs one register tile.
template <typename P, typename T, typename Tile>
void for_each_tile(int64_t mr, int64_t nr, int64_t M, int64_t N, const P* a, int64_t a_panel_stride, const P* b,
                   int64_t b_panel_stride, T* c, int64_t ldc, bool accumulate, const T* bias, Tile tile) {
  CUCONV_CHECK(mr * nr <= kMaxTileElements);
  alignas(64) T edge[kMaxTileElements];
  for (int64_t m0 = 0; m0 < M; m0 += mr) {
    const P* a_panel = a + m0 / mr * a_panel_stride;
    const int64_t rows = std::min(mr, M - m0);
    const T* row_bias = bias != nullptr ? bias + m0 : nullptr;
    for (int64_t n0 = 0; n0 < N; n0 += nr) {
      const P* b_panel = b + n0 / nr * b_panel_stride;
      const int64_t cols = std::min(nr, N - n0);
      T* out_tile = c + m0 * ldc + n0;
      if (rows == mr && cols == nr) {
        tile(a_panel, b_panel, out_tile, ldc, accumulate, row_bias);
        continue;
      }
      tile(a_panel, b_panel, edge, nr, false, nullptr);
      for (int64_t r = 0; r < rows; ++r)
        for (int64_t j = 0; j < cols; ++j) {
          T& out = out_tile[r * ldc + j];
          const T sum = edge[r * nr + j];
          out = accumulate ? out + sum : (row_bias != nullptr ? sum + row_bias[r] : sum);
        }
    }
  }
}

}  // namespace

template <typename T>
void gemm_packed(const Microkernel<T>& kernel, int64_t M, int64_t N, int64_t depth, const T* a,
                 int64_t a_panel_stride, const T* b, int64_t b_panel_stride, T* c, int64_t ldc,
                 bool accumulate, const typename Element<T>::type* bias) {
  for_each_tile(kernel.mr, kernel.nr, M, N, a, a_panel_stride, b, b_panel_stride, c, ldc, accumulate, bias,
                [&](const T* a_panel, const T* b_panel, T* tile, int64_t tile_ldc, bool add, const T* row_bias) {
                  kernel.tile(depth, a_panel, b_panel, tile, tile_ldc, add, row_bias);
                });
}

// The same on pair panels (gemm.h): tiles of `depth` k, i.e. ceil(depth / 2) pairs.
void gemm_packed_pairs(const PairMicrokernel& kernel, int64_t M, int64_t N, int64_t depth, const uint16_t* a,
                       int64_t a_panel_stride, const uint16_t* b, int64_t b_panel_stride, float* c, int64_t ldc,
                       bool accumulate, const float* bias) {
  CUCONV_CHECK(kernel.tile != nullptr);
  const int64_t pairs = (depth + 1) / 2;
  for_each_tile(kernel.mr, kernel.nr, M, N, a, a_panel_stride, b, b_panel_stride, c, ldc, accumulate, bias,
                [&](const uint16_t* a_panel, const uint16_t* b_panel, float* tile, int64_t tile_ldc, bool add,
                    const float* row_bias) { kernel.tile(pairs, a_panel, b_panel, tile, tile_ldc, add, row_bias); });
}

template void gemm_packed<float>(const Microkernel<float>&, int64_t, int64_t, int64_t, const float*, int64_t,
                                 const float*, int64_t, float*, int64_t, bool, const float*);
template void gemm_packed<double>(const Microkernel<double>&, int64_t, int64_t, int64_t, const double*, int64_t,
                                  const double*, int64_t, double*, int64_t, bool, const double*);

}  // namespace cuconv
