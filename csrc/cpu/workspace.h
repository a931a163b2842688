// Per-thread scratch memory shared by the CPU GEMM-like kernels (int8, sparse24), and the
// thread-count choice of every CPU op. Header-only; one workspace per thread for all of them
// (the kernels never nest).
#pragma once
#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <memory>
#include <new>

namespace tforge::cpu::scratch {

inline int64_t ceil_div(int64_t a, int64_t b) { return (a + b - 1) / b; }
inline int64_t round_up(int64_t a, int64_t b) { return ceil_div(a, b) * b; }

// 64-byte aligned scratch memory. The calling thread keeps up to kKeepBytes
// between calls (packing buffers are large and fresh pages cost page faults);
// bigger requests get a buffer of their own, freed on return (TrimOnExit).
class Workspace {
 public:
  static constexpr size_t kKeepBytes = size_t{64} << 20;
  void* get(size_t bytes) {
    bytes = static_cast<size_t>(round_up(static_cast<int64_t>(std::max<size_t>(bytes, 64)), 64));
    if (bytes <= cap_) return buf_.get();
    buf_.reset();  // free first: lower peak memory
    cap_ = 0;
    void* p = std::aligned_alloc(64, bytes);
    if (!p) throw std::bad_alloc();
    buf_.reset(p);
    cap_ = bytes;
    return p;
  }
  void trim() {
    if (cap_ > kKeepBytes) {
      buf_.reset();
      cap_ = 0;
    }
  }

 private:
  struct Free {
    void operator()(void* p) const { std::free(p); }
  };
  std::unique_ptr<void, Free> buf_;
  size_t cap_ = 0;
};

struct TrimOnExit {
  Workspace& ws;
  ~TrimOnExit() { ws.trim(); }
};

inline Workspace& thread_workspace() {
  static thread_local Workspace ws;
  return ws;
}

// Threads worth using for `work` units (a double: M * N * K may be large), at
// least `grain` per thread, never more than `tasks`.
inline int pick_threads(int threads, double work, double grain, int64_t tasks) {
  const double by_work = std::max(1.0, std::min(work / grain, static_cast<double>(threads)));
  return static_cast<int>(std::max<int64_t>(1, std::min<int64_t>({threads, static_cast<int64_t>(by_work), tasks})));
}

// Rows [begin, end) of thread t out of nt: contiguous blocks, so each thread streams its own part.
inline void row_range(int64_t rows, int t, int nt, int64_t* begin, int64_t* end) {
  const int64_t per = rows / nt, extra = rows % nt;
  *begin = t * per + std::min<int64_t>(t, extra);
  *end = *begin + per + (t < extra ? 1 : 0);
}

}  // namespace tforge::cpu::scratch
