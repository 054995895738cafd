// csrc/cuda/gemm_tensor_core.cu, compiled as host C++ for the emulated CUDA device (device.h).
#include "../cuda/gemm_tensor_core.cu"
