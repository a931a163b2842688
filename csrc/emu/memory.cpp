// The emulator's memory checks: shadow records of shared memory (races, bytes a cp.async is still
// copying to), the registered global buffers (out-of-bounds accesses), cp.async itself, and GCC's
// -fsanitize=thread callbacks through which the instrumented kernel files report every load and
// store. See runtime.cpp for the whole picture.
#include <algorithm>
#include <cstring>
#include <sstream>
#include <string>

#include "emu/ptx_emu.h"
#include "emu/state.h"

namespace tforge::emu {

// ---- shared memory: shadow records and race checks

bool ordered(uint32_t cta, uint32_t warp_epoch, int warp, const Fiber& f) {
  return cta < g.cta_epoch || (warp == f.warp && warp_epoch < g.warps[f.warp].epoch);
}

std::string shared_text(uint32_t window) {
  std::ostringstream s;
  s << "shared address 0x" << std::hex << window;
  return s.str();
}

[[noreturn]] void race(const char* kind, const Fiber& f, int other, uint32_t window, const char* what) {
  std::ostringstream s;
  s << "tforge emulator: shared-memory data race (" << kind << ") in " << where(f.tid) << " and "
    << (other >= 0 ? thread_text(other) : std::string("other threads")) << " at " << shared_text(window)
    << " with no barrier between them (" << what << ")";
  fail(s.str());
}

void check_byte(Shadow& s, Fiber& f, bool write, uint32_t window, const char* what) {
  if (s.pending >= 0) {
    std::ostringstream m;
    m << "tforge emulator: " << where(f.tid) << " " << (write ? "writes" : "reads") << " " << shared_text(window)
      << " while a cp.async of " << thread_text(s.pending)
      << " to it is still in flight (no cp.async.wait_group retired it, or no barrier after the wait) (" << what
      << ")";
    fail(m.str());
  }
  const Warp& w = g.warps[f.warp];
  if (!write) {
    // A read of a byte never written in this CTA is not reported: kernels may load stale data they
    // never use (int8.cu prefetches past its last tile). Dynamic shared memory starts every CTA
    // filled with 0xff (NaN in fp16 / bf16 / fp32, -1 in int8), so a value that is used shows.
    if (s.writer >= 0 && s.writer != f.tid && !ordered(s.w_cta, s.w_warp, g.fibers[s.writer].warp, f))
      race("read after write", f, s.writer, window, what);
    if (s.reader == -1 || s.r_cta < g.cta_epoch) {
      s.reader = static_cast<int16_t>(f.tid);
      s.reader_warp = static_cast<int8_t>(f.warp);
    } else if (s.reader != f.tid) {
      s.reader = -2;
      if (s.reader_warp != f.warp) s.reader_warp = -1;
    }
    s.r_cta = g.cta_epoch;
    s.r_warp = w.epoch;
    return;
  }
  if (s.writer >= 0 && s.writer != f.tid && !ordered(s.w_cta, s.w_warp, g.fibers[s.writer].warp, f))
    race("write after write", f, s.writer, window, what);
  if (s.reader != -1 && s.reader != f.tid && !ordered(s.r_cta, s.r_warp, s.reader_warp, f))
    race("write after read", f, s.reader, window, what);
  s.writer = static_cast<int16_t>(f.tid);
  s.w_cta = g.cta_epoch;
  s.w_warp = w.epoch;
  s.reader = -1;
  s.reader_warp = -1;
}

Shadow& shadow_dyn(size_t off) { return g.dyn_shadow[off]; }
Shadow& shadow_static(uintptr_t a) { return g.static_shadow[a]; }

// Window address <-> host pointer.
bool window_to_host(uint32_t addr, size_t bytes, uintptr_t& host) {
  if (addr >= kDynWindow && addr - kDynWindow + bytes <= g.dyn_size) {
    host = reinterpret_cast<uintptr_t>(g.dyn) + (addr - kDynWindow);
    return true;
  }
  if (addr >= kStaticWindow && addr - kStaticWindow + bytes <= g_rw.size) {
    host = g_rw.lo + (addr - kStaticWindow);
    return true;
  }
  return false;
}

// Checks (and records) an access of `bytes` bytes at host address a, which is shared memory.
void shared_access(Fiber& f, uintptr_t a, size_t bytes, bool write, const char* what) {
  g_shared_checks.fetch_add(static_cast<int64_t>(bytes), std::memory_order_relaxed);
  const uintptr_t dyn = reinterpret_cast<uintptr_t>(g.dyn);
  for (size_t i = 0; i < bytes; ++i) {
    const uintptr_t b = a + i;
    if (b - dyn < g.dyn_size) {
      check_byte(shadow_dyn(b - dyn), f, write, static_cast<uint32_t>(kDynWindow + (b - dyn)), what);
    } else {
      check_byte(shadow_static(b), f, write, static_cast<uint32_t>(kStaticWindow + (b - g_rw.lo)), what);
    }
  }
}

// ---- global memory

const std::pair<const uintptr_t, Buffer>* find_buffer(uintptr_t a) {
  auto it = g_buffers.upper_bound(a);
  if (it == g_buffers.begin()) return nullptr;
  --it;
  return &*it;
}

[[noreturn]] void out_of_bounds(const Fiber* f, uintptr_t a, size_t bytes, bool write, const char* what) {
  std::ostringstream s;
  s << "tforge emulator: out-of-bounds global " << (write ? "write" : "read") << " of " << bytes << " bytes at 0x"
    << std::hex << a << std::dec << " in " << where(f ? f->tid : -1) << " (" << what << "): ";
  const auto* b = find_buffer(a);
  if (b != nullptr) {
    const uintptr_t end = b->first + b->second.bytes;
    if (a >= end)
      s << (a - end) << " bytes past the end of buffer '" << b->second.label << "' [0x" << std::hex << b->first
        << ", +" << std::dec << b->second.bytes << ")";
    else
      s << "runs past the end of buffer '" << b->second.label << "' (" << b->second.bytes << " bytes)";
  } else {
    s << "no registered buffer holds it";
  }
  fail(s.str());
}

void check_global(const Fiber* f, uintptr_t a, size_t bytes, bool write, const char* what) {
  const auto* b = find_buffer(a);
  if (b == nullptr || a + bytes > b->first + b->second.bytes) out_of_bounds(f, a, bytes, write, what);
}

// Every load and store the kernel code makes (see the __tsan_* callbacks).
void on_access(void* p, size_t bytes, bool write) {
  if (!g_active) return;
  Fiber& f = *g_cur;
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a - reinterpret_cast<uintptr_t>(f.stack) < kStackBytes) return;  // its own locals
  if (a - reinterpret_cast<uintptr_t>(g.dyn) < g.dyn_size || g_rw.has(a)) {
    shared_access(f, a, bytes, write, write ? "store" : "load");
    return;
  }
  const auto* b = find_buffer(a);
  if (b != nullptr && a + bytes <= b->first + b->second.bytes) return;
  if (g.params.has(a)) {
    if (write) fail("tforge emulator: " + where(f.tid) + " writes to its launch's parameter buffer");
    return;
  }
  if (g_image.has(a)) {
    if (write) fail("tforge emulator: " + where(f.tid) + " writes to read-only memory");
    return;
  }
  if (g_stack_range.has(a))
    fail("tforge emulator: " + where(f.tid) + " touches another thread's local memory");
  out_of_bounds(&f, a, bytes, write, write ? "store" : "load");
}

// ---- the kernel-facing functions: shared addresses and cp.async (emu/ptx_emu.h)

uint32_t cvta_shared(const void* p) {
  const auto a = reinterpret_cast<uintptr_t>(p);
  if (a - reinterpret_cast<uintptr_t>(g.dyn) <= g.dyn_size && g.dyn != nullptr)
    return static_cast<uint32_t>(kDynWindow + (a - reinterpret_cast<uintptr_t>(g.dyn)));
  if (g_rw.has(a)) return static_cast<uint32_t>(kStaticWindow + (a - g_rw.lo));
  fail("tforge emulator: cvta.to.shared of a pointer that is not shared memory, in " +
       where(g_cur ? g_cur->tid : -1));
}

void* shared_ptr(uint32_t addr, int bytes, const char* what) {
  Fiber& f = cur(what);
  uintptr_t host;
  if (addr % static_cast<uint32_t>(bytes) != 0 || !window_to_host(addr, static_cast<size_t>(bytes), host)) {
    std::ostringstream s;
    s << "tforge emulator: " << what << " at " << shared_text(addr) << " in " << where(f.tid) << " is "
      << (addr % static_cast<uint32_t>(bytes) ? "misaligned" : "outside shared memory") << " (" << g.dyn_size
      << " dynamic bytes)";
    fail(s.str());
  }
  return reinterpret_cast<void*>(host);  // the access itself is seen by the instrumentation
}

void cp_async(uint32_t dst, const void* src, int cp_size, int src_size, const char* what) {
  Fiber& f = cur(what);
  uintptr_t host;
  if (src_size < 0 || src_size > cp_size)
    fail("tforge emulator: " + std::string(what) + " with src-size " + std::to_string(src_size) + " in " +
         where(f.tid));
  if (dst % static_cast<uint32_t>(cp_size) != 0 || !window_to_host(dst, cp_size, host)) {
    std::ostringstream s;
    s << "tforge emulator: " << what << " destination " << shared_text(dst) << " in " << where(f.tid) << " is "
      << (dst % static_cast<uint32_t>(cp_size) ? "misaligned" : "outside shared memory");
    fail(s.str());
  }
  if (src_size > 0) {
    if (reinterpret_cast<uintptr_t>(src) % static_cast<uintptr_t>(cp_size) != 0) {
      std::ostringstream s;
      s << "tforge emulator: " << what << " source " << src << " in " << where(f.tid) << " is not " << cp_size
        << "-byte aligned";
      fail(s.str());
    }
    check_global(&f, reinterpret_cast<uintptr_t>(src), static_cast<size_t>(src_size), false, what);
  }
  // The copy lands later: check it as a write now (a racing access since the last barrier is a
  // bug whenever it lands), then mark the bytes in flight until the wait that retires it.
  const uintptr_t dyn = reinterpret_cast<uintptr_t>(g.dyn);
  for (int i = 0; i < cp_size; ++i) {
    const uintptr_t b = host + i;
    Shadow& s = b - dyn < g.dyn_size ? shadow_dyn(b - dyn) : shadow_static(b);
    Shadow probe = s;
    check_byte(probe, f, true, dst + i, what);
    s.pending = static_cast<int16_t>(f.tid);
  }
  f.async.push_back({dst, src, cp_size, src_size, -1});
}

void cp_async_commit() {
  Fiber& f = cur("cp.async.commit_group");
  for (AsyncCopy& c : f.async)
    if (c.group < 0) c.group = f.committed;
  ++f.committed;
}

void cp_async_wait(int n) {
  Fiber& f = cur("cp.async.wait_group");
  const int64_t limit = f.committed - n;  // groups below this one must have landed
  const uintptr_t dyn = reinterpret_cast<uintptr_t>(g.dyn);
  auto landed = [&](const AsyncCopy& c) { return c.group >= 0 && c.group < limit; };
  for (const AsyncCopy& c : f.async) {
    if (!landed(c)) continue;
    uintptr_t host = 0;
    window_to_host(c.dst, c.size, host);  // checked when the copy was issued
    unsigned char* d = reinterpret_cast<unsigned char*>(host);
    if (c.src_size > 0) std::memcpy(d, c.src, c.src_size);
    std::memset(d + c.src_size, 0, c.size - c.src_size);
    for (int i = 0; i < c.size; ++i) {
      const uintptr_t b = host + i;
      Shadow& s = b - dyn < g.dyn_size ? shadow_dyn(b - dyn) : shadow_static(b);
      s.pending = -1;
      check_byte(s, f, true, c.dst + i, "cp.async (landing)");
    }
  }
  f.async.erase(std::remove_if(f.async.begin(), f.async.end(), landed), f.async.end());
}

// ---- registered buffers (emu/emulator.h)

void register_buffer(uintptr_t base, size_t bytes, const std::string& label) {
  if (base == 0 || bytes == 0) return;
  std::lock_guard<std::mutex> lock(g_buffers_mutex);
  // Live allocations never overlap: an overlapping entry is a freed one whose memory was reused.
  auto it = g_buffers.lower_bound(base);
  if (it != g_buffers.begin()) {
    auto prev = std::prev(it);
    if (prev->first + prev->second.bytes > base) it = prev;
  }
  while (it != g_buffers.end() && it->first < base + bytes) it = g_buffers.erase(it);
  g_buffers.emplace(base, Buffer{bytes, label});
}
void clear_buffers() {
  std::lock_guard<std::mutex> lock(g_buffers_mutex);
  g_buffers.clear();
}

}  // namespace tforge::emu

// ---- GCC's -fsanitize=thread callbacks, called by the instrumented kernel files for every load
// and store. Hidden: they bind inside this module only.

#define TF_EMU_HOOK extern "C" __attribute__((visibility("hidden")))
#define TF_EMU_RW(n)                                                                          \
  TF_EMU_HOOK void __tsan_read##n(void* p) { tforge::emu::on_access(p, n, false); }            \
  TF_EMU_HOOK void __tsan_write##n(void* p) { tforge::emu::on_access(p, n, true); }            \
  TF_EMU_HOOK void __tsan_unaligned_read##n(void* p) { tforge::emu::on_access(p, n, false); }  \
  TF_EMU_HOOK void __tsan_unaligned_write##n(void* p) { tforge::emu::on_access(p, n, true); }
TF_EMU_RW(1)
TF_EMU_RW(2)
TF_EMU_RW(4)
TF_EMU_RW(8)
TF_EMU_RW(16)
TF_EMU_HOOK void __tsan_read_range(void* p, size_t n) { tforge::emu::on_access(p, n, false); }
TF_EMU_HOOK void __tsan_write_range(void* p, size_t n) { tforge::emu::on_access(p, n, true); }
TF_EMU_HOOK void __tsan_init() {}
TF_EMU_HOOK void __tsan_func_entry(void*) {}
TF_EMU_HOOK void __tsan_func_exit() {}
TF_EMU_HOOK void __tsan_vptr_update(void**, void*) {}
TF_EMU_HOOK void __tsan_vptr_read(void**) {}

// std::atomic in the kernel files' host code (e.g. cached device attributes): plain atomics.
#define TF_EMU_ATOMICS(bits, T)                                                                             \
  TF_EMU_HOOK T __tsan_atomic##bits##_load(const volatile T* a, int) { return __atomic_load_n(a, __ATOMIC_SEQ_CST); } \
  TF_EMU_HOOK void __tsan_atomic##bits##_store(volatile T* a, T v, int) { __atomic_store_n(a, v, __ATOMIC_SEQ_CST); } \
  TF_EMU_HOOK T __tsan_atomic##bits##_exchange(volatile T* a, T v, int) {                                  \
    return __atomic_exchange_n(a, v, __ATOMIC_SEQ_CST);                                                    \
  }                                                                                                        \
  TF_EMU_HOOK T __tsan_atomic##bits##_fetch_add(volatile T* a, T v, int) {                                 \
    return __atomic_fetch_add(a, v, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                                        \
  TF_EMU_HOOK T __tsan_atomic##bits##_fetch_sub(volatile T* a, T v, int) {                                 \
    return __atomic_fetch_sub(a, v, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                                        \
  TF_EMU_HOOK T __tsan_atomic##bits##_fetch_or(volatile T* a, T v, int) {                                  \
    return __atomic_fetch_or(a, v, __ATOMIC_SEQ_CST);                                                      \
  }                                                                                                        \
  TF_EMU_HOOK T __tsan_atomic##bits##_fetch_and(volatile T* a, T v, int) {                                 \
    return __atomic_fetch_and(a, v, __ATOMIC_SEQ_CST);                                                     \
  }                                                                                                        \
  TF_EMU_HOOK int __tsan_atomic##bits##_compare_exchange_strong(volatile T* a, T* c, T v, int, int) {      \
    return __atomic_compare_exchange_n(a, c, v, false, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                \
  }                                                                                                        \
  TF_EMU_HOOK int __tsan_atomic##bits##_compare_exchange_weak(volatile T* a, T* c, T v, int, int) {        \
    return __atomic_compare_exchange_n(a, c, v, true, __ATOMIC_SEQ_CST, __ATOMIC_SEQ_CST);                 \
  }
TF_EMU_ATOMICS(8, int8_t)
TF_EMU_ATOMICS(16, int16_t)
TF_EMU_ATOMICS(32, int32_t)
TF_EMU_ATOMICS(64, int64_t)
TF_EMU_HOOK void __tsan_atomic_thread_fence(int) { __atomic_thread_fence(__ATOMIC_SEQ_CST); }
TF_EMU_HOOK void __tsan_atomic_signal_fence(int) {}
