// 2:4 sparsity entries: the sparse linear from the packed form, and n:m masks
// (common/sparse24_args.h).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind/args.h"
#include "common/sparse24_args.h"
#include "cpu/sparse24.h"
#if defined(TFORGE_WITH_CUDA)
#include "cuda/sparse24.h"
#endif

namespace py = pybind11;

namespace tforge::bind {
namespace {

#if defined(TFORGE_WITH_CUDA)
void linear_cuda(const Sparse24LinearArgs& a, uintptr_t workspace, int64_t workspace_bytes, int device,
                 uintptr_t stream) {
  cuda::sparse24_linear(a, reinterpret_cast<void*>(workspace), workspace_bytes, device, stream);
}
#endif

}  // namespace

void def_sparse24(py::module_& m) {
  using L = Sparse24LinearArgs;
  Args<L>(m, "Sparse24LinearArgs")
      .field("x", &L::x).field("x_stride", &L::x_stride)
      .field("values", &L::values).field("meta", &L::meta)
      .field("M", &L::M).field("N", &L::N).field("K", &L::K)
      .field("dtype", &L::dtype).field("values_dtype", &L::values_dtype)
      .field("y", &L::y).field("y_stride", &L::y_stride)
      .field("bias", &L::bias).field("scale", &L::scale);
  using N = NMMaskArgs;
  Args<N>(m, "NMMaskArgs")
      .field("scores", &N::scores).field("s_stride", &N::s_stride)
      .field("rows", &N::rows).field("cols", &N::cols).field("dtype", &N::dtype)
      .field("n", &N::n).field("m", &N::m).field("mask", &N::mask);

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("sparse24_linear_cpu", &cpu::sparse24_linear, py::arg("args"), py::arg("threads"), nogil);
  m.def("nm_mask_cpu", &cpu::nm_mask, py::arg("args"), py::arg("threads"), nogil);
  m.def("sparse24_cpu_isa", &cpu::sparse24_kernel_isa,
        "sparse24_linear CPU kernel set chosen at run time: 'avx2' or 'scalar'");
#if defined(TFORGE_WITH_CUDA)
  // Bytes of split-K scratch the CUDA linear needs for these arguments; allocated by the caller.
  m.def("sparse24_linear_cuda_workspace", &cuda::sparse24_linear_workspace_bytes, py::arg("args"),
        py::arg("device"), nogil);
  m.def("sparse24_linear_cuda", &linear_cuda, py::arg("args"), py::arg("workspace"), py::arg("workspace_bytes"),
        py::arg("device"), py::arg("stream"), nogil);
  m.def("nm_mask_cuda", &cuda::nm_mask, py::arg("args"), py::arg("device"), py::arg("stream"), nogil);
#endif
}

}  // namespace tforge::bind
