#pragma once
// Device-side CUDA features the kernels use beyond plain C++, each behind a small wrapper
// with its emulated implementation beside the real one (csrc/emulation/device.h), so the
// kernels compile unchanged for a GPU and for the emulated device.

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

}  // namespace cuconv::cuda_detail
