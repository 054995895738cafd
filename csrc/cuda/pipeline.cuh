#pragma once
// The multi-stage cp.async pipeline that every tiled CUDA GEMM here runs (gemm_tensor_core.cu,
// gemm_simt.cu): kStages shared-memory stages, kStages - 1 K steps in flight while one is
// multiplied.
//
//   prologue   copy steps 0 .. kStages-2 into stages 0 .. kStages-2, one commit group each
//   step s     wait until this thread's group of step s has landed (at most kStages - 2 newer ones
//              pending); __syncthreads(): every thread's copies of step s are in shared memory, and
//              every thread is done multiplying step s-1, whose stage is refilled now with step
//              s + kStages - 1; then multiply stage s % kStages
//   end        wait for every group (no copy may land after the block has exited)
//
// A commit is made in every step even when there is nothing left to copy, so that the wait
// counts stay the same for every step.

#include "intrinsics.cuh"

namespace cuconv::cuda_detail {

// copy_step(stage) issues one K step's copies into `stage`; multiply(stage) consumes one.
template <int kStages, typename CopyStep, typename Multiply>
__device__ __forceinline__ void run_pipeline(int k_steps, CopyStep&& copy_step, Multiply&& multiply) {
  static_assert(kStages >= 2, "a pipeline needs a stage to fill while one is read");
#pragma unroll
  for (int s = 0; s < kStages - 1; ++s) {
    if (s < k_steps) copy_step(s);
    cp_async_commit();
  }
  int stage = 0;  // step % kStages
  for (int step = 0; step < k_steps; ++step) {
    cp_async_wait<kStages - 2>();  // this thread's copies of `step` have landed
    __syncthreads();               // everyone's have, and everyone is done with the stage refilled next
    if (step + kStages - 1 < k_steps) copy_step(stage == 0 ? kStages - 1 : stage - 1);
    cp_async_commit();
    multiply(stage);
    stage = stage + 1 == kStages ? 0 : stage + 1;
  }
  cp_async_wait<0>();
}

}  // namespace cuconv::cuda_detail
