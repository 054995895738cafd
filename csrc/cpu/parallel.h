#pragma once
// Work shared out in chunks, for machines whose cores do not run at one speed.
//
// torch's parallel_for cuts [begin, end) once, one part per thread. Where a core runs slower
// than the others (a VM whose host is busy, a neighbour's load on a sibling core) the op then
// waits for its slowest thread: on a 2-core VM, in a noisy phase, the direct convolution's
// median call took 1.6-1.9x its fastest. parallel_chunks cuts the range into about
// kChunksPerThread chunks per thread instead and hands out the next one to whichever thread asks
// first, so a slow core simply does fewer (benchmarks/NOTES.md, fifteenth session).
// Used by the convolutions' long loops: the direct forward, the GEMM's forward and input
// gradient, Winograd's tile blocks, the channels_last kernels and the depthwise ones (on a quiet
// machine within 3% of the static split either way; in a noisy phase the direct forward's median
// 0.71-0.79 of it). Not by pooling, where it measured worse (resnet.globalpool's step 1.26x as
// long: short ops, whose static split matches that of torch's ops before and after them, so a
// core finds its part in its own cache), nor by the per-pixel products (their items are one per
// thread already) or the weight gradients' fixed splits into partial sums (summed in order, for
// repeatable results).
//
//   parallel_chunks(begin, end, grain, [&](ChunkQueue& chunks) {
//     ...per-thread buffers...
//     for (int64_t b, e; chunks.next(b, e);) ...work on [b, e)...
//   });
//
// or parallel_for_chunks(begin, end, grain, f), torch's form: f(b, e) once per chunk.
//
// Every chunk is at least `grain` items (the last may be shorter) and is fixed by the range, the
// grain and the thread count, never by which thread takes it: a kernel whose output for a chunk
// depends on that chunk alone gives the same bits however the chunks fall. One thread, a range
// of at most one grain, or a call from inside a parallel region: the calling thread takes every
// chunk, as torch's parallel_for would run the whole range there.

#include <algorithm>
#include <atomic>
#include <cstdint>

#include "../stable.h"

namespace cuconv {

constexpr int64_t kChunksPerThread = 4;

class ChunkQueue {
 public:
  ChunkQueue(int64_t begin, int64_t end, int64_t chunk) : begin_(begin), end_(end), chunk_(chunk) {}

  // The next chunk [b, e), or false when none is left.
  bool next(int64_t& b, int64_t& e) {
    const int64_t index = taken_.fetch_add(1, std::memory_order_relaxed);
    if (index >= (end_ - begin_ + chunk_ - 1) / chunk_) return false;
    b = begin_ + index * chunk_;
    e = std::min(end_, b + chunk_);
    return true;
  }

 private:
  const int64_t begin_, end_, chunk_;
  std::atomic<int64_t> taken_{0};
};

// worker(queue) runs once on each thread that takes part (each drains the queue with next()).
template <typename Worker>
void parallel_chunks(int64_t begin, int64_t end, int64_t grain, const Worker& worker) {
  if (end <= begin) return;
  const int64_t range = end - begin, threads = torch::stable::get_num_threads();
  grain = std::max<int64_t>(grain, 1);
  const int64_t chunk = std::max(grain, (range + threads * kChunksPerThread - 1) / (threads * kChunksPerThread));
  ChunkQueue queue(begin, end, chunk);
  const int64_t workers = std::min(threads, (range + chunk - 1) / chunk);
  if (workers <= 1 || range <= grain) {
    worker(queue);
    return;
  }
  // (nested in a parallel region, torch runs the lambda once, here: that worker takes every chunk)
  torch::stable::parallel_for(0, workers, 1, [&](int64_t first, int64_t last) {
    for (int64_t w = first; w < last; ++w) worker(queue);
  });
}

// torch::stable::parallel_for's form, for loops whose per-call setup is light: f(b, e) once per
// chunk (its setup then runs about kChunksPerThread times per thread).
template <typename F>
void parallel_for_chunks(int64_t begin, int64_t end, int64_t grain, const F& f) {
  parallel_chunks(begin, end, grain, [&](ChunkQueue& chunks) {
    for (int64_t b, e; chunks.next(b, e);) f(b, e);
  });
}

}  // namespace cuconv
