#pragma once
// Conversions between an element type and its op-math type (stable.h: float for float16 and
// bfloat16) written so that the kernels' loops vectorise. c10::Half's own conversions compile to
// branches, which keep GCC from vectorising any loop they are in (float16 channels_last pooling
// ran at 3-15x torch's time); float16's are done here on the bits, with every select a mask
// (GCC keeps a ?: between floating-point results as a branch). Exact: every float16 value to its
// float (a signalling NaN quietened, as c10 and F16C do), and every float to the float16 that
// c10::Half rounds it to (nearest, ties to even; NaN to 0x7E00 with its sign); checked against
// c10::Half over all 2^32 floats when written, and through the ops in tests/test_precision.py.
// Where a loop reads its elements with a stride (NCHW pooling windows), the kernels keep
// c10::Half's conversion: the vectoriser gathers there, and float16 2x2 pooling measured 1.4x
// slower with these. Most float16 pooling now runs as float32 on converted copies (pool2d.cpp,
// via_float); these serve the float16 paths left (global pooling's planes past the vector
// kernel's and its gradient, NHWC max pooling and its 2x2 gradient's fallback), and the depthwise
// kernels' staging copies of both half types (to_opmath_runs, from_opmath_runs). bfloat16's
// rounding is written likewise, as a select (c10's branches on NaN).

#include <cstdint>
#include <cstring>
#include <type_traits>

#include "../stable.h"
#include "simd.h"

namespace cuconv {

namespace half_bits {

template <typename To, typename From>
CUCONV_INLINE_INTO_CLONES To bits_as(From v) {
  static_assert(sizeof(To) == sizeof(From));
  To t;
  std::memcpy(&t, &v, sizeof t);
  return t;
}
// All ones where `condition`, else zero, and the select by such a mask.
CUCONV_INLINE_INTO_CLONES uint32_t mask_of(bool condition) { return 0u - static_cast<uint32_t>(condition); }
CUCONV_INLINE_INTO_CLONES uint32_t select(uint32_t mask, uint32_t a, uint32_t b) { return (a & mask) | (b & ~mask); }

// float16 (sign, 5 exponent bits biased by 15, 10 mantissa bits) to float: normal values move
// their exponent and mantissa into place (rebiased to 127), Inf and NaN keep the all-ones exponent,
// subnormals are their mantissa times 2^-24 (an exact float product).
CUCONV_INLINE_INTO_CLONES float to_float(uint16_t h) {
  const uint32_t magnitude = h & 0x7FFFu, exponent = magnitude >> 10;
  const uint32_t sign = static_cast<uint32_t>(h & 0x8000u) << 16;
  const uint32_t normal = (magnitude << 13) + (112u << 23);
  const uint32_t special = (magnitude << 13) | 0x7F800000u | (mask_of(magnitude > 0x7C00u) & 0x400000u);
  const uint32_t subnormal = bits_as<uint32_t>(static_cast<float>(static_cast<int32_t>(magnitude)) * 0x1p-24f);
  return bits_as<float>(sign |
                        select(mask_of(exponent == 31), special, select(mask_of(exponent == 0), subnormal, normal)));
}

// float to float16: normal results round the 13 dropped mantissa bits to nearest even in integer
// arithmetic (a carry may step the exponent up, to Inf at the top); below 2^-14, adding 0.5f
// rounds the value to a multiple of 2^-24 (0.5f's last place), which is the subnormal's mantissa.
CUCONV_INLINE_INTO_CLONES uint16_t from_float(float f) {
  const uint32_t w = bits_as<uint32_t>(f);
  const uint32_t sign = (w >> 16) & 0x8000u, magnitude = w & 0x7FFFFFFFu;
  const uint32_t normal = (magnitude + 0xFFFu + ((magnitude >> 13) & 1u) - (112u << 23)) >> 13;
  const uint32_t subnormal = bits_as<uint32_t>(bits_as<float>(magnitude) + 0.5f) - 0x3F000000u;
  uint32_t result = select(mask_of(magnitude < 0x38800000u), subnormal, normal);
  result = select(mask_of(result > 0x7C00u), 0x7C00u, result);      // 65520 and above (Inf too): Inf
  result = select(mask_of(magnitude > 0x7F800000u), 0x7E00u, result);  // NaN
  return static_cast<uint16_t>(sign | result);
}

// float to bfloat16 as c10::BFloat16 rounds it: to nearest, ties to even, in integer arithmetic
// on the bits (no carry reaches past bit 31 for any value but a NaN); NaN to 0x7FC0.
CUCONV_INLINE_INTO_CLONES uint16_t bfloat16_from_float(float f) {
  const uint32_t w = bits_as<uint32_t>(f);
  const uint32_t rounded = (w + 0x7FFFu + ((w >> 16) & 1u)) >> 16;
  return static_cast<uint16_t>(select(mask_of((w & 0x7FFFFFFFu) > 0x7F800000u), 0x7FC0u, rounded));
}

}  // namespace half_bits

// v in its op-math type.
template <typename T>
CUCONV_INLINE_INTO_CLONES opmath_t<T> to_opmath(T v) {
  if constexpr (std::is_same_v<T, c10::Half>) return half_bits::to_float(v.x);
  else return static_cast<opmath_t<T>>(v);
}

// An op-math value as T (float16 and bfloat16 rounded to nearest even, as c10 rounds).
template <typename T>
CUCONV_INLINE_INTO_CLONES T from_opmath(opmath_t<T> v) {
  if constexpr (std::is_same_v<T, c10::Half>) return c10::Half(half_bits::from_float(v), c10::Half::from_bits());
  else if constexpr (std::is_same_v<T, c10::BFloat16>)
    return c10::BFloat16(half_bits::bfloat16_from_float(v), c10::BFloat16::from_bits());
  else return static_cast<T>(v);
}

// `pixels` runs of `count` values in their op-math type, and back: run q of src starts at
// src + q * src_step, of dst at dst + q * count (and the reverse); loops that vectorise in
// each ISA's clone (the float16 and bfloat16 staging copies of the depthwise kernels: channel
// blocks of NHWC pixels, or bands of NCHW planes).
template <typename T>
CUCONV_VECTOR_CLONES void to_opmath_runs(const T* src, int64_t src_step, int64_t pixels, int64_t count,
                                         opmath_t<T>* dst) {
  for (int64_t q = 0; q < pixels; ++q)
    for (int64_t i = 0; i < count; ++i) dst[q * count + i] = to_opmath(src[q * src_step + i]);
}
template <typename T>
CUCONV_VECTOR_CLONES void from_opmath_runs(const opmath_t<T>* src, int64_t pixels, int64_t count, T* dst,
                                           int64_t dst_step) {
  for (int64_t q = 0; q < pixels; ++q)
    for (int64_t i = 0; i < count; ++i) dst[q * dst_step + i] = from_opmath<T>(src[q * count + i]);
}

}  // namespace cuconv
