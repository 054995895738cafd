// The cuconv library: its op schemas, the CPU kernels bound to them, and the Python module
// `cuconv._C` that loads them. The CUDA kernels are bound in cuda/registration.cpp, part of
// the separate module cuconv._C_cuda, so that this one loads under a CPU-only torch too.
//
// Forward and backward are separate ops, each with CPU and CUDA kernels; autograd, vmap,
// autocast and the fake (meta) kernels that torch.compile traces with are attached in Python
// (cuconv/_ops.py, _batching.py, _autocast.py, _fake.py).
//
// Built on the LibTorch stable ABI (stable.h) and Python's limited API, so one build of this
// module runs under every torch from 2.10 on and every Python from 3.10 on.

#include <Python.h>
#include <torch/csrc/stable/library.h>

#include "cpu/direct_conv.h"
#include "cpu/gemm.h"
#include "ops.h"
#include "schemas.h"

STABLE_TORCH_LIBRARY(cuconv, m) { CUCONV_DEFINE_SCHEMAS(m); }

STABLE_TORCH_LIBRARY_IMPL(cuconv, CPU, m) { CUCONV_REGISTER_KERNELS(m, cpu); }

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
  } catch (const std::invalid_argument& error) {
    PyErr_SetString(PyExc_ValueError, error.what());
    return nullptr;
  }
}

PyMethodDef cuconv_methods[] = {
    {"cpu_kernels", cpu_kernels, METH_NOARGS, "The CPU kernels cuconv chooses now (instruction set, paths)."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef cuconv_module = {PyModuleDef_HEAD_INIT, "_C", "cuconv's compiled kernels", -1, cuconv_methods,
                             nullptr, nullptr, nullptr, nullptr};

}  // namespace

// Importing cuconv._C registers the ops above (static initialisers).
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&cuconv_module); }
