#pragma once
// Writing an output past the caches (non-temporal stores), for outputs larger than the last-level
// cache: an ordinary store first reads its cache line from memory (read for ownership), so
// writing such an output costs twice its size in memory traffic, and no later pass finds it in
// cache anyway. The kernels compute into a small buffer of their own (in cache) and stream it
// out in whole cache lines: streaming their scattered pieces (a few pixels of many planes at a
// time) flushes the write-combining buffers half filled, slower than ordinary stores.
// SSE2 stores (every x86-64 has them; the write-combining buffers merge them into lines as wide
// stores would); a plain copy elsewhere.

#include <algorithm>
#include <cstdint>
#include <cstring>

#if defined(__x86_64__)
#include <emmintrin.h>
#endif

#include "gemm.h"  // last_level_cache_bytes

namespace cuconv {

// Whether an output of this many bytes is written past the caches.
inline bool streams_output(int64_t bytes) { return bytes > last_level_cache_bytes(); }

// dst[0, bytes) = src[0, bytes), through non-temporal stores from dst's first 16-byte boundary
// on (the unaligned ends are ordinary stores). Call stream_fence() before another thread reads dst.
inline void stream_copy(void* dst, const void* src, int64_t bytes) {
#if defined(__x86_64__)
  auto* to = static_cast<char*>(dst);
  const auto* from = static_cast<const char*>(src);
  const int64_t head = std::min<int64_t>(bytes, (16 - reinterpret_cast<uintptr_t>(to) % 16) % 16);
  std::memcpy(to, from, head);
  int64_t i = head;
  for (; i + 16 <= bytes; i += 16)
    _mm_stream_si128(reinterpret_cast<__m128i*>(to + i), _mm_loadu_si128(reinterpret_cast<const __m128i*>(from + i)));
  std::memcpy(to + i, from + i, bytes - i);
#else
  std::memcpy(dst, src, bytes);
#endif
}

// Orders this thread's streamed stores before its later stores (the thread pool's hand-back).
inline void stream_fence() {
#if defined(__x86_64__)
  _mm_sfence();
#endif
}

}  // namespace cuconv
