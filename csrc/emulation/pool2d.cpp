// csrc/cuda/pool2d.cu, compiled as host C++ for the emulated CUDA device (device.h).
#include "../cuda/pool2d.cu"
