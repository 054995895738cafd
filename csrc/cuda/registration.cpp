// The module cuconv._C_cuda: binds the CUDA kernels (conv2d.cu, pool2d.cu) to the ops that
// cuconv._C defines. A module of its own, so that cuconv._C loads under a CPU-only torch,
// and this one only where torch has CUDA (cuconv/__init__.py). Stable ABI and Python's
// limited API, as cuconv._C. kernels() and last_kernels() choose and report the convolution
// kernels (kernel_settings.h).

#include <Python.h>
#include <torch/csrc/stable/library.h>

#include "../ops.h"
#include "kernel_settings.h"

STABLE_TORCH_LIBRARY_IMPL(cuconv, CUDA, m) { CUCONV_REGISTER_KERNELS(m, cuda); }

namespace {
PyMethodDef methods[] = {CUCONV_KERNEL_SETTINGS_METHODS, {nullptr, nullptr, 0, nullptr}};
PyModuleDef cuda_module = {PyModuleDef_HEAD_INIT, "_C_cuda", "cuconv's CUDA kernels", -1, methods,
                           nullptr, nullptr, nullptr, nullptr};
}  // namespace

PyMODINIT_FUNC PyInit__C_cuda(void) { return PyModule_Create(&cuda_module); }
