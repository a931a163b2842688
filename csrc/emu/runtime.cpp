// The warp-level emulator's runtime: runs tforge's CUDA kernels, compiled as
// host C++ (emu/cuda_prelude.h), on the CPU, one CTA at a time, each thread a
// fiber (emu/fiber.h) grouped into warps of 32 lanes. This file is compiled
// without instrumentation; the kernel files are compiled with GCC's
// -fsanitize=thread instrumentation, whose __tsan_* callbacks (defined at the
// bottom) report every load and store a kernel makes, so that:
// - shared memory (static __shared__ arrays and the dynamic buffer) has a
//   shadow record per byte: last writer, readers, the barrier epoch and the
//   warp (__syncwarp) epoch of each access, and whether a cp.async to it is
//   still in flight. A conflicting access by another thread since the last
//   barrier both passed is a data race, and so is any access to a byte a
//   cp.async is still copying to;
// - global memory accesses must fall inside buffers registered by the caller
//   (tensors handed to the kernel, workspaces from cudaMallocAsync);
// - everything else a kernel touches must be its own stack or read-only data.
// Barriers are CTA rendezvous; warp-wide instructions (shuffles, ldmatrix,
// mma, mma.sp) rendezvous the warp's 32 lanes and are computed from the
// fragment layouts in emu/fragments.h. A fault stops the launch and throws
// std::runtime_error with the kernel, CTA, threads and address.
#include <dlfcn.h>
#include <link.h>
#include <sys/mman.h>

#include <algorithm>
#include <atomic>
#include <cstdio>
#include <cstdlib>
#include <map>
#include <mutex>
#include <sstream>
#include <stdexcept>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu/cuda_prelude.h"
#include "emu/emulator.h"
#include "emu/fiber.h"
#include "emu/fragments.h"
#include "emu/ptx_emu.h"

#if defined(__x86_64__)
// tf_emu_switch(save, load): push the callee-saved registers and the MXCSR / x87 control words,
// store rsp in *save, load rsp from `load`, pop the same and return on the other stack.
// tf_emu_trampoline: first return of a new fiber; calls r12(r13) and never comes back.
__asm__(R"(
  .text
  .globl tf_emu_switch
  .hidden tf_emu_switch
  .type tf_emu_switch, @function
tf_emu_switch:
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
  .size tf_emu_switch, .-tf_emu_switch

  .globl tf_emu_trampoline
  .hidden tf_emu_trampoline
  .type tf_emu_trampoline, @function
tf_emu_trampoline:
  movq %r13, %rdi
  callq *%r12
  ud2
  .size tf_emu_trampoline, .-tf_emu_trampoline
)");
#endif

namespace tforge::emu {
namespace {

constexpr int kMaxThreads = 1024;
constexpr size_t kStackBytes = size_t(256) << 10;
constexpr size_t kGuardBytes = 4096;
constexpr uint32_t kDynWindow = 0x400;         // shared-window address of the dynamic buffer
constexpr uint32_t kStaticWindow = 0x40000000;  // ... and of static __shared__ data (this module's .bss)
constexpr size_t kDefaultSmem = 48 * 1024;     // usable without cudaFuncSetAttribute

enum class St : uint8_t { kReady, kBarrier, kWarp, kDone };
enum class Op : uint8_t { kNone, kExchange, kSyncwarp, kLdmatrix, kMmaF16, kMmaS8, kMmaSp };

struct AsyncCopy {
  uint32_t dst;
  const void* src;
  int size, src_size;
  int64_t group;  // -1 until committed
};

struct Fiber {
  fiber::Context ctx;
  char* stack = nullptr;
  uint3 tidx{};
  int tid = 0, warp = 0, lane = 0;
  St st = St::kReady;
  std::vector<AsyncCopy> async;
  int64_t committed = 0;
};

struct Warp {
  Op op = Op::kNone;
  int param = 0;
  const char* what = "";
  int arrived = 0, lanes = 32;
  uint32_t epoch = 0;  // completed __syncwarp()s
  uint32_t in[32][16];
  uint32_t out[32][64];
};

// Shadow of one shared byte. Threads are linear thread ids; -1 none, -2 several (readers).
struct Shadow {
  uint32_t w_cta = 0, r_cta = 0, w_warp = 0, r_warp = 0;
  int16_t writer = -1, reader = -1, pending = -1;
  int8_t reader_warp = -1;
};

struct Range {
  uintptr_t lo = 0, size = 0;
  bool has(uintptr_t a) const { return a - lo < size; }
};

struct Buffer {
  size_t bytes;
  std::string label;
};

// ---- state (one launch at a time: g_run guards everything below while a grid runs)

std::mutex g_run;
std::mutex g_buffers_mutex;
DeviceConfig g_config;
std::map<uintptr_t, Buffer> g_buffers;
std::map<std::string, int64_t> g_launches;
std::unordered_map<const void*, int> g_max_dyn_smem;  // cudaFuncSetAttribute opt-ins
std::atomic<int64_t> g_switches{0}, g_shared_checks{0};
cudaError_t g_last_error = cudaSuccess;
std::string g_last_message;

Range g_rw, g_image;  // this module's writable data (static __shared__ lives there) and its code / constants
char* g_stacks = nullptr;
Range g_stack_range;

struct Grid {
  const LaunchSite* site = nullptr;
  std::string name;
  dim3 grid, block;
  uint3 bidx{};
  int nthreads = 0;
  void (*entry)(void*) = nullptr;
  void* ctx = nullptr;
  Range params;  // the launch's kernel pointer and arguments (read-only for the kernel)
  fiber::Context sched;
  std::vector<Fiber> fibers = std::vector<Fiber>(kMaxThreads);
  std::vector<Warp> warps = std::vector<Warp>(kMaxThreads / 32);
  uint32_t cta_epoch = 0;
  int barrier_arrived = 0, done = 0;
  const char* barrier_file = "";  // the __syncthreads the waiting threads are at
  int barrier_line = 0;
  std::vector<unsigned char> dyn_storage;
  unsigned char* dyn = nullptr;
  size_t dyn_size = 0;
  std::vector<Shadow> dyn_shadow;
  std::unordered_map<uintptr_t, Shadow> static_shadow;
  bool failed = false;
  std::string error;
} g;

volatile bool g_active = false;  // a kernel is running: the access callbacks check
Fiber* g_cur = nullptr;

// ---- messages

std::string thread_text(int tid) {
  const Fiber& f = g.fibers[tid];
  std::ostringstream s;
  s << "thread (" << f.tidx.x << "," << f.tidx.y << "," << f.tidx.z << ") [warp " << f.warp << " lane " << f.lane
    << "]";
  return s.str();
}

std::string where(int tid = -1) {
  std::ostringstream s;
  s << "kernel " << g.name << " (" << g.site->file << ":" << g.site->line << "), CTA (" << g.bidx.x << ","
    << g.bidx.y << "," << g.bidx.z << ")";
  if (tid >= 0) s << ", " << thread_text(tid);
  return s.str();
}

std::string barrier_text() { return std::string(g.barrier_file) + ":" + std::to_string(g.barrier_line); }

void yield(Fiber& f) {
  g_switches.fetch_add(1, std::memory_order_relaxed);
  fiber::switch_to(f.ctx, g.sched);
}

// Stops the launch: inside a fiber, back to the scheduler for good (the fiber is abandoned);
// outside one, an exception.
[[noreturn]] void fail(const std::string& msg) {
  if (g_active && g_cur != nullptr) {
    g.failed = true;
    g.error = msg;
    Fiber& f = *g_cur;
    for (;;) yield(f);
  }
  throw std::runtime_error(msg);
}

Fiber& cur(const char* what) {
  if (!g_active || g_cur == nullptr)
    throw std::logic_error(std::string("tforge emulator: ") + what + " called outside an emulated kernel");
  return *g_cur;
}

// ---- module layout, stacks

int phdr_callback(dl_phdr_info* info, size_t, void* data) {
  const auto self = reinterpret_cast<uintptr_t>(data);
  uintptr_t lo_rw = UINTPTR_MAX, hi_rw = 0, lo_ro = UINTPTR_MAX, hi_ro = 0;
  bool mine = false;
  for (int i = 0; i < info->dlpi_phnum; ++i) {
    const ElfW(Phdr)& ph = info->dlpi_phdr[i];
    if (ph.p_type != PT_LOAD) continue;
    const uintptr_t lo = info->dlpi_addr + ph.p_vaddr, hi = lo + ph.p_memsz;
    if (self >= lo && self < hi) mine = true;
    if (ph.p_flags & PF_W) {
      lo_rw = std::min(lo_rw, lo);
      hi_rw = std::max(hi_rw, hi);
    } else {
      lo_ro = std::min(lo_ro, lo);
      hi_ro = std::max(hi_ro, hi);
    }
  }
  if (!mine) return 0;
  g_rw = {lo_rw, hi_rw > lo_rw ? hi_rw - lo_rw : 0};
  g_image = {lo_ro, hi_ro > lo_ro ? hi_ro - lo_ro : 0};
  return 1;
}

void init_once() {
  static std::once_flag once;
  std::call_once(once, [] {
    dl_iterate_phdr(phdr_callback, reinterpret_cast<void*>(&phdr_callback));
    const size_t per = kStackBytes + kGuardBytes, total = per * kMaxThreads;
    void* m = mmap(nullptr, total, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE, -1, 0);
    if (m == MAP_FAILED) throw std::runtime_error("tforge emulator: cannot reserve fiber stacks");
    g_stacks = static_cast<char*>(m);
    for (int i = 0; i < kMaxThreads; ++i) {
      mprotect(g_stacks + i * per, kGuardBytes, PROT_NONE);  // an overflow faults instead of corrupting
      g.fibers[i].stack = g_stacks + i * per + kGuardBytes;
    }
    g_stack_range = {reinterpret_cast<uintptr_t>(g_stacks), total};
  });
}

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

// ---- warp-wide instructions

uint32_t lane_word(const Warp& w, int lane, int i) { return w.in[lane][i]; }

float bf16f(uint32_t bits) { return bf16_to_float(static_cast<uint16_t>(bits)); }
float f16f(uint32_t bits) { return half_to_float(static_cast<uint16_t>(bits)); }
uint16_t half_of(uint32_t v, int h) { return static_cast<uint16_t>(h ? v >> 16 : v & 0xffffu); }

void compute_ldmatrix(Warp& w, int warp_id) {
  const int num = w.param & 7;
  const bool trans = (w.param & 8) != 0;
  uint16_t m[4][8][8];
  for (int j = 0; j < num; ++j) {
    for (int r = 0; r < 8; ++r) {
      const int lane = 8 * j + r;
      const uint32_t addr = lane_word(w, lane, 0);
      Fiber& reader = g.fibers[warp_id * 32 + lane];
      if (addr % 16 != 0) {
        std::ostringstream s;
        s << "tforge emulator: ldmatrix row address " << shared_text(addr) << " from " << where(reader.tid)
          << " is not 16-byte aligned";
        fail(s.str());
      }
      uintptr_t host;
      if (!window_to_host(addr, 16, host)) {
        std::ostringstream s;
        s << "tforge emulator: ldmatrix row address " << shared_text(addr) << " from " << where(reader.tid)
          << " is outside shared memory (" << g.dyn_size << " dynamic bytes)";
        fail(s.str());
      }
      shared_access(reader, host, 16, false, "ldmatrix");
      std::memcpy(m[j][r], reinterpret_cast<const void*>(host), 16);
    }
  }
  for (int l = 0; l < 32; ++l) {
    for (int j = 0; j < 4; ++j) {
      uint32_t v = 0;
      if (j < num) {
        for (int h = 0; h < 2; ++h) {
          const frag::RC rc = frag::ldmatrix(l, h, trans);
          v |= static_cast<uint32_t>(m[j][rc.row][rc.col]) << (16 * h);
        }
      }
      w.out[l][j] = v;
    }
  }
}

// Inputs: a[4], b0, b1, c[4] (float bits) -> d[4]. Products and sums in double, one rounding to
// fp32 at the end (the hardware's internal precision is at least fp32; tests allow for it).
void compute_mma_f16(Warp& w) {
  const bool bf = w.param != 0;
  auto cvt = [bf](uint32_t bits) { return bf ? bf16f(bits) : f16f(bits); };
  double A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    for (int reg = 0; reg < 4; ++reg)
      for (int h = 0; h < 2; ++h) {
        const frag::RC rc = frag::m16n8k16_a(l, reg, h);
        A[rc.row][rc.col] = cvt(half_of(w.in[l][reg], h));
      }
    for (int reg = 0; reg < 2; ++reg)
      for (int h = 0; h < 2; ++h) {
        const frag::RC rc = frag::m16n8k16_b(l, reg, h);
        B[rc.row][rc.col] = cvt(half_of(w.in[l][4 + reg], h));
      }
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      C[rc.row][rc.col] = bits_f32(w.in[l][6 + reg]);
    }
  }
  for (int l = 0; l < 32; ++l)
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      double acc = C[rc.row][rc.col];
      for (int k = 0; k < 16; ++k) acc += A[rc.row][k] * B[k][rc.col];
      w.out[l][reg] = f32_bits(static_cast<float>(acc));
    }
}

void compute_mma_s8(Warp& w) {
  int32_t A[16][32], B[32][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    for (int reg = 0; reg < 4; ++reg)
      for (int byte = 0; byte < 4; ++byte) {
        const frag::RC rc = frag::m16n8k32_s8_a(l, reg, byte);
        A[rc.row][rc.col] = static_cast<int8_t>(w.in[l][reg] >> (8 * byte));
      }
    for (int reg = 0; reg < 2; ++reg)
      for (int byte = 0; byte < 4; ++byte) {
        const frag::RC rc = frag::m16n8k32_s8_b(l, reg, byte);
        B[rc.row][rc.col] = static_cast<int8_t>(w.in[l][4 + reg] >> (8 * byte));
      }
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      C[rc.row][rc.col] = static_cast<int32_t>(w.in[l][6 + reg]);
    }
  }
  for (int l = 0; l < 32; ++l)
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      uint32_t acc = static_cast<uint32_t>(C[rc.row][rc.col]);  // s32 accumulation wraps
      for (int k = 0; k < 32; ++k) acc += static_cast<uint32_t>(A[rc.row][k] * B[k][rc.col]);
      w.out[l][reg] = acc;
    }
}

// Inputs: a[4] (compressed 16x16, m16n8k16 A layout), b[4], e, c[4].
void compute_mma_sp(Warp& w, int warp_id) {
  const bool bf = w.param != 0;
  auto cvt = [bf](uint32_t bits) { return bf ? bf16f(bits) : f16f(bits); };
  double A[16][16], B[32][8], C[16][8];
  int col_of[16][16];  // dense column of compressed element (row, c)
  for (int l = 0; l < 32; ++l) {
    for (int reg = 0; reg < 4; ++reg)
      for (int h = 0; h < 2; ++h) {
        const frag::RC rc = frag::m16n8k16_a(l, reg, h);
        A[rc.row][rc.col] = cvt(half_of(w.in[l][reg], h));
      }
    for (int reg = 0; reg < 4; ++reg)
      for (int h = 0; h < 2; ++h) {
        const frag::RC rc = frag::m16n8k32_sp_b(l, reg, h);
        B[rc.row][rc.col] = cvt(half_of(w.in[l][4 + reg], h));
      }
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      C[rc.row][rc.col] = bits_f32(w.in[l][9 + reg]);
    }
  }
  for (int row = 0; row < 16; ++row)
    for (int grp = 0; grp < 8; ++grp) {
      const int lane = frag::sp_meta_lane(row, grp);
      const unsigned field = (w.in[lane][8] >> frag::sp_meta_shift(row, grp)) & 0xfu;
      const int i0 = field & 3, i1 = field >> 2;
      if (i0 >= i1) {  // mma.sp::ordered_metadata requires i0 < i1
        std::ostringstream s;
        s << "tforge emulator: mma.sp metadata of row " << row << ", group " << grp << " is 0x" << std::hex
          << field << std::dec << " (indices " << i0 << ", " << i1 << "): not two ordered positions, in "
          << where(warp_id * 32 + lane);
        fail(s.str());
      }
      col_of[row][2 * grp] = 4 * grp + i0;
      col_of[row][2 * grp + 1] = 4 * grp + i1;
    }
  for (int l = 0; l < 32; ++l)
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      double acc = C[rc.row][rc.col];
      for (int c = 0; c < 16; ++c) acc += A[rc.row][c] * B[col_of[rc.row][c]][rc.col];
      w.out[l][reg] = f32_bits(static_cast<float>(acc));
    }
}

void complete(Warp& w, int warp_id) {
  switch (w.op) {
    case Op::kExchange:
      for (int l = 0; l < 32; ++l)
        for (int s = 0; s < 32; ++s) {
          w.out[l][2 * s] = w.in[s][0];
          w.out[l][2 * s + 1] = w.in[s][1];
        }
      break;
    case Op::kSyncwarp: ++w.epoch; break;
    case Op::kLdmatrix: compute_ldmatrix(w, warp_id); break;
    case Op::kMmaF16: compute_mma_f16(w); break;
    case Op::kMmaS8: compute_mma_s8(w); break;
    case Op::kMmaSp: compute_mma_sp(w, warp_id); break;
    case Op::kNone: break;
  }
}

// One lane's part in a warp-wide instruction: post `nin` words, wait for the other 31 lanes, take
// `nout` words of the result.
void warp_op(Op op, int param, const char* what, const uint32_t* in, int nin, uint32_t* out, int nout) {
  Fiber& f = cur(what);
  Warp& w = g.warps[f.warp];
  if (w.lanes != 32) {
    std::ostringstream s;
    s << "tforge emulator: " << what << " in a warp of " << w.lanes << " threads (block of " << g.nthreads
      << "): warp-wide instructions need full warps, in " << where(f.tid);
    fail(s.str());
  }
  if (w.arrived == 0) {
    w.op = op;
    w.param = param;
    w.what = what;
  } else if (w.op != op || w.param != param) {
    fail("tforge emulator: lanes of warp " + std::to_string(f.warp) + " are at different warp-wide instructions (" +
         w.what + " and " + what + ") in " + where(f.tid));
  }
  for (int l = 0; l < 32; ++l)
    if (g.fibers[f.warp * 32 + l].st == St::kDone)
      fail("tforge emulator: " + std::string(what) + " in " + where(f.tid) + ", but " +
           thread_text(f.warp * 32 + l) + " of its warp has exited");
  std::memcpy(w.in[f.lane], in, sizeof(uint32_t) * nin);
  f.st = St::kWarp;
  if (++w.arrived == 32) {
    complete(w, f.warp);
    w.arrived = 0;
    w.op = Op::kNone;
    for (int l = 0; l < 32; ++l) g.fibers[f.warp * 32 + l].st = St::kReady;
  }
  yield(f);
  if (nout) std::memcpy(out, w.out[f.lane], sizeof(uint32_t) * nout);
}

// ---- running a grid

void fiber_main(void* arg) {
  Fiber& f = *static_cast<Fiber*>(arg);
  g.entry(g.ctx);
  f.st = St::kDone;
  ++g.done;
  if (g.barrier_arrived > 0)
    fail("tforge emulator: " + where(f.tid) + " exited while " + std::to_string(g.barrier_arrived) +
         " thread(s) wait at __syncthreads (" + barrier_text() + ")");
  const Warp& w = g.warps[f.warp];
  if (w.arrived > 0)
    fail("tforge emulator: " + where(f.tid) + " exited while " + std::to_string(w.arrived) +
         " lane(s) of its warp wait at " + w.what);
  for (;;) yield(f);  // never resumed
}

std::string deadlock_text() {
  std::ostringstream s;
  s << "tforge emulator: deadlock in " << where() << ": no thread can run;";
  if (g.barrier_arrived) s << " " << g.barrier_arrived << " at __syncthreads (" << barrier_text() << ");";
  for (int wi = 0; wi < (g.nthreads + 31) / 32; ++wi)
    if (g.warps[wi].arrived) s << " warp " << wi << ": " << g.warps[wi].arrived << " lane(s) at " << g.warps[wi].what << ";";
  if (g.done) s << " " << g.done << " exited";
  return s.str();
}

void run_cta() {
  const int n = g.nthreads;
  for (int t = 0; t < n; ++t) {
    Fiber& f = g.fibers[t];
    f.tid = t;
    f.tidx = {t % g.block.x, (t / g.block.x) % g.block.y, t / (g.block.x * g.block.y)};
    f.warp = t / 32;
    f.lane = t % 32;
    f.st = St::kReady;
    f.async.clear();
    f.committed = 0;
    fiber::make(f.ctx, f.stack, kStackBytes, &fiber_main, &f);
  }
  for (int wi = 0; wi < (n + 31) / 32; ++wi) {
    Warp& w = g.warps[wi];
    w.op = Op::kNone;
    w.arrived = 0;
    w.epoch = 0;
    w.lanes = std::min(32, n - 32 * wi);
  }
  g.cta_epoch = 0;
  g.barrier_arrived = 0;
  g.done = 0;
  std::fill(g.dyn_shadow.begin(), g.dyn_shadow.end(), Shadow{});
  std::memset(g.dyn, 0xff, g.dyn_size);
  g.static_shadow.clear();
  for (;;) {
    bool ran = false;
    for (int t = 0; t < n; ++t) {
      Fiber& f = g.fibers[t];
      if (f.st != St::kReady) continue;
      ran = true;
      g_cur = &f;
      g_active = true;
      fiber::switch_to(g.sched, f.ctx);
      g_active = false;
      g_cur = nullptr;
      if (g.failed) return;
    }
    if (g.done == n) return;
    if (!ran) {
      g.failed = true;
      g.error = deadlock_text();
      return;
    }
  }
}

int max_smem_optin() { return g_config.cc_major >= 9 ? 227 * 1024 : 163 * 1024; }

bool bad_config(const std::string& msg) {
  g_last_error = cudaErrorInvalidValue;
  g_last_message = "invalid launch of " + g.name + ": " + msg;
  return true;
}

bool check_config(const void* kernel, dim3 grid, dim3 block, size_t smem) {
  const uint64_t threads = uint64_t(block.x) * block.y * block.z;
  if (block.x == 0 || block.y == 0 || block.z == 0 || threads > kMaxThreads || block.z > 64)
    return bad_config("block (" + std::to_string(block.x) + "," + std::to_string(block.y) + "," +
                      std::to_string(block.z) + ") is empty or has more than 1024 threads");
  if (grid.x == 0 || grid.y == 0 || grid.z == 0 || grid.x > 0x7fffffffu || grid.y > 65535 || grid.z > 65535)
    return bad_config("grid (" + std::to_string(grid.x) + "," + std::to_string(grid.y) + "," +
                      std::to_string(grid.z) + ") is empty or too large");
  if (smem > kDefaultSmem) {
    const auto it = g_max_dyn_smem.find(kernel);
    const int optin = it == g_max_dyn_smem.end() ? 0 : it->second;
    if (static_cast<int64_t>(smem) > optin)
      return bad_config(std::to_string(smem) + " bytes of dynamic shared memory without cudaFuncSetAttribute(" +
                        "MaxDynamicSharedMemorySize) >= that (set: " + std::to_string(optin) + ")");
  }
  return false;
}

std::string base_name(const char* expr) {
  std::string s(expr);
  const size_t lt = s.find('<');
  if (lt != std::string::npos) s.resize(lt);
  while (!s.empty() && s.back() == ' ') s.pop_back();
  return s;
}

}  // namespace

// ---- the kernel-facing functions (emu/cuda_prelude.h, emu/ptx_emu.h)

uint3 thread_idx() { return cur("threadIdx").tidx; }
uint3 block_idx() {
  cur("blockIdx");
  return g.bidx;
}
dim3 block_dim() {
  cur("blockDim");
  return g.block;
}
dim3 grid_dim() {
  cur("gridDim");
  return g.grid;
}
int lane_id() { return cur("lane id").lane; }

void syncthreads(const char* file, int line) {
  Fiber& f = cur("__syncthreads");
  const std::string here = std::string(file) + ":" + std::to_string(line);
  if (g.done > 0)
    fail("tforge emulator: " + where(f.tid) + " waits at __syncthreads (" + here + ") but " +
         std::to_string(g.done) + " thread(s) of its CTA have exited: the barrier can never complete");
  if (g.barrier_arrived == 0) {
    g.barrier_file = file;
    g.barrier_line = line;
  } else if (line != g.barrier_line || std::strcmp(file, g.barrier_file) != 0) {
    fail("tforge emulator: threads of " + where() + " wait at two different __syncthreads: " + barrier_text() +
         " and " + here + " (" + thread_text(f.tid) + ")");
  }
  f.st = St::kBarrier;
  if (++g.barrier_arrived == g.nthreads) {
    for (int t = 0; t < g.nthreads; ++t) g.fibers[t].st = St::kReady;
    g.barrier_arrived = 0;
    ++g.cta_epoch;
  }
  yield(f);
}

void syncwarp(unsigned mask) {
  if (mask != 0xffffffffu) fail("tforge emulator: __syncwarp with a partial mask is not emulated");
  warp_op(Op::kSyncwarp, 0, "__syncwarp", nullptr, 0, nullptr, 0);
}

void warp_exchange(uint64_t mine, unsigned mask, const char* what, uint64_t (&all)[32]) {
  if (mask != 0xffffffffu) fail(std::string("tforge emulator: ") + what + " with a partial mask is not emulated");
  const uint32_t in[2] = {static_cast<uint32_t>(mine), static_cast<uint32_t>(mine >> 32)};
  uint32_t out[64];
  warp_op(Op::kExchange, 0, what, in, 2, out, 64);
  for (int i = 0; i < 32; ++i) all[i] = out[2 * i] | (static_cast<uint64_t>(out[2 * i + 1]) << 32);
}

void trap(const char* why) { fail("tforge emulator: " + where(g_cur ? g_cur->tid : -1) + ": " + why); }

unsigned char* dynamic_smem() {
  cur("dynamic shared memory");
  return g.dyn;
}

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

void ldmatrix(uint32_t (&r)[4], uint32_t addr, int num, bool trans) {
  uint32_t out[4];
  warp_op(Op::kLdmatrix, num | (trans ? 8 : 0), trans ? "ldmatrix.trans" : "ldmatrix", &addr, 1, out, 4);
  for (int j = 0; j < 4; ++j) r[j] = j < num ? out[j] : r[j];
}

void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  uint32_t in[10] = {a[0], a[1], a[2], a[3], b0, b1, f32_bits(c[0]), f32_bits(c[1]), f32_bits(c[2]), f32_bits(c[3])};
  uint32_t out[4];
  warp_op(Op::kMmaF16, bf16 ? 1 : 0, bf16 ? "mma.m16n8k16.bf16" : "mma.m16n8k16.f16", in, 10, out, 4);
  for (int i = 0; i < 4; ++i) c[i] = bits_f32(out[i]);
}

void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  uint32_t in[10] = {a[0],
                     a[1],
                     a[2],
                     a[3],
                     b0,
                     b1,
                     static_cast<uint32_t>(d[0]),
                     static_cast<uint32_t>(d[1]),
                     static_cast<uint32_t>(d[2]),
                     static_cast<uint32_t>(d[3])};
  uint32_t out[4];
  warp_op(Op::kMmaS8, 0, "mma.m16n8k32.s8", in, 10, out, 4);
  for (int i = 0; i < 4; ++i) d[i] = static_cast<int>(out[i]);
}

void mma_sp_m16n8k32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e, bool bf16) {
  uint32_t in[13] = {a[0], a[1], a[2],        a[3],        b[0],        b[1],       b[2],
                     b[3], e,    f32_bits(d[0]), f32_bits(d[1]), f32_bits(d[2]), f32_bits(d[3])};
  uint32_t out[4];
  warp_op(Op::kMmaSp, bf16 ? 1 : 0, bf16 ? "mma.sp.m16n8k32.bf16" : "mma.sp.m16n8k32.f16", in, 13, out, 4);
  for (int i = 0; i < 4; ++i) d[i] = bits_f32(out[i]);
}

void run_grid(const LaunchSite& site, const void* kernel_id, dim3 grid, dim3 block, size_t smem,
              void (*entry)(void*), const void* ctx, size_t ctx_bytes) {
  init_once();
  std::lock_guard<std::mutex> run_lock(g_run);
  std::lock_guard<std::mutex> buf_lock(g_buffers_mutex);
  g.site = &site;
  g.name = base_name(site.kernel);
  if (check_config(kernel_id, grid, block, smem)) return;
  ++g_launches[g.name];
  g.grid = grid;
  g.block = block;
  g.nthreads = static_cast<int>(block.x * block.y * block.z);
  g.entry = entry;
  g.ctx = const_cast<void*>(ctx);
  g.params = {reinterpret_cast<uintptr_t>(ctx), ctx_bytes};
  g.dyn_size = smem;
  g.dyn_storage.assign(smem + 1024, 0xff);  // stale-looking bytes (NaN patterns) until written
  g.dyn = g.dyn_storage.data() + (1024 - reinterpret_cast<uintptr_t>(g.dyn_storage.data()) % 1024) % 1024;
  g.dyn_shadow.assign(smem, Shadow{});
  g.failed = false;
  g.error.clear();
  for (unsigned z = 0; z < grid.z && !g.failed; ++z)
    for (unsigned y = 0; y < grid.y && !g.failed; ++y)
      for (unsigned x = 0; x < grid.x && !g.failed; ++x) {
        g.bidx = {x, y, z};
        run_cta();
      }
  g.dyn = nullptr;
  g.dyn_size = 0;
  if (g.failed) throw std::runtime_error(g.error);
}

cudaError_t func_set_max_dynamic_smem(const void* kernel, int bytes) {
  if (bytes < 0 || bytes > max_smem_optin()) return g_last_error = cudaErrorInvalidValue;
  std::lock_guard<std::mutex> lock(g_run);
  g_max_dyn_smem[kernel] = bytes;
  return cudaSuccess;
}

// ---- controls (emu/emulator.h)

void configure(const DeviceConfig& c) {
  if (c.sms < 1 || c.cc_major < 8) throw std::invalid_argument("tforge emulator: needs sms >= 1 and cc >= 8.0");
  std::lock_guard<std::mutex> lock(g_run);
  g_config = c;
}
DeviceConfig device_config() { return g_config; }

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
std::map<std::string, int64_t> launch_counts() {
  std::lock_guard<std::mutex> lock(g_run);
  return g_launches;
}
void reset_launch_counts() {
  std::lock_guard<std::mutex> lock(g_run);
  g_launches.clear();
}
std::map<std::string, int64_t> counters() {
  return {{"fiber_switches", g_switches.load()}, {"shared_bytes_checked", g_shared_checks.load()}};
}

}  // namespace tforge::emu

// ---- the CUDA runtime API (emu/runtime_api.h)

using tforge::emu::g_config;
using tforge::emu::g_last_error;
using tforge::emu::g_last_message;

cudaError_t cudaGetDeviceCount(int* n) {
  *n = 1;
  return cudaSuccess;
}
cudaError_t cudaGetDevice(int* d) {
  *d = 0;
  return cudaSuccess;
}
cudaError_t cudaSetDevice(int d) { return d == 0 ? cudaSuccess : (g_last_error = cudaErrorInvalidDevice); }
cudaError_t cudaGetLastError() {
  const cudaError_t e = g_last_error;
  g_last_error = cudaSuccess;
  return e;
}
cudaError_t cudaPeekAtLastError() { return g_last_error; }
const char* cudaGetErrorName(cudaError_t e) {
  switch (e) {
    case cudaSuccess: return "cudaSuccess";
    case cudaErrorInvalidValue: return "cudaErrorInvalidValue";
    case cudaErrorMemoryAllocation: return "cudaErrorMemoryAllocation";
    case cudaErrorInvalidDevice: return "cudaErrorInvalidDevice";
    case cudaErrorNoDevice: return "cudaErrorNoDevice";
    default: return "cudaErrorLaunchFailure";
  }
}
const char* cudaGetErrorString(cudaError_t e) {
  if (e == cudaErrorInvalidValue && !g_last_message.empty()) return g_last_message.c_str();
  return cudaGetErrorName(e);
}
cudaError_t cudaDeviceGetAttribute(int* v, cudaDeviceAttr attr, int device) {
  if (device != 0) return g_last_error = cudaErrorInvalidDevice;
  switch (attr) {
    case cudaDevAttrMultiProcessorCount: *v = g_config.sms; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMajor: *v = g_config.cc_major; return cudaSuccess;
    case cudaDevAttrComputeCapabilityMinor: *v = g_config.cc_minor; return cudaSuccess;
    case cudaDevAttrMaxSharedMemoryPerBlockOptin: *v = tforge::emu::max_smem_optin(); return cudaSuccess;
  }
  return g_last_error = cudaErrorInvalidValue;
}
cudaError_t cudaGetDeviceProperties(cudaDeviceProp* prop, int device) {
  if (device != 0) return g_last_error = cudaErrorInvalidDevice;
  *prop = cudaDeviceProp{};
  std::snprintf(prop->name, sizeof(prop->name), "tforge emulator (sm_%d%d, %d SMs)", g_config.cc_major,
                g_config.cc_minor, g_config.sms);
  prop->major = g_config.cc_major;
  prop->minor = g_config.cc_minor;
  prop->multiProcessorCount = g_config.sms;
  prop->sharedMemPerBlockOptin = static_cast<size_t>(tforge::emu::max_smem_optin());
  return cudaSuccess;
}
cudaError_t cudaRuntimeGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
cudaError_t cudaDriverGetVersion(int* v) {
  *v = 0;
  return cudaSuccess;
}
cudaError_t cudaMemsetAsync(void* p, int value, size_t bytes, cudaStream_t) {
  if (bytes == 0) return cudaSuccess;
  {
    std::lock_guard<std::mutex> lock(tforge::emu::g_buffers_mutex);
    tforge::emu::check_global(nullptr, reinterpret_cast<uintptr_t>(p), bytes, true, "cudaMemsetAsync");
  }
  std::memset(p, value, bytes);
  return cudaSuccess;
}
cudaError_t cudaMallocAsync(void** p, size_t bytes, cudaStream_t) {
  void* m = std::aligned_alloc(256, (bytes + 255) / 256 * 256);
  if (m == nullptr) return g_last_error = cudaErrorMemoryAllocation;
  tforge::emu::register_buffer(reinterpret_cast<uintptr_t>(m), bytes, "cudaMallocAsync");
  *p = m;
  return cudaSuccess;
}
cudaError_t cudaFreeAsync(void* p, cudaStream_t) {
  {
    std::lock_guard<std::mutex> lock(tforge::emu::g_buffers_mutex);
    tforge::emu::g_buffers.erase(reinterpret_cast<uintptr_t>(p));
  }
  std::free(p);
  return cudaSuccess;
}
cudaError_t cudaStreamSynchronize(cudaStream_t) { return cudaSuccess; }
cudaError_t cudaDeviceSynchronize() { return cudaSuccess; }

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
