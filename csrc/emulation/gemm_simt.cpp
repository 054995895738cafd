// csrc/cuda/gemm_simt.cu, compiled as host C++ for the emulated CUDA device (device.h).
#include "../cuda/gemm_simt.cu"
