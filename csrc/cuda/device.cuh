#pragma once
// The CUDA runtime as the kernels' host code uses it, in one place: launches (every kernel
// launch goes through cuda_detail::launch, which checks it), the device guard, the current
// stream, device attributes and the tensors that kernels fill. Compiled by nvcc for a GPU,
// or, with CUCONV_EMULATED, as host C++ against the emulated device (csrc/emulation/), where
// new outputs are NaN-filled so that an element a kernel leaves unwritten shows in the tests.

#include <ATen/core/Tensor.h>
#include <ATen/ops/empty.h>

#include <limits>
#include <string>
#include <utility>

#ifdef CUCONV_EMULATED
#include "../emulation/device.h"
#else
#include <c10/cuda/CUDAException.h>
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

namespace cuconv::cuda_detail {

#ifdef CUCONV_EMULATED

using Stream = int;  // the emulated device runs launches in order, as one stream

struct DeviceGuard {
  explicit DeviceGuard(const c10::Device&) {}
};

inline Stream current_stream() { return 0; }

inline int multiprocessor_count(c10::DeviceIndex) { return emu::device_config().multiprocessor_count; }

// The largest gridDim.y / gridDim.z (65535 on every GPU; smaller on the emulated device when a
// test wants the host code's chunking of large grids on small problems).
inline int max_grid_yz() { return emu::device_config().max_grid_yz; }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared, Stream,
            Args&&... args) {
  emu::launch(kernel, grid, block, dynamic_shared, std::forward<Args>(args)...);
  const std::string error = emu::take_last_error();
  TORCH_CHECK(error.empty(), "CUDA error: ", error);
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  at::Tensor t = at::empty(sizes, options);
  if (at::isFloatingType(t.scalar_type())) {
    t.fill_(std::numeric_limits<double>::quiet_NaN());
  } else {
    t.fill_(std::numeric_limits<int64_t>::min());
  }
  return t;
}

#else

using Stream = cudaStream_t;
using DeviceGuard = c10::cuda::CUDAGuard;

inline Stream current_stream() { return c10::cuda::getCurrentCUDAStream(); }

inline int multiprocessor_count(c10::DeviceIndex device) {
  int count = 0;
  C10_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, device));
  return std::max(count, 1);
}

inline int max_grid_yz() { return 65535; }  // every GPU since compute capability 3.0

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared, Stream stream,
            Args&&... args) {
  kernel<<<grid, block, dynamic_shared, stream>>>(std::forward<Args>(args)...);
  C10_CUDA_KERNEL_LAUNCH_CHECK();
}

inline at::Tensor new_output(at::IntArrayRef sizes, const at::TensorOptions& options) {
  return at::empty(sizes, options);
}

#endif

}  // namespace cuconv::cuda_detail
