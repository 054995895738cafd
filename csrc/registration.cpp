// Op schemas of the cuconv library, the CPU kernels bound to them, and the
// Python module `cuconv._C` that loads them.
//
// Forward and backward are separate ops, each with CPU, CUDA and meta kernels;
// autograd is attached in Python (cuconv/_ops.py) with torch.library.

#include <Python.h>
#include <torch/library.h>

#include "ops.h"

TORCH_LIBRARY(cuconv, m) {
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward_input(Tensor grad_output, Tensor weight, SymInt[4] input_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward_weight(Tensor grad_output, Tensor input, SymInt[4] weight_size, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_backward_bias(Tensor grad_output) -> Tensor");
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_backward(Tensor grad_output, Tensor indices, SymInt[4] input_size, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) "
        "-> Tensor");
  m.def("avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size, int[2] kernel_size, "
        "int[2] stride, int[2] padding, bool ceil_mode, bool count_include_pad, "
        "int? divisor_override) -> Tensor");
  m.def("adaptive_avg_pool2d(Tensor input, int[2] output_size) -> Tensor");
  m.def("adaptive_avg_pool2d_backward(Tensor grad_output, SymInt[4] input_size) -> Tensor");
}

TORCH_LIBRARY_IMPL(cuconv, CPU, m) { CUCONV_REGISTER_KERNELS(m, cpu); }

#ifdef CUCONV_WITH_CUDA
// The CUDA kernels live in cuda/*.cu; binding them here keeps torch/library.h
// out of nvcc's way (it is the slow part of compiling a .cu file).
TORCH_LIBRARY_IMPL(cuconv, CUDA, m) { CUCONV_REGISTER_KERNELS(m, cuda); }
#endif

#ifndef CUCONV_TORCH_VERSION
#define CUCONV_TORCH_VERSION "unknown"
#endif

// Importing cuconv._C registers the ops above (static initialisers) and exposes
// how the extension was built, so cuconv/__init__.py can catch a torch mismatch.
static PyModuleDef cuconv_module = {
    PyModuleDef_HEAD_INIT, "_C", "cuconv's compiled kernels", -1, nullptr, nullptr, nullptr, nullptr,
    nullptr};

PyMODINIT_FUNC PyInit__C(void) {
  PyObject* module = PyModule_Create(&cuconv_module);
  if (module == nullptr) return nullptr;
#ifdef CUCONV_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (PyModule_AddStringConstant(module, "torch_version", CUCONV_TORCH_VERSION) < 0 ||
      PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
