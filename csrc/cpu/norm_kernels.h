// LayerNorm / RMSNorm row kernels, written once over a vector type and
// compiled per ISA. Included *inside* namespace tforge::cpu::<isa> after the
// definitions of Vec (the ISA's widest fp32 vector) and VecOne (one lane, for
// tails). fp32 accumulation; mean and variance in two passes over the row
// (the row stays in L1/L2) for accuracy on data with a large mean.

// f(V{}, i) over [0, n): Vec-wide steps, then one-lane steps for the tail.
template <class F>
inline void vec_loop(int64_t n, F&& f) {
  int64_t i = 0;
  for (; i + Vec::W <= n; i += Vec::W) f(Vec{}, i);
  for (; i < n; ++i) f(VecOne{}, i);
}

// dst[i] = f(V{}, i) over [0, n). Four vectors are computed before any is
// stored, so the loads never wait behind a store that merely aliases them
// modulo 4 KiB (this halved LayerNorm's time with weight and bias).
template <class T, class F>
inline void vec_map(int64_t n, T* dst, F&& f) {
  int64_t i = 0;
  for (; i + 4 * Vec::W <= n; i += 4 * Vec::W) {
    Vec v0 = f(Vec{}, i), v1 = f(Vec{}, i + Vec::W), v2 = f(Vec{}, i + 2 * Vec::W), v3 = f(Vec{}, i + 3 * Vec::W);
    Vec::store(dst + i, v0);
    Vec::store(dst + i + Vec::W, v1);
    Vec::store(dst + i + 2 * Vec::W, v2);
    Vec::store(dst + i + 3 * Vec::W, v3);
  }
  for (; i + Vec::W <= n; i += Vec::W) Vec::store(dst + i, f(Vec{}, i));
  for (; i < n; ++i) VecOne::store(dst + i, f(VecOne{}, i));
}

// Sum over [0, n) of f(V{}, i) -> V, with four accumulators to hide FMA latency.
template <class F>
inline float vec_sum(int64_t n, F&& f) {
  Vec a0 = Vec::zero(), a1 = Vec::zero(), a2 = Vec::zero(), a3 = Vec::zero();
  int64_t i = 0;
  for (; i + 4 * Vec::W <= n; i += 4 * Vec::W) {
    a0 = a0 + f(Vec{}, i);
    a1 = a1 + f(Vec{}, i + Vec::W);
    a2 = a2 + f(Vec{}, i + 2 * Vec::W);
    a3 = a3 + f(Vec{}, i + 3 * Vec::W);
  }
  for (; i + Vec::W <= n; i += Vec::W) a0 = a0 + f(Vec{}, i);
  float s = ((a0 + a1) + (a2 + a3)).hsum();
  for (; i < n; ++i) s += f(VecOne{}, i).v;
  return s;
}

// Forward over rows [r0, r1). T is float or uint16_t (bf16 bits).
template <class T, bool HAS_W, bool HAS_B>
void norm_fwd_rows_t(const NormFwdArgs& a, int64_t r0, int64_t r1) {
  const int64_t n = a.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const T* w = static_cast<const T*>(a.weight);
  const T* b = static_cast<const T*>(a.bias);
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * a.x_stride;
    if (a.residual) {
      // s = x + residual, rounded to T; the norm is taken of the rounded sum so
      // that normed == norm(residual_out) exactly.
      const T* res = static_cast<const T*>(a.residual) + r * a.residual_stride;
      T* s = static_cast<T*>(a.residual_out) + r * n;
      vec_map(n, s, [&](auto tag, int64_t i) {
        using V = decltype(tag);
        return V::load(x + i) + V::load(res + i);
      });
      x = s;
    }
    float mean = 0.f, var;
    if (a.rms) {
      var = vec_sum(n, [&](auto tag, int64_t i) {
              using V = decltype(tag);
              V v = V::load(x + i);
              return v * v;
            }) * inv_n;
    } else {
      mean = vec_sum(n, [&](auto tag, int64_t i) { return decltype(tag)::load(x + i); }) * inv_n;
      var = vec_sum(n, [&](auto tag, int64_t i) {
              using V = decltype(tag);
              V d = V::load(x + i) - V::set1(mean);
              return d * d;
            }) * inv_n;
      a.mean[r] = mean;
    }
    const float rstd = 1.f / __builtin_sqrtf(var + a.eps);
    a.rstd[r] = rstd;
    T* y = static_cast<T*>(a.y) + r * n;
    auto out = [&](auto tag, int64_t i) {
      using V = decltype(tag);
      V v = (V::load(x + i) - V::set1(mean)) * V::set1(rstd);
      if constexpr (HAS_W && HAS_B) v = V::fma(v, V::load(w + i), V::load(b + i));
      else if constexpr (HAS_W) v = v * V::load(w + i);
      else if constexpr (HAS_B) v = v + V::load(b + i);
      return v;
    };
    vec_map(n, y, out);
  }
}

// Backward over rows [r0, r1): dx for each row; dy*xhat and dy summed per
// column into the fp32 buffers dw_acc / db_acc (the caller reduces them).
template <class T, bool HAS_W>
void norm_bwd_rows_t(const NormBwdArgs& a, int64_t r0, int64_t r1, float* dw_acc, float* db_acc) {
  const int64_t n = a.cols;
  const float inv_n = 1.f / static_cast<float>(n);
  const T* w = static_cast<const T*>(a.weight);
  for (int64_t r = r0; r < r1; ++r) {
    const T* x = static_cast<const T*>(a.x) + r * a.x_stride;
    const T* dy = static_cast<const T*>(a.dy) + r * a.dy_stride;
    const T* dres = a.dresidual_out ? static_cast<const T*>(a.dresidual_out) + r * a.dres_stride : nullptr;
    T* dx = static_cast<T*>(a.dx) + r * n;
    const float mean = a.rms ? 0.f : a.mean[r];
    const float rstd = a.rstd[r];
    // g = dy * w, xhat = (x - mean) * rstd
    auto g_of = [&](auto tag, int64_t i) {
      using V = decltype(tag);
      if constexpr (HAS_W) return V::load(dy + i) * V::load(w + i);
      else return V::load(dy + i);
    };
    auto xhat_of = [&](auto tag, int64_t i) {
      using V = decltype(tag);
      return (V::load(x + i) - V::set1(mean)) * V::set1(rstd);
    };
    const float c1 = vec_sum(n, [&](auto tag, int64_t i) { return g_of(tag, i) * xhat_of(tag, i); }) * inv_n;
    const float c2 = a.rms ? 0.f : vec_sum(n, g_of) * inv_n;
    vec_loop(n, [&](auto tag, int64_t i) {
      using V = decltype(tag);
      V xh = xhat_of(tag, i);
      V d = V::set1(rstd) * (g_of(tag, i) - V::set1(c2) - xh * V::set1(c1));
      if (dres) d = d + V::load(dres + i);
      V::store(dx + i, d);
      if (dw_acc) V::store(dw_acc + i, V::fma(V::load(dy + i), xh, V::load(dw_acc + i)));
      if (db_acc) V::store(db_acc + i, V::load(db_acc + i) + V::load(dy + i));
    });
  }
}

template <class T>
void norm_fwd_rows_dtype(const NormFwdArgs& a, int64_t r0, int64_t r1) {
  if (a.weight && a.bias) norm_fwd_rows_t<T, true, true>(a, r0, r1);
  else if (a.weight) norm_fwd_rows_t<T, true, false>(a, r0, r1);
  else if (a.bias) norm_fwd_rows_t<T, false, true>(a, r0, r1);
  else norm_fwd_rows_t<T, false, false>(a, r0, r1);
}

void norm_fwd_rows(const NormFwdArgs& a, int64_t r0, int64_t r1) {
  if (a.dtype == kFloat32) norm_fwd_rows_dtype<float>(a, r0, r1);
  else norm_fwd_rows_dtype<uint16_t>(a, r0, r1);
}

void norm_bwd_rows(const NormBwdArgs& a, int64_t r0, int64_t r1, float* dw_acc, float* db_acc) {
  if (a.dtype == kFloat32) {
    if (a.weight) norm_bwd_rows_t<float, true>(a, r0, r1, dw_acc, db_acc);
    else norm_bwd_rows_t<float, false>(a, r0, r1, dw_acc, db_acc);
  } else {
    if (a.weight) norm_bwd_rows_t<uint16_t, true>(a, r0, r1, dw_acc, db_acc);
    else norm_bwd_rows_t<uint16_t, false>(a, r0, r1, dw_acc, db_acc);
  }
}
