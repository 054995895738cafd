#pragma once
// Fibers for the emulated CUDA device: one per CUDA thread of the running block, each on a
// stack of its own, switched cooperatively (a thread runs until it reaches a barrier or a
// warp collective, or returns). A context switch on x86-64 is a few instructions of
// hand-written assembly (fiber.cpp): about 100x faster than switching OS threads, which
// matters with 256 threads a block and a switch per thread per barrier. Other CPUs use
// ucontext (correct, slower: swapcontext makes a system call).
//
// AddressSanitizer is told about every switch (__sanitizer_{start,finish}_switch_fiber), so
// an ASan build checks the kernels' memory accesses on the fibers' stacks too.

#include <cstddef>
#include <cstdint>

namespace cuconv::emu {

class Fiber {
 public:
  using Entry = void (*)(void* argument);

  Fiber() = default;
  Fiber(const Fiber&) = delete;
  Fiber& operator=(const Fiber&) = delete;
  ~Fiber();

  // Prepares the fiber to run entry(argument) on its own stack at the next resume(). The
  // stack (with a guard page below it, so an overflow faults) is allocated once and reused.
  void start(Entry entry, void* argument, size_t stack_bytes);
  // Runs the fiber from where it last yielded (or from its entry) until it yields or its
  // entry returns. Called from the scheduler only.
  void resume();
  // Back to the scheduler; called on the fiber.
  void yield();
  bool finished() const { return finished_; }

 private:
  static void trampoline(Fiber* self);

  void* stack_ = nullptr;        // mapping, guard page first
  size_t mapped_bytes_ = 0;
  void* fiber_sp_ = nullptr;     // saved stack pointer of the fiber (x86-64)
  void* scheduler_sp_ = nullptr; // saved stack pointer of the scheduler (x86-64)
  void* ucontexts_ = nullptr;    // portable fallback: two ucontext_t
  Entry entry_ = nullptr;
  void* argument_ = nullptr;
  bool finished_ = true;
  // AddressSanitizer's record of the stack being left (fake stack of the other side).
  void* asan_fake_stack_ = nullptr;
  const void* scheduler_stack_bottom_ = nullptr;
  size_t scheduler_stack_size_ = 0;

  friend void fiber_entry(Fiber* self);
};

}  // namespace cuconv::emu
