// Attention entries (common/attention_args.h): a tensor is an AttnTensor / AttnOutTensor (address and
// batch / seq / head strides), the scalar setup one AttnParams, nested in AttnFwdArgs / AttnBwdArgs.
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind/args.h"
#include "common/attention_args.h"
#include "common/dtype.h"
#include "cpu/attention.h"
#if defined(TFORGE_WITH_CUDA)
#include "cuda/attention.h"
#endif

namespace py = pybind11;

namespace tforge::bind {
namespace {

template <class T>
void bind_tensor(py::module_& m, const char* name) {
  Args<T>(m, name)
      .field("ptr", &T::ptr)
      .field("batch_stride", &T::batch_stride).field("seq_stride", &T::seq_stride)
      .field("head_stride", &T::head_stride);
}

#if defined(TFORGE_WITH_CUDA)
void bwd_cuda(const AttnBwdArgs& a, uintptr_t workspace, int64_t workspace_floats, int device, uintptr_t stream) {
  cuda::attention_bwd(a, reinterpret_cast<float*>(workspace), workspace_floats, device, stream);
}
#endif

}  // namespace

void def_attention(py::module_& m) {
  bind_tensor<AttnTensor>(m, "AttnTensor");
  bind_tensor<AttnOutTensor>(m, "AttnOutTensor");
  using P = AttnParams;
  Args<P>(m, "AttnParams")
      .field("batch", &P::batch).field("seqlen_q", &P::seqlen_q).field("seqlen_k", &P::seqlen_k)
      .field("heads_q", &P::heads_q).field("heads_k", &P::heads_k).field("head_dim", &P::head_dim)
      .field("cu_seqlens_q", &P::cu_seqlens_q).field("cu_seqlens_k", &P::cu_seqlens_k)
      .field("total_q", &P::total_q).field("total_k", &P::total_k)
      .field("softmax_scale", &P::softmax_scale).field("causal", &P::causal)
      .field("window_left", &P::window_left).field("window_right", &P::window_right)
      .field("bias", &P::bias)
      .field("bias_batch_stride", &P::bias_batch_stride).field("bias_head_stride", &P::bias_head_stride)
      .field("bias_q_stride", &P::bias_q_stride).field("bias_k_stride", &P::bias_k_stride)
      .field("dtype", &P::dtype);
  using F = AttnFwdArgs;
  Args<F>(m, "AttnFwdArgs")
      .field("p", &F::p).field("q", &F::q).field("k", &F::k).field("v", &F::v)
      .field("out", &F::out).field("lse", &F::lse);
  using B = AttnBwdArgs;
  Args<B>(m, "AttnBwdArgs")
      .field("p", &B::p).field("q", &B::q).field("k", &B::k).field("v", &B::v)
      .field("out", &B::out).field("dout", &B::dout).field("lse", &B::lse)
      .field("dq", &B::dq).field("dk", &B::dk).field("dv", &B::dv)
      .field("deterministic", &B::deterministic);

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("attention_fwd_cpu", &cpu::attention_fwd, py::arg("args"), py::arg("threads"), nogil);
  m.def("attention_bwd_cpu", &cpu::attention_bwd, py::arg("args"), py::arg("threads"), nogil);
#if defined(TFORGE_WITH_CUDA)
  m.def("attention_cuda_supported", &cuda::attention_supported, py::arg("head_dim"), py::arg("dtype"));
  m.def("attention_fwd_cuda", &cuda::attention_fwd, py::arg("args"), py::arg("device"), py::arg("stream"), nogil);
  // Floats of scratch the backward needs for these arguments; allocated by the caller.
  m.def("attention_bwd_cuda_workspace", &cuda::attention_bwd_workspace_floats, py::arg("args"), py::arg("device"),
        nogil);
  m.def("attention_bwd_cuda", &bwd_cuda, py::arg("args"), py::arg("workspace"), py::arg("workspace_floats"),
        py::arg("device"), py::arg("stream"), nogil);
#else
  m.def("attention_cuda_supported", [](int64_t, int) { return false; }, py::arg("head_dim"), py::arg("dtype"));
#endif
  m.def("attention_cuda_head_dims", []() {
    py::list dims;
#if defined(TFORGE_WITH_CUDA)
    for (int64_t d : {32, 64, 96, 128, 256})
      if (cuda::attention_supported(d, kBFloat16)) dims.append(d);
#endif
    return dims;
  });
}

}  // namespace tforge::bind
