#pragma once
// The Python functions of the CUDA modules (cuda/registration.cpp for _C_cuda,
// emulation/registration.cpp for _C_emulated) that choose and report the convolution kernels:
//   kernels()            -> "fastest" or "simple": which kernels the entry points choose among
//   kernels("simple")    sets it (tests run the simple kernels as the oracle of the fast ones)
//   last_kernels()       -> {"forward": ..., "backward_input": ..., "backward_weight": ...}, the
//                           family each pass ran last ("tensor_core", "simt", "simple", "depthwise",
//                           "none"), the tile configuration of the last GEMM launched ("tile") and
//                           the K slices of the last GEMM or split reduction launched ("splits")
//   cuda_tuning()        -> {key: family}, the families chosen by measurement so far (conv2d.cu)
//   cuda_tuning_set(d)   records {key: family} choices as if measured; None forgets them all
//   cuda_tuning_unsettled() -> how many of them are still being checked
// Python's limited API only, as the modules.

#include <Python.h>

#include <cstring>

#include "../tuning/python_table.h"
#include "kernel_choice.h"

namespace cuconv::conv_cuda {

inline PyObject* py_kernels(PyObject*, PyObject* args) {
  const char* choice = nullptr;
  if (!PyArg_ParseTuple(args, "|z", &choice)) return nullptr;
  if (choice != nullptr) {
    if (std::strcmp(choice, "fastest") == 0) {
      kernel_choice() = KernelChoice::kFastest;
    } else if (std::strcmp(choice, "simple") == 0) {
      kernel_choice() = KernelChoice::kSimple;
    } else {
      PyErr_Format(PyExc_ValueError, "kernels: expected 'fastest' or 'simple', but got '%s'", choice);
      return nullptr;
    }
  }
  return PyUnicode_FromString(kernel_choice() == KernelChoice::kSimple ? "simple" : "fastest");
}

inline PyObject* py_last_kernels(PyObject*, PyObject*) {
  const LastKernels& last = last_kernels();
  return Py_BuildValue("{s:s,s:s,s:s,s:s,s:i}", "forward", last.forward.load(), "backward_input",
                       last.backward_input.load(), "backward_weight", last.backward_weight.load(), "tile",
                       last.tile.load(), "splits", last.splits.load());
}

inline PyObject* py_cuda_tuning(PyObject*, PyObject*) { return tuning_table_as_dict(); }

inline PyObject* py_cuda_tuning_set(PyObject*, PyObject* choices) { return set_tuning_from(choices, "cuda_tuning_set"); }

inline PyObject* py_cuda_tuning_unsettled(PyObject*, PyObject*) { return PyLong_FromLong(unsettled_choices()); }

}  // namespace cuconv::conv_cuda

// The entries of a PyMethodDef table.
#define CUCONV_KERNEL_SETTINGS_METHODS                                                                     \
  {"kernels", ::cuconv::conv_cuda::py_kernels, METH_VARARGS,                                               \
   "kernels([choice]) -> 'fastest' or 'simple': the convolution kernels the entry points choose among."}, \
  {"last_kernels", ::cuconv::conv_cuda::py_last_kernels, METH_NOARGS,                                      \
   "The kernel family each convolution pass ran last."},                                                   \
  {"cuda_tuning", ::cuconv::conv_cuda::py_cuda_tuning, METH_NOARGS,                                        \
   "The convolution kernel families chosen by measurement so far, {key: family}."},                        \
  {"cuda_tuning_set", ::cuconv::conv_cuda::py_cuda_tuning_set, METH_O,                                     \
   "Records {key: family} choices as if measured; None forgets them all."},                                \
  {"cuda_tuning_unsettled", ::cuconv::conv_cuda::py_cuda_tuning_unsettled, METH_NOARGS,                    \
   "How many of the measured choices are still being checked."}
