// LayerNorm / RMSNorm entries. One argument struct per direction (common/norm_args.h), shared by the
// two norms and both devices; the entry's name says which norm it runs (it sets `rms`).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind/args.h"
#include "common/norm_args.h"
#include "cpu/norm.h"
#if defined(TFORGE_WITH_CUDA)
#include "cuda/norm.h"
#endif

namespace py = pybind11;

namespace tforge::bind {
namespace {

template <bool kRms>
void fwd_cpu(NormFwdArgs a, int threads) {
  a.rms = kRms;
  cpu::norm_fwd(a, threads);
}

template <bool kRms>
void bwd_cpu(NormBwdArgs a, int threads) {
  a.rms = kRms;
  cpu::norm_bwd(a, threads);
}

#if defined(TFORGE_WITH_CUDA)
template <bool kRms>
void fwd_cuda(NormFwdArgs a, int device, uintptr_t stream) {
  a.rms = kRms;
  cuda::norm_fwd(a, device, stream);
}

// Floats of scratch the backward needs (its dweight / dbias partials); allocated by the caller.
template <bool kRms>
int64_t bwd_cuda_workspace(NormBwdArgs a, int device) {
  a.rms = kRms;
  return cuda::norm_bwd_workspace_floats(a, device);
}

template <bool kRms>
void bwd_cuda(NormBwdArgs a, uintptr_t workspace, int64_t workspace_floats, int device, uintptr_t stream) {
  a.rms = kRms;
  cuda::norm_bwd(a, reinterpret_cast<float*>(workspace), workspace_floats, device, stream);
}
#endif

}  // namespace

void def_norm(py::module_& m) {
  using F = NormFwdArgs;
  Args<F>(m, "NormFwdArgs")
      .field("x", &F::x).field("x_stride", &F::x_stride)
      .field("residual", &F::residual).field("residual_stride", &F::residual_stride)
      .field("weight", &F::weight).field("bias", &F::bias)
      .field("y", &F::y).field("residual_out", &F::residual_out)
      .field("mean", &F::mean).field("rstd", &F::rstd)
      .field("rows", &F::rows).field("cols", &F::cols)
      .field("eps", &F::eps).field("dtype", &F::dtype);
  using B = NormBwdArgs;
  Args<B>(m, "NormBwdArgs")
      .field("dy", &B::dy).field("dy_stride", &B::dy_stride)
      .field("dresidual_out", &B::dresidual_out).field("dres_stride", &B::dres_stride)
      .field("x", &B::x).field("x_stride", &B::x_stride)
      .field("weight", &B::weight).field("mean", &B::mean).field("rstd", &B::rstd)
      .field("dx", &B::dx).field("dweight", &B::dweight).field("dbias", &B::dbias)
      .field("rows", &B::rows).field("cols", &B::cols).field("dtype", &B::dtype);

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("layer_norm_fwd_cpu", &fwd_cpu<false>, py::arg("args"), py::arg("threads"), nogil);
  m.def("rms_norm_fwd_cpu", &fwd_cpu<true>, py::arg("args"), py::arg("threads"), nogil);
  m.def("layer_norm_bwd_cpu", &bwd_cpu<false>, py::arg("args"), py::arg("threads"), nogil);
  m.def("rms_norm_bwd_cpu", &bwd_cpu<true>, py::arg("args"), py::arg("threads"), nogil);
#if defined(TFORGE_WITH_CUDA)
  m.def("layer_norm_fwd_cuda", &fwd_cuda<false>, py::arg("args"), py::arg("device"), py::arg("stream"), nogil);
  m.def("rms_norm_fwd_cuda", &fwd_cuda<true>, py::arg("args"), py::arg("device"), py::arg("stream"), nogil);
  m.def("layer_norm_bwd_cuda_workspace", &bwd_cuda_workspace<false>, py::arg("args"), py::arg("device"), nogil);
  m.def("rms_norm_bwd_cuda_workspace", &bwd_cuda_workspace<true>, py::arg("args"), py::arg("device"), nogil);
  m.def("layer_norm_bwd_cuda", &bwd_cuda<false>, py::arg("args"), py::arg("workspace"),
        py::arg("workspace_floats"), py::arg("device"), py::arg("stream"), nogil);
  m.def("rms_norm_bwd_cuda", &bwd_cuda<true>, py::arg("args"), py::arg("workspace"), py::arg("workspace_floats"),
        py::arg("device"), py::arg("stream"), nogil);
#endif
}

}  // namespace tforge::bind
