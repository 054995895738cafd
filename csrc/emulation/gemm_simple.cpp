// csrc/cuda/gemm_simple.cu, compiled as host C++ for the emulated CUDA device (device.h).
#include "../cuda/gemm_simple.cu"
