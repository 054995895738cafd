// Recycled memory for the CPU tensors cuconv makes.
//
// Why: a training loop frees and makes tensors of the same sizes every step, but glibc's malloc
// seldom hands a freed block back to the next tensor of its size: a smaller tensor made in
// between takes the block's front, and the next one of the old size lands further on (global
// pooling's 2.4 MB gradient, 128 x 512 x 3 x 3, sat at 8 addresses over 16 MB in 200 steps, at
// 48 after a large tensor had come and gone). A store to a line no cache holds first reads the
// line from memory, so each such output costs its size twice in memory traffic, and the next
// op reads it from memory again. Here a tensor takes the buffer most recently freed of exactly
// its size, which the caches still hold (NOTES.md, forty-fifth and fiftieth sessions, has the
// measurements).
//
// Policy, from this CPU's caches rather than one CPU's figures; the limit is half the last-level
// cache (16 MiB on a 32 MiB L3, 4 MiB on an 8 MiB one):
// - tensors of 64 KiB (a thousand cache lines) up to the limit: smaller ones are many and short,
//   and stay with malloc; a larger buffer would not come back from the caches whole. (A quarter
//   of the cache left out global pooling's 2.4 MB gradient on an 8 MiB L3, whose lines a step
//   later are still mostly cached: on a Zen 1 that step took 0.66 ms on malloc's blocks, 0.56-0.60
//   recycled);
// - the held (freed) buffers total at most the limit, the oldest returned to malloc first: a
//   step's recent outputs fit, and what a process keeps beyond torch's stays small beside any
//   model's memory (a ResNet-18 step, batch 128 of 96 x 96 images, ~470 MiB);
// - CUCONV_RECYCLE_CPU_MEMORY=0 turns it off (read once); cuconv.memory.release() empties it.
//
// How: torch_from_blob, a stable-ABI shim from torch 2.11 on, makes a tensor on our buffer with
// our deleter. Under torch 2.10 the shim is missing (a weak reference, null) and torch's
// allocator serves every tensor. A tensor made so has a storage torch cannot resize (resize_ to
// more elements raises), as a tensor made from a numpy array has (README, "CPU memory").

#include "recycled_memory.h"

#include <pthread.h>

#include <atomic>
#include <cstdint>
#include <cstdlib>
#include <cstring>
#include <mutex>
#include <stdexcept>
#include <string>
#include <vector>

#include <torch/csrc/stable/c/shim.h>  // (declares torch_from_blob where the target is 2.11 or later)
#include <torch/csrc/stable/version.h>

#include "gemm.h"  // last_level_cache_bytes

#if !(TORCH_FEATURE_VERSION >= TORCH_VERSION_2_11_0)
// The shim's declaration (torch/csrc/stable/c/shim.h shows it from torch 2.11 on).
extern "C" AOTI_TORCH_EXPORT AOTITorchError torch_from_blob(void* data, int64_t ndim, const int64_t* sizes_ptr,
                                                            const int64_t* strides_ptr, int64_t storage_offset,
                                                            int32_t dtype, int32_t device_type, int32_t device_index,
                                                            AtenTensorHandle* ret, int32_t layout,
                                                            const uint8_t* opaque_metadata,
                                                            int64_t opaque_metadata_size,
                                                            void (*deleter)(void* data, void* ctx), void* deleter_ctx);
#endif
#pragma weak torch_from_blob  // null where the running torch lacks it

namespace cuconv {
namespace {

constexpr int64_t kSmallestRecycled = int64_t{64} << 10;
constexpr int64_t kAlignment = 64;  // a cache line, as torch's CPU allocator aligns

struct HeldBuffer {
  void* data;
  int64_t bytes;
};

struct Recycler {
  std::mutex lock;
  std::vector<HeldBuffer> held;  // in the order torch freed them, oldest first
  int64_t held_bytes = 0;
  int64_t reused = 0;
  int64_t fresh = 0;
};

// Never destroyed: torch may free a tensor, and call give_back, after static destructors ran.
// The lock is held across fork(), so that a child never inherits it taken by a thread it lacks.
Recycler& recycler() {
  static Recycler* instance = [] {
    auto* made = new Recycler;
    pthread_atfork([] { recycler().lock.lock(); }, [] { recycler().lock.unlock(); },
                   [] { recycler().lock.unlock(); });
    return made;
  }();
  return *instance;
}

int64_t limit_bytes() {
  static const int64_t limit = last_level_cache_bytes() / 2;
  return limit;
}

// Set when torch_from_blob refuses a tensor: from then on torch's allocator serves every tensor
// (a refusal costs a C++ exception inside torch; stats() then reports recycling off).
std::atomic<bool> refused{false};

// CUCONV_RECYCLE_CPU_MEMORY: unset, empty or 1 recycles, 0 does not; anything else raises
// ValueError (cuconv's import reads it first, through cpu_memory()).
bool enabled() {
  static const bool on = [] {
    const char* setting = std::getenv("CUCONV_RECYCLE_CPU_MEMORY");
    const bool off = setting != nullptr && std::strcmp(setting, "0") == 0;
    if (setting != nullptr && *setting != '\0' && !off && std::strcmp(setting, "1") != 0)
      throw std::invalid_argument(std::string("CUCONV_RECYCLE_CPU_MEMORY: expected 0 or 1, but got '") + setting + "'");
    return torch_from_blob != nullptr && !off;
  }();
  return on && !refused.load(std::memory_order_relaxed);
}

int64_t element_bytes(int32_t dtype) {
  if (dtype == aoti_torch_dtype_float32() || dtype == aoti_torch_dtype_int32()) return 4;
  if (dtype == aoti_torch_dtype_float64() || dtype == aoti_torch_dtype_int64()) return 8;
  if (dtype == aoti_torch_dtype_float16() || dtype == aoti_torch_dtype_bfloat16() || dtype == aoti_torch_dtype_int16())
    return 2;
  if (dtype == aoti_torch_dtype_uint8() || dtype == aoti_torch_dtype_int8() || dtype == aoti_torch_dtype_bool()) return 1;
  return 0;  // (none other is made here; left to torch)
}

void release_oldest_until_within_limit(Recycler& r) {
  size_t released = 0;
  while (r.held_bytes > limit_bytes()) {
    std::free(r.held[released].data);
    r.held_bytes -= r.held[released].bytes;
    ++released;
  }
  r.held.erase(r.held.begin(), r.held.begin() + released);
}

// The deleter torch calls when a recycled tensor's storage dies, on whichever thread drops it.
void give_back(void* data, void* context) {
  const auto bytes = static_cast<int64_t>(reinterpret_cast<intptr_t>(context));
  Recycler& r = recycler();
  std::lock_guard<std::mutex> guard(r.lock);
  try {
    r.held.push_back({data, bytes});
  } catch (...) {  // (no memory for the list's entry: a deleter must not throw)
    std::free(data);
    return;
  }
  r.held_bytes += bytes;
  release_oldest_until_within_limit(r);  // (never the buffer just held: none exceeds the limit)
}

// The most recently freed held buffer of `bytes`, taken out of the held list, else a new one.
void* take(int64_t bytes) {
  Recycler& r = recycler();
  {
    std::lock_guard<std::mutex> guard(r.lock);
    for (size_t i = r.held.size(); i-- > 0;) {
      if (r.held[i].bytes == bytes) {
        void* data = r.held[i].data;
        r.held.erase(r.held.begin() + static_cast<std::ptrdiff_t>(i));
        r.held_bytes -= bytes;
        ++r.reused;
        return data;
      }
    }
  }
  void* data = std::aligned_alloc(kAlignment, static_cast<size_t>(bytes));  // (bytes: a multiple of 64)
  if (data != nullptr) {
    std::lock_guard<std::mutex> guard(r.lock);
    ++r.fresh;
  }
  return data;
}

}  // namespace

AtenTensorHandle recycled_cpu_tensor(int64_t ndim, const int64_t* sizes, const int64_t* strides, int32_t dtype) {
  if (!enabled()) return nullptr;
  const int64_t element = element_bytes(dtype);
  if (element == 0) return nullptr;
  // The bytes from the first element to the last (in double first: no overflow on absurd sizes).
  double extent = 1.0;
  for (int64_t d = 0; d < ndim; ++d) {
    if (sizes[d] == 0) return nullptr;
    extent += static_cast<double>(sizes[d] - 1) * static_cast<double>(strides[d]);
  }
  if (extent * static_cast<double>(element) > static_cast<double>(limit_bytes())) return nullptr;
  const int64_t bytes = (static_cast<int64_t>(extent) * element + kAlignment - 1) / kAlignment * kAlignment;
  if (bytes < kSmallestRecycled || bytes > limit_bytes()) return nullptr;

  void* data = take(bytes);
  if (data == nullptr) return nullptr;  // (torch's allocator then reports the failure its own way)
  void* context = reinterpret_cast<void*>(static_cast<intptr_t>(bytes));
  AtenTensorHandle handle = nullptr;
  // (device index -1: a CPU tensor's, which torch requires of data on the CPU)
  if (torch_from_blob(data, ndim, sizes, strides, /*storage_offset=*/0, dtype, aoti_torch_device_type_cpu(),
                      /*device_index=*/-1, &handle, aoti_torch_layout_strided(), nullptr, 0, &give_back,
                      context) != AOTI_TORCH_SUCCESS) {
    // The buffer is left alone: where torch failed after taking it, it has handed it back through
    // give_back already (and another thread may have released it since); else it stays
    // allocated, once in the process's life, as recycling stops here. Never freed twice.
    refused.store(true, std::memory_order_relaxed);
    return nullptr;
  }
  return handle;
}

RecycledMemoryStats recycled_memory_stats() {
  const bool on = enabled();
  Recycler& r = recycler();
  std::lock_guard<std::mutex> guard(r.lock);
  return {on, kSmallestRecycled, limit_bytes(), r.held_bytes, static_cast<int64_t>(r.held.size()), r.reused, r.fresh};
}

void release_recycled_memory() {
  Recycler& r = recycler();
  std::lock_guard<std::mutex> guard(r.lock);
  for (const HeldBuffer& buffer : r.held) std::free(buffer.data);
  r.held.clear();
  r.held_bytes = 0;
}

}  // namespace cuconv
