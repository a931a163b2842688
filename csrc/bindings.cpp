// tforge._C: one pybind11 module, deliberately thin. Each entry takes raw
// pointers (ints), sizes, strides and a dtype code from tforge/_native.py,
// builds an argument block, releases the GIL and calls the checked kernel
// entry. Errors become Python exceptions (std::invalid_argument -> ValueError,
// std::runtime_error -> RuntimeError). No libtorch: one build serves every
// torch version. Built twice: as tforge._C, and with TFORGE_EMULATOR as
// tforge._emu, whose *_cuda entries run the same CUDA sources on the CPU
// under the warp-level emulator (csrc/emu).
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/dtype.h"

#include "common/attention_args.h"
#include "common/cpu_features.h"
#include "common/norm_args.h"
#include "common/int8_args.h"
#include "common/sparse24_args.h"
#include "cpu/attention.h"
#include "cpu/int8.h"
#include "cpu/norm.h"
#include "cpu/sparse24.h"
#if defined(TFORGE_WITH_CUDA)
#include "cuda/attention.h"
#include "cuda/int8.h"
#include "cuda/norm.h"
#include "cuda/sparse24.h"
#endif

namespace py = pybind11;
using tforge::NormBwdArgs;
using tforge::NormFwdArgs;

namespace {

template <class P>
P* ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

NormFwdArgs fwd_args(bool rms, uintptr_t x, int64_t x_stride, uintptr_t residual, int64_t residual_stride,
                     uintptr_t weight, uintptr_t bias, uintptr_t y, uintptr_t residual_out, uintptr_t mean,
                     uintptr_t rstd, int64_t rows, int64_t cols, double eps, int dtype) {
  NormFwdArgs a;
  a.x = ptr<const void>(x);
  a.x_stride = x_stride;
  a.residual = ptr<const void>(residual);
  a.residual_stride = residual_stride;
  a.weight = ptr<const void>(weight);
  a.bias = ptr<const void>(bias);
  a.y = ptr<void>(y);
  a.residual_out = ptr<void>(residual_out);
  a.mean = ptr<float>(mean);
  a.rstd = ptr<float>(rstd);
  a.rows = rows;
  a.cols = cols;
  a.eps = static_cast<float>(eps);
  a.dtype = dtype;
  a.rms = rms;
  return a;
}

NormBwdArgs bwd_args(bool rms, uintptr_t dy, int64_t dy_stride, uintptr_t dres, int64_t dres_stride, uintptr_t x,
                     int64_t x_stride, uintptr_t weight, uintptr_t mean, uintptr_t rstd, uintptr_t dx,
                     uintptr_t dweight, uintptr_t dbias, int64_t rows, int64_t cols, int dtype) {
  NormBwdArgs a;
  a.dy = ptr<const void>(dy);
  a.dy_stride = dy_stride;
  a.dresidual_out = ptr<const void>(dres);
  a.dres_stride = dres_stride;
  a.x = ptr<const void>(x);
  a.x_stride = x_stride;
  a.weight = ptr<const void>(weight);
  a.mean = ptr<const float>(mean);
  a.rstd = ptr<const float>(rstd);
  a.dx = ptr<void>(dx);
  a.dweight = ptr<void>(dweight);
  a.dbias = ptr<void>(dbias);
  a.rows = rows;
  a.cols = cols;
  a.dtype = dtype;
  a.rms = rms;
  return a;
}

#define TF_FWD_ARGS                                                                                        \
  py::arg("x"), py::arg("x_stride"), py::arg("residual"), py::arg("residual_stride"), py::arg("weight"),   \
      py::arg("bias"), py::arg("y"), py::arg("residual_out"), py::arg("mean"), py::arg("rstd"),            \
      py::arg("rows"), py::arg("cols"), py::arg("eps"), py::arg("dtype")
#define TF_BWD_ARGS                                                                                        \
  py::arg("dy"), py::arg("dy_stride"), py::arg("dresidual_out"), py::arg("dres_stride"), py::arg("x"),     \
      py::arg("x_stride"), py::arg("weight"), py::arg("mean"), py::arg("rstd"), py::arg("dx"),             \
      py::arg("dweight"), py::arg("dbias"), py::arg("rows"), py::arg("cols"), py::arg("dtype")

void def_norm(py::module_& m, const std::string& name, bool rms) {
  m.def(
      (name + "_fwd_cpu").c_str(),
      [rms](uintptr_t x, int64_t xs, uintptr_t res, int64_t rs, uintptr_t w, uintptr_t b, uintptr_t y,
            uintptr_t ro, uintptr_t mean, uintptr_t rstd, int64_t rows, int64_t cols, double eps, int dtype,
            int threads) {
        tforge::cpu::norm_fwd(fwd_args(rms, x, xs, res, rs, w, b, y, ro, mean, rstd, rows, cols, eps, dtype),
                              threads);
      },
      TF_FWD_ARGS, py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def(
      (name + "_bwd_cpu").c_str(),
      [rms](uintptr_t dy, int64_t dys, uintptr_t dres, int64_t drs, uintptr_t x, int64_t xs, uintptr_t w,
            uintptr_t mean, uintptr_t rstd, uintptr_t dx, uintptr_t dw, uintptr_t db, int64_t rows, int64_t cols,
            int dtype, int threads) {
        tforge::cpu::norm_bwd(
            bwd_args(rms, dy, dys, dres, drs, x, xs, w, mean, rstd, dx, dw, db, rows, cols, dtype), threads);
      },
      TF_BWD_ARGS, py::arg("threads"), py::call_guard<py::gil_scoped_release>());
#if defined(TFORGE_WITH_CUDA)
  m.def(
      (name + "_fwd_cuda").c_str(),
      [rms](uintptr_t x, int64_t xs, uintptr_t res, int64_t rs, uintptr_t w, uintptr_t b, uintptr_t y,
            uintptr_t ro, uintptr_t mean, uintptr_t rstd, int64_t rows, int64_t cols, double eps, int dtype,
            int device, uintptr_t stream) {
        tforge::cuda::norm_fwd(fwd_args(rms, x, xs, res, rs, w, b, y, ro, mean, rstd, rows, cols, eps, dtype),
                               device, stream);
      },
      TF_FWD_ARGS, py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def(
      (name + "_bwd_cuda_workspace").c_str(),
      [rms](int64_t rows, int64_t cols, bool has_dweight, bool has_dbias, int dtype, int device) {
        NormBwdArgs a;
        a.rows = rows;
        a.cols = cols;
        a.dtype = dtype;
        a.rms = rms;
        // Only presence matters for the size; any non-null marker will do.
        a.dweight = has_dweight ? reinterpret_cast<void*>(1) : nullptr;
        a.dbias = has_dbias ? reinterpret_cast<void*>(1) : nullptr;
        return tforge::cuda::norm_bwd_workspace_floats(a, device);
      },
      py::arg("rows"), py::arg("cols"), py::arg("has_dweight"), py::arg("has_dbias"), py::arg("dtype"),
      py::arg("device"), py::call_guard<py::gil_scoped_release>());
  m.def(
      (name + "_bwd_cuda").c_str(),
      [rms](uintptr_t dy, int64_t dys, uintptr_t dres, int64_t drs, uintptr_t x, int64_t xs, uintptr_t w,
            uintptr_t mean, uintptr_t rstd, uintptr_t dx, uintptr_t dw, uintptr_t db, int64_t rows, int64_t cols,
            int dtype, uintptr_t workspace, int64_t workspace_floats, int device, uintptr_t stream) {
        tforge::cuda::norm_bwd(
            bwd_args(rms, dy, dys, dres, drs, x, xs, w, mean, rstd, dx, dw, db, rows, cols, dtype),
            ptr<float>(workspace), workspace_floats, device, stream);
      },
      TF_BWD_ARGS, py::arg("workspace"), py::arg("workspace_floats"), py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
#endif
}

// ---- attention: tensors come as (pointer, batch stride, seq stride, head stride)
// tuples and the scalar parameters as a dict (parsed with the GIL held).

template <class T>
T attn_tensor(const py::tuple& t, const char* name) {
  if (t.size() != 4)
    throw std::invalid_argument(std::string("tforge._C: ") + name +
                                " must be (pointer, batch_stride, seq_stride, head_stride)");
  T out;
  using P = decltype(out.ptr);
  out.ptr = reinterpret_cast<P>(t[0].cast<uintptr_t>());
  out.batch_stride = t[1].cast<int64_t>();
  out.seq_stride = t[2].cast<int64_t>();
  out.head_stride = t[3].cast<int64_t>();
  return out;
}

template <class T>
T get(const py::dict& d, const char* key) {
  if (!d.contains(key)) throw std::invalid_argument(std::string("tforge._C: attention params lack '") + key + "'");
  return d[key].cast<T>();
}

tforge::AttnParams attn_params(const py::dict& d) {
  tforge::AttnParams p;
  p.batch = get<int64_t>(d, "batch");
  p.seqlen_q = get<int64_t>(d, "seqlen_q");
  p.seqlen_k = get<int64_t>(d, "seqlen_k");
  p.heads_q = get<int64_t>(d, "heads_q");
  p.heads_k = get<int64_t>(d, "heads_k");
  p.head_dim = get<int64_t>(d, "head_dim");
  p.cu_seqlens_q = ptr<const int32_t>(get<uintptr_t>(d, "cu_seqlens_q"));
  p.cu_seqlens_k = ptr<const int32_t>(get<uintptr_t>(d, "cu_seqlens_k"));
  p.total_q = get<int64_t>(d, "total_q");
  p.total_k = get<int64_t>(d, "total_k");
  p.softmax_scale = static_cast<float>(get<double>(d, "softmax_scale"));
  p.causal = get<bool>(d, "causal");
  p.window_left = get<int64_t>(d, "window_left");
  p.window_right = get<int64_t>(d, "window_right");
  p.bias = ptr<const float>(get<uintptr_t>(d, "bias"));
  auto bs = get<py::tuple>(d, "bias_strides");
  if (bs.size() != 4) throw std::invalid_argument("tforge._C: bias_strides must have 4 entries");
  p.bias_batch_stride = bs[0].cast<int64_t>();
  p.bias_head_stride = bs[1].cast<int64_t>();
  p.bias_q_stride = bs[2].cast<int64_t>();
  p.bias_k_stride = bs[3].cast<int64_t>();
  p.dtype = get<int>(d, "dtype");
  return p;
}

tforge::AttnFwdArgs attn_fwd_args(const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out,
                                  uintptr_t lse, const py::dict& params) {
  tforge::AttnFwdArgs a;
  a.p = attn_params(params);
  a.q = attn_tensor<tforge::AttnTensor>(q, "q");
  a.k = attn_tensor<tforge::AttnTensor>(k, "k");
  a.v = attn_tensor<tforge::AttnTensor>(v, "v");
  a.out = attn_tensor<tforge::AttnOutTensor>(out, "out");
  a.lse = ptr<float>(lse);
  return a;
}

tforge::AttnBwdArgs attn_bwd_args(const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out,
                                  const py::tuple& dout, uintptr_t lse, const py::tuple& dq, const py::tuple& dk,
                                  const py::tuple& dv, const py::dict& params, bool deterministic) {
  tforge::AttnBwdArgs a;
  a.p = attn_params(params);
  a.q = attn_tensor<tforge::AttnTensor>(q, "q");
  a.k = attn_tensor<tforge::AttnTensor>(k, "k");
  a.v = attn_tensor<tforge::AttnTensor>(v, "v");
  a.out = attn_tensor<tforge::AttnTensor>(out, "out");
  a.dout = attn_tensor<tforge::AttnTensor>(dout, "dout");
  a.lse = ptr<const float>(lse);
  a.dq = attn_tensor<tforge::AttnOutTensor>(dq, "dq");
  a.dk = attn_tensor<tforge::AttnOutTensor>(dk, "dk");
  a.dv = attn_tensor<tforge::AttnOutTensor>(dv, "dv");
  a.deterministic = deterministic;
  return a;
}

#define TF_ATTN_FWD_ARGS py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("params")
#define TF_ATTN_BWD_ARGS                                                                                      \
  py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("dq"),   \
      py::arg("dk"), py::arg("dv"), py::arg("params"), py::arg("deterministic")

void def_attention(py::module_& m) {
  m.def(
      "attention_fwd_cpu",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, uintptr_t lse,
         const py::dict& params, int threads) {
        auto a = attn_fwd_args(q, k, v, out, lse, params);
        py::gil_scoped_release release;
        tforge::cpu::attention_fwd(a, threads);
      },
      TF_ATTN_FWD_ARGS, py::arg("threads"));
  m.def(
      "attention_bwd_cpu",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, const py::tuple& dout,
         uintptr_t lse, const py::tuple& dq, const py::tuple& dk, const py::tuple& dv, const py::dict& params,
         bool deterministic, int threads) {
        auto a = attn_bwd_args(q, k, v, out, dout, lse, dq, dk, dv, params, deterministic);
        py::gil_scoped_release release;
        tforge::cpu::attention_bwd(a, threads);
      },
      TF_ATTN_BWD_ARGS, py::arg("threads"));
#if defined(TFORGE_WITH_CUDA)
  m.def("attention_cuda_supported", [](int64_t head_dim, int dtype) {
    return tforge::cuda::attention_supported(head_dim, dtype);
  });
  m.def(
      "attention_fwd_cuda",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, uintptr_t lse,
         const py::dict& params, int device, uintptr_t stream) {
        auto a = attn_fwd_args(q, k, v, out, lse, params);
        py::gil_scoped_release release;
        tforge::cuda::attention_fwd(a, device, stream);
      },
      TF_ATTN_FWD_ARGS, py::arg("device"), py::arg("stream"));
  m.def(
      "attention_bwd_cuda_workspace",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, const py::tuple& dout,
         uintptr_t lse, const py::tuple& dq, const py::tuple& dk, const py::tuple& dv, const py::dict& params,
         bool deterministic, int device) {
        auto a = attn_bwd_args(q, k, v, out, dout, lse, dq, dk, dv, params, deterministic);
        return tforge::cuda::attention_bwd_workspace_floats(a, device);
      },
      TF_ATTN_BWD_ARGS, py::arg("device"));
  m.def(
      "attention_bwd_cuda",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, const py::tuple& dout,
         uintptr_t lse, const py::tuple& dq, const py::tuple& dk, const py::tuple& dv, const py::dict& params,
         bool deterministic, uintptr_t workspace, int64_t workspace_floats, int device, uintptr_t stream) {
        auto a = attn_bwd_args(q, k, v, out, dout, lse, dq, dk, dv, params, deterministic);
        py::gil_scoped_release release;
        tforge::cuda::attention_bwd(a, ptr<float>(workspace), workspace_floats, device, stream);
      },
      TF_ATTN_BWD_ARGS, py::arg("workspace"), py::arg("workspace_floats"), py::arg("device"), py::arg("stream"));
#else
  m.def("attention_cuda_supported", [](int64_t, int) { return false; });
#endif
  m.def("attention_cuda_head_dims", []() {
    py::list dims;
#if defined(TFORGE_WITH_CUDA)
    for (int64_t d : {32, 64, 96, 128, 256})
      if (tforge::cuda::attention_supported(d, tforge::kBFloat16)) dims.append(d);
#endif
    return dims;
  });
}

// ---- int8: GEMM (int32 out or fused dequantising epilogue) and per-row quantisation.

tforge::Int8GemmArgs gemm_args(uintptr_t a, int64_t a_stride, uintptr_t b, int64_t b_stride, int64_t M, int64_t N,
                               int64_t K, uintptr_t c_i32, uintptr_t c, int out_dtype, uintptr_t a_scale,
                               uintptr_t b_scale, uintptr_t bias) {
  tforge::Int8GemmArgs g;
  g.a = ptr<const int8_t>(a);
  g.a_stride = a_stride;
  g.b = ptr<const int8_t>(b);
  g.b_stride = b_stride;
  g.M = M;
  g.N = N;
  g.K = K;
  g.c_i32 = ptr<int32_t>(c_i32);
  g.c = ptr<void>(c);
  g.out_dtype = out_dtype;
  g.a_scale = ptr<const float>(a_scale);
  g.b_scale = ptr<const float>(b_scale);
  g.bias = ptr<const float>(bias);
  return g;
}

tforge::QuantizeRowsArgs quant_args(uintptr_t x, int64_t x_stride, int64_t rows, int64_t cols, int dtype, uintptr_t q,
                                    uintptr_t scale, uintptr_t col_scale = 0) {
  tforge::QuantizeRowsArgs r;
  r.x = ptr<const void>(x);
  r.x_stride = x_stride;
  r.rows = rows;
  r.cols = cols;
  r.dtype = dtype;
  r.q = ptr<int8_t>(q);
  r.scale = ptr<float>(scale);
  r.col_scale = ptr<const float>(col_scale);
  return r;
}

#define TF_GEMM_ARGS                                                                                          \
  py::arg("a"), py::arg("a_stride"), py::arg("b"), py::arg("b_stride"), py::arg("M"), py::arg("N"),           \
      py::arg("K"), py::arg("c_i32"), py::arg("c"), py::arg("out_dtype"), py::arg("a_scale"), py::arg("b_scale"), \
      py::arg("bias")
#define TF_QUANT_ARGS \
  py::arg("x"), py::arg("x_stride"), py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("q"), py::arg("scale")

void def_int8(py::module_& m) {
  m.def(
      "int8_gemm_cpu",
      [](uintptr_t a, int64_t as, uintptr_t b, int64_t bs, int64_t M, int64_t N, int64_t K, uintptr_t ci,
         uintptr_t c, int od, uintptr_t asc, uintptr_t bsc, uintptr_t bias, int threads) {
        tforge::cpu::int8_gemm(gemm_args(a, as, b, bs, M, N, K, ci, c, od, asc, bsc, bias), threads);
      },
      TF_GEMM_ARGS, py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "quantize_rows_cpu",
      [](uintptr_t x, int64_t xs, int64_t rows, int64_t cols, int dtype, uintptr_t q, uintptr_t scale, int threads,
         uintptr_t col_scale) {
        tforge::cpu::quantize_rows(quant_args(x, xs, rows, cols, dtype, q, scale, col_scale), threads);
      },
      TF_QUANT_ARGS, py::arg("threads"), py::arg("col_scale") = 0, py::call_guard<py::gil_scoped_release>());
#if defined(TFORGE_WITH_CUDA)
  m.def(
      "int8_gemm_cuda",
      [](uintptr_t a, int64_t as, uintptr_t b, int64_t bs, int64_t M, int64_t N, int64_t K, uintptr_t ci,
         uintptr_t c, int od, uintptr_t asc, uintptr_t bsc, uintptr_t bias, int device, uintptr_t stream) {
        tforge::cuda::int8_gemm(gemm_args(a, as, b, bs, M, N, K, ci, c, od, asc, bsc, bias), device, stream);
      },
      TF_GEMM_ARGS, py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "quantize_rows_cuda",
      [](uintptr_t x, int64_t xs, int64_t rows, int64_t cols, int dtype, uintptr_t q, uintptr_t scale, int device,
         uintptr_t stream) {
        tforge::cuda::quantize_rows(quant_args(x, xs, rows, cols, dtype, q, scale), device, stream);
      },
      TF_QUANT_ARGS, py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
#endif
}

// ---- 2:4 sparsity: sparse linear from the packed form, and N:M masks.

tforge::Sparse24LinearArgs s24_args(uintptr_t x, int64_t x_stride, uintptr_t values, uintptr_t meta, int64_t M,
                                    int64_t N, int64_t K, int dtype, int values_dtype, uintptr_t y, int64_t y_stride,
                                    uintptr_t bias, uintptr_t scale) {
  tforge::Sparse24LinearArgs a;
  a.x = ptr<const void>(x);
  a.x_stride = x_stride;
  a.values = ptr<const void>(values);
  a.meta = ptr<const uint8_t>(meta);
  a.M = M;
  a.N = N;
  a.K = K;
  a.dtype = dtype;
  a.values_dtype = values_dtype;
  a.y = ptr<void>(y);
  a.y_stride = y_stride;
  a.bias = ptr<const float>(bias);
  a.scale = ptr<const float>(scale);
  return a;
}

tforge::NMMaskArgs nm_args(uintptr_t scores, int64_t s_stride, int64_t rows, int64_t cols, int dtype, int n, int m,
                           uintptr_t mask) {
  tforge::NMMaskArgs a;
  a.scores = ptr<const void>(scores);
  a.s_stride = s_stride;
  a.rows = rows;
  a.cols = cols;
  a.dtype = dtype;
  a.n = n;
  a.m = m;
  a.mask = ptr<uint8_t>(mask);
  return a;
}

#define TF_S24_ARGS                                                                                           \
  py::arg("x"), py::arg("x_stride"), py::arg("values"), py::arg("meta"), py::arg("M"), py::arg("N"),          \
      py::arg("K"), py::arg("dtype"), py::arg("values_dtype"), py::arg("y"), py::arg("y_stride"),             \
      py::arg("bias"), py::arg("scale")
#define TF_NM_ARGS                                                                                            \
  py::arg("scores"), py::arg("s_stride"), py::arg("rows"), py::arg("cols"), py::arg("dtype"), py::arg("n"),   \
      py::arg("m"), py::arg("mask")

void def_sparse24(py::module_& m) {
  m.def(
      "sparse24_linear_cpu",
      [](uintptr_t x, int64_t xs, uintptr_t values, uintptr_t meta, int64_t M, int64_t N, int64_t K, int dtype,
         int values_dtype, uintptr_t y, int64_t ys, uintptr_t bias, uintptr_t scale, int threads) {
        tforge::cpu::sparse24_linear(
            s24_args(x, xs, values, meta, M, N, K, dtype, values_dtype, y, ys, bias, scale), threads);
      },
      TF_S24_ARGS, py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "nm_mask_cpu",
      [](uintptr_t scores, int64_t ss, int64_t rows, int64_t cols, int dtype, int n, int mm, uintptr_t mask,
         int threads) { tforge::cpu::nm_mask(nm_args(scores, ss, rows, cols, dtype, n, mm, mask), threads); },
      TF_NM_ARGS, py::arg("threads"), py::call_guard<py::gil_scoped_release>());
  m.def("sparse24_cpu_isa", &tforge::cpu::sparse24_kernel_isa,
        "sparse24_linear CPU kernel set chosen at run time: 'avx2' or 'scalar'");
#if defined(TFORGE_WITH_CUDA)
  m.def(
      "sparse24_linear_cuda_workspace",
      [](uintptr_t x, int64_t xs, uintptr_t values, uintptr_t meta, int64_t M, int64_t N, int64_t K, int dtype,
         int values_dtype, uintptr_t y, int64_t ys, uintptr_t bias, uintptr_t scale, int device) {
        return tforge::cuda::sparse24_linear_workspace_bytes(
            s24_args(x, xs, values, meta, M, N, K, dtype, values_dtype, y, ys, bias, scale), device);
      },
      TF_S24_ARGS, py::arg("device"), py::call_guard<py::gil_scoped_release>());
  m.def(
      "sparse24_linear_cuda",
      [](uintptr_t x, int64_t xs, uintptr_t values, uintptr_t meta, int64_t M, int64_t N, int64_t K, int dtype,
         int values_dtype, uintptr_t y, int64_t ys, uintptr_t bias, uintptr_t scale, uintptr_t workspace,
         int64_t workspace_bytes, int device, uintptr_t stream) {
        tforge::cuda::sparse24_linear(
            s24_args(x, xs, values, meta, M, N, K, dtype, values_dtype, y, ys, bias, scale),
            ptr<void>(workspace), workspace_bytes, device, stream);
      },
      TF_S24_ARGS, py::arg("workspace"), py::arg("workspace_bytes"), py::arg("device"), py::arg("stream"),
      py::call_guard<py::gil_scoped_release>());
  m.def(
      "nm_mask_cuda",
      [](uintptr_t scores, int64_t ss, int64_t rows, int64_t cols, int dtype, int n, int mm, uintptr_t mask,
         int device, uintptr_t stream) {
        tforge::cuda::nm_mask(nm_args(scores, ss, rows, cols, dtype, n, mm, mask), device, stream);
      },
      TF_NM_ARGS, py::arg("device"), py::arg("stream"), py::call_guard<py::gil_scoped_release>());
#endif
}

}  // namespace

namespace tforge::bind {
void bind_cross_entropy(py::module_& m);  // csrc/bind/cross_entropy.cpp
}

#if defined(TFORGE_EMULATOR)
namespace tforge::emu {
void def_emulator(py::module_& m);
}
#define TFORGE_MODULE _emu
#else
#define TFORGE_MODULE _C
#endif

PYBIND11_MODULE(TFORGE_MODULE, m) {
#if defined(TFORGE_EMULATOR)
  m.doc() = "tforge's CUDA kernels run by the warp-level emulator on the CPU (tests only), plus the C++ CPU kernels";
  tforge::emu::def_emulator(m);
#else
  m.doc() = "tforge native kernels (C++ CPU and CUDA); see tforge/_native.py for the Python side";
#endif
  def_norm(m, "layer_norm", false);
  def_norm(m, "rms_norm", true);
  def_attention(m);
  def_int8(m);
  def_sparse24(m);
  tforge::bind::bind_cross_entropy(m);

  m.def("cpu_isa", &tforge::cpu_kernel_isa, "CPU kernel set chosen at run time: 'avx2' or 'scalar'");
  m.def("int8_cpu_isa", &tforge::cpu::int8_kernel_isa, "int8 CPU kernel set: 'avx512vnni', 'avx2' or 'scalar'");
#if defined(TFORGE_WITH_CUDA)
  m.attr("cuda_compiled") = true;
  m.attr("cuda_archs") = TFORGE_CUDA_ARCHS;
  m.def("cuda_device_count", &tforge::cuda::device_count);
  m.def("cuda_runtime_info", &tforge::cuda::runtime_info);
#else
  m.attr("cuda_compiled") = false;
  m.attr("cuda_archs") = "";
  m.def("cuda_device_count", []() { return 0; });
  m.def("cuda_runtime_info", []() { return std::string("CUDA kernels not compiled"); });
#endif
}
