// Op schemas of the cuconv library, the CPU kernels bound to them, and the
// Python module `cuconv._C` that loads them.
//
// Forward and backward are separate ops, each with CPU, CUDA and meta kernels;
// autograd is attached in Python (cuconv/_ops.py) with torch.library.

#include <Python.h>
#include <torch/library.h>

#include "cpu/direct_conv.h"
#include "cpu/gemm.h"
#include "ops.h"
#include "schemas.h"

TORCH_LIBRARY(cuconv, m) { CUCONV_DEFINE_SCHEMAS(m); }

TORCH_LIBRARY_IMPL(cuconv, CPU, m) { CUCONV_REGISTER_KERNELS(m, cpu); }

#ifdef CUCONV_WITH_CUDA
// The CUDA kernels live in cuda/*.cu; binding them here keeps torch/library.h
// out of nvcc's way (it is the slow part of compiling a .cu file).
TORCH_LIBRARY_IMPL(cuconv, CUDA, m) { CUCONV_REGISTER_KERNELS(m, cuda); }
#endif

#ifndef CUCONV_TORCH_VERSION
#define CUCONV_TORCH_VERSION "unknown"
#endif

namespace {

const char* isa_name(cuconv::CpuIsa isa) {
  switch (isa) {
    case cuconv::CpuIsa::kAvx512: return "avx512";
    case cuconv::CpuIsa::kAvx2: return "avx2";
    default: return "generic";
  }
}

const char* direct_mode_name(cuconv::DirectMode mode) {
  switch (mode) {
    case cuconv::DirectMode::kAlways: return "always";
    case cuconv::DirectMode::kNever: return "never";
    default: return "auto";
  }
}

// cuconv._C.cpu_kernels(): which CPU kernels run now, for `cuconv info` and the tests:
// {"isa": ..., "gemm_float": ..., "gemm_double": ..., "direct_conv": "auto"|"always"|"never",
//  "last_gemm": ..., "last_direct": ...} where the last two name the instruction set of the
// kernels the GEMM and direct paths ran last (None before their first use).
// A bad CUCONV_CPU_ISA / CUCONV_CPU_DIRECT raises ValueError, as the kernels would.
PyObject* cpu_kernels(PyObject*, PyObject*) {
  try {
    const char* isa = isa_name(cuconv::cpu_isa());
    const char* gemm_float = cuconv::cpu_microkernel<float>().isa;
    const char* gemm_double = cuconv::cpu_microkernel<double>().isa;
    const char* direct = direct_mode_name(cuconv::direct_conv_mode());
    // "z": None for a null pointer.
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:z,s:z}", "isa", isa, "gemm_float", gemm_float, "gemm_double",
                         gemm_double, "direct_conv", direct, "last_gemm",
                         cuconv::last_kernel_use(cuconv::KernelPath::kGemm), "last_direct",
                         cuconv::last_kernel_use(cuconv::KernelPath::kDirect));
  } catch (const c10::ValueError& error) {
    PyErr_SetString(PyExc_ValueError, error.what_without_backtrace());
    return nullptr;
  }
}

PyMethodDef cuconv_methods[] = {
    {"cpu_kernels", cpu_kernels, METH_NOARGS, "The CPU kernels cuconv chooses now (instruction set, paths)."},
    {nullptr, nullptr, 0, nullptr}};

}  // namespace

// Importing cuconv._C registers the ops above (static initialisers) and exposes
// how the extension was built, so cuconv/__init__.py can catch a torch mismatch.
static PyModuleDef cuconv_module = {
    PyModuleDef_HEAD_INIT, "_C", "cuconv's compiled kernels", -1, cuconv_methods, nullptr, nullptr, nullptr,
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
