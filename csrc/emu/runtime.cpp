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
//
// Files: this one (state, fibers, scheduling, barriers, launches), warp.cpp
// (warp-wide instructions), memory.cpp (shadow records, buffers, cp.async,
// the instrumentation callbacks), cuda_api.cpp (the CUDA runtime API);
// state.h is what they share.
#include <dlfcn.h>
#include <link.h>
#include <sys/mman.h>

#include <algorithm>
#include <sstream>
#include <stdexcept>
#include <string>

#include "emu/state.h"

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

Grid g;

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

std::string where(int tid) {
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

void trap(const char* why) { fail("tforge emulator: " + where(g_cur ? g_cur->tid : -1) + ": " + why); }

unsigned char* dynamic_smem() {
  cur("dynamic shared memory");
  return g.dyn;
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
