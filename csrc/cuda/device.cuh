#pragma once
// The CUDA runtime as the kernels' host code uses it, in one place: launches (every kernel
// launch goes through cuda_detail::launch, which checks it), the device guard, the current
// stream, device attributes and the tensors that kernels fill. Compiled by nvcc for a GPU
// against the LibTorch stable ABI, or, with CUCONV_EMULATED, as host C++ against the emulated
// device (csrc/emulation/), where new outputs are NaN-filled so that an element a kernel
// leaves unwritten shows in the tests.

#include <limits>
#include <map>
#include <mutex>
#include <string>
#include <utility>

#include "../stable.h"

#ifdef CUCONV_EMULATED
#include "../emulation/device.h"
#else
#include <cuda_runtime.h>
#include <torch/csrc/inductor/aoti_torch/c/shim.h>
#include <torch/csrc/stable/accelerator.h>
#include <torch/csrc/stable/macros.h>
#endif

namespace cuconv::cuda_detail {

#ifdef CUCONV_EMULATED

using Stream = int;  // the emulated device runs launches in order, as one stream

struct DeviceGuard {
  explicit DeviceGuard(const Tensor&) {}
};

inline Stream current_stream(const Tensor&) { return 0; }

inline int multiprocessor_count(const Tensor&) { return emu::device_config().multiprocessor_count; }

// The largest gridDim.y / gridDim.z (65535 on every GPU; smaller on the emulated device when a
// test wants the host code's chunking of large grids on small problems).
inline int max_grid_yz() { return emu::device_config().max_grid_yz; }

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared, Stream,
            Args&&... args) {
  emu::launch(kernel, grid, block, dynamic_shared, std::forward<Args>(args)...);
  const std::string error = emu::take_last_error();
  CUCONV_CHECK(error.empty(), "CUDA error: ", error);
}

// The launches have already run; a wait is counted (stats()) and refused while "capturing".
inline void synchronize(Stream) {
  CUCONV_CHECK(!emu::device_config().capturing, "CUDA error: operation not permitted when stream is capturing");
  ++emu::stats().synchronizations;
}

inline bool capturing(Stream) { return emu::device_config().capturing; }

inline std::string device_name(const Tensor&) { return "emulated"; }

// What new_output fills a tensor with: NaN, or for integers a value of bytes 0xA5 (int64: -2^62).
inline double poison_value(ScalarType t) {
  switch (t) {
    case ScalarType::Long: return -4611686018427387904.0;
    case ScalarType::Int: return -1515870811.0;
    case ScalarType::Short: return -23131.0;
    case ScalarType::Char: return -91.0;
    case ScalarType::Byte: return 165.0;
    default: return std::numeric_limits<double>::quiet_NaN();
  }
}

// A new tensor (like `like`, of `sizes` and optionally another dtype; channels_last: 4-D NCHW
// sizes laid out NHWC) for a kernel to fill with poison_value, so that what a kernel leaves
// unwritten shows.
inline Tensor new_output(const Tensor& like, IntArrayRef sizes, std::optional<ScalarType> dtype = std::nullopt,
                         bool channels_last = false) {
  Tensor t = channels_last ? empty_channels_last_like(like, sizes, dtype) : empty_like_with(like, sizes, dtype);
  torch::stable::fill_(t, poison_value(t.scalar_type()));
  return t;
}

#else

using Stream = cudaStream_t;

// The tensor's device is current for the guard's lifetime.
struct DeviceGuard {
  explicit DeviceGuard(const Tensor& t) : guard(t.get_device_index()) {}
  torch::stable::accelerator::DeviceGuard guard;
};

// The stream torch considers current on the tensor's device.
inline Stream current_stream(const Tensor& t) {
  void* stream = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_current_cuda_stream(t.get_device_index(), &stream));
  return static_cast<Stream>(stream);
}

inline int multiprocessor_count(const Tensor& t) {
  int count = 0;
  STD_CUDA_CHECK(cudaDeviceGetAttribute(&count, cudaDevAttrMultiProcessorCount, t.get_device_index()));
  return std::max(count, 1);
}

inline int max_grid_yz() { return 65535; }  // every GPU since compute capability 3.0

template <typename... Params, typename... Args>
void launch(void (*kernel)(Params...), dim3 grid, dim3 block, size_t dynamic_shared, Stream stream,
            Args&&... args) {
  kernel<<<grid, block, dynamic_shared, stream>>>(std::forward<Args>(args)...);
  STD_CUDA_KERNEL_LAUNCH_CHECK();
}

inline Tensor new_output(const Tensor& like, IntArrayRef sizes, std::optional<ScalarType> dtype = std::nullopt,
                         bool channels_last = false) {
  return channels_last ? empty_channels_last_like(like, sizes, dtype) : empty_like_with(like, sizes, dtype);
}

// Waits until the stream's work is done (the measured kernel choice times whole calls). In the
// thread's relaxed capture mode, as c10's caching allocator frees memory: while another thread
// captures a CUDA graph in torch's default (global) mode, a wait would otherwise be an error
// that also invalidates that capture. (This call's own stream is not capturing: capturing().)
inline void synchronize(Stream stream) {
  cudaStreamCaptureMode mode = cudaStreamCaptureModeRelaxed;
  STD_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));
  const cudaError_t waited = cudaStreamSynchronize(stream);
  STD_CUDA_CHECK(cudaThreadExchangeStreamCaptureMode(&mode));  // the thread's mode back
  STD_CUDA_CHECK(waited);
}

// Whether the stream is capturing a CUDA graph: then nothing may wait for it.
inline bool capturing(Stream stream) {
  cudaStreamCaptureStatus status = cudaStreamCaptureStatusNone;
  STD_CUDA_CHECK(cudaStreamIsCapturing(stream, &status));
  return status != cudaStreamCaptureStatusNone;
}

// The GPU's name (cudaDeviceProp::name), for the measured choices' keys; looked up once a device.
inline std::string device_name(const Tensor& t) {
  static std::mutex mutex;
  static std::map<int, std::string> names;
  const int index = t.get_device_index();
  std::lock_guard<std::mutex> lock(mutex);
  auto found = names.find(index);
  if (found == names.end()) {
    cudaDeviceProp properties{};
    STD_CUDA_CHECK(cudaGetDeviceProperties(&properties, index));
    found = names.emplace(index, properties.name).first;
  }
  return found->second;
}

#endif

}  // namespace cuconv::cuda_detail
