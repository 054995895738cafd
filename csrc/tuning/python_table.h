#pragma once
// The measured choices' table (measured_choice.h) as Python sees it, for the modules' bindings:
// cuconv._C.cpu_tuning / cpu_tuning_set (registration.cpp) and the CUDA modules' cuda_tuning /
// cuda_tuning_set (cuda/kernel_settings.h). Python's limited API only, as the modules.

#include <Python.h>

#include "measured_choice.h"

namespace cuconv {

// {key: winner} of the choices made so far.
inline PyObject* tuning_table_as_dict() {
  PyObject* result = PyDict_New();
  if (result == nullptr) return nullptr;
  for (const auto& [key, winner] : tuning_table()) {
    PyObject* value = PyUnicode_FromString(winner.c_str());
    if (value == nullptr || PyDict_SetItemString(result, key.c_str(), value) != 0) {
      Py_XDECREF(value);
      Py_DECREF(result);
      return nullptr;
    }
    Py_DECREF(value);
  }
  return result;
}

// Records a dict {key: winner} as if measured; None forgets every choice. `function` names the
// Python function in the errors.
inline PyObject* set_tuning_from(PyObject* choices, const char* function) {
  if (choices == Py_None) {
    clear_tuning();
    Py_RETURN_NONE;
  }
  if (!PyDict_Check(choices)) {
    PyErr_Format(PyExc_TypeError, "%s: expected a dict {key: winner} or None", function);
    return nullptr;
  }
  PyObject *key, *value;
  Py_ssize_t position = 0;
  while (PyDict_Next(choices, &position, &key, &value)) {
    const char* key_text = PyUnicode_Check(key) ? PyUnicode_AsUTF8AndSize(key, nullptr) : nullptr;
    const char* value_text = PyUnicode_Check(value) ? PyUnicode_AsUTF8AndSize(value, nullptr) : nullptr;
    if (key_text == nullptr || value_text == nullptr) {
      if (!PyErr_Occurred()) PyErr_Format(PyExc_TypeError, "%s: expected str keys and str winners", function);
      return nullptr;
    }
    set_tuning(key_text, value_text);
  }
  Py_RETURN_NONE;
}

}  // namespace cuconv
