// csrc/cuda/conv2d.cu, compiled as host C++ for the emulated CUDA device (device.h).
#include "../cuda/conv2d.cu"
