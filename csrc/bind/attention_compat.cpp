// Transitional: attention's former call form (each tensor a (pointer, batch, seq, head stride) tuple, the
// scalars a dict), still used by python/tforge/ops/attention.py and models/gpt.py. Added as a second
// overload of each attention entry, after the AttnFwdArgs / AttnBwdArgs one (bind/attention.cpp), which
// pybind11 tries first. Delete this file, and its line in CMakeLists.txt and bindings.cpp, once
// `grep -rn "params=" python/tforge` shows no attention caller left on it.
#include <pybind11/pybind11.h>

#include <cstdint>
#include <stdexcept>
#include <string>

#include "common/attention_args.h"
#include "cpu/attention.h"
#if defined(TFORGE_WITH_CUDA)
#include "cuda/attention.h"
#endif

namespace py = pybind11;

namespace tforge::bind {
namespace {

template <class P>
P* ptr(uintptr_t p) {
  return reinterpret_cast<P*>(p);
}

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

AttnParams attn_params(const py::dict& d) {
  AttnParams p;
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

AttnFwdArgs fwd_args(const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out,
                     uintptr_t lse, const py::dict& params) {
  AttnFwdArgs a;
  a.p = attn_params(params);
  a.q = attn_tensor<AttnTensor>(q, "q");
  a.k = attn_tensor<AttnTensor>(k, "k");
  a.v = attn_tensor<AttnTensor>(v, "v");
  a.out = attn_tensor<AttnOutTensor>(out, "out");
  a.lse = ptr<float>(lse);
  return a;
}

AttnBwdArgs bwd_args(const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out,
                     const py::tuple& dout, uintptr_t lse, const py::tuple& dq, const py::tuple& dk,
                     const py::tuple& dv, const py::dict& params, bool deterministic) {
  AttnBwdArgs a;
  a.p = attn_params(params);
  a.q = attn_tensor<AttnTensor>(q, "q");
  a.k = attn_tensor<AttnTensor>(k, "k");
  a.v = attn_tensor<AttnTensor>(v, "v");
  a.out = attn_tensor<AttnTensor>(out, "out");
  a.dout = attn_tensor<AttnTensor>(dout, "dout");
  a.lse = ptr<const float>(lse);
  a.dq = attn_tensor<AttnOutTensor>(dq, "dq");
  a.dk = attn_tensor<AttnOutTensor>(dk, "dk");
  a.dv = attn_tensor<AttnOutTensor>(dv, "dv");
  a.deterministic = deterministic;
  return a;
}

#define TF_ATTN_FWD_ARGS py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("lse"), py::arg("params")
#define TF_ATTN_BWD_ARGS                                                                                      \
  py::arg("q"), py::arg("k"), py::arg("v"), py::arg("out"), py::arg("dout"), py::arg("lse"), py::arg("dq"),   \
      py::arg("dk"), py::arg("dv"), py::arg("params"), py::arg("deterministic")

}  // namespace

void def_attention_compat(py::module_& m) {
  m.def(
      "attention_fwd_cpu",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, uintptr_t lse,
         const py::dict& params, int threads) {
        auto a = fwd_args(q, k, v, out, lse, params);
        py::gil_scoped_release release;
        cpu::attention_fwd(a, threads);
      },
      TF_ATTN_FWD_ARGS, py::arg("threads"));
  m.def(
      "attention_bwd_cpu",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, const py::tuple& dout,
         uintptr_t lse, const py::tuple& dq, const py::tuple& dk, const py::tuple& dv, const py::dict& params,
         bool deterministic, int threads) {
        auto a = bwd_args(q, k, v, out, dout, lse, dq, dk, dv, params, deterministic);
        py::gil_scoped_release release;
        cpu::attention_bwd(a, threads);
      },
      TF_ATTN_BWD_ARGS, py::arg("threads"));
#if defined(TFORGE_WITH_CUDA)
  m.def(
      "attention_fwd_cuda",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, uintptr_t lse,
         const py::dict& params, int device, uintptr_t stream) {
        auto a = fwd_args(q, k, v, out, lse, params);
        py::gil_scoped_release release;
        cuda::attention_fwd(a, device, stream);
      },
      TF_ATTN_FWD_ARGS, py::arg("device"), py::arg("stream"));
  m.def(
      "attention_bwd_cuda_workspace",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, const py::tuple& dout,
         uintptr_t lse, const py::tuple& dq, const py::tuple& dk, const py::tuple& dv, const py::dict& params,
         bool deterministic, int device) {
        auto a = bwd_args(q, k, v, out, dout, lse, dq, dk, dv, params, deterministic);
        return cuda::attention_bwd_workspace_floats(a, device);
      },
      TF_ATTN_BWD_ARGS, py::arg("device"));
  m.def(
      "attention_bwd_cuda",
      [](const py::tuple& q, const py::tuple& k, const py::tuple& v, const py::tuple& out, const py::tuple& dout,
         uintptr_t lse, const py::tuple& dq, const py::tuple& dk, const py::tuple& dv, const py::dict& params,
         bool deterministic, uintptr_t workspace, int64_t workspace_floats, int device, uintptr_t stream) {
        auto a = bwd_args(q, k, v, out, dout, lse, dq, dk, dv, params, deterministic);
        py::gil_scoped_release release;
        cuda::attention_bwd(a, ptr<float>(workspace), workspace_floats, device, stream);
      },
      TF_ATTN_BWD_ARGS, py::arg("workspace"), py::arg("workspace_floats"), py::arg("device"), py::arg("stream"));
#endif
}

}  // namespace tforge::bind
