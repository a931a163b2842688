// Attention kernels, written once over a vector type and compiled per ISA.
// Included *inside* namespace tforge::cpu::<isa> after Vec (the ISA's widest
// fp32 vector), VecOne, and these ISA hooks:
//   Vec vmax(Vec, Vec);
//   Vec vninf0(Vec x);   // x, with -inf replaced by 0
//   Vec vround(Vec x);   // x, forced through a register: a product passed through it is rounded on its own
//                        // (never contracted into an FMA with what follows)
//   Vec vexp2(Vec x);    // 2^x to ~1e-7 relative (as fp32 exp2f) for x <= ~0; exactly 0 for x < -126 and
//                        // x = -inf; NaN stays NaN
//   template <class TS, class TD, bool ACC> void transpose(const TS* src, int64_t lds, TD* dst, int64_t ldd,
//       int64_t rows, int64_t cols, float scale, const float* cscale);
//     dst[c * ldd + r] (= or +=) src[r * lds + c] * scale * (cscale ? cscale[c] : 1), T = float or uint16_t (bf16)
//
// Layout trick: the query index is the vector lane everywhere. Per query block
// the kernels keep Q^T [d][i], S^T / P^T [j][i], O^T [d][i] and the softmax
// state m[i], l[i], so the row max / row sum of the softmax are vertical
// (lane-wise) operations and every product below is one register-blocked
// kernel: C[r][c] (+)= sum_k a(r, k) * B[k][c], a broadcast, B a unit-stride
// row, 6 rows x 2 vectors of fp32 accumulators.
//   S^T  = K Q^T        a = K [j][d]      B = Q^T [d][i]
//   O^T += V^T P^T      a = V [j][d] (transposed access)   B = P^T [j][i]
//   dP^T = V dO^T,  dV += P^T dO,  dK += dS^T Q,  dQ^T += K^T dS^T  (same two shapes)
// Forward tasks and the single-pass backward copy the K / V rows they need
// once into contiguous fp32 (bf16 converted once; the tensor's pages touched
// once, which matters with large token strides); otherwise fp32 K / V are
// read in place and bf16 blocks converted per block.
// Scores are kept in log2 units (Q pre-scaled by softmax_scale * log2(e), bias
// times log2(e)) so that the softmax uses 2^x, which is cheaper than e^x;
// lse is converted back to natural log on output and on input.
// Masking: keys outside the causal / window band of a query block are never
// visited; partially masked blocks get -inf scores (row ranges, no compares).
// A row whose running max is still -inf subtracts 0, so exp(-inf) = 0 and no
// NaN appears; such rows end with out = 0, lse = -inf, and the backward turns
// their lse into +inf so that P = 0 and every gradient term vanishes.

// Everything but the entry points at the end has internal linkage: other kernel families share this ISA
// namespace, and same-named inline helpers must not collide across translation units.
namespace {

constexpr int kMR = 6;                        // micro-kernel rows
constexpr int kNV = Vec::W == 1 ? 4 : 2;      // micro-kernel vectors per row
constexpr int64_t kBQ = kAttnBlockQ;          // query block; also the leading dimension of [.][i] buffers
constexpr int64_t kBK = kAttnBlockK;          // key block
constexpr float kNegInf = -__builtin_inff();
constexpr float kPosInf = __builtin_inff();
constexpr float kLog2e = 1.44269504088896341f;
constexpr float kLn2 = 0.693147180559945309f;
static_assert(kBQ % 16 == 0, "query block must be a multiple of 16");

inline int64_t round_up(int64_t x, int64_t m) { return (x + m - 1) / m * m; }
inline int64_t min64(int64_t a, int64_t b) { return a < b ? a : b; }
inline int64_t max64(int64_t a, int64_t b) { return a > b ? a : b; }

#include "cpu/attention_gemm.h"  // micro-kernels and gemm

// ---------------------------------------------------------------- masking

// Keys allowed for query i of a sequence (sq, sk): [i + off - wl, i + off + hi] with off = sk - sq
// (bottom-right aligned causal), each side possibly unbounded, clipped to [0, sk).
struct Band {
  int64_t sq, sk, off, wl, hi;
  bool has_lo, has_hi;
  Band(const AttnParams& p, int64_t sq_, int64_t sk_) : sq(sq_), sk(sk_), off(sk_ - sq_) {
    // Windows wider than sq + sk act as unbounded; clamping keeps i + off -/+ window from overflowing.
    const int64_t wmax = sq_ + sk_;
    has_lo = p.window_left >= 0;
    wl = has_lo ? min64(p.window_left, wmax) : 0;
    has_hi = p.causal || p.window_right >= 0;
    const int64_t wr = min64(p.window_right, wmax);
    hi = p.causal ? (wr >= 0 ? min64(0, wr) : 0) : wr;
  }
  bool any() const { return has_lo || has_hi; }
  // key range [key_lo(i0), key_hi(i1 - 1)) for queries [i0, i1); empty when lo >= hi
  int64_t key_lo(int64_t i) const { return has_lo ? min64(sk, max64(0, i + off - wl)) : 0; }
  int64_t key_hi(int64_t i) const { return has_hi ? min64(sk, max64(0, i + off + hi + 1)) : sk; }
  // queries attending key j: [q_lo(j), q_hi(j))
  int64_t q_lo(int64_t j) const { return has_hi ? min64(sq, max64(0, j - off - hi)) : 0; }
  int64_t q_hi(int64_t j) const { return has_lo ? min64(sq, max64(0, j - off + wl + 1)) : sq; }
  // whether every (i, j) of the block is allowed
  bool full(int64_t i0, int64_t i1, int64_t j0, int64_t j1) const {
    return (!has_lo || j0 >= (i1 - 1) + off - wl) && (!has_hi || j1 - 1 <= i0 + off + hi);
  }
};

// -inf where key j0 + jj may not be seen by query i0 + ii (S^T layout, ld kBQ, np columns).
inline void apply_mask(const Band& band, int64_t i0, int64_t np, int64_t j0, int64_t nj, float* st) {
  for (int64_t jj = 0; jj < nj; ++jj) {
    const int64_t j = j0 + jj;
    // allowed i in [j - off - hi, j - off + wl]
    const int64_t lo = band.has_hi ? min64(np, max64(0, j - band.off - band.hi - i0)) : 0;
    const int64_t hi = band.has_lo ? min64(np, max64(0, j - band.off + band.wl + 1 - i0)) : np;
    float* row = st + jj * kBQ;
    if (hi <= lo) {
      for (int64_t c = 0; c < np; ++c) row[c] = kNegInf;
      continue;
    }
    for (int64_t c = 0; c < lo; ++c) row[c] = kNegInf;
    for (int64_t c = hi; c < np; ++c) row[c] = kNegInf;
  }
}

// ---------------------------------------------------------------- per-block helpers

// Workspace layout (floats, each piece 16-float aligned).
struct Ws {
  float *qt, *ot, *st, *kb, *vb, *m, *l, *al;       // forward (ot is dQ^T in the backward)
  float *qn, *dot, *don, *dpt, *lse, *dd;           // backward
  float *sc, *lc, *ll;                              // backward: per-row P = 2^((S sc - lse) lc - ll)
  float *dk, *dv;                                   // backward: dK / dV accumulators, acc_rows x Dp
  float *kp, *vp;                                   // packed fp32 K / V rows, pack_rows x D
};

inline size_t carve(float* base, int64_t D, bool bwd, int64_t acc_rows, int64_t pack_rows, Ws* w) {
  const int64_t Dp = round_up(D, Vec::W);
  size_t off = 0;
  auto take = [&](int64_t n) {
    float* p = base ? base + off : nullptr;
    off += static_cast<size_t>(round_up(n, 16));
    return p;
  };
  w->qt = take(D * kBQ);
  w->ot = take(D * kBQ);
  w->st = take(kBK * kBQ);
  w->kb = take(kBK * D);
  w->vb = take(kBK * D);
  w->m = take(kBQ);
  w->l = take(kBQ);
  w->al = take(kBQ);
  w->qn = w->dot = w->don = w->dpt = w->lse = w->dd = w->dk = w->dv = nullptr;
  w->sc = w->lc = w->ll = nullptr;
  if (bwd) {
    w->qn = take(kBQ * Dp);
    w->dot = take(D * kBQ);
    w->don = take(kBQ * Dp);
    w->dpt = take(kBK * kBQ);
    w->lse = take(kBQ);
    w->dd = take(kBQ);
    w->sc = take(kBQ);
    w->lc = take(kBQ);
    w->ll = take(kBQ);
    w->dk = take(acc_rows * Dp);
    w->dv = take(acc_rows * Dp);
  }
  w->kp = take(pack_rows * D);
  w->vp = take(pack_rows * D);
  return off;
}

// rows x D (row stride ld, elements T) -> fp32 contiguous [rows][ldo], columns [D, ldo) zeroed.
template <class T>
inline void load_rows(const T* src, int64_t ld, int64_t rows, int64_t D, float* dst, int64_t ldo) {
  for (int64_t r = 0; r < rows; ++r) {
    const T* s = src + r * ld;
    float* d = dst + r * ldo;
    int64_t c = 0;
    for (; c + Vec::W <= D; c += Vec::W) Vec::store(d + c, Vec::load(s + c));
    for (; c < D; ++c) VecOne::store(d + c, VecOne::load(s + c));
    for (; c < ldo; ++c) d[c] = 0.f;
  }
}

// fp32 [rows][ld] * scale -> T rows (stride ldo), first D columns.
template <class T>
inline void store_rows(const float* src, int64_t ld, int64_t rows, int64_t D, float scale, T* dst, int64_t ldo) {
  const Vec sv = Vec::set1(scale);
  for (int64_t r = 0; r < rows; ++r) {
    const float* s = src + r * ld;
    T* d = dst + r * ldo;
    int64_t c = 0;
    for (; c + Vec::W <= D; c += Vec::W) Vec::store(d + c, Vec::load(s + c) * sv);
    for (; c < D; ++c) VecOne::store(d + c, VecOne{s[c] * scale});
  }
}

template <class T>
inline void zero_rows(T* dst, int64_t ld, int64_t rows, int64_t D) {
  for (int64_t r = 0; r < rows; ++r)
    for (int64_t c = 0; c < D; ++c) dst[r * ld + c] = T(0);
}

// rows x D block of T (row stride ld) -> fp32 [d][i] (ld kBQ) times scale; columns [rows, np) zeroed.
template <class T>
inline void pack_t(const T* src, int64_t ld, int64_t rows, int64_t np, int64_t D, float scale, float* dst) {
  transpose<T, float, false>(src, ld, dst, kBQ, rows, D, scale, nullptr);
  if (np > rows)
    for (int64_t d = 0; d < D; ++d)
      for (int64_t c = rows; c < np; ++c) dst[d * kBQ + c] = 0.f;
}

// Views of one (sequence, head) pair.
template <class T>
struct Head {
  const T* p;
  int64_t ld;  // token stride
};

template <class T>
inline Head<T> head_of(const AttnTensor& t, int64_t b, int64_t tok0, int64_t h) {
  return {static_cast<const T*>(t.ptr) + b * t.batch_stride + tok0 * t.seq_stride + h * t.head_stride,
          t.seq_stride};
}
template <class T>
inline T* head_of(const AttnOutTensor& t, int64_t b, int64_t tok0, int64_t h) {
  return static_cast<T*>(t.ptr) + b * t.batch_stride + tok0 * t.seq_stride + h * t.head_stride;
}

// fp32 rows of K or V as the products read them.
struct Rows {
  const float* p;
  int64_t ld;
};

// K and V of one (sequence, kv head): either packed once per task into contiguous fp32 rows [jbase, jbase + n)
// (converting bf16 once, and touching the tensor's pages once), or read block by block (fp32: in place; bf16:
// converted into the block buffers).
template <class T>
struct KV {
  Head<T> k, v;
  int64_t D;
  const float* kp = nullptr;
  const float* vp = nullptr;
  int64_t jbase = 0;
  float *kb, *vb;

  KV(const AttnTensor& kt, const AttnTensor& vt, int64_t b, int64_t tok0, int64_t hk, int64_t D_, const Ws& w)
      : k(head_of<T>(kt, b, tok0, hk)), v(head_of<T>(vt, b, tok0, hk)), D(D_), kb(w.kb), vb(w.vb) {}
  void pack(int64_t j0, int64_t j1, const Ws& w) {
    load_rows(k.p + j0 * k.ld, k.ld, j1 - j0, D, w.kp, D);
    load_rows(v.p + j0 * v.ld, v.ld, j1 - j0, D, w.vp, D);
    kp = w.kp;
    vp = w.vp;
    jbase = j0;
  }
  Rows rows(const Head<T>& x, const float* packed, float* buf, int64_t j0, int64_t nj) const {
    if (packed) return {packed + (j0 - jbase) * D, D};
    if constexpr (sizeof(T) == 4) {
      return {x.p + j0 * x.ld, x.ld};
    } else {
      load_rows(x.p + j0 * x.ld, x.ld, nj, D, buf, D);
      return {buf, D};
    }
  }
  Rows krows(int64_t j0, int64_t nj) const { return rows(k, kp, kb, j0, nj); }
  Rows vrows(int64_t j0, int64_t nj) const { return rows(v, vp, vb, j0, nj); }
};

// Finite biases below -1e38 are raised to -1e38 before the log2(e) scaling (as the CUDA kernel does): a row
// masked with torch.finfo(torch.float32).min would otherwise overflow to -inf and come out as zeros, where fp32
// PyTorch gives a uniform softmax. -inf (a real mask) and NaN pass unchanged.
inline float clamp_bias(float b) { return (b < -1e38f && b != kNegInf) ? -1e38f : b; }

// bias[i0 + ii][j0 + jj] * log2(e) added to S^T [jj][ii] (ld kBQ); np padded columns get it too when it is
// row-broadcast.
inline void add_bias(const AttnParams& p, const float* bias, int64_t ni, int64_t np, int64_t nj, float* st) {
  const int64_t qs = p.bias_q_stride, ks = p.bias_k_stride;
  if (qs == 0) {
    for (int64_t jj = 0; jj < nj; ++jj) {
      const Vec bv = Vec::set1(clamp_bias(bias[jj * ks]) * kLog2e);
      float* row = st + jj * kBQ;
      for (int64_t c = 0; c < np; c += Vec::W) Vec::store(row + c, Vec::load(row + c) + bv);
    }
  } else if (ks == 1) {
    alignas(64) float tmp[kBQ * kBK];  // the block's bias rows, clamped, then transposed in registers
    for (int64_t ii = 0; ii < ni; ++ii)
      for (int64_t jj = 0; jj < nj; ++jj) tmp[ii * kBK + jj] = clamp_bias(bias[ii * qs + jj]);
    transpose<float, float, true>(tmp, kBK, st, kBQ, ni, nj, kLog2e, nullptr);
  } else {
    for (int64_t ii = 0; ii < ni; ++ii)
      for (int64_t jj = 0; jj < nj; ++jj) st[jj * kBQ + ii] += clamp_bias(bias[ii * qs + jj * ks]) * kLog2e;
  }
}

// Shared state of one (sequence, q head) pair.
struct Ctx {
  const AttnParams& p;
  Band band;
  int64_t D, Dp;
  const float* bias;  // at (b, h, 0, 0) or null
  Ctx(const AttnParams& p_, const AttnSeq& s, int64_t b, int64_t h)
      : p(p_), band(p_, s.sq, s.sk), D(p_.head_dim), Dp(round_up(p_.head_dim, Vec::W)), bias(nullptr) {
    if (p.bias) bias = p.bias + b * p.bias_batch_stride + h * p.bias_head_stride;
  }
};

// S^T [nj][np] = K Q^T (Q^T pre-scaled) + bias, masked; log2 units.
inline void scores(const Ctx& c, int64_t i0, int64_t ni, int64_t np, int64_t j0, int64_t nj, Rows kf,
                   const float* qt, float* st) {
  gemm<kSet, true>(nj, np, c.D, kf.p, kf.ld, qt, kBQ, st, kBQ);
  if (c.bias) add_bias(c.p, c.bias + i0 * c.p.bias_q_stride + j0 * c.p.bias_k_stride, ni, np, nj, st);
  if (c.band.any() && !c.band.full(i0, i0 + ni, j0, j0 + nj)) apply_mask(c.band, i0, np, j0, nj, st);
}

// ---------------------------------------------------------------- forward

// One query block [i0, i1) of q head h: out rows and lse.
template <class T>
void fwd_qblock(const AttnFwdArgs& a, const AttnSeq& s, const Ctx& c, const KV<T>& kv, int64_t b, int64_t h,
                int64_t i0, int64_t i1, const Ws& w) {
  const AttnParams& p = a.p;
  const int64_t D = c.D, ni = i1 - i0, np = round_up(ni, Vec::W);
  T* out = head_of<T>(a.out, b, s.q_off + i0, h);
  float* lse = a.lse + s.lse_off + h * s.lse_head_stride + i0;

  const int64_t jlo = c.band.key_lo(i0), jhi = c.band.key_hi(i1 - 1);
  if (jlo >= jhi) {
    zero_rows(out, a.out.seq_stride, ni, D);
    for (int64_t ii = 0; ii < ni; ++ii) lse[ii] = kNegInf;
    return;
  }
  const Head<T> q = head_of<T>(a.q, b, s.q_off + i0, h);
  pack_t(q.p, q.ld, ni, np, D, p.softmax_scale * kLog2e, w.qt);
  for (int64_t ii = 0; ii < np; ++ii) {
    w.m[ii] = kNegInf;
    w.l[ii] = 0.f;
  }
  for (int64_t d = 0; d < D; ++d)
    for (int64_t ii = 0; ii < np; ++ii) w.ot[d * kBQ + ii] = 0.f;

  for (int64_t j0 = jlo; j0 < jhi; j0 += kBK) {
    const int64_t nj = min64(kBK, jhi - j0);
    const Rows kf = kv.krows(j0, nj), vf = kv.vrows(j0, nj);
    scores(c, i0, ni, np, j0, nj, kf, w.qt, w.st);
    // Online softmax, lane-wise over queries.
    for (int64_t cc = 0; cc < np; cc += Vec::W) {
      const Vec mold = Vec::load(w.m + cc);
      Vec mx = mold, m1 = mold, m2 = mold, m3 = mold;  // four chains: max latency, not throughput, bounds one
      int64_t j4 = 0;
      for (; j4 + 4 <= nj; j4 += 4) {
        const float* r = w.st + j4 * kBQ + cc;
        mx = vmax(mx, Vec::load(r));
        m1 = vmax(m1, Vec::load(r + kBQ));
        m2 = vmax(m2, Vec::load(r + 2 * kBQ));
        m3 = vmax(m3, Vec::load(r + 3 * kBQ));
      }
      for (; j4 < nj; ++j4) mx = vmax(mx, Vec::load(w.st + j4 * kBQ + cc));
      mx = vmax(vmax(mx, m1), vmax(m2, m3));
      const Vec ms = vninf0(mx);  // rows with nothing allowed yet: subtract 0, exp(-inf) = 0
      const Vec alpha = vexp2(mold - ms);
      Vec s0 = Vec::zero(), s1 = Vec::zero();
      int64_t jj = 0;
      for (; jj + 2 <= nj; jj += 2) {
        float* r0 = w.st + jj * kBQ + cc;
        const Vec p0 = vexp2(Vec::load(r0) - ms), p1 = vexp2(Vec::load(r0 + kBQ) - ms);
        Vec::store(r0, p0);
        Vec::store(r0 + kBQ, p1);
        s0 = s0 + p0;
        s1 = s1 + p1;
      }
      if (jj < nj) {
        float* r0 = w.st + jj * kBQ + cc;
        const Vec p0 = vexp2(Vec::load(r0) - ms);
        Vec::store(r0, p0);
        s0 = s0 + p0;
      }
      Vec::store(w.m + cc, mx);
      Vec::store(w.al + cc, alpha);
      Vec::store(w.l + cc, Vec::fma(Vec::load(w.l + cc), alpha, s0 + s1));
    }
    // O^T = O^T * alpha + V^T P^T
    gemm<kScaleAdd, false>(D, np, nj, vf.p, vf.ld, w.st, kBQ, w.ot, kBQ, w.al);
  }
  // out = O / l; lse = m ln 2 + log2(l) ln 2; rows that saw no key: 0 and -inf. m ln 2 is rounded on its own
  // so that the backward, which turns its scores into natural units the same way, gets S - lse = 0 exactly
  // for a row's only visible key (probability exactly 1, as in PyTorch).
  for (int64_t ii = 0; ii < ni; ++ii) {
    const float m = w.m[ii], l = w.l[ii];
    if (m == kNegInf) {  // (finite m: l >= 1; NaN propagates)
      w.al[ii] = 0.f;
      lse[ii] = kNegInf;
    } else {
      w.al[ii] = 1.f / l;
      lse[ii] = m * kLn2 + __builtin_log2f(l) * kLn2;
    }
  }
  transpose<float, T, false>(w.ot, kBQ, out, a.out.seq_stride, D, ni, 1.f, w.al);
}

template <class T>
void fwd_task_t(const AttnFwdArgs& a, const AttnSeq& s, int64_t b, int64_t h0, int64_t h1, int64_t i0, int64_t i1,
                bool pack, float* ws) {
  const AttnParams& p = a.p;
  const int64_t D = p.head_dim, hk = h0 / (p.heads_q / p.heads_k);
  const Band band(p, s.sq, s.sk);
  const int64_t jlo = band.key_lo(i0), jhi = band.key_hi(i1 - 1);
  Ws w;
  carve(ws, D, false, 0, pack ? max64(0, jhi - jlo) : 0, &w);
  KV<T> kv(a.k, a.v, b, s.k_off, hk, D, w);
  if (pack && jlo < jhi) kv.pack(jlo, jhi, w);
  for (int64_t h = h0; h < h1; ++h) {
    const Ctx c(p, s, b, h);
    for (int64_t q0 = i0; q0 < i1; q0 += kBQ) fwd_qblock<T>(a, s, c, kv, b, h, q0, min64(q0 + kBQ, i1), w);
  }
}

#include "cpu/attention_bwd_kernels.h"  // delta, P / dS per block, the two backward schemes

}  // namespace

// ---------------------------------------------------------------- entry points (see attention.h)

size_t attn_workspace_floats(int64_t head_dim, bool bwd, int64_t acc_rows, int64_t pack_rows) {
  Ws w;
  return carve(nullptr, head_dim, bwd, acc_rows, pack_rows, &w);
}

void attn_fwd_task(const AttnFwdArgs& a, const AttnSeq& s, int64_t b, int64_t h0, int64_t h1, int64_t i0,
                   int64_t i1, bool pack, float* ws) {
  if (a.p.dtype == kFloat32) fwd_task_t<float>(a, s, b, h0, h1, i0, i1, pack, ws);
  else fwd_task_t<uint16_t>(a, s, b, h0, h1, i0, i1, pack, ws);
}

void attn_bwd_delta(const AttnBwdArgs& a, const AttnSeq& s, int64_t b, int64_t h, float* delta) {
  if (a.p.dtype == kFloat32) delta_t<float>(a, s, b, h, delta);
  else delta_t<uint16_t>(a, s, b, h, delta);
}

void attn_bwd_head(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t hk, bool pack,
                   float* ws) {
  if (a.p.dtype == kFloat32) bwd_head_t<float>(a, s, delta, b, hk, pack, ws);
  else bwd_head_t<uint16_t>(a, s, delta, b, hk, pack, ws);
}

void attn_bwd_kv_block(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t hk,
                       int64_t j0, int64_t j1, float* ws) {
  if (a.p.dtype == kFloat32) bwd_kv_block_t<float>(a, s, delta, b, hk, j0, j1, ws);
  else bwd_kv_block_t<uint16_t>(a, s, delta, b, hk, j0, j1, ws);
}

void attn_bwd_q_block(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t h, int64_t i0,
                      int64_t i1, float* ws) {
  if (a.p.dtype == kFloat32) bwd_q_block_t<float>(a, s, delta, b, h, i0, i1, ws);
  else bwd_q_block_t<uint16_t>(a, s, delta, b, h, i0, i1, ws);
}
