// tforge._C / tforge._emu entries of the cross-entropy op: its argument struct bound once, and the
// forward / backward kernels on CPU and CUDA, each taking that struct (csrc/bind/args.h).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind/args.h"
#include "common/cross_entropy_args.h"
#include "cpu/cross_entropy.h"
#if defined(TFORGE_WITH_CUDA)
#include "cuda/cross_entropy.h"
#endif

namespace py = pybind11;

namespace tforge::bind {

void def_cross_entropy(py::module_& m) {
  using A = CrossEntropyArgs;
  Args<A>(m, "CrossEntropyArgs")
      .field("logits", &A::logits)
      .field("logits_stride", &A::logits_stride)
      .field("rows", &A::rows)
      .field("cols", &A::cols)
      .field("dtype", &A::dtype)
      .field("target", &A::target)
      .field("target_int32", &A::target_int32)
      .field("ignore_index", &A::ignore_index)
      .field("loss", &A::loss)
      .field("row_max", &A::row_max)
      .field("row_logsum", &A::row_logsum)
      .field("grad", &A::grad)
      .field("grad_scale", &A::grad_scale)
      .field("row_scale", &A::row_scale);

  const auto release = py::call_guard<py::gil_scoped_release>();
  m.def("cross_entropy_fwd_cpu", &cpu::cross_entropy_fwd, py::arg("args"), py::arg("threads"), release);
  m.def("cross_entropy_bwd_cpu", &cpu::cross_entropy_bwd, py::arg("args"), py::arg("threads"), release);
#if defined(TFORGE_WITH_CUDA)
  m.def("cross_entropy_fwd_cuda", &cuda::cross_entropy_fwd, py::arg("args"), py::arg("device"), py::arg("stream"),
        release);
  m.def("cross_entropy_bwd_cuda", &cuda::cross_entropy_bwd, py::arg("args"), py::arg("device"), py::arg("stream"),
        release);
#endif
}

}  // namespace tforge::bind
