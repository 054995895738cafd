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

#include <algorithm>
#include <chrono>
#include <memory>
#include <stdexcept>
#include <thread>
#include <vector>
#include <torch/csrc/stable/library.h>

#include "cpu/direct_conv.h"
#include "cpu/gemm.h"
#include "cpu/recycled_memory.h"
#include "cpu/tuner.h"
#include "ops.h"
#include "schemas.h"
#include "tuning/python_table.h"

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
// {"isa": ..., "gemm_float": ..., "gemm_double": ..., "gemm_bfloat16": ..., "direct_conv": "auto"|"always"|"never",
//  "last_gemm": ..., "last_direct": ..., "last_direct_tiles": ..., "last_depthwise": ..., "last_depthwise_rows": ...,
//  "last_pool": ...,
//  "l2_cache_bytes": ...,
//  "last_level_cache_bytes": ...} where the last_ entries name the instruction set of the kernels the GEMM, direct and
// depthwise paths ran last and of pooling's vector kernels last fetched (None before their first use; last_direct_tiles:
// "channels" or "rows", the tiles of the last direct pass, gemm.h's KernelPath::kDirectTiles; last_depthwise_rows:
// "fetched" or "hardware", then ", streamed" where its output went past the caches,
// KernelPath::kDepthwiseRows), the L2 size is
// the one the CPU blocks are sized from and the last-level cache's the size above which the direct and depthwise
// kernels stream their output past the caches.
// "measured_choice": "on", or "off" with CUCONV_CPU_TUNE=0 (tuner.h).
// A bad CUCONV_CPU_ISA / CUCONV_CPU_DIRECT / CUCONV_CPU_TUNE raises ValueError, as the kernels would.
PyObject* cpu_kernels(PyObject*, PyObject*) {
  try {
    const char* isa = isa_name(cuconv::cpu_isa());
    const char* gemm_float = cuconv::cpu_microkernel<float>().isa;
    const char* gemm_double = cuconv::cpu_microkernel<double>().isa;
    // bfloat16: on pairs ("avx512_bf16") where the CPU has them, else packed as float
    const cuconv::PairMicrokernel pairs = cuconv::cpu_pair_microkernel(cuconv::cpu_microkernel<float>());
    const char* gemm_bfloat16 = pairs.tile != nullptr ? pairs.isa : gemm_float;
    const char* direct = direct_mode_name(cuconv::direct_conv_mode());
    const char* measured_choice = cuconv::tuning_enabled() ? "on" : "off";
    // "z": None for a null pointer.
    return Py_BuildValue("{s:s,s:s,s:s,s:s,s:s,s:s,s:z,s:z,s:z,s:z,s:z,s:z,s:L,s:L,s:L}", "isa", isa, "gemm_float", gemm_float,
                         "gemm_double", gemm_double, "gemm_bfloat16", gemm_bfloat16, "direct_conv", direct,
                         "measured_choice", measured_choice, "last_gemm",
                         cuconv::last_kernel_use(cuconv::KernelPath::kGemm), "last_direct",
                         cuconv::last_kernel_use(cuconv::KernelPath::kDirect), "last_direct_tiles",
                         cuconv::last_kernel_use(cuconv::KernelPath::kDirectTiles), "last_depthwise",
                         cuconv::last_kernel_use(cuconv::KernelPath::kDepthwise), "last_depthwise_rows",
                         cuconv::last_kernel_use(cuconv::KernelPath::kDepthwiseRows), "last_pool",
                         cuconv::last_kernel_use(cuconv::KernelPath::kPool), "l1_data_cache_bytes",
                         static_cast<long long>(cuconv::l1_data_cache_bytes()), "l2_cache_bytes",
                         static_cast<long long>(cuconv::l2_cache_bytes()), "last_level_cache_bytes",
                         static_cast<long long>(cuconv::last_level_cache_bytes()));
  } catch (const std::invalid_argument& error) {
    PyErr_SetString(PyExc_ValueError, error.what());
    return nullptr;
  }
}

// cuconv._C.cpu_tuning_kernels(): the names of every kernel a choice may record (tuner.h), for
// the disk cache's section name.
PyObject* cpu_tuning_kernels(PyObject*, PyObject*) { return PyUnicode_FromString(cuconv::kernel_names().c_str()); }

// cuconv._C.cpu_tuning(): the measured choices so far, {key: winner}.
PyObject* cpu_tuning(PyObject*, PyObject*) { return cuconv::tuning_table_as_dict(); }

// cuconv._C.cpu_tuning_unsettled(): how many choices are still being checked (tuner.h).
PyObject* cpu_tuning_unsettled(PyObject*, PyObject*) { return PyLong_FromLong(cuconv::unsettled_choices()); }

// cuconv._C.cpu_tuning_set(dict): records {key: winner} choices (loaded from a cache) as if
// measured; cpu_tuning_set(None) forgets every choice.
PyObject* cpu_tuning_set(PyObject*, PyObject* choices) { return cuconv::set_tuning_from(choices, "cpu_tuning_set"); }

// cuconv._C.cpu_tuner_pick(key, seconds): runs the tuner on candidates that only wait for
// the given times (by name "0", "1", ...); returns the winner's index. For the tests: the
// chooser itself, with speeds made clearly different. A candidate's entry is a time or a
// sequence of times: the k-th run in this call waits the k-th (the last one repeated), which
// plays a measurement disturbed by load from elsewhere; a negative time fails (throws).
PyObject* cpu_tuner_pick(PyObject*, PyObject* args) {
  const char* key = nullptr;
  PyObject* seconds = nullptr;
  if (!PyArg_ParseTuple(args, "sO", &key, &seconds)) return nullptr;
  const Py_ssize_t count = PySequence_Check(seconds) ? PySequence_Size(seconds) : -1;
  if (count < 1 || count > 8) {
    if (!PyErr_Occurred()) PyErr_SetString(PyExc_ValueError, "cpu_tuner_pick: expected 1 to 8 waits in seconds");
    return nullptr;
  }
  static const char* names[] = {"0", "1", "2", "3", "4", "5", "6", "7"};
  std::vector<cuconv::Candidate> candidates;
  for (Py_ssize_t c = 0; c < count; ++c) {
    PyObject* item = PySequence_GetItem(seconds, c);
    if (item == nullptr) return nullptr;
    std::vector<double> waits;
    if (PySequence_Check(item)) {
      for (Py_ssize_t k = 0; k < PySequence_Size(item) && !PyErr_Occurred(); ++k) {
        PyObject* wait = PySequence_GetItem(item, k);
        if (wait != nullptr) waits.push_back(PyFloat_AsDouble(wait));
        Py_XDECREF(wait);
      }
    } else {
      waits.push_back(PyFloat_AsDouble(item));
    }
    Py_DECREF(item);
    if (PyErr_Occurred()) return nullptr;
    if (waits.empty()) {
      PyErr_SetString(PyExc_ValueError, "cpu_tuner_pick: expected at least one wait for every candidate");
      return nullptr;
    }
    auto runs = std::make_shared<size_t>(0);
    candidates.push_back({names[c], [waits, runs] {
                            const double wait = waits[std::min(*runs, waits.size() - 1)];
                            ++*runs;
                            if (wait < 0) throw std::runtime_error("candidate failed");  // a failing kernel
                            std::this_thread::sleep_for(std::chrono::duration<double>(wait));
                          }});
  }
  size_t winner = 0;
  std::string error;
  const std::string tuning_key(key);
  Py_BEGIN_ALLOW_THREADS
  try {
    winner = cuconv::run_tuned(tuning_key, candidates);
  } catch (const std::exception& failure) {
    error = failure.what();
  }
  Py_END_ALLOW_THREADS
  if (!error.empty()) {
    PyErr_SetString(PyExc_RuntimeError, error.c_str());
    return nullptr;
  }
  return PyLong_FromSize_t(winner);
}

// cuconv._C.cpu_memory(): the recycled CPU memory's state (recycled_memory.h's RecycledMemoryStats),
// {"enabled": bool, "smallest_bytes": ..., "limit_bytes": ..., "held_bytes": ..., "held_buffers": ...,
//  "reused": ..., "fresh": ...}. A bad CUCONV_RECYCLE_CPU_MEMORY raises ValueError.
PyObject* cpu_memory(PyObject*, PyObject*) {
  try {
    const cuconv::RecycledMemoryStats stats = cuconv::recycled_memory_stats();
    return Py_BuildValue("{s:O,s:L,s:L,s:L,s:L,s:L,s:L}", "enabled", stats.enabled ? Py_True : Py_False,
                         "smallest_bytes", static_cast<long long>(stats.smallest), "limit_bytes",
                         static_cast<long long>(stats.limit), "held_bytes", static_cast<long long>(stats.held_bytes),
                         "held_buffers", static_cast<long long>(stats.held_buffers), "reused",
                         static_cast<long long>(stats.reused), "fresh", static_cast<long long>(stats.fresh));
  } catch (const std::invalid_argument& error) {
    PyErr_SetString(PyExc_ValueError, error.what());
    return nullptr;
  }
}

// cuconv._C.cpu_memory_release(): returns every held buffer to malloc.
PyObject* cpu_memory_release(PyObject*, PyObject*) {
  cuconv::release_recycled_memory();
  Py_RETURN_NONE;
}

PyMethodDef cuconv_methods[] = {
    {"cpu_kernels", cpu_kernels, METH_NOARGS, "The CPU kernels cuconv chooses now (instruction set, paths)."},
    {"cpu_tuning", cpu_tuning, METH_NOARGS, "The measured kernel choices, {key: winner}."},
    {"cpu_tuning_kernels", cpu_tuning_kernels, METH_NOARGS, "The kernel names a choice may record."},
    {"cpu_tuning_set", cpu_tuning_set, METH_O, "Records {key: winner} choices; None forgets them all."},
    {"cpu_tuning_unsettled", cpu_tuning_unsettled, METH_NOARGS, "How many choices are still being checked."},
    {"cpu_tuner_pick", cpu_tuner_pick, METH_VARARGS, "The tuner on candidates that wait given times (tests)."},
    {"cpu_memory", cpu_memory, METH_NOARGS, "The recycled CPU memory's state."},
    {"cpu_memory_release", cpu_memory_release, METH_NOARGS, "Returns every held CPU buffer to malloc."},
    {nullptr, nullptr, 0, nullptr}};

PyModuleDef cuconv_module = {PyModuleDef_HEAD_INIT, "_C", "cuconv's compiled kernels", -1, cuconv_methods,
                             nullptr, nullptr, nullptr, nullptr};

}  // namespace

// Importing cuconv._C registers the ops above (static initialisers).
PyMODINIT_FUNC PyInit__C(void) { return PyModule_Create(&cuconv_module); }
