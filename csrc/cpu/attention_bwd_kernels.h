// Attention backward kernels (see attention_kernels.h, which includes this inside its ISA namespace and
// anonymous namespace, after the shared helpers and the forward; no include guard: each ISA translation
// unit includes it once, in its own namespace).

// ---------------------------------------------------------------- backward

template <class T>
void delta_t(const AttnBwdArgs& a, const AttnSeq& s, int64_t b, int64_t h, float* delta) {
  const int64_t D = a.p.head_dim;
  const Head<T> o = head_of<T>(a.out, b, s.q_off, h);
  const Head<T> g = head_of<T>(a.dout, b, s.q_off, h);
  float* dl = delta + s.lse_off + h * s.lse_head_stride;
  for (int64_t i = 0; i < s.sq; ++i) {
    const T* x = o.p + i * o.ld;
    const T* y = g.p + i * g.ld;
    Vec acc = Vec::zero();
    int64_t d = 0;
    for (; d + Vec::W <= D; d += Vec::W) acc = Vec::fma(Vec::load(x + d), Vec::load(y + d), acc);
    float t = acc.hsum();
    for (; d < D; ++d) t += VecOne::load(x + d).v * VecOne::load(y + d).v;
    dl[i] = t;
  }
}

// Query block [i0, i0 + ni) of q head h, packed for the backward: Q^T (scaled, log2 units), dO^T, and lse
// (natural units) / delta lane vectors (lse -inf, a row that saw no key, becomes +inf so that P = 0). With
// `natural`, also Q and dO as fp32 rows [ii][Dp] for dK / dV. Returns whether a row has |lse| > 1024 (see
// huge_rows).
template <class T>
inline bool pack_q_block(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t h,
                         int64_t i0, int64_t ni, int64_t np, bool natural, const Ws& w) {
  const int64_t D = a.p.head_dim, Dp = round_up(D, Vec::W);
  const Head<T> q = head_of<T>(a.q, b, s.q_off + i0, h);
  const Head<T> g = head_of<T>(a.dout, b, s.q_off + i0, h);
  pack_t(q.p, q.ld, ni, np, D, a.p.softmax_scale * kLog2e, w.qt);
  pack_t(g.p, g.ld, ni, np, D, 1.f, w.dot);
  if (natural) {
    load_rows(q.p, q.ld, ni, D, w.qn, Dp);
    load_rows(g.p, g.ld, ni, D, w.don, Dp);
  }
  const float* lse = a.lse + s.lse_off + h * s.lse_head_stride + i0;
  const float* dl = delta + s.lse_off + h * s.lse_head_stride + i0;
  bool huge = false;
  for (int64_t ii = 0; ii < np; ++ii) {
    const float l = ii < ni ? lse[ii] : kNegInf;
    w.lse[ii] = l == kNegInf ? kPosInf : l;
    w.dd[ii] = ii < ni ? dl[ii] : 0.f;
    w.sc[ii] = kLn2;
    w.lc[ii] = kLog2e;
    w.ll[ii] = 0.f;
    huge |= (l > 1024.f || l < -1024.f) && l != kNegInf && l != kPosInf;
  }
  return huge;
}

// Rows masked only by huge finite biases (finfo.min, -1e9) have |lse| so large that its rounding swamps log(l):
// 2^(S - lse) would give each of their keys probability 1. For rows with |lse| > 1024 the row max m2 and
// ll2 = log2(sum 2^(S - m2)) are recomputed from the scores (a pass over the block's keys, taken only when such
// a row exists) and kept apart: P = 2^((S - m2) - ll2), as the Triton kernel does. Uses st, m and l as scratch.
template <class T>
void huge_rows(const Ctx& c, const KV<T>& kv, int64_t i0, int64_t ni, int64_t np, const Ws& w) {
  for (int64_t ii = 0; ii < np; ++ii) {
    w.m[ii] = kNegInf;
    w.l[ii] = 0.f;
  }
  const int64_t jlo = c.band.key_lo(i0), jhi = c.band.key_hi(i0 + ni - 1);
  for (int64_t j0 = jlo; j0 < jhi; j0 += kBK) {
    const int64_t nj = min64(kBK, jhi - j0);
    scores(c, i0, ni, np, j0, nj, kv.krows(j0, nj), w.qt, w.st);
    for (int64_t ii = 0; ii < ni; ++ii) {
      float mx = w.m[ii];
      for (int64_t jj = 0; jj < nj; ++jj) mx = w.st[jj * kBQ + ii] > mx ? w.st[jj * kBQ + ii] : mx;
      if (mx == kNegInf) continue;
      float sum = w.m[ii] == kNegInf ? 0.f : w.l[ii] * __builtin_exp2f(w.m[ii] - mx);
      for (int64_t jj = 0; jj < nj; ++jj) sum += __builtin_exp2f(w.st[jj * kBQ + ii] - mx);
      w.m[ii] = mx;
      w.l[ii] = sum;
    }
  }
  for (int64_t ii = 0; ii < ni; ++ii) {
    const float l = w.lse[ii];
    if ((l > 1024.f || l < -1024.f) && l != kPosInf && w.m[ii] != kNegInf) {
      w.sc[ii] = 1.f;
      w.lc[ii] = 1.f;
      w.lse[ii] = w.m[ii];
      w.ll[ii] = __builtin_log2f(w.l[ii]);
    }
  }
}

// For one (query block, key block) pair: P^T into st and dS^T into dpt.
inline void probs_and_dscores(const Ctx& c, int64_t i0, int64_t ni, int64_t np, int64_t j0, int64_t nj, Rows kf,
                              Rows vf, const Ws& w) {
  scores(c, i0, ni, np, j0, nj, kf, w.qt, w.st);
  gemm<kSet, true>(nj, np, c.D, vf.p, vf.ld, w.dot, kBQ, w.dpt, kBQ);  // dP^T = V dO^T
  for (int64_t cc = 0; cc < np; cc += Vec::W) {
    const Vec l = Vec::load(w.lse + cc), dd = Vec::load(w.dd + cc);
    const Vec sc = Vec::load(w.sc + cc), lc = Vec::load(w.lc + cc), ll = Vec::load(w.ll + cc);
    for (int64_t jj = 0; jj < nj; ++jj) {
      float* sp = w.st + jj * kBQ + cc;
      float* dp = w.dpt + jj * kBQ + cc;
      // P = exp(S ln 2 - lse), S ln 2 rounded as the forward rounded m ln 2 (see fwd_qblock); rows from
      // huge_rows: sc = lc = 1, P = 2^((S - m2) - ll2)
      const Vec pr = vexp2((vround(Vec::load(sp) * sc) - l) * lc - ll);
      Vec::store(sp, pr);
      Vec::store(dp, pr * (Vec::load(dp) - dd));
    }
  }
}

// Two-pass scheme, pass 1: dK / dV for keys [j0, j1) of kv head hk (all q heads of its group, every query block
// that sees one of these keys).
template <class T>
void bwd_kv_block_t(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t hk, int64_t j0,
                    int64_t j1, float* ws) {
  const AttnParams& p = a.p;
  const int64_t D = p.head_dim, Dp = round_up(D, Vec::W), nj = j1 - j0;
  const int64_t group = p.heads_q / p.heads_k;
  Ws w;
  carve(ws, D, true, kBK, 0, &w);
  KV<T> kv(a.k, a.v, b, s.k_off, hk, D, w);
  Rows kf = kv.krows(j0, nj), vf = kv.vrows(j0, nj);
  for (int64_t x = 0; x < nj * Dp; ++x) w.dk[x] = w.dv[x] = 0.f;
  const Band band(p, s.sq, s.sk);
  const int64_t ilo = band.q_lo(j0), ihi = band.q_hi(j1 - 1);
  for (int64_t h = hk * group; h < (hk + 1) * group && ilo < ihi; ++h) {
    const Ctx c(p, s, b, h);
    for (int64_t i0 = ilo; i0 < ihi; i0 += kBQ) {
      const int64_t ni = min64(kBQ, ihi - i0), np = round_up(ni, Vec::W);
      if (pack_q_block<T>(a, s, delta, b, h, i0, ni, np, true, w)) {
        huge_rows(c, kv, i0, ni, np, w);
        kf = kv.krows(j0, nj);  // (bf16: huge_rows reused the block buffers)
        vf = kv.vrows(j0, nj);
      }
      probs_and_dscores(c, i0, ni, np, j0, nj, kf, vf, w);
      gemm<kAdd, true>(nj, Dp, ni, w.st, kBQ, w.don, Dp, w.dv, Dp);   // dV += P^T dO
      gemm<kAdd, true>(nj, Dp, ni, w.dpt, kBQ, w.qn, Dp, w.dk, Dp);  // dK += dS^T Q (scale below)
    }
  }
  store_rows(w.dk, Dp, nj, D, p.softmax_scale, head_of<T>(a.dk, b, s.k_off + j0, hk), a.dk.seq_stride);
  store_rows(w.dv, Dp, nj, D, 1.f, head_of<T>(a.dv, b, s.k_off + j0, hk), a.dv.seq_stride);
}

// dQ of query rows [i0, i0 + ni) of the Ctx's q head over its band of keys, the loop both schemes share;
// KV_GRADS: also dV += P^T dO and dK += dS^T Q into w.dv / w.dk (rows = the sequence's keys, unscaled).
template <bool KV_GRADS, class T>
void q_block_grads(const AttnBwdArgs& a, const AttnSeq& s, const Ctx& c, const KV<T>& kv, const float* delta,
                   int64_t b, int64_t h, int64_t i0, int64_t ni, const Ws& w) {
  const int64_t D = c.D, Dp = round_up(D, Vec::W), np = round_up(ni, Vec::W);
  T* dq = head_of<T>(a.dq, b, s.q_off + i0, h);
  const int64_t jlo = c.band.key_lo(i0), jhi = c.band.key_hi(i0 + ni - 1);
  if (jlo >= jhi) {
    zero_rows(dq, a.dq.seq_stride, ni, D);
    return;
  }
  if (pack_q_block<T>(a, s, delta, b, h, i0, ni, np, KV_GRADS, w)) huge_rows(c, kv, i0, ni, np, w);
  for (int64_t d = 0; d < D; ++d)
    for (int64_t ii = 0; ii < np; ++ii) w.ot[d * kBQ + ii] = 0.f;
  for (int64_t j0 = jlo; j0 < jhi; j0 += kBK) {
    const int64_t nj = min64(kBK, jhi - j0);
    const Rows kf = kv.krows(j0, nj), vf = kv.vrows(j0, nj);
    probs_and_dscores(c, i0, ni, np, j0, nj, kf, vf, w);
    if constexpr (KV_GRADS) {
      gemm<kAdd, true>(nj, Dp, ni, w.st, kBQ, w.don, Dp, w.dv + j0 * Dp, Dp);   // dV += P^T dO
      gemm<kAdd, true>(nj, Dp, ni, w.dpt, kBQ, w.qn, Dp, w.dk + j0 * Dp, Dp);  // dK += dS^T Q
    }
    gemm<kAdd, false>(D, np, nj, kf.p, kf.ld, w.dpt, kBQ, w.ot, kBQ);  // dQ^T += K^T dS^T (scale below)
  }
  transpose<float, T, false>(w.ot, kBQ, dq, a.dq.seq_stride, D, ni, a.p.softmax_scale, nullptr);
}

// Two-pass scheme, pass 2: dQ for query rows [i0, i1) of q head h.
template <class T>
void bwd_q_block_t(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t h, int64_t i0,
                   int64_t i1, float* ws) {
  const AttnParams& p = a.p;
  const Ctx c(p, s, b, h);
  const int64_t D = c.D, hk = h / (p.heads_q / p.heads_k);
  Ws w;
  carve(ws, D, true, kBK, 0, &w);
  q_block_grads<false, T>(a, s, c, KV<T>(a.k, a.v, b, s.k_off, hk, D, w), delta, b, h, i0, i1 - i0, w);
}

// Single pass over kv head hk of sequence b (the q heads of its group, every query block, every key block in
// its band): dQ per query block, dK / dV accumulated over the whole sequence in ws (seqlen_k rows). Five
// products per (query block, key block) pair instead of the two-pass scheme's seven.
template <class T>
void bwd_head_t(const AttnBwdArgs& a, const AttnSeq& s, const float* delta, int64_t b, int64_t hk, bool pack,
                float* ws) {
  const AttnParams& p = a.p;
  const int64_t D = p.head_dim, Dp = round_up(D, Vec::W), sk = s.sk;
  const int64_t group = p.heads_q / p.heads_k;
  Ws w;
  carve(ws, D, true, sk, pack ? sk : 0, &w);
  for (int64_t x = 0; x < sk * Dp; ++x) w.dk[x] = w.dv[x] = 0.f;
  KV<T> kv(a.k, a.v, b, s.k_off, hk, D, w);
  if (pack && sk > 0) kv.pack(0, sk, w);
  for (int64_t h = hk * group; h < (hk + 1) * group; ++h) {
    const Ctx c(p, s, b, h);
    for (int64_t i0 = 0; i0 < s.sq; i0 += kBQ)
      q_block_grads<true, T>(a, s, c, kv, delta, b, h, i0, min64(kBQ, s.sq - i0), w);
  }
  store_rows(w.dk, Dp, sk, D, p.softmax_scale, head_of<T>(a.dk, b, s.k_off, hk), a.dk.seq_stride);
  store_rows(w.dv, Dp, sk, D, 1.f, head_of<T>(a.dv, b, s.k_off, hk), a.dv.seq_stride);
}
