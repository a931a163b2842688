// Cross-entropy row kernels, written once over a vector type and compiled per ISA. Included *inside*
// namespace tforge::cpu::<isa> after Vec (the ISA's widest fp32 vector), VecOne, and these hooks, for
// both Vec and VecOne:
//   V vmax(V a, V b);    // lane-wise max; NaN when b is NaN
//   V vexp(V x);         // e^x to ~2 ulp for x <= 88; 0 below -87.3 and at -inf; NaN stays NaN
//   V vninf0(V x);       // x, with -inf replaced by 0
//   float hmax(V x);     // the largest lane
//
// A row's logsumexp is kept as (m, ls): its max and ls = log(sum exp(x - m)) (x - lse is formed as
// (x - m) - ls: m + ls rounds where |x| is large). Without a gradient the row is read once: each lane
// keeps a running max and exp-sum, updated per block of four vectors (one rescaling exp per block, one
// exp per element), and the lanes are merged at the end. With a gradient, three passes over the row,
// one exp per element: its max (the only read from memory), e = exp(x - m) stored in fp32 (in the
// gradient itself for fp32 logits, else in a per-thread row buffer) while summed, then
// (e / sum - onehot) * scale written over it, the row and e in L1/L2. A lane that has seen only -inf
// subtracts 0 instead of its max, so exp(-inf) is 0 and no NaN appears; a NaN logit makes the sum NaN
// and so the loss and gradient.

namespace {

constexpr float kNegInf = -__builtin_inff();

// The running max and exp-sum of one lane set.
template <class V>
struct Online {
  V m = V::set1(kNegInf), s = V::zero();

  // Takes a block whose lane-wise max is bm; returns what to subtract from the block before exp.
  V fold(V bm) {
    const V mn = vmax(m, bm);
    const V shift = vninf0(mn);
    s = s * vexp(m - shift);
    m = mn;
    return shift;
  }
};

// A row's logsumexp as (max, log of sum exp(x - max)).
struct RowLse {
  float m, ls;
};

template <class T>
RowLse row_lse(const T* x, int64_t n) {
  float m = kNegInf, s = 0.f;
  int64_t i = 0;
  if (n >= Vec::W) {
    Online<Vec> o;
    for (; i + 4 * Vec::W <= n; i += 4 * Vec::W) {
      const Vec x0 = Vec::load(x + i), x1 = Vec::load(x + i + Vec::W), x2 = Vec::load(x + i + 2 * Vec::W),
                x3 = Vec::load(x + i + 3 * Vec::W);
      const Vec sh = o.fold(vmax(vmax(x0, x1), vmax(x2, x3)));
      o.s = o.s + ((vexp(x0 - sh) + vexp(x1 - sh)) + (vexp(x2 - sh) + vexp(x3 - sh)));
    }
    for (; i + Vec::W <= n; i += Vec::W) {
      const Vec x0 = Vec::load(x + i);
      o.s = o.s + vexp(x0 - o.fold(x0));
    }
    m = hmax(o.m);
    s = (o.s * vexp(o.m - Vec::set1(m == kNegInf ? 0.f : m))).hsum();
  }
  Online<VecOne> t{VecOne{m}, VecOne{s}};
  for (; i < n; ++i) {
    const VecOne xi = VecOne::load(x + i);
    t.s = t.s + vexp(xi - t.fold(xi));
  }
  return {t.m.v, __builtin_logf(t.s.v)};
}

template <class T>
float row_max(const T* x, int64_t n) {
  float m = kNegInf;
  int64_t i = 0;
  if (n >= Vec::W) {
    Vec a0 = Vec::set1(kNegInf), a1 = a0;
    for (; i + 2 * Vec::W <= n; i += 2 * Vec::W) {
      a0 = vmax(a0, Vec::load(x + i));
      a1 = vmax(a1, Vec::load(x + i + Vec::W));
    }
    for (; i + Vec::W <= n; i += Vec::W) a0 = vmax(a0, Vec::load(x + i));
    m = hmax(vmax(a0, a1));
  }
  for (; i < n; ++i) m = vmax(VecOne{m}, VecOne::load(x + i)).v;
  return m;
}

// e[i] = exp(x[i] - sh) over [0, n); returns their sum (four accumulators).
template <class T>
float exp_store(const T* x, float* e, int64_t n, float sh) {
  const Vec s = Vec::set1(sh);
  Vec a0 = Vec::zero(), a1 = a0, a2 = a0, a3 = a0;
  int64_t i = 0;
  for (; i + 4 * Vec::W <= n; i += 4 * Vec::W) {
    const Vec e0 = vexp(Vec::load(x + i) - s), e1 = vexp(Vec::load(x + i + Vec::W) - s),
              e2 = vexp(Vec::load(x + i + 2 * Vec::W) - s), e3 = vexp(Vec::load(x + i + 3 * Vec::W) - s);
    Vec::store(e + i, e0);
    Vec::store(e + i + Vec::W, e1);
    Vec::store(e + i + 2 * Vec::W, e2);
    Vec::store(e + i + 3 * Vec::W, e3);
    a0 = a0 + e0;
    a1 = a1 + e1;
    a2 = a2 + e2;
    a3 = a3 + e3;
  }
  for (; i + Vec::W <= n; i += Vec::W) {
    const Vec e0 = vexp(Vec::load(x + i) - s);
    Vec::store(e + i, e0);
    a0 = a0 + e0;
  }
  float sum = ((a0 + a1) + (a2 + a3)).hsum();
  for (; i < n; ++i) {
    e[i] = vexp(VecOne::load(x + i) - VecOne::set1(sh)).v;
    sum += e[i];
  }
  return sum;
}

// dst[i] = f(V{}, i) over [0, n), four vectors computed before any is stored (so that loads do not
// wait behind stores that alias them modulo 4 KiB).
template <class T, class F>
inline void map_row(int64_t n, T* dst, F&& f) {
  int64_t i = 0;
  for (; i + 4 * Vec::W <= n; i += 4 * Vec::W) {
    const Vec v0 = f(Vec{}, i), v1 = f(Vec{}, i + Vec::W), v2 = f(Vec{}, i + 2 * Vec::W),
              v3 = f(Vec{}, i + 3 * Vec::W);
    Vec::store(dst + i, v0);
    Vec::store(dst + i + Vec::W, v1);
    Vec::store(dst + i + 2 * Vec::W, v2);
    Vec::store(dst + i + 3 * Vec::W, v3);
  }
  for (; i + Vec::W <= n; i += Vec::W) Vec::store(dst + i, f(Vec{}, i));
  for (; i < n; ++i) VecOne::store(dst + i, f(VecOne{}, i));
}

// g[0, n) = (exp((x - m) - ls) - onehot(target)) * scale.
template <class T>
void write_grad(const T* x, T* g, int64_t n, RowLse l, float scale, int64_t target) {
  map_row(n, g, [&](auto tag, int64_t i) {
    using V = decltype(tag);
    return vexp((V::load(x + i) - V::set1(l.m)) - V::set1(l.ls)) * V::set1(scale);
  });
  const float p = vexp((VecOne::load(x + target) - VecOne::set1(l.m)) - VecOne::set1(l.ls)).v;
  VecOne::store(g + target, VecOne{(p - 1.f) * scale});
}

template <class T>
void zero_row(T* g, int64_t n) {
  __builtin_memset(g, 0, static_cast<size_t>(n) * sizeof(T));
}

// The forward with a gradient: (m, ls) of the row, and g = (softmax - onehot) * scale. e: fp32 [n]
// scratch (g itself when T is float).
template <class T>
RowLse fused_row(const T* x, T* g, float* e, int64_t n, float scale, int64_t target) {
  const float m = row_max(x, n);
  const float sum = exp_store(x, e, n, m == kNegInf ? 0.f : m);
  const float k = scale / sum, p_target = e[target] / sum;  // (e may be g: read before it is overwritten)
  map_row(n, g, [&](auto tag, int64_t i) {
    using V = decltype(tag);
    return V::load(e + i) * V::set1(k);
  });
  VecOne::store(g + target, VecOne{(p_target - 1.f) * scale});
  return {m, __builtin_logf(sum)};
}

template <class T>
void fwd_rows_t(const CrossEntropyArgs& a, int64_t r0, int64_t r1) {
  // bf16 rows need an fp32 row for exp(x - m) (g holds it for fp32).
  float* scratch = nullptr;
  if constexpr (!std::is_same_v<T, float>) {
    if (a.grad) scratch = static_cast<float*>(std::malloc(static_cast<size_t>(a.cols) * sizeof(float)));
  }
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t t = a.target_at(r);
    T* g = a.grad ? static_cast<T*>(a.grad) + r * a.cols : nullptr;
    if (t == a.ignore_index) {
      a.loss[r] = 0.f;
      if (a.row_max) a.row_max[r] = a.row_logsum[r] = 0.f;
      if (g) zero_row(g, a.cols);
      continue;
    }
    const T* x = static_cast<const T*>(a.logits) + r * a.logits_stride;
    float* e = nullptr;
    if constexpr (std::is_same_v<T, float>) e = g;
    else e = scratch;
    RowLse l;
    if (g && e) {
      l = fused_row(x, g, e, a.cols, a.grad_scale, t);
    } else {
      l = row_lse(x, a.cols);
      if (g) write_grad(x, g, a.cols, l, a.grad_scale, t);  // (no scratch memory: two exps per element)
    }
    a.loss[r] = (l.m - VecOne::load(x + t).v) + l.ls;
    if (a.row_max) {
      a.row_max[r] = l.m;
      a.row_logsum[r] = l.ls;
    }
  }
  std::free(scratch);
}

template <class T>
void bwd_rows_t(const CrossEntropyArgs& a, int64_t r0, int64_t r1) {
  for (int64_t r = r0; r < r1; ++r) {
    const int64_t t = a.target_at(r);
    T* g = static_cast<T*>(a.grad) + r * a.cols;
    if (t == a.ignore_index) {
      zero_row(g, a.cols);
      continue;
    }
    write_grad(static_cast<const T*>(a.logits) + r * a.logits_stride, g, a.cols, RowLse{a.row_max[r], a.row_logsum[r]},
               a.row_scale[r], t);
  }
}

}  // namespace

void cross_entropy_fwd_rows(const CrossEntropyArgs& a, int64_t r0, int64_t r1) {
  if (a.dtype == kFloat32) fwd_rows_t<float>(a, r0, r1);
  else fwd_rows_t<uint16_t>(a, r0, r1);
}

void cross_entropy_bwd_rows(const CrossEntropyArgs& a, int64_t r0, int64_t r1) {
  if (a.dtype == kFloat32) bwd_rows_t<float>(a, r0, r1);
  else bwd_rows_t<uint16_t>(a, r0, r1);
}
