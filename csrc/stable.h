#pragma once
// What cuconv's C++ uses of torch: the LibTorch stable ABI (torch/csrc/stable, torch/headeronly)
// only, so that one build runs under every torch from TORCH_TARGET_VERSION (2.10, set by
// setup.py) on. Besides the stable headers this file holds the few helpers they lack:
//
// - errors that reach Python with the right type: CUCONV_CHECK (RuntimeError),
//   CUCONV_CHECK_VALUE (std::invalid_argument -> ValueError), CUCONV_CHECK_INDEX
//   (std::out_of_range -> IndexError), with a message built from their arguments alone (the
//   stable STD_TORCH_CHECK prefixes the C++ function, file and line);
// - printing of sizes, dtypes and devices in those messages, as torch prints them;
// - the op-math type (float for the half types), and dtype dispatch over the four floating
//   types cuconv supports (and, for max pooling, the integer types);
// - new tensors with another tensor's dtype and device.

#include <torch/csrc/stable/device.h>
#include <torch/csrc/stable/ops.h>
#include <torch/csrc/stable/tensor.h>
#include <torch/headeronly/core/ScalarType.h>
#include <torch/headeronly/util/BFloat16.h>
#include <torch/headeronly/util/Half.h>
#include <torch/headeronly/util/HeaderOnlyArrayRef.h>

#ifdef CUCONV_RECYCLES_CPU_MEMORY  // (the CPU module's: setup.py)
#include "cpu/recycled_memory.h"
#endif

#include <algorithm>
#include <cstdint>
#include <optional>
#include <ostream>
#include <sstream>
#include <stdexcept>
#include <string>
#include <type_traits>

namespace cuconv {

using Tensor = torch::stable::Tensor;
using IntArrayRef = torch::headeronly::IntHeaderOnlyArrayRef;
using ScalarType = torch::headeronly::ScalarType;

// --- messages and errors -------------------------------------------------------------------

// Sizes print as torch prints them: [2, 3, 8, 8].
inline std::ostream& operator<<(std::ostream& out, IntArrayRef values) {
  out << "[";
  for (size_t i = 0; i < values.size(); ++i) out << (i ? ", " : "") << values[i];
  return out << "]";
}

struct DevicePrinter {
  torch::stable::Device device;
};
inline std::ostream& operator<<(std::ostream& out, const DevicePrinter& d) {
  out << (d.device.is_cuda() ? "cuda" : d.device.is_cpu() ? "cpu" : "device");
  if (d.device.has_index()) out << ":" << static_cast<int>(d.device.index());
  return out;
}
// A tensor's device, printed as torch prints it (cpu, cuda:0).
inline DevicePrinter device_name(const Tensor& t) { return {t.device()}; }

template <typename... Args>
std::string message(const Args&... args) {
  std::ostringstream out;
  ((out << args), ...);  // ScalarType prints through c10's operator<<, found by ADL
  return out.str();
}

}  // namespace cuconv

#define CUCONV_CHECK(cond, ...) \
  if (!(cond)) throw std::runtime_error(::cuconv::message(__VA_ARGS__))
#define CUCONV_CHECK_VALUE(cond, ...) \
  if (!(cond)) throw std::invalid_argument(::cuconv::message(__VA_ARGS__))
#define CUCONV_CHECK_INDEX(cond, ...) \
  if (!(cond)) throw std::out_of_range(::cuconv::message(__VA_ARGS__))

// Dtype dispatch: runs the body (a lambda) with scalar_t naming the element type, as AT_DISPATCH
// does. (The body is substituted as it is, commas and all.)
#define CUCONV_DISPATCH_CASE(ENUM, TYPE, ...)   \
  case ::torch::headeronly::ScalarType::ENUM: { \
    using scalar_t = TYPE;                      \
    return __VA_ARGS__();                       \
  }
#define CUCONV_FLOATING_CASES(...)                          \
  CUCONV_DISPATCH_CASE(Float, float, __VA_ARGS__)           \
  CUCONV_DISPATCH_CASE(Double, double, __VA_ARGS__)         \
  CUCONV_DISPATCH_CASE(Half, ::c10::Half, __VA_ARGS__)      \
  CUCONV_DISPATCH_CASE(BFloat16, ::c10::BFloat16, __VA_ARGS__)
#define CUCONV_INTEGER_CASES(...)                   \
  CUCONV_DISPATCH_CASE(Byte, uint8_t, __VA_ARGS__)  \
  CUCONV_DISPATCH_CASE(Char, int8_t, __VA_ARGS__)   \
  CUCONV_DISPATCH_CASE(Short, int16_t, __VA_ARGS__) \
  CUCONV_DISPATCH_CASE(Int, int32_t, __VA_ARGS__)   \
  CUCONV_DISPATCH_CASE(Long, int64_t, __VA_ARGS__)

// float32, float64, float16 and bfloat16.
#define CUCONV_DISPATCH_FLOATING(TYPE, NAME, ...)                                                         \
  [&] {                                                                                                  \
    switch (TYPE) {                                                                                      \
      CUCONV_FLOATING_CASES(__VA_ARGS__)                                                                 \
      default:                                                                                           \
        throw std::runtime_error(::cuconv::message(NAME, ": expected a floating-point dtype, but got ", TYPE)); \
    }                                                                                                    \
  }()

// Those and the integer types torch's CPU max pooling takes (uint8, int8, int16, int32, int64).
#define CUCONV_DISPATCH_FLOATING_AND_INTEGER(TYPE, NAME, ...)                                      \
  [&] {                                                                                           \
    switch (TYPE) {                                                                               \
      CUCONV_FLOATING_CASES(__VA_ARGS__)                                                          \
      CUCONV_INTEGER_CASES(__VA_ARGS__)                                                           \
      default:                                                                                    \
        throw std::runtime_error(                                                                 \
            ::cuconv::message(NAME, ": expected a floating-point or integer dtype, but got ", TYPE)); \
    }                                                                                             \
  }()

// The floating-point types and int64 (torch's CPU average pooling takes those).
#define CUCONV_DISPATCH_FLOATING_AND_INT64(TYPE, NAME, ...)                                        \
  [&] {                                                                                           \
    switch (TYPE) {                                                                               \
      CUCONV_FLOATING_CASES(__VA_ARGS__)                                                          \
      CUCONV_DISPATCH_CASE(Long, int64_t, __VA_ARGS__)                                            \
      default:                                                                                    \
        throw std::runtime_error(                                                                 \
            ::cuconv::message(NAME, ": expected a floating-point or int64 dtype, but got ", TYPE)); \
    }                                                                                             \
  }()

// The integer types alone.
#define CUCONV_DISPATCH_INTEGER(TYPE, NAME, ...)                                                          \
  [&] {                                                                                                  \
    switch (TYPE) {                                                                                      \
      CUCONV_INTEGER_CASES(__VA_ARGS__)                                                                  \
      default:                                                                                           \
        throw std::runtime_error(::cuconv::message(NAME, ": expected an integer dtype, but got ", TYPE)); \
    }                                                                                                    \
  }()

namespace cuconv {

// --- types ---------------------------------------------------------------------------------

// The type arithmetic on scalar_t is done in: float for the half types (as at::opmath_type).
template <typename T>
struct OpMath {
  using type = T;
};
template <>
struct OpMath<c10::Half> {
  using type = float;
};
template <>
struct OpMath<c10::BFloat16> {
  using type = float;
};
template <typename T>
using opmath_t = typename OpMath<T>::type;

// The ScalarType of float and double (the op-math types a buffer may hold).
template <typename T>
constexpr ScalarType scalar_type_of() {
  static_assert(std::is_same_v<T, float> || std::is_same_v<T, double>, "float or double");
  return std::is_same_v<T, float> ? ScalarType::Float : ScalarType::Double;
}

inline bool is_floating(ScalarType t) {
  return t == ScalarType::Float || t == ScalarType::Double || t == ScalarType::Half || t == ScalarType::BFloat16;
}

// The integer types of CUCONV_DISPATCH_FLOATING_AND_INTEGER (not bool).
inline bool is_integer(ScalarType t) {
  return t == ScalarType::Byte || t == ScalarType::Char || t == ScalarType::Short || t == ScalarType::Int ||
         t == ScalarType::Long;
}

// --- tensors -------------------------------------------------------------------------------

// t itself when it is contiguous (torch::stable::contiguous is a dispatcher call even then).
inline Tensor contiguous_or_self(const Tensor& t) { return t.is_contiguous() ? t : torch::stable::contiguous(t); }


// The C shim's code for a dtype.
inline int32_t shim_dtype(ScalarType t) {
  switch (t) {
    case ScalarType::Float: return aoti_torch_dtype_float32();
    case ScalarType::Double: return aoti_torch_dtype_float64();
    case ScalarType::Half: return aoti_torch_dtype_float16();
    case ScalarType::BFloat16: return aoti_torch_dtype_bfloat16();
    case ScalarType::Long: return aoti_torch_dtype_int64();
    case ScalarType::Int: return aoti_torch_dtype_int32();
    default: throw std::runtime_error(message("cuconv: no tensor of dtype ", t, " is ever made here"));
  }
}

// An uninitialised tensor of `sizes` and `strides` with `like`'s device and, unless given, its
// dtype. Straight through the C shim (torch::stable::empty looks the op up by name and boxes
// its arguments: ~1 us a call more, and every kernel call makes one or two). In the CPU module
// a CPU tensor goes on recycled memory where the policy allows (cpu/recycled_memory.cpp).
inline Tensor empty_strided_like(const Tensor& like, IntArrayRef sizes, IntArrayRef strides,
                                 std::optional<ScalarType> dtype = std::nullopt) {
  int32_t device_type = 0, device_index = 0, code = 0;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_type(like.get(), &device_type));
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_device_index(like.get(), &device_index));
  if (dtype.has_value()) {
    code = shim_dtype(*dtype);
  } else {
    STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_get_dtype(like.get(), &code));
  }
#ifdef CUCONV_RECYCLES_CPU_MEMORY
  if (device_type == aoti_torch_device_type_cpu()) {
    AtenTensorHandle recycled = recycled_cpu_tensor(static_cast<int64_t>(sizes.size()), sizes.data(), strides.data(), code);
    if (recycled != nullptr) return Tensor(recycled);
  }
#endif
  AtenTensorHandle handle = nullptr;
  STABLE_TORCH_ERROR_CODE_CHECK(aoti_torch_empty_strided(static_cast<int64_t>(sizes.size()), sizes.data(),
                                                         strides.data(), code, device_type, device_index, &handle));
  return Tensor(handle);
}

// An uninitialised contiguous tensor of `sizes` (as empty_strided_like).
inline Tensor empty_like_with(const Tensor& like, IntArrayRef sizes, std::optional<ScalarType> dtype = std::nullopt) {
  int64_t strides[8];
  const int64_t ndim = static_cast<int64_t>(sizes.size());
  CUCONV_CHECK(ndim <= 8, "cuconv: a tensor of more than 8 dimensions");
  for (int64_t d = ndim - 1, stride = 1; d >= 0; --d) {
    strides[d] = stride;
    stride *= std::max<int64_t>(sizes[d], 1);
  }
  return empty_strided_like(like, sizes, IntArrayRef(strides, sizes.size()), dtype);
}

// --- channels_last ----------------------------------------------------------------------------
//
// A 4-D tensor is "channels_last" when torch would suggest that memory format for it
// (suggest_memory_format) and it is channels-last contiguous (NHWC in memory; a dimension of
// size 1 may have any stride), so that the NHWC kernels can read it. Convolutions and pooling
// keep it: a channels_last input gives a channels_last output (cuconv/_fake.py says the same for
// traced graphs).
//
// torch's reading of the strides: walking C, W, H, N, each stride is at least the previous one
// times that dimension's size (sizes of 1 count as 1), no size is 0 and C's stride is not 0; an
// N x 1 x 1 x 1-like tie (N's stride equal to C's) reads as NCHW. It decides the tensors that
// are both layouts at once: (N, C, 1, 1) with strides (C, 1, C, C), the output of global pooling
// of a channels_last input, is channels_last (its gradient must be too, or autograd converts
// it for every accumulation); with strides (C, 1, 1, 1) it is not.
inline bool strides_suggest_channels_last(const Tensor& t) {
  if (t.dim() != 4 || t.stride(1) == 0) return false;
  int64_t smallest = 0;
  for (int64_t d : {1, 3, 2, 0}) {
    if (t.size(d) == 0 || t.stride(d) < smallest) return false;
    if (d == 0 && smallest == t.stride(1)) return false;
    smallest = t.stride(d) * std::max<int64_t>(t.size(d), 1);
  }
  return true;
}

inline bool is_channels_last(const Tensor& t) {
  if (!strides_suggest_channels_last(t)) return false;
  int64_t expected = 1;
  for (int64_t d : {1, 3, 2, 0}) {
    const int64_t size = t.size(d);
    if (size == 1) continue;
    if (t.stride(d) != expected) return false;
    expected *= size;
  }
  return true;
}

// An uninitialised 4-D tensor of NCHW `sizes` laid out NHWC in memory.
inline Tensor empty_channels_last_like(const Tensor& like, IntArrayRef sizes,
                                       std::optional<ScalarType> dtype = std::nullopt) {
  const int64_t c = std::max<int64_t>(sizes[1], 1), h = std::max<int64_t>(sizes[2], 1), w = std::max<int64_t>(sizes[3], 1);
  const int64_t strides[4] = {h * w * c, 1, w * c, c};
  return empty_strided_like(like, sizes, IntArrayRef(strides, 4), dtype);
}

// An uninitialised result of `sizes` in `model`'s layout: channels_last when it is, else contiguous.
inline Tensor empty_in_layout_of(const Tensor& model, IntArrayRef sizes, std::optional<ScalarType> dtype = std::nullopt) {
  return is_channels_last(model) ? empty_channels_last_like(model, sizes, dtype) : empty_like_with(model, sizes, dtype);
}

// `result` (contiguous NCHW) laid out as `model` is: a channels_last copy when `model` is
// channels_last (for the kernels that compute NCHW), else `result` itself.
inline Tensor in_layout_of(const Tensor& model, const Tensor& result) {
  if (!is_channels_last(model) || result.dim() != 4) return result;
  Tensor out = empty_channels_last_like(result, result.sizes());
  torch::stable::copy_(out, result);
  return out;
}

// The same, filled with zeros.
inline Tensor zeros_like_with(const Tensor& like, IntArrayRef sizes, std::optional<ScalarType> dtype = std::nullopt) {
  Tensor t = empty_like_with(like, sizes, dtype);
  torch::stable::fill_(t, 0.0);
  return t;
}

}  // namespace cuconv
