// Fibers (fiber.h): stacks, the x86-64 context switch, the ucontext fallback, and the
// AddressSanitizer annotations.

#include "fiber.h"

#include <sys/mman.h>
#include <unistd.h>

#include <cstdlib>
#include <cstring>
#include <stdexcept>

#if defined(__SANITIZE_ADDRESS__)
#include <sanitizer/common_interface_defs.h>
#define CUCONV_EMU_ASAN 1
#else
#define CUCONV_EMU_ASAN 0
#endif

#if defined(__x86_64__) && !defined(CUCONV_EMU_UCONTEXT)
#define CUCONV_EMU_X86_64 1
#else
#define CUCONV_EMU_X86_64 0
#include <ucontext.h>
#endif

#if CUCONV_EMU_X86_64
// cuconv_emu_switch(save, restore): pushes the callee-saved registers, the SSE and x87
// control words, stores the stack pointer in *save, loads `restore` as the stack pointer
// and pops the same from there (System V ABI: everything else is caller-saved).
// cuconv_emu_fiber_start: where a new fiber's first switch returns to; calls rbx(r12).
asm(R"(
.text
.globl cuconv_emu_switch
.type cuconv_emu_switch,@function
cuconv_emu_switch:
  pushq %rbp
  pushq %rbx
  pushq %r12
  pushq %r13
  pushq %r14
  pushq %r15
  subq $8, %rsp
  stmxcsr (%rsp)
  fnstcw 4(%rsp)
  movq %rsp, (%rdi)
  movq %rsi, %rsp
  ldmxcsr (%rsp)
  fldcw 4(%rsp)
  addq $8, %rsp
  popq %r15
  popq %r14
  popq %r13
  popq %r12
  popq %rbx
  popq %rbp
  ret
.size cuconv_emu_switch, .-cuconv_emu_switch

.globl cuconv_emu_fiber_start
.type cuconv_emu_fiber_start,@function
cuconv_emu_fiber_start:
  movq %r12, %rdi
  callq *%rbx
  ud2
.size cuconv_emu_fiber_start, .-cuconv_emu_fiber_start
.section .note.GNU-stack,"",@progbits
.text
)");
extern "C" void cuconv_emu_switch(void** save, void* restore);
extern "C" void cuconv_emu_fiber_start();
#endif

namespace cuconv::emu {

namespace {

size_t page_size() {
  static const size_t size = static_cast<size_t>(sysconf(_SC_PAGESIZE));
  return size;
}

}  // namespace

// The first code a fiber runs, on its own stack.
void fiber_entry(Fiber* self) {
#if CUCONV_EMU_ASAN
  __sanitizer_finish_switch_fiber(nullptr, &self->scheduler_stack_bottom_, &self->scheduler_stack_size_);
#endif
  self->entry_(self->argument_);
  self->finished_ = true;
#if CUCONV_EMU_ASAN
  __sanitizer_start_switch_fiber(nullptr, self->scheduler_stack_bottom_, self->scheduler_stack_size_);
#endif
#if CUCONV_EMU_X86_64
  void* dead_sp = nullptr;
  cuconv_emu_switch(&dead_sp, self->scheduler_sp_);
#else
  auto* contexts = static_cast<ucontext_t*>(self->ucontexts_);
  swapcontext(&contexts[1], &contexts[0]);
#endif
  std::abort();  // a finished fiber is never resumed
}

// Not instrumented: fiber_entry never returns, and ASan's handling of a call that does not
// return (unpoisoning "the" stack) cannot describe a fiber's stack and aborts.
__attribute__((no_sanitize_address)) void Fiber::trampoline(Fiber* self) { fiber_entry(self); }

#if !CUCONV_EMU_X86_64
namespace {
void ucontext_entry(unsigned int high, unsigned int low) {
  fiber_entry(reinterpret_cast<Fiber*>((static_cast<uintptr_t>(high) << 32) | low));
}
}  // namespace
#endif

Fiber::~Fiber() {
  if (stack_ != nullptr) munmap(stack_, mapped_bytes_);
#if !CUCONV_EMU_X86_64
  delete[] static_cast<ucontext_t*>(ucontexts_);
#endif
}

void Fiber::start(Entry entry, void* argument, size_t stack_bytes) {
  const size_t page = page_size();
  const size_t wanted = (stack_bytes + page - 1) / page * page + page;  // + the guard page
  if (stack_ == nullptr || mapped_bytes_ != wanted) {
    if (stack_ != nullptr) munmap(stack_, mapped_bytes_);
    stack_ = mmap(nullptr, wanted, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (stack_ == MAP_FAILED) {
      stack_ = nullptr;
      throw std::runtime_error("cuconv emulator: cannot map a fiber stack");
    }
    mprotect(stack_, page, PROT_NONE);
    mapped_bytes_ = wanted;
  }
  entry_ = entry;
  argument_ = argument;
  finished_ = false;
  char* const bottom = static_cast<char*>(stack_) + page;
  char* const top = static_cast<char*>(stack_) + mapped_bytes_;
#if CUCONV_EMU_X86_64
  // The frame cuconv_emu_switch pops: control words, r15..r12, rbx, rbp, return address.
  // After its `ret` the stack pointer is 16-byte aligned, as the `call` in the start code needs.
  uintptr_t sp = (reinterpret_cast<uintptr_t>(top) - 16) & ~uintptr_t{15};
  auto push = [&sp](uint64_t value) {
    sp -= 8;
    std::memcpy(reinterpret_cast<void*>(sp), &value, 8);
  };
  push(reinterpret_cast<uint64_t>(&cuconv_emu_fiber_start));  // return address
  push(0);                                                     // rbp
  push(reinterpret_cast<uint64_t>(&Fiber::trampoline));        // rbx: the function to call
  push(reinterpret_cast<uint64_t>(this));                      // r12: its argument
  push(0);                                                     // r13
  push(0);                                                     // r14
  push(0);                                                     // r15
  uint32_t mxcsr = 0;
  uint16_t fpcw = 0;
  asm volatile("stmxcsr %0" : "=m"(mxcsr));
  asm volatile("fnstcw %0" : "=m"(fpcw));
  push((static_cast<uint64_t>(fpcw) << 32) | mxcsr);  // the control words of the starting thread
  fiber_sp_ = reinterpret_cast<void*>(sp);
  (void)bottom;
#else
  if (ucontexts_ == nullptr) ucontexts_ = new ucontext_t[2];
  auto* contexts = static_cast<ucontext_t*>(ucontexts_);
  getcontext(&contexts[1]);
  contexts[1].uc_stack.ss_sp = bottom;
  contexts[1].uc_stack.ss_size = static_cast<size_t>(top - bottom);
  contexts[1].uc_link = nullptr;
  const auto address = reinterpret_cast<uintptr_t>(this);
  makecontext(&contexts[1], reinterpret_cast<void (*)()>(&ucontext_entry), 2,
              static_cast<unsigned int>(address >> 32), static_cast<unsigned int>(address & 0xffffffffu));
#endif
}

void Fiber::resume() {
  char* const bottom = static_cast<char*>(stack_) + page_size();
#if CUCONV_EMU_ASAN
  void* scheduler_fake_stack = nullptr;
  __sanitizer_start_switch_fiber(&scheduler_fake_stack, bottom, mapped_bytes_ - page_size());
#else
  (void)bottom;
#endif
#if CUCONV_EMU_X86_64
  cuconv_emu_switch(&scheduler_sp_, fiber_sp_);
#else
  auto* contexts = static_cast<ucontext_t*>(ucontexts_);
  swapcontext(&contexts[0], &contexts[1]);
#endif
#if CUCONV_EMU_ASAN
  __sanitizer_finish_switch_fiber(scheduler_fake_stack, nullptr, nullptr);
#endif
}

void Fiber::yield() {
#if CUCONV_EMU_ASAN
  __sanitizer_start_switch_fiber(&asan_fake_stack_, scheduler_stack_bottom_, scheduler_stack_size_);
#endif
#if CUCONV_EMU_X86_64
  cuconv_emu_switch(&fiber_sp_, scheduler_sp_);
#else
  auto* contexts = static_cast<ucontext_t*>(ucontexts_);
  swapcontext(&contexts[1], &contexts[0]);
#endif
#if CUCONV_EMU_ASAN
  __sanitizer_finish_switch_fiber(asan_fake_stack_, &scheduler_stack_bottom_, &scheduler_stack_size_);
#endif
}

}  // namespace cuconv::emu
