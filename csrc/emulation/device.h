#pragma once
// The emulated CUDA device: what csrc/cuda's kernels see of CUDA when they are compiled as
// host C++ (CUCONV_EMULATED) and run on the CPU, so that the test suite executes every CUDA
// kernel on every commit without a GPU.
//
// Execution model (device.cpp):
// - A launch runs its blocks one after another. Each CUDA thread of a block is a fiber
//   (fiber.h); the block's threads run in turn, each until it reaches __syncthreads(), a
//   warp collective, or returns.
// - __syncthreads() suspends a thread until every thread of the block has arrived; then all
//   continue. Between barriers the threads run in the order of the schedule: forward (thread
//   0 first), reverse, or a seeded random permutation. A kernel without shared-memory races
//   gives bitwise the same results under every schedule; one with a race does not (a reader
//   that runs before its writer sees the poison left in shared memory, or a stale value).
//   A barrier that not all threads can reach (some returned) and a deadlock are errors.
// - Warp collectives (shuffles, votes; later mma / ldmatrix) are rendezvous of the warp's
//   lanes: each lane posts its operand and waits; when every lane named in the mask has
//   arrived, the collective is computed once for the whole warp, as the PTX ISA defines it,
//   and each lane takes its result.
// - Shared memory is private to the running block and filled with 0xFF bytes (NaN as float)
//   when the block first touches it. Statically declared shared memory is limited to 48 KiB;
//   dynamic shared memory beyond that needs the kernel's opt-in, as on a GPU.
// - Launch errors (block > 1024 threads, grid y/z > 65535, shared memory over the limits)
//   and kernel faults (deadlock, barrier after exit, divergent collectives) are recorded
//   like CUDA errors; the launch check (csrc/cuda/launch.cuh) raises them.
// - What the host code asks of the device (multiprocessor count, shared memory per block)
//   is configurable, so the split-K and chunking decisions of the host code can all be taken.
//
// Not modelled: blocks running concurrently, warps in lock-step (a kernel that relies on
// implicit warp synchronisation without __syncwarp is not checked), the memory model
// (fences, atomics ordering), timing. See benchmarks/CUDA_NOTES.md.

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstring>
#include <string>
#include <tuple>
#include <type_traits>
#include <utility>

// --- CUDA's vocabulary -----------------------------------------------------------------

struct dim3 {
  unsigned int x, y, z;
  constexpr dim3(unsigned int x_ = 1, unsigned int y_ = 1, unsigned int z_ = 1) : x(x_), y(y_), z(z_) {}
};
struct alignas(8) float2 {
  float x, y;
};
struct alignas(16) float4 {
  float x, y, z, w;
};
struct alignas(16) double2 {
  double x, y;
};
struct alignas(16) int4 {
  int x, y, z, w;
};
struct alignas(16) uint4 {
  unsigned int x, y, z, w;
};
inline float4 make_float4(float x, float y, float z, float w) { return {x, y, z, w}; }

#define __global__
#define __device__
#define __host__
#define __forceinline__ inline
#define __launch_bounds__(...)
#define __align__(n) alignas(n)

namespace cuconv::emu {

// --- the running thread --------------------------------------------------------------------

struct ThreadIndex {
  dim3 thread_idx, block_idx, block_dim, grid_dim;
};
ThreadIndex& current_thread();  // the CUDA thread whose fiber is running

void syncthreads();

// --- device and schedule -------------------------------------------------------------------

enum class Schedule { kForward = 0, kReverse = 1, kRandom = 2 };

struct DeviceConfig {
  int multiprocessor_count = 132;               // an H100 / H200 SXM
  size_t shared_per_block = 48 * 1024;          // static + dynamic without opt-in
  size_t shared_per_block_optin = 227 * 1024;   // with cudaFuncAttributeMaxDynamicSharedMemorySize
  int max_grid_yz = 65535;                      // gridDim.y and gridDim.z
  Schedule schedule = Schedule::kForward;
  uint64_t seed = 0;                            // for Schedule::kRandom
  bool capturing = false;                       // the stream "captures a CUDA graph": nothing may wait for it
};
DeviceConfig& device_config();

struct Stats {
  uint64_t launches = 0, blocks = 0, threads = 0, barriers = 0, collectives = 0;
  uint64_t synchronizations = 0;  // host waits for the stream (the measured kernel choice's)
};
Stats& stats();

// --- shared memory ----------------------------------------------------------------------------

// One declaration site of a static __shared__ variable: the variable gets one allocation per
// block, made by the first thread that reaches the declaration (generation = the block's).
struct SharedSlot {
  uint64_t generation = 0;
  void* address = nullptr;
};
void* shared_allocate(SharedSlot& slot, size_t bytes, size_t alignment);
void* dynamic_shared();  // extern __shared__: the launch's dynamic shared memory

template <typename T>
T& shared_variable(SharedSlot& slot) {
  return *static_cast<T*>(shared_allocate(slot, sizeof(T), std::max<size_t>(alignof(T), 16)));
}

// --- warp collectives ----------------------------------------------------------------------

// Every lane in `mask` of the calling thread's warp posts `in` (in_bytes) and receives its
// result in `out` (out_bytes) once all of them have arrived; combine(inputs, outputs, mask)
// runs once for the warp, over arrays of 32 lane-sized records.
using Combine = void (*)(const void* inputs, void* outputs, unsigned int mask);
void warp_collective(unsigned int mask, const void* in, size_t in_bytes, void* out, size_t out_bytes,
                     Combine combine);

template <typename T>
T shfl_xor(unsigned int mask, T value, int lane_mask) {
  struct In {
    T value;
    int lane_mask;
  };
  In in{value, lane_mask};
  T out;
  warp_collective(mask, &in, sizeof(In), &out, sizeof(T), [](const void* inputs, void* outputs, unsigned int m) {
    const In* in = static_cast<const In*>(inputs);
    T* out = static_cast<T*>(outputs);
    for (int lane = 0; lane < 32; ++lane) {
      if (!(m >> lane & 1u)) continue;
      const int source = lane ^ in[lane].lane_mask;
      out[lane] = source < 32 && (m >> source & 1u) ? in[source].value : in[lane].value;
    }
  });
  return out;
}

inline unsigned int ballot(unsigned int mask, bool predicate) {
  const int in = predicate ? 1 : 0;
  unsigned int out = 0;
  warp_collective(mask, &in, sizeof(int), &out, sizeof(unsigned int), [](const void* inputs, void* outputs,
                                                                         unsigned int m) {
    const int* in = static_cast<const int*>(inputs);
    unsigned int bits = 0;
    for (int lane = 0; lane < 32; ++lane)
      if ((m >> lane & 1u) && in[lane]) bits |= 1u << lane;
    unsigned int* out = static_cast<unsigned int*>(outputs);
    for (int lane = 0; lane < 32; ++lane) out[lane] = bits;
  });
  return out;
}

// --- tensor cores, ldmatrix, cp.async (sm_80 and later) ----------------------------------------
//
// The matrix instructions as the PTX ISA defines them for one warp, with lane l in group
// g = l / 4 and thread t = l % 4 of its group:
//   mma.sync.m16n8k16.row.col (f16 or bf16 in, f32 accumulate):
//     A 16x16: a[0] = rows g,   cols 2t, 2t+1      a[1] = rows g+8, cols 2t, 2t+1
//              a[2] = rows g,   cols 2t+8, 2t+9    a[3] = rows g+8, cols 2t+8, 2t+9   (2 halves each)
//     B 16x8:  b[0] = rows 2t, 2t+1 of col g        b[1] = rows 2t+8, 2t+9 of col g
//   mma.sync.m16n8k8.row.col (tf32 in, f32 accumulate):
//     A 16x8:  a[0] = (g, t)  a[1] = (g+8, t)  a[2] = (g, t+4)  a[3] = (g+8, t+4)
//     B 8x8:   b[0] = (t, g)  b[1] = (t+4, g)
//   C and D 16x8 (f32): c[0], c[1] = row g, cols 2t, 2t+1; c[2], c[3] = row g+8, same cols.
// Products are exact in float and summed in float (the hardware's internal order and
// precision differ, so results agree with a GPU's to rounding). tf32 operands are read as
// the hardware reads them: the low 13 bits of their mantissa are ignored.
enum class MmaType { kF16, kBF16, kTF32 };
void mma(MmaType type, float (&d)[4], const uint32_t* a, const uint32_t* b, const float (&c)[4]);

// ldmatrix.sync.m8n8.x{count}{.trans}.b16: lanes 8j .. 8j+7 give the addresses of the 8 rows
// (16 bytes each) of matrix j; every lane receives, per matrix, the 2 elements at row l/4,
// columns 2(l%4) and 2(l%4)+1 (.trans: the transposed matrix's).
void ldmatrix(int count, bool trans, uint32_t* regs, const void* row);

// cp.async: copies `bytes` (4, 8 or 16) from global to shared memory, of which only the first
// src_bytes come from `src` (the rest are zeros). The copy is taken when issued and lands when
// the issuing thread waits for its group: before that the destination still holds what it held
// (shared memory's poison, at first). commit closes the thread's current group; wait(n) lands
// every committed group but the newest n.
void cp_async(void* dst, const void* src, int bytes, int src_bytes);
void cp_async_commit();
void cp_async_wait(int newest_pending);

// cvt.rna.tf32.f32: float rounded to tf32 (10-bit mantissa), to nearest, ties away from zero.
inline float to_tf32(float value) {
  uint32_t bits;
  std::memcpy(&bits, &value, 4);
  if ((bits & 0x7f800000u) != 0x7f800000u) bits = (bits + 0x1000u) & 0xffffe000u;  // finite: round
  std::memcpy(&value, &bits, 4);
  return value;
}

// --- launches ------------------------------------------------------------------------------

struct LaunchConfig {
  dim3 grid, block;
  size_t dynamic_shared;
  const void* kernel;  // identifies the kernel (its opt-in shared memory limit)
};

// Runs body(context) as every thread of every block of the grid. Errors are recorded
// (last_error), not thrown.
void run_grid(const LaunchConfig& config, void (*body)(void*), void* context);

// The error of the last launch ("" if none), cleared by reading it, as cudaGetLastError.
std::string take_last_error();
// cudaFuncSetAttribute(kernel, cudaFuncAttributeMaxDynamicSharedMemorySize, bytes).
void set_max_dynamic_shared(const void* kernel, size_t bytes);

// kernel<<<grid, block, dynamic_shared>>>(args...): the arguments are converted to the
// kernel's parameter types once, and every thread calls the kernel with its own copy.
template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared, Args&&... args) {
  using Arguments = std::tuple<std::decay_t<Params>...>;
  struct Call {
    void (*kernel)(Params...);
    Arguments arguments;
  };
  Call call{kernel, Arguments(std::forward<Args>(args)...)};
  run_grid({grid, block, dynamic_shared, reinterpret_cast<const void*>(kernel)},
           [](void* context) {
             Call& c = *static_cast<Call*>(context);
             std::apply(c.kernel, c.arguments);
           },
           &call);
}

}  // namespace cuconv::emu

#define threadIdx (::cuconv::emu::current_thread().thread_idx)
#define blockIdx (::cuconv::emu::current_thread().block_idx)
#define blockDim (::cuconv::emu::current_thread().block_dim)
#define gridDim (::cuconv::emu::current_thread().grid_dim)
#define __syncthreads() ::cuconv::emu::syncthreads()

// The device math the kernels call unqualified (CUDA declares these for device code):
// std's overloads, so that float stays float (the global fma(double...) would widen).
namespace cuconv {
using std::fma;
using std::isnan;
using std::max;
using std::min;
}  // namespace cuconv
