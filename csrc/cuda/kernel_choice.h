#pragma once
// Which convolution kernels run: plain C++ (no CUDA headers), so that the modules' host files
// can bind it to Python (kernel_settings.h). Defined in conv2d.cu.

#include <atomic>

namespace cuconv::conv_cuda {

// Which kernels the entry points choose among (conv2d.cu): the fastest that takes the
// arguments, or the simple ones everywhere (tests compare the two), and the family each pass
// ran last, as the tests' evidence of what ran. Set and read from Python through the modules'
// kernels() and last_kernels() (kernel_settings.h).
enum class KernelChoice { kFastest, kSimple };
std::atomic<KernelChoice>& kernel_choice();
struct LastKernels {
  std::atomic<const char*> forward{"none"}, backward_input{"none"}, backward_weight{"none"};
  std::atomic<const char*> tile{"none"};  // the tile configuration of the last GEMM launched ("128x64", ...)
  std::atomic<int> splits{0};             // the K slices of the last GEMM or split reduction launched
};
LastKernels& last_kernels();

}  // namespace cuconv::conv_cuda
