// csrc/cuda/depthwise.cu, compiled as host C++ for the emulated CUDA device (device.h).
#include "../cuda/depthwise.cu"
