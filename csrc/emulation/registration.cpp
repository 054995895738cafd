// The test-only extension cuconv._C_emulated: csrc/cuda's kernels and host entry points,
// compiled as host C++ against the emulated device, registered for CPU tensors as the ops of
// the `cuconv_emulated` library (same schemas as `cuconv`). The test suite routes cuconv's
// CPU dispatch to them (tests/emulated_cuda.py), so that every CUDA kernel runs in CI.
// Built only when setup.py is asked to (CUCONV_EMULATED_CUDA); never part of a normal build.
//
// The Python module also configures the device: configure(multiprocessor_count=..., max_grid_yz=...,
// schedule="forward"|"reverse"|"random", seed=..., shared_per_block=..., shared_per_block_optin=...,
// capturing=...) returns the whole configuration, and reports stats() (launches, blocks, threads,
// barriers, collectives, host waits for the stream) so tests can tell that the emulated kernels did run; kernels() and
// last_kernels() choose and report the convolution kernels (cuda/kernel_settings.h).

#include <Python.h>
#include <torch/csrc/stable/library.h>

#include <cstring>

#include "../ops.h"
#include "../schemas.h"
#include "../cuda/kernel_settings.h"
#include "device.h"

STABLE_TORCH_LIBRARY(cuconv_emulated, m) { CUCONV_DEFINE_SCHEMAS(m); }

STABLE_TORCH_LIBRARY_IMPL(cuconv_emulated, CPU, m) { CUCONV_REGISTER_KERNELS(m, cuda); }

namespace {

using cuconv::emu::Schedule;

const char* schedule_name(Schedule s) {
  return s == Schedule::kReverse ? "reverse" : s == Schedule::kRandom ? "random" : "forward";
}

PyObject* configuration(void) {
  const cuconv::emu::DeviceConfig& c = cuconv::emu::device_config();
  return Py_BuildValue("{s:i,s:i,s:n,s:n,s:s,s:K,s:O}", "multiprocessor_count", c.multiprocessor_count,
                       "max_grid_yz", c.max_grid_yz, "shared_per_block", static_cast<Py_ssize_t>(c.shared_per_block),
                       "shared_per_block_optin", static_cast<Py_ssize_t>(c.shared_per_block_optin), "schedule",
                       schedule_name(c.schedule), "seed", static_cast<unsigned long long>(c.seed), "capturing",
                       c.capturing ? Py_True : Py_False);
}

// configure(**settings) -> the whole configuration, after applying the settings given.
PyObject* configure(PyObject*, PyObject* args, PyObject* kwargs) {
  static const char* keywords[] = {"multiprocessor_count", "max_grid_yz", "schedule", "seed", "shared_per_block",
                                   "shared_per_block_optin", "capturing", nullptr};
  int sm_count = -1, max_grid_yz = -1, capturing = -1;
  const char* schedule = nullptr;
  long long seed = -1, shared = -1, shared_optin = -1;
  if (!PyArg_ParseTupleAndKeywords(args, kwargs, "|$iizLLLp", const_cast<char**>(keywords), &sm_count, &max_grid_yz,
                                   &schedule, &seed, &shared, &shared_optin, &capturing))
    return nullptr;
  cuconv::emu::DeviceConfig& c = cuconv::emu::device_config();
  if (max_grid_yz != -1) {
    if (max_grid_yz < 1 || max_grid_yz > 65535) {
      PyErr_SetString(PyExc_ValueError, "configure: expected max_grid_yz in [1, 65535]");
      return nullptr;
    }
    c.max_grid_yz = max_grid_yz;
  }
  if (sm_count != -1) {
    if (sm_count < 1) {
      PyErr_SetString(PyExc_ValueError, "configure: expected multiprocessor_count >= 1");
      return nullptr;
    }
    c.multiprocessor_count = sm_count;
  }
  if (schedule != nullptr) {
    if (std::strcmp(schedule, "forward") == 0) {
      c.schedule = Schedule::kForward;
    } else if (std::strcmp(schedule, "reverse") == 0) {
      c.schedule = Schedule::kReverse;
    } else if (std::strcmp(schedule, "random") == 0) {
      c.schedule = Schedule::kRandom;
    } else {
      PyErr_Format(PyExc_ValueError, "configure: expected schedule to be forward, reverse or random, but got '%s'",
                   schedule);
      return nullptr;
    }
  }
  if (seed != -1) c.seed = static_cast<uint64_t>(seed);
  if (shared != -1) c.shared_per_block = static_cast<size_t>(shared);
  if (shared_optin != -1) c.shared_per_block_optin = static_cast<size_t>(shared_optin);
  if (capturing != -1) c.capturing = capturing != 0;
  return configuration();
}

PyObject* stats(PyObject*, PyObject*) {
  const cuconv::emu::Stats& s = cuconv::emu::stats();
  return Py_BuildValue("{s:K,s:K,s:K,s:K,s:K,s:K}", "launches", static_cast<unsigned long long>(s.launches), "blocks",
                       static_cast<unsigned long long>(s.blocks), "threads", static_cast<unsigned long long>(s.threads),
                       "barriers", static_cast<unsigned long long>(s.barriers), "collectives",
                       static_cast<unsigned long long>(s.collectives), "synchronizations",
                       static_cast<unsigned long long>(s.synchronizations));
}

PyMethodDef methods[] = {
    {"configure", reinterpret_cast<PyCFunction>(reinterpret_cast<void (*)()>(&configure)),
     METH_VARARGS | METH_KEYWORDS, "Set the emulated device's multiprocessor count, schedule, seed, shared memory."},
    {"stats", stats, METH_NOARGS, "Launches, blocks, threads, barriers and warp collectives run so far."},
    CUCONV_KERNEL_SETTINGS_METHODS,
    {nullptr, nullptr, 0, nullptr}};

#define CUCONV_STRINGIFY(x) CUCONV_STRINGIFY_(x)
#define CUCONV_STRINGIFY_(x) #x
#define CUCONV_CONCAT(a, b) CUCONV_CONCAT_(a, b)
#define CUCONV_CONCAT_(a, b) a##b

// _C_emulated, or _C_emulated_asan for the sanitizer build (setup.py names it).
PyModuleDef module = {PyModuleDef_HEAD_INIT, CUCONV_STRINGIFY(CUCONV_EMULATED_MODULE),
                      "cuconv's CUDA kernels on an emulated device", -1, methods, nullptr, nullptr, nullptr, nullptr};

}  // namespace

PyMODINIT_FUNC CUCONV_CONCAT(PyInit_, CUCONV_EMULATED_MODULE)(void) { return PyModule_Create(&module); }
