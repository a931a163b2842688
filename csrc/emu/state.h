// The emulator runtime's shared state and internal helpers (csrc/emu/*.cpp only): the running
// grid, its fibers and warps, shared-memory shadow records, registered global buffers. One grid
// runs at a time (g_run); everything here belongs to it while it runs.
#pragma once
#include <atomic>
#include <cstdint>
#include <map>
#include <mutex>
#include <string>
#include <unordered_map>
#include <vector>

#include "emu/cuda_prelude.h"
#include "emu/emulator.h"
#include "emu/fiber.h"

namespace tforge::emu {

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
};

// ---- state (runtime.cpp)
extern std::mutex g_run;
extern std::mutex g_buffers_mutex;
extern DeviceConfig g_config;
extern std::map<uintptr_t, Buffer> g_buffers;
extern std::map<std::string, int64_t> g_launches;
extern std::unordered_map<const void*, int> g_max_dyn_smem;  // cudaFuncSetAttribute opt-ins
extern std::atomic<int64_t> g_switches, g_shared_checks;
extern cudaError_t g_last_error;
extern std::string g_last_message;
extern Range g_rw, g_image;  // this module's writable data (static __shared__ lives there), code / constants
extern Range g_stack_range;
extern Grid g;
extern volatile bool g_active;  // a kernel is running: the access callbacks check
extern Fiber* g_cur;

// ---- runtime.cpp
std::string thread_text(int tid);
std::string where(int tid = -1);
void yield(Fiber& f);
// Stops the launch: inside a fiber, back to the scheduler for good; outside one, an exception.
[[noreturn]] void fail(const std::string& msg);
Fiber& cur(const char* what);
int max_smem_optin();

// ---- memory.cpp
std::string shared_text(uint32_t window);
bool window_to_host(uint32_t addr, size_t bytes, uintptr_t& host);
void shared_access(Fiber& f, uintptr_t a, size_t bytes, bool write, const char* what);
void check_global(const Fiber* f, uintptr_t a, size_t bytes, bool write, const char* what);
void on_access(void* p, size_t bytes, bool write);

}  // namespace tforge::emu
