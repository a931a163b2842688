// Cooperative fibers for the emulator: every thread of a CTA runs on its own
// stack, all on one OS thread, and gives up the CPU only where a real thread
// would wait (a barrier, a warp-wide instruction) or when it exits.
// x86-64: a hand-written switch that saves the callee-saved registers and the
// SSE / x87 control words (about 20 instructions, no system call); other
// architectures: ucontext.
#pragma once
#include <cstddef>
#include <cstdint>

#if defined(__x86_64__)
namespace tforge::emu::fiber {
struct Context {
  void* sp = nullptr;
};
extern "C" void tf_emu_switch(void** save_sp, void* load_sp);
extern "C" void tf_emu_trampoline();
// Prepares `c` to start entry(arg) on the stack [lo, lo + size) at its first switch_to.
inline void make(Context& c, char* lo, size_t size, void (*entry)(void*), void* arg) {
  // Stack top, 16-byte aligned; the trampoline is entered by `ret` with rsp 16-byte aligned and
  // finds entry / arg in r12 / r13 (see the asm in runtime.cpp).
  uintptr_t top = (reinterpret_cast<uintptr_t>(lo) + size) & ~uintptr_t(15);
  void** s = reinterpret_cast<void**>(top - 16);
  *--s = reinterpret_cast<void*>(&tf_emu_trampoline);  // return address of the switch
  *--s = nullptr;                                       // rbp
  *--s = nullptr;                                       // rbx
  *--s = reinterpret_cast<void*>(entry);                // r12
  *--s = arg;                                           // r13
  *--s = nullptr;                                       // r14
  *--s = nullptr;                                       // r15
  uint32_t mxcsr;
  uint16_t fpucw;
  __asm__ volatile("stmxcsr %0" : "=m"(mxcsr));
  __asm__ volatile("fnstcw %0" : "=m"(fpucw));
  --s;
  *reinterpret_cast<uint32_t*>(s) = mxcsr;
  *reinterpret_cast<uint16_t*>(reinterpret_cast<char*>(s) + 4) = fpucw;
  c.sp = s;
}
inline void switch_to(Context& from, Context& to) { tf_emu_switch(&from.sp, to.sp); }
}  // namespace tforge::emu::fiber
#else
#include <ucontext.h>
namespace tforge::emu::fiber {
struct Context {
  ucontext_t uc;
};
inline void start(unsigned e0, unsigned e1, unsigned a0, unsigned a1) {
  const auto e = reinterpret_cast<void (*)(void*)>(uintptr_t(e0) | (uintptr_t(e1) << 32));
  e(reinterpret_cast<void*>(uintptr_t(a0) | (uintptr_t(a1) << 32)));
}
inline void make(Context& c, char* lo, size_t size, void (*entry)(void*), void* arg) {
  getcontext(&c.uc);
  c.uc.uc_stack.ss_sp = lo;
  c.uc.uc_stack.ss_size = size;
  c.uc.uc_link = nullptr;
  // makecontext passes int arguments: split the pointers into halves.
  const auto e = reinterpret_cast<uintptr_t>(entry), a = reinterpret_cast<uintptr_t>(arg);
  makecontext(&c.uc, reinterpret_cast<void (*)()>(&start), 4, unsigned(e), unsigned(e >> 32), unsigned(a),
              unsigned(a >> 32));
}
inline void switch_to(Context& from, Context& to) { swapcontext(&from.uc, &to.uc); }
}  // namespace tforge::emu::fiber
#endif
