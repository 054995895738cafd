#pragma once
// cuconv's own matrix product for the CPU convolutions, on packed operands (the
// BLIS scheme; see siboehm's and the BLIS papers' worklogs):
//
//   C[M, N] (+)= A[M, K] @ B[K, N]
//
// Packed layouts, with (MR, NR) the register tile of the microkernel:
//   A: ceil(M/MR) panels, panel p = rows [p*MR, p*MR + MR) stored [K][MR]
//   B: ceil(N/NR) panels, panel q = cols [q*NR, q*NR + NR) stored [K][NR]
// (rows / columns past M / N are zeros), so the microkernel reads both panels front
// to back, one k at a time:
//
//   for k:  acc[r][:] += A[k][r] * B[k][:]      (MR x NR accumulators in registers)
//
// The convolutions (conv2d.cpp) pack straight from the image: im2col writes B panels,
// so no row-major column matrix is ever stored. Callers cut K into slices of
// `depth` so that one slice of A and B stays in L2 while the tiles run.
//
// Microkernels: AVX-512 (simd_avx512.cpp), AVX2 + FMA (simd_avx2.cpp) and portable
// C++ (gemm.cpp), for float and double; the best one the CPU has is used, and
// CUCONV_CPU_ISA=avx2|generic in the environment asks for a lesser one (tests, and
// comparisons). Half types are packed as float and use the float kernels; bfloat16 on a CPU with
// AVX512-BF16 then runs on bfloat16 pairs (PairMicrokernel below).

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <new>
#include <utility>
#include <vector>

namespace cuconv {

// The vector instructions cuconv's CPU kernels use: the best this CPU has, or a lesser
// one that CUCONV_CPU_ISA=avx512|avx2|generic asks for (read on every call, so tests can switch
// it; any other value is an error). CUCONV_CPU_ISA=avx512_bf16 and avx512 both mean AVX-512;
// avx512 without the bfloat16 dot products (bf16_dot_products() below).
enum class CpuIsa { kGeneric = 0, kAvx2 = 1, kAvx512 = 2 };
CpuIsa cpu_isa();

// One register tile: c[r*ldc + j] = sum_k a[k*MR + r] * b[k*NR + j] plus c[r*ldc + j] when
// accumulating, else plus bias[r] when a bias is given, for r < MR, j < NR.
template <typename T>
using TileKernel = void (*)(int64_t depth, const T* a, const T* b, T* c, int64_t ldc, bool accumulate,
                            const T* bias);

// The same register tile with an indirect A (the indirect convolution: no packed A): for
// every tap t < taps, rows[t*MR + r] points at the `channels` values of row r (an input pixel's
// channels in NHWC, or a row of zeros), and b holds [taps * channels][NR]:
//   c[r*ldc + j] = sum_{t, k} rows[t*MR + r][k] * b[(t*channels + k)*NR + j]
// plus c[r*ldc + j] when accumulating, else plus bias[j] (per column) when a bias is given.
template <typename T>
using IndirectTileKernel = void (*)(int64_t taps, int64_t channels, const T* const* rows, const T* b, T* c,
                                    int64_t ldc, bool accumulate, const T* bias);

// The same register tile with B's rows read through pointers (no packed B): for every k <
// depth, b_rows[k] + b_offset points at the NR values of row k (an input pixel's channels in
// NHWC, or a row of zeros), and A's values for k are a[k*a_step + r] (a_step = MR: a packed A
// panel as above; larger: MR consecutive values of a row-major matrix's row k, read in place):
//   c[r*ldc + j] (+)= sum_k a[k*a_step + r] * (b_rows[k] + b_offset)[j]
// (accumulating into c when asked, no bias).
template <typename T>
using RowsBTileKernel = void (*)(int64_t depth, const T* a, int64_t a_step, const T* const* b_rows,
                                 int64_t b_offset, T* c, int64_t ldc, bool accumulate);

// The largest register tile of any microkernel (AVX-512 float: 8 x 48, or 6 x 64), for edge tiles.
constexpr int64_t kMaxTileElements = 8 * 48;

// dst[q] = src[offsets[q]] for q < count, 0 where offsets[q] < 0: the gather of the packers
// that read offset tables (conv2d.cpp), with the ISA's gather instruction.
template <typename T>
using GatherKernel = void (*)(T* dst, const T* src, const int32_t* offsets, int64_t count);

template <typename T>
struct Microkernel {
  int64_t mr, nr;      // register tile
  int64_t depth;       // K slice: an MR x depth A panel stays in L1
  TileKernel<T> tile;
  const char* isa;     // "avx512", "avx2" or "generic"
  IndirectTileKernel<T> indirect;  // the same tile, A read through row pointers
  RowsBTileKernel<T> rows_b;       // the same tile, B's rows read through pointers
  // Null where the packers take their scalar loop: all but AVX-512 float (on a Xeon the 16-lane
  // gather made ResNet's b4.conv1 forward, 6x6 outputs at stride 2, ~5% faster; AVX2's 8-lane
  // gather, slow on some CPUs, was not measured).
  GatherKernel<T> gather = nullptr;
};

// The microkernel for this CPU (and CUCONV_CPU_ISA), for T = float or double.
template <typename T>
Microkernel<T> cpu_microkernel();

// bfloat16 products on pairs (AVX512-BF16's vdpbf16ps: per float lane, two products of bfloat16
// pairs added to the accumulator in one instruction, twice the float FMA's work). The operands
// are packed as above in float by the same packers, then narrowed to bfloat16 pairs along K
// (narrow_to_pairs): a panel [depth][w] of floats becomes [ceil(depth/2)][w][2] bfloat16, element
// (k, j) at (k/2 * w + j) * 2 + k % 2, a zero after an odd depth's last k. The values came from
// bfloat16 tensors, so narrowing only drops zero bits. Per pair of k the tile computes
//   acc[r][j] = (acc[r][j] + a[k+1][r] * b[k+1][j]) + a[k][r] * b[k][j]
// rounding each step to float as an FMA would (products of bfloat16 are exact in float), with
// subnormal bfloat16 inputs read as zero and subnormal results flushed to zero (the
// instruction's rules; oneDNN's bfloat16 convolutions use the same instruction).
using PairTileKernel = void (*)(int64_t pairs, const uint16_t* a, const uint16_t* b, float* c, int64_t ldc,
                                bool accumulate, const float* bias);
struct PairMicrokernel {
  int64_t mr = 0, nr = 0;        // the register tile: the float microkernel's whose panels it reads
  PairTileKernel tile = nullptr;  // null where the CPU has no bfloat16 dot products
  const char* isa = nullptr;      // "avx512_bf16"
};

// Whether bfloat16 products run on pairs: the CPU has AVX512-BF16 and CUCONV_CPU_ISA is unset or
// avx512_bf16 (avx512 asks for AVX-512 without it).
bool bf16_dot_products();

// The pair tile of the same shape as `like` (a float microkernel of cpu_microkernel_for_columns),
// or one with a null tile where bf16_dot_products() is false or no tile has that shape.
PairMicrokernel cpu_pair_microkernel(const Microkernel<float>& like);

// Elements of `panels` pair panels of `width` lanes and `depth` k (depth rounded up to even).
inline int64_t pair_panel_size(int64_t width, int64_t depth) { return (depth + 1) / 2 * 2 * width; }

// Narrows `panels` float panels [depth][width] (panel p at src + p * src_panel_stride) to pair
// panels (above) at dst + p * pair_panel_size(width, depth).
void narrow_to_pairs(const float* src, int64_t panels, int64_t src_panel_stride, int64_t width, int64_t depth,
                     uint16_t* dst);

// gemm_packed on pair panels: `depth` k (an odd depth's last pair holds a zero), A and B at the
// slice's first pair, consecutive panels a_panel_stride / b_panel_stride elements apart.
void gemm_packed_pairs(const PairMicrokernel& kernel, int64_t M, int64_t N, int64_t depth, const uint16_t* a,
                       int64_t a_panel_stride, const uint16_t* b, int64_t b_panel_stride, float* c, int64_t ldc,
                       bool accumulate, const float* bias);

// The microkernel for a product of `columns` columns: the standard one, or on AVX-512 a
// 6 x 4-vector tile where that wastes fewer columns (e.g. 64 output channels in NHWC).
template <typename T>
Microkernel<T> cpu_microkernel_for_columns(int64_t columns);

// The instruction set of the kernels each CPU convolution path ran last (one note per op
// call), as the kernels themselves name it, and of pooling's vector kernels last fetched (a
// note per fetch; "generic": none): cuconv._C.cpu_kernels() reports it, and the tests check
// with it that CUCONV_CPU_ISA reaches the kernels that run (AVX2 and AVX-512 results are
// bitwise identical, so no numeric test can tell them apart). kDirectTiles is no instruction set
// but which tiles the last direct pass ran on: "channels" (vectors along output channels) or
// "rows" (along output rows: row_tiles_suit, row_weight_tiles_suit in direct_conv.cpp); nor is
// kDepthwiseRows, how the last depthwise forward pass or input gradient brought its rows into
// cache: "fetched" (software prefetches ahead) or "hardware" (depthwise.h, RowFetch), followed by
// ", streamed" where it wrote its output past the caches (depthwise.cpp, streams_rows).
enum class KernelPath { kGemm = 0, kDirect = 1, kDepthwise = 2, kPool = 3, kDirectTiles = 4, kDepthwiseRows = 5 };
void note_kernel_use(KernelPath path, const char* isa);
const char* last_kernel_use(KernelPath path);  // nullptr before the first use

// A strided float32 matrix transposed with the vector instructions of cpu_isa() (register_transpose.h,
// transpose_floats; a plain loop with the generic ISA): dst[q*dst_stride + r] = src[r*src_stride + q]
// for r < rows, q < cols, and 0 for rows <= r < stored. NCHW planes to NHWC pixels and back.
using TransposeFloats = void (*)(const float* src, int64_t src_stride, int64_t rows, int64_t cols, int64_t stored,
                                 float* dst, int64_t dst_stride);
TransposeFloats cpu_transpose_floats();

// This CPU's level-1 data cache per core, in bytes, read likewise (32 KiB where nothing says),
// clamped to [16 KiB, 256 KiB]: the direct kernels' blocks of weights fit in it (direct_conv.cpp).
int64_t l1_data_cache_bytes();

// This CPU's level-2 cache per core, in bytes, read once at run time (Linux's table in
// /sys/devices/system/cpu/cpu0/cache, else glibc's sysconf; 1 MiB where neither says), clamped
// to [256 KiB, 8 MiB].
// The convolutions size their blocks from it (conv2d.cpp) rather than from one CPU's figure.
int64_t l2_cache_bytes();

// The last-level cache (one L3 instance, shared by the cores; else the L2 above), read likewise:
// outputs larger than it are written past the caches (streaming.h), as no later pass could find
// them there.
int64_t last_level_cache_bytes();

// Samples per chunk for a pass that works through a batch a chunk at a time so that its buffers
// are read back from the last-level cache: `share` of that cache's worth of samples of
// `sample_bytes` each, at least one, at most the batch. The environment variable `setting` (a
// test switch), where set to n, makes it n, so that small tests cross chunks.
int64_t samples_per_chunk(int64_t sample_bytes, int64_t batch, double share, const char* setting);

// Allocates on cache-line (64-byte) boundaries, so a panel's vectors never straddle two lines
// (std::vector's malloc gives 16 bytes; misaligned B panels measured up to 30% slower), and
// leaves elements uninitialized unless a value is given: the packers write every element
// the tiles read, and zeroing megabytes of weight panels per call cost ~0.5 ms.
template <typename T>
struct CacheLineAllocator {
  using value_type = T;
  static constexpr std::align_val_t kAlignment{64};
  CacheLineAllocator() = default;
  template <typename U>
  CacheLineAllocator(const CacheLineAllocator<U>&) {}
  T* allocate(std::size_t n) { return static_cast<T*>(::operator new(n * sizeof(T), kAlignment)); }
  void deallocate(T* p, std::size_t) { ::operator delete(p, kAlignment); }
  template <typename U, typename... Args>
  void construct(U* p, Args&&... args) {
    if constexpr (sizeof...(Args) == 0) ::new (static_cast<void*>(p)) U;  // default-initialized
    else ::new (static_cast<void*>(p)) U(std::forward<Args>(args)...);
  }
  template <typename U>
  bool operator==(const CacheLineAllocator<U>&) const { return true; }
  template <typename U>
  bool operator!=(const CacheLineAllocator<U>&) const { return false; }
};

// A buffer of packed GEMM operands (or a product the tiles write), cache-line aligned.
template <typename T>
using PackedBuffer = std::vector<T, CacheLineAllocator<T>>;

// Elements of a packed A (rows x depth) or B (depth x cols) buffer.
inline int64_t packed_size(int64_t count, int64_t tile, int64_t depth) {
  return (count + tile - 1) / tile * tile * depth;
}

// Position of element (k, n) of a packed B with panels of depth `depth` (also A, with m for n).
inline int64_t packed_index(int64_t k, int64_t n, int64_t tile, int64_t depth) {
  return (n / tile * depth + k) * tile + n % tile;
}

// Packs A element (m, k) = src[m*row_stride + k*col_stride] for m < rows, k < depth into
// A panels, zeroing the panel rows past `rows`. S -> T converts (half types are packed
// as float).
template <typename T, typename S>
void pack_a(T* dst, int64_t mr, int64_t depth, const S* src, int64_t rows, int64_t row_stride,
            int64_t col_stride) {
  for (int64_t m0 = 0; m0 < rows; m0 += mr) {
    T* panel = dst + m0 * depth;  // panel m0/mr starts at (m0/mr)*mr*depth
    const int64_t valid = std::min(mr, rows - m0);
    for (int64_t k = 0; k < depth; ++k) {
      const S* column = src + m0 * row_stride + k * col_stride;
      T* d = panel + k * mr;
      for (int64_t r = 0; r < valid; ++r) d[r] = static_cast<T>(column[r * row_stride]);
      for (int64_t r = valid; r < mr; ++r) d[r] = T(0);
    }
  }
}

// Zeroes the last B panel when `cols` columns do not fill it (call before packing), so
// its padding lanes hold zeros rather than stale values.
template <typename T>
void zero_last_b_panel(T* dst, int64_t nr, int64_t depth, int64_t cols) {
  if (cols % nr != 0) std::fill_n(dst + cols / nr * nr * depth, nr * depth, T(0));
}

// T itself, in a form that template argument deduction ignores (so a nullptr bias works).
template <typename T>
struct Element {
  using type = T;
};

// C[M, N] (row stride ldc) = (accumulate ? C : 0) + A @ B (+ bias[m] when given), over one
// K slice of `depth`: `a` / `b` point at the slice in panel 0, and consecutive panels
// are `a_panel_stride` / `b_panel_stride` elements apart.
template <typename T>
void gemm_packed(const Microkernel<T>& kernel, int64_t M, int64_t N, int64_t depth, const T* a,
                 int64_t a_panel_stride, const T* b, int64_t b_panel_stride, T* c, int64_t ldc,
                 bool accumulate, const typename Element<T>::type* bias);

}  // namespace cuconv
