#pragma once
// Device-side CUDA features the kernels use beyond plain C++, each behind a small wrapper
// with its emulated implementation beside the real one (csrc/emulation/device.h), so the
// kernels compile unchanged for a GPU and for the emulated device.

#include <cstdint>
#include <cstring>
#include <type_traits>

#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>

#ifdef CUCONV_EMULATED
#include "../emulation/device.h"
#endif

// A statically allocated __shared__ variable of the block: CUCONV_SHARED(tile, float[16][68]);
// declares `tile`, 16-byte aligned. (The emulated device gives each block its own copy,
// poisoned with 0xFF bytes until written.)
#ifdef CUCONV_EMULATED
#define CUCONV_SHARED(name, ...)                        \
  using name##_type = __VA_ARGS__;                      \
  static ::cuconv::emu::SharedSlot name##_slot;         \
  name##_type& name = ::cuconv::emu::shared_variable<name##_type>(name##_slot)
#else
#define CUCONV_SHARED(name, ...)   \
  using name##_type = __VA_ARGS__; \
  __shared__ __align__(16) name##_type name
#endif

namespace cuconv::cuda_detail {

constexpr unsigned int kFullWarp = 0xffffffffu;

// __shfl_xor_sync over the whole warp: the value of lane (this lane ^ lane_mask).
template <typename T>
__device__ __forceinline__ T shfl_xor(T value, int lane_mask) {
#ifdef CUCONV_EMULATED
  return emu::shfl_xor(kFullWarp, value, lane_mask);
#else
  return __shfl_xor_sync(kFullWarp, value, lane_mask);
#endif
}

// --- sm_80: tensor cores, ldmatrix, cp.async (the PTX ISA's fragment layouts: emulation/device.h)

#ifndef CUCONV_EMULATED
__device__ __forceinline__ uint32_t shared_address(const void* pointer) {
  return static_cast<uint32_t>(__cvta_generic_to_shared(pointer));
}
#endif

// D = A B + C on the tensor cores, one warp: m16n8k16 with f16 or bf16 operands (T = c10::Half
// or c10::BFloat16), or m16n8k8 with tf32 (T = float), accumulating in f32.
template <typename T>
__device__ __forceinline__ void mma(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[2],
                                    const float (&c)[4]) {
#ifdef CUCONV_EMULATED
  emu::mma(std::is_same_v<T, float> ? emu::MmaType::kTF32
           : std::is_same_v<T, c10::BFloat16> ? emu::MmaType::kBF16 : emu::MmaType::kF16, d, a, b, c);
#else
  if constexpr (std::is_same_v<T, float>) {
    asm volatile("mma.sync.aligned.m16n8k8.row.col.f32.tf32.tf32.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
  } else if constexpr (std::is_same_v<T, c10::BFloat16>) {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.bf16.bf16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
  } else {
    asm volatile("mma.sync.aligned.m16n8k16.row.col.f32.f16.f16.f32 {%0,%1,%2,%3}, {%4,%5,%6,%7}, {%8,%9}, "
                 "{%10,%11,%12,%13};\n"
                 : "=f"(d[0]), "=f"(d[1]), "=f"(d[2]), "=f"(d[3])
                 : "r"(a[0]), "r"(a[1]), "r"(a[2]), "r"(a[3]), "r"(b[0]), "r"(b[1]), "f"(c[0]), "f"(c[1]),
                   "f"(c[2]), "f"(c[3]));
  }
#endif
}

// ldmatrix.sync.aligned.m8n8.x{kCount}{.trans}.shared.b16: `row` is this lane's row address
// (lanes 8j .. 8j+7 address matrix j's rows, 16 bytes each, 16-byte aligned).
template <int kCount, bool kTrans>
__device__ __forceinline__ void ldmatrix(uint32_t (&regs)[kCount], const void* row) {
  static_assert(kCount == 1 || kCount == 2 || kCount == 4, "ldmatrix loads 1, 2 or 4 matrices");
#ifdef CUCONV_EMULATED
  emu::ldmatrix(kCount, kTrans, regs, row);
#else
  const uint32_t address = shared_address(row);
  if constexpr (kCount == 4 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3]) : "r"(address));
  } else if constexpr (kCount == 4) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x4.trans.shared.b16 {%0,%1,%2,%3}, [%4];\n"
                 : "=r"(regs[0]), "=r"(regs[1]), "=r"(regs[2]), "=r"(regs[3]) : "r"(address));
  } else if constexpr (kCount == 2 && !kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.shared.b16 {%0,%1}, [%2];\n" : "=r"(regs[0]), "=r"(regs[1]) : "r"(address));
  } else if constexpr (kCount == 2) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x2.trans.shared.b16 {%0,%1}, [%2];\n"
                 : "=r"(regs[0]), "=r"(regs[1]) : "r"(address));
  } else if constexpr (!kTrans) {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.shared.b16 {%0}, [%1];\n" : "=r"(regs[0]) : "r"(address));
  } else {
    asm volatile("ldmatrix.sync.aligned.m8n8.x1.trans.shared.b16 {%0}, [%1];\n" : "=r"(regs[0]) : "r"(address));
  }
#endif
}

// cp.async of kBytes (4, 8 or 16) from global to shared memory; with valid == false nothing is
// read (`global` may point anywhere) and zeros are written. The copy lands at cp_async_wait.
template <int kBytes>
__device__ __forceinline__ void cp_async(void* shared, const void* global, bool valid) {
  static_assert(kBytes == 4 || kBytes == 8 || kBytes == 16, "cp.async copies 4, 8 or 16 bytes");
#ifdef CUCONV_EMULATED
  emu::cp_async(shared, global, kBytes, valid ? kBytes : 0);
#else
  asm volatile("cp.async.ca.shared.global [%0], [%1], %2, %3;\n" ::"r"(shared_address(shared)), "l"(global),
               "n"(kBytes), "r"(valid ? kBytes : 0));
#endif
}

// Closes this thread's group of cp.async copies issued since the last commit.
__device__ __forceinline__ void cp_async_commit() {
#ifdef CUCONV_EMULATED
  emu::cp_async_commit();
#else
  asm volatile("cp.async.commit_group;\n" ::);
#endif
}

// Waits until at most kPending of this thread's committed groups are still in flight.
template <int kPending>
__device__ __forceinline__ void cp_async_wait() {
#ifdef CUCONV_EMULATED
  emu::cp_async_wait(kPending);
#else
  asm volatile("cp.async.wait_group %0;\n" ::"n"(kPending));
#endif
}

// cvt.rna.tf32.f32: the float as the tf32 operand of an mma (its bits; low 13 mantissa bits 0).
__device__ __forceinline__ uint32_t to_tf32(float value) {
#ifdef CUCONV_EMULATED
  const float rounded = emu::to_tf32(value);
  uint32_t bits;
  std::memcpy(&bits, &rounded, 4);
  return bits;
#else
  uint32_t bits;
  asm("cvt.rna.tf32.f32 %0, %1;\n" : "=r"(bits) : "f"(value));
  return bits;
#endif
}

}  // namespace cuconv::cuda_detail
