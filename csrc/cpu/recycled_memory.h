#pragma once
// Recycled memory for the CPU tensors cuconv makes (recycled_memory.cpp has the why).
//
// stable.h's empty_strided_like asks here first for every CPU tensor the CPU module makes;
// nullptr sends it to torch's allocator.

#include <cstdint>

#include <torch/csrc/inductor/aoti_torch/c/shim.h>

namespace cuconv {

// A new CPU tensor of `sizes` and `strides` (ndim of each) and shim dtype `dtype` on the most
// recently freed held buffer of its byte size, else on a new buffer, which comes back here when
// torch frees the tensor. nullptr where recycling does not apply: turned off, torch without
// the shim that makes such tensors, no element, or a size outside the policy.
AtenTensorHandle recycled_cpu_tensor(int64_t ndim, const int64_t* sizes, const int64_t* strides, int32_t dtype);

struct RecycledMemoryStats {
  bool enabled;          // CUCONV_RECYCLE_CPU_MEMORY is not 0, torch has the shim and has not refused it
  int64_t smallest;      // the policy: tensors of [smallest, limit] bytes are recycled,
  int64_t limit;         // and the held buffers total at most `limit` bytes
  int64_t held_bytes;    // buffers freed by torch and kept for the next tensors
  int64_t held_buffers;
  int64_t reused;        // tensors made on a held buffer, since the process started
  int64_t fresh;         // tensors made on a new buffer
};
RecycledMemoryStats recycled_memory_stats();

// Returns every held buffer to malloc (the tensors alive keep theirs).
void release_recycled_memory();

}  // namespace cuconv
