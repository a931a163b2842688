// Checked CPU entry points for attention: validate arguments (including the
// contents of cu_seqlens, so that no kernel reads out of bounds), pick the ISA
// kernel set and spread work over OpenMP threads (dynamic schedule, biggest
// tasks first).
//   forward:  tasks of query rows of a q head, or of a whole kv group and
//             several query blocks when there is enough work (K / V then
//             packed once per task).
//   backward: rowsum(dO * O) first; then either one task per (sequence, kv
//             head) doing everything in one pass, or, when that leaves threads
//             idle, one task per key block (dK / dV) plus one per query block
//             (dQ). Every output element is written by exactly one task, no
//             atomics. Every sum is a chain in a fixed index order (masked
//             terms are exact zeros), so the results are bitwise the same for
//             any thread count and either schedule.
#include "cpu/attention.h"

#include <omp.h>

#include <algorithm>
#include <cmath>
#include <functional>
#include <memory>
#include <numeric>
#include <utility>
#include <vector>

#include "common/checks.h"
#include "common/cpu_features.h"
#include "common/dtype.h"

namespace tforge::cpu {
namespace {

// Per-thread workspace caps (floats): packed K + V rows, and the single-pass backward's dK + dV accumulators.
constexpr int64_t kPackMaxFloats = int64_t{1} << 20;  // K and V: 4 MB each
constexpr int64_t kAccMaxFloats = int64_t{2} << 20;   // dK and dV: 8 MB each

struct Dim {
  int64_t size, stride;
};

// Output tensors must not overlap themselves (two tasks would write the same element).
void check_no_overlap(const char* op, const char* name, std::vector<Dim> dims) {
  dims.erase(std::remove_if(dims.begin(), dims.end(), [](const Dim& d) { return d.size <= 1; }), dims.end());
  std::sort(dims.begin(), dims.end(), [](const Dim& x, const Dim& y) { return x.stride < y.stride; });
  int64_t extent = 1;  // elements spanned by the dimensions so far
  for (const Dim& d : dims) {
    TF_CHECK_ARG(d.stride >= extent, op, ": ", name,
                 " has overlapping strides (an output must not alias itself); got a stride of ", d.stride,
                 " where at least ", extent, " is needed");
    extent += (d.size - 1) * d.stride;
  }
}

struct Layout {
  bool varlen;
  int64_t batch, rows_q, rows_k;  // rows_*: tokens per sequence (padded) or in total (varlen)
};

void check_tensor(const char* op, const char* name, const void* ptr, int64_t bs, int64_t ss, int64_t hs,
                  int64_t heads, int64_t D, bool is_q, const Layout& L, bool output) {
  const int64_t rows = is_q ? L.rows_q : L.rows_k;
  const int64_t batch = L.varlen ? 1 : L.batch;
  if (batch == 0 || rows == 0 || heads == 0) return;
  TF_CHECK_ARG(ptr != nullptr, op, ": ", name, " is a null pointer");
  TF_CHECK_ARG(ss >= 0 && hs >= 0 && (L.varlen || bs >= 0), op, ": ", name,
               " strides must be >= 0, got batch ", bs, ", token ", ss, ", head ", hs);
  if (output) {
    std::vector<Dim> dims = {{D, 1}, {heads, hs}, {rows, ss}};
    if (!L.varlen) dims.push_back({batch, bs});
    check_no_overlap(op, name, dims);
  }
}

void check_params(const AttnParams& p, const char* op, int threads) {
  TF_CHECK_ARG(threads >= 1, op, ": threads must be >= 1, got ", threads);
  TF_CHECK_ARG(p.dtype == kFloat32 || p.dtype == kBFloat16, op, ": CPU kernels take float32 or bfloat16, got ",
               dtype_name(p.dtype));
  TF_CHECK_ARG(p.batch >= 0, op, ": batch must be >= 0, got ", p.batch);
  TF_CHECK_ARG(p.seqlen_q >= 0 && p.seqlen_k >= 0, op, ": sequence lengths must be >= 0, got seqlen_q ",
               p.seqlen_q, ", seqlen_k ", p.seqlen_k);
  TF_CHECK_ARG(p.heads_q >= 1 && p.heads_k >= 1, op, ": head counts must be >= 1, got heads_q ", p.heads_q,
               ", heads_k ", p.heads_k);
  TF_CHECK_ARG(p.heads_q % p.heads_k == 0, op, ": heads_q (", p.heads_q, ") must be a multiple of heads_k (",
               p.heads_k, ")");
  TF_CHECK_ARG(p.head_dim >= 1 && p.head_dim <= kAttnMaxHeadDim, op, ": head_dim must be in [1, ",
               kAttnMaxHeadDim, "] on CPU, got ", p.head_dim);
  TF_CHECK_ARG(std::isfinite(p.softmax_scale), op, ": softmax_scale must be finite, got ", p.softmax_scale);
  TF_CHECK_ARG(p.window_left >= -1 && p.window_right >= -1, op,
               ": window sizes must be >= 0, or -1 for unbounded; got window_left ", p.window_left,
               ", window_right ", p.window_right);
  TF_CHECK_ARG((p.cu_seqlens_q == nullptr) == (p.cu_seqlens_k == nullptr), op,
               ": cu_seqlens_q and cu_seqlens_k must be given together (varlen) or not at all");
  if (p.bias)
    TF_CHECK_ARG(p.bias_batch_stride >= 0 && p.bias_head_stride >= 0 && p.bias_q_stride >= 0 &&
                     p.bias_k_stride >= 0,
                 op, ": bias strides must be >= 0 (0 for broadcast dimensions)");
}

void check_cu(const char* op, const char* name, const int32_t* cu, int64_t batch, int64_t max_len) {
  TF_CHECK_ARG(cu[0] == 0, op, ": ", name, "[0] must be 0, got ", cu[0]);
  for (int64_t b = 0; b < batch; ++b) {
    const int64_t len = static_cast<int64_t>(cu[b + 1]) - cu[b];
    TF_CHECK_ARG(len >= 0, op, ": ", name, " must be non-decreasing, but ", name, "[", b + 1, "] = ", cu[b + 1],
                 " < ", name, "[", b, "] = ", cu[b]);
    TF_CHECK_ARG(len <= max_len, op, ": sequence ", b, " of ", name, " has length ", len,
                 ", more than the maximum given (", max_len, ")");
  }
}

// Validated per-sequence offsets and lengths.
std::vector<AttnSeq> make_seqs(const AttnParams& p, const char* op, Layout* L) {
  std::vector<AttnSeq> seqs(static_cast<size_t>(p.batch));
  L->batch = p.batch;
  L->varlen = p.cu_seqlens_q != nullptr;
  if (!L->varlen) {
    L->rows_q = p.seqlen_q;
    L->rows_k = p.seqlen_k;
    for (int64_t b = 0; b < p.batch; ++b)
      seqs[b] = {0, p.seqlen_q, 0, p.seqlen_k, b * p.heads_q * p.seqlen_q, p.seqlen_q};
    return seqs;
  }
  TF_CHECK_ARG(p.total_q >= 0, op, ": total_q must be >= 0, got ", p.total_q);
  check_cu(op, "cu_seqlens_q", p.cu_seqlens_q, p.batch, p.seqlen_q);
  check_cu(op, "cu_seqlens_k", p.cu_seqlens_k, p.batch, p.seqlen_k);
  TF_CHECK_ARG(p.cu_seqlens_q[p.batch] == p.total_q, op, ": cu_seqlens_q[batch] = ", p.cu_seqlens_q[p.batch],
               " must equal total_q = ", p.total_q);
  L->rows_q = p.total_q;
  L->rows_k = p.cu_seqlens_k[p.batch];  // total keys: what k / v must hold
  for (int64_t b = 0; b < p.batch; ++b) {
    const int64_t q0 = p.cu_seqlens_q[b], k0 = p.cu_seqlens_k[b];
    seqs[b] = {q0, p.cu_seqlens_q[b + 1] - q0, k0, p.cu_seqlens_k[b + 1] - k0, q0, p.total_q};
  }
  return seqs;
}

template <class Tensor>
Tensor without_batch_stride(Tensor t, bool varlen) {
  if (varlen) t.batch_stride = 0;
  return t;
}

// Thread-private workspaces, allocated before the parallel region (no allocation, hence no exception, inside it).
struct Workspaces {
  std::vector<std::unique_ptr<float[]>> raw;
  std::vector<float*> ptr;
  Workspaces(int n, size_t floats) {
    for (int t = 0; t < n; ++t) {
      raw.emplace_back(new float[floats + 16]);
      const uintptr_t u = reinterpret_cast<uintptr_t>(raw.back().get());
      ptr.push_back(reinterpret_cast<float*>((u + 63) & ~static_cast<uintptr_t>(63)));
    }
  }
};

// Backward task: kind 0: dq of a query block (head h, rows from `start`); 1: dk / dv of a key block (kv head h,
// keys from `start`); 2: single pass over kv head h (`start` holds its cost, for sorting).
struct Task {
  int64_t kind;
  int64_t b, h, start;
};

// Query (or key) blocks of every (sequence, head), latest blocks first: with causal masking they hold the most
// work, and dynamic scheduling balances best when the big tasks go out first.
void add_blocks(std::vector<Task>* tasks, int64_t kind, const std::vector<AttnSeq>& seqs, int64_t heads, bool keys,
                int64_t block) {
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int64_t n = keys ? seqs[b].sk : seqs[b].sq;
    for (int64_t h = 0; h < heads; ++h)
      for (int64_t s = (n - 1) / block * block; n > 0 && s >= 0; s -= block)
        tasks->push_back({kind, static_cast<int64_t>(b), h, s});
  }
}

// Keys query i may see, as attention_kernels.h's Band computes them (bottom-right aligned causal, windows).
struct KeyBand {
  int64_t sk, off, wl, hi;
  bool has_lo, has_hi;
  KeyBand(const AttnParams& p, int64_t sq, int64_t sk_)
      : sk(sk_), off(sk_ - sq), wl(std::min<int64_t>(p.window_left, sq + sk_)) {  // clamped: no overflow
    has_lo = p.window_left >= 0;
    has_hi = p.causal || p.window_right >= 0;
    const int64_t wr = std::min<int64_t>(p.window_right, sq + sk_);
    hi = p.causal ? (wr >= 0 ? std::min<int64_t>(0, wr) : 0) : wr;
  }
  int64_t lo_of(int64_t i) const { return has_lo ? std::clamp<int64_t>(i + off - wl, 0, sk) : 0; }
  int64_t hi_of(int64_t i) const { return has_hi ? std::clamp<int64_t>(i + off + hi + 1, 0, sk) : sk; }
  // (query, key) pairs the kernels visit for query rows [i0, i1): whole query blocks times each block's key range
  int64_t pairs(int64_t i0, int64_t i1) const {
    int64_t n = 0;
    for (int64_t q0 = i0; q0 < i1; q0 += kAttnBlockQ) {
      const int64_t q1 = std::min(q0 + kAttnBlockQ, i1);
      n += (q1 - q0) * std::max<int64_t>(0, hi_of(q1 - 1) - lo_of(q0));
    }
    return n;
  }
};

// Longest-processing-time schedule of `costs` on n workers: the makespan.
int64_t lpt_makespan(std::vector<int64_t> costs, int n) {
  std::sort(costs.begin(), costs.end(), std::greater<int64_t>());
  std::vector<int64_t> load(static_cast<size_t>(n), 0);
  for (int64_t c : costs) *std::min_element(load.begin(), load.end()) += c;
  return *std::max_element(load.begin(), load.end());
}

}  // namespace

void attention_fwd(const AttnFwdArgs& a_in, int threads) {
  const char* op = "attention_fwd_cpu";
  const AttnParams& p = a_in.p;
  check_params(p, op, threads);
  Layout L;
  const std::vector<AttnSeq> seqs = make_seqs(p, op, &L);
  AttnFwdArgs a = a_in;
  a.q = without_batch_stride(a.q, L.varlen);
  a.k = without_batch_stride(a.k, L.varlen);
  a.v = without_batch_stride(a.v, L.varlen);
  a.out = without_batch_stride(a.out, L.varlen);
  const int64_t D = p.head_dim;
  check_tensor(op, "q", a.q.ptr, a.q.batch_stride, a.q.seq_stride, a.q.head_stride, p.heads_q, D, true, L, false);
  check_tensor(op, "k", a.k.ptr, a.k.batch_stride, a.k.seq_stride, a.k.head_stride, p.heads_k, D, false, L, false);
  check_tensor(op, "v", a.v.ptr, a.v.batch_stride, a.v.seq_stride, a.v.head_stride, p.heads_k, D, false, L, false);
  check_tensor(op, "out", a.out.ptr, a.out.batch_stride, a.out.seq_stride, a.out.head_stride, p.heads_q, D, true, L,
               true);
  const bool any_q = (L.varlen ? 1 : L.batch) * L.rows_q > 0;
  TF_CHECK_ARG(!any_q || a.lse != nullptr, op, ": lse is a null pointer");

  // Tasks: query rows of one or more q heads of a kv group. With enough work, a task takes the whole group
  // and several query blocks, and packs the K / V rows they see once (contiguous fp32: converted once, read
  // from cache afterwards); otherwise one q head and one query block per task, for parallelism.
  const int64_t group = p.heads_q / p.heads_k;
  int64_t units = 0;  // (kv head, query block) pairs
  for (const AttnSeq& s : seqs) units += p.heads_k * ((s.sq + kAttnBlockQ - 1) / kAttnBlockQ);
  const int64_t target = 4 * static_cast<int64_t>(threads);
  const int64_t heads_per_task = units >= target ? group : 1;
  const int64_t blocks_per_task = units >= target ? std::max<int64_t>(1, units / target) : 1;
  struct FwdTask {
    int64_t b, h0, i0, i1, cost;
  };
  std::vector<FwdTask> tasks;
  int64_t max_range = 0;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const AttnSeq& s = seqs[b];
    const KeyBand band(p, s.sq, s.sk);
    for (int64_t i0 = 0; i0 < s.sq; i0 += blocks_per_task * kAttnBlockQ) {
      const int64_t i1 = std::min(i0 + blocks_per_task * kAttnBlockQ, s.sq);
      max_range = std::max(max_range, band.hi_of(i1 - 1) - band.lo_of(i0));
      const int64_t cost = (band.pairs(i0, i1) + (i1 - i0)) * heads_per_task;
      for (int64_t h0 = 0; h0 < p.heads_q; h0 += heads_per_task)
        tasks.push_back({static_cast<int64_t>(b), h0, i0, i1, cost});
    }
  }
  if (tasks.empty()) return;
  // Biggest first: dynamic scheduling then balances well (causal masking makes late query blocks costlier).
  std::stable_sort(tasks.begin(), tasks.end(), [](const FwdTask& x, const FwdTask& y) { return x.cost > y.cost; });
  const bool reuse = heads_per_task * blocks_per_task >= 2;
  const bool pack = max_range * D <= kPackMaxFloats && (reuse || p.dtype != kFloat32);
  const bool avx2 = cpu_has_avx2_fma();
  const int nt = static_cast<int>(std::min<int64_t>(threads, static_cast<int64_t>(tasks.size())));
  const int64_t pack_rows = pack ? max_range : 0;
#if defined(TFORGE_HAVE_X86)
  const size_t wsz = avx2 ? avx2::attn_workspace_floats(D, false, 0, pack_rows)
                          : scalar::attn_workspace_floats(D, false, 0, pack_rows);
#else
  const size_t wsz = scalar::attn_workspace_floats(D, false, 0, pack_rows);
#endif
  Workspaces ws(nt, wsz);
  const int64_t ntasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel for num_threads(nt) schedule(dynamic, 1)
  for (int64_t t = 0; t < ntasks; ++t) {
    const FwdTask& k = tasks[t];
    const AttnSeq& s = seqs[k.b];
    float* w = ws.ptr[omp_get_thread_num()];
#if defined(TFORGE_HAVE_X86)
    if (avx2) avx2::attn_fwd_task(a, s, k.b, k.h0, k.h0 + heads_per_task, k.i0, k.i1, pack, w);
    else
#endif
      scalar::attn_fwd_task(a, s, k.b, k.h0, k.h0 + heads_per_task, k.i0, k.i1, pack, w);
  }
  (void)avx2;
}

void attention_bwd(const AttnBwdArgs& a_in, int threads) {
  const char* op = "attention_bwd_cpu";
  const AttnParams& p = a_in.p;
  check_params(p, op, threads);
  Layout L;
  const std::vector<AttnSeq> seqs = make_seqs(p, op, &L);
  AttnBwdArgs a = a_in;
  a.q = without_batch_stride(a.q, L.varlen);
  a.k = without_batch_stride(a.k, L.varlen);
  a.v = without_batch_stride(a.v, L.varlen);
  a.out = without_batch_stride(a.out, L.varlen);
  a.dout = without_batch_stride(a.dout, L.varlen);
  a.dq = without_batch_stride(a.dq, L.varlen);
  a.dk = without_batch_stride(a.dk, L.varlen);
  a.dv = without_batch_stride(a.dv, L.varlen);
  const int64_t D = p.head_dim, Hq = p.heads_q, Hk = p.heads_k;
  check_tensor(op, "q", a.q.ptr, a.q.batch_stride, a.q.seq_stride, a.q.head_stride, Hq, D, true, L, false);
  check_tensor(op, "k", a.k.ptr, a.k.batch_stride, a.k.seq_stride, a.k.head_stride, Hk, D, false, L, false);
  check_tensor(op, "v", a.v.ptr, a.v.batch_stride, a.v.seq_stride, a.v.head_stride, Hk, D, false, L, false);
  check_tensor(op, "out", a.out.ptr, a.out.batch_stride, a.out.seq_stride, a.out.head_stride, Hq, D, true, L, false);
  check_tensor(op, "dout", a.dout.ptr, a.dout.batch_stride, a.dout.seq_stride, a.dout.head_stride, Hq, D, true, L,
               false);
  check_tensor(op, "dq", a.dq.ptr, a.dq.batch_stride, a.dq.seq_stride, a.dq.head_stride, Hq, D, true, L, true);
  check_tensor(op, "dk", a.dk.ptr, a.dk.batch_stride, a.dk.seq_stride, a.dk.head_stride, Hk, D, false, L, true);
  check_tensor(op, "dv", a.dv.ptr, a.dv.batch_stride, a.dv.seq_stride, a.dv.head_stride, Hk, D, false, L, true);
  const int64_t lse_rows = L.varlen ? Hq * L.rows_q : L.batch * Hq * L.rows_q;
  TF_CHECK_ARG(lse_rows == 0 || a.lse != nullptr, op, ": lse is a null pointer");

  // Two schedules, both deterministic (every output element written by one task, in a fixed order):
  //  - single pass, one task per (sequence, kv head): 5 products per block pair; dK / dV accumulate over the
  //    whole sequence in the thread's workspace. Used when those tasks keep the threads busy and fit in memory.
  //  - two passes, one task per key block (dK / dV) and one per query block (dQ): 7 products per block pair
  //    (scores and dP are recomputed), but many small tasks.
  std::vector<Task> tasks;
  std::vector<int64_t> head_costs;
  int64_t max_sk = 0;
  for (size_t b = 0; b < seqs.size(); ++b) {
    const int64_t c = KeyBand(p, seqs[b].sq, seqs[b].sk).pairs(0, seqs[b].sq) * (Hq / Hk);
    max_sk = std::max(max_sk, seqs[b].sk);
    for (int64_t hk = 0; hk < Hk; ++hk) {
      tasks.push_back({2, static_cast<int64_t>(b), hk, c});  // start: the task's cost, for sorting
      head_costs.push_back(c);
    }
  }
  const int64_t Dp = (D + 7) / 8 * 8;
  const int64_t total = std::accumulate(head_costs.begin(), head_costs.end(), int64_t{0});
  const bool fits = max_sk * Dp <= kAccMaxFloats;
  const bool single = fits && (threads == 1 || 5 * lpt_makespan(head_costs, threads) <= 7 * (total / threads + 1));
  if (single) {
    std::sort(tasks.begin(), tasks.end(), [](const Task& x, const Task& y) { return x.start > y.start; });
  } else {
    tasks.clear();
    add_blocks(&tasks, 1, seqs, Hk, true, kAttnBlockK);
    add_blocks(&tasks, 0, seqs, Hq, false, kAttnBlockQ);
    // Interleave the two kinds so that both are handed out early (each list is already latest-first).
    std::vector<Task> kv, qb, mixed;
    for (const Task& t : tasks) (t.kind ? kv : qb).push_back(t);
    size_t i = 0, j = 0;
    while (i < kv.size() || j < qb.size()) {
      if (i < kv.size()) mixed.push_back(kv[i++]);
      if (j < qb.size()) mixed.push_back(qb[j++]);
    }
    tasks.swap(mixed);
  }
  if (tasks.empty()) return;
  const bool avx2 = cpu_has_avx2_fma();
  const int nt = static_cast<int>(std::min<int64_t>(threads, static_cast<int64_t>(tasks.size())));
  const int64_t acc_rows = single ? max_sk : kAttnBlockK;
  const bool pack = single && max_sk * D <= kPackMaxFloats;
  const int64_t pack_rows = pack ? max_sk : 0;
#if defined(TFORGE_HAVE_X86)
  const size_t wsz = avx2 ? avx2::attn_workspace_floats(D, true, acc_rows, pack_rows)
                          : scalar::attn_workspace_floats(D, true, acc_rows, pack_rows);
#else
  const size_t wsz = scalar::attn_workspace_floats(D, true, acc_rows, pack_rows);
#endif
  Workspaces ws(nt, wsz);
  std::vector<float> delta(static_cast<size_t>(lse_rows));
  const int64_t nbh = p.batch * Hq, ntasks = static_cast<int64_t>(tasks.size());
#pragma omp parallel num_threads(nt)
  {
#pragma omp for schedule(dynamic, 4)
    for (int64_t t = 0; t < nbh; ++t) {
      const int64_t b = t / Hq, h = t % Hq;
#if defined(TFORGE_HAVE_X86)
      if (avx2) avx2::attn_bwd_delta(a, seqs[b], b, h, delta.data());
      else
#endif
        scalar::attn_bwd_delta(a, seqs[b], b, h, delta.data());
    }
    // (implicit barrier: every task below reads delta)
    float* w = ws.ptr[omp_get_thread_num()];
#pragma omp for schedule(dynamic, 1)
    for (int64_t t = 0; t < ntasks; ++t) {
      const Task& k = tasks[t];
      const AttnSeq& s = seqs[k.b];
      if (k.kind == 2) {
#if defined(TFORGE_HAVE_X86)
        if (avx2) avx2::attn_bwd_head(a, s, delta.data(), k.b, k.h, pack, w);
        else
#endif
          scalar::attn_bwd_head(a, s, delta.data(), k.b, k.h, pack, w);
      } else if (k.kind == 1) {
        const int64_t j1 = std::min(k.start + kAttnBlockK, s.sk);
#if defined(TFORGE_HAVE_X86)
        if (avx2) avx2::attn_bwd_kv_block(a, s, delta.data(), k.b, k.h, k.start, j1, w);
        else
#endif
          scalar::attn_bwd_kv_block(a, s, delta.data(), k.b, k.h, k.start, j1, w);
      } else {
        const int64_t i1 = std::min(k.start + kAttnBlockQ, s.sq);
#if defined(TFORGE_HAVE_X86)
        if (avx2) avx2::attn_bwd_q_block(a, s, delta.data(), k.b, k.h, k.start, i1, w);
        else
#endif
          scalar::attn_bwd_q_block(a, s, delta.data(), k.b, k.h, k.start, i1, w);
      }
    }
  }
  (void)avx2;
}

}  // namespace tforge::cpu
