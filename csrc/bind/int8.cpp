// int8 entries: the GEMM (int32 out, or the fused dequantising epilogue) and per-row quantisation
// (common/int8_args.h).
#include <pybind11/pybind11.h>

#include <cstdint>

#include "bind/args.h"
#include "common/int8_args.h"
#include "cpu/int8.h"
#if defined(TFORGE_WITH_CUDA)
#include "cuda/int8.h"
#endif

namespace py = pybind11;

namespace tforge::bind {

void def_int8(py::module_& m) {
  using G = Int8GemmArgs;
  Args<G>(m, "Int8GemmArgs")
      .field("a", &G::a).field("a_stride", &G::a_stride)
      .field("b", &G::b).field("b_stride", &G::b_stride)
      .field("M", &G::M).field("N", &G::N).field("K", &G::K)
      .field("c_i32", &G::c_i32).field("c", &G::c).field("out_dtype", &G::out_dtype)
      .field("a_scale", &G::a_scale).field("b_scale", &G::b_scale).field("bias", &G::bias);
  using Q = QuantizeRowsArgs;
  Args<Q>(m, "QuantizeRowsArgs")
      .field("x", &Q::x).field("x_stride", &Q::x_stride)
      .field("rows", &Q::rows).field("cols", &Q::cols).field("dtype", &Q::dtype)
      .field("q", &Q::q).field("scale", &Q::scale).field("col_scale", &Q::col_scale);

  const auto nogil = py::call_guard<py::gil_scoped_release>();
  m.def("int8_gemm_cpu", &cpu::int8_gemm, py::arg("args"), py::arg("threads"), nogil);
  m.def("quantize_rows_cpu", &cpu::quantize_rows, py::arg("args"), py::arg("threads"), nogil);
  m.def("int8_cpu_isa", &cpu::int8_kernel_isa, "int8 CPU kernel set: 'avx512vnni', 'avx2' or 'scalar'");
#if defined(TFORGE_WITH_CUDA)
  m.def("int8_gemm_cuda", &cuda::int8_gemm, py::arg("args"), py::arg("device"), py::arg("stream"), nogil);
  m.def("quantize_rows_cuda", &cuda::quantize_rows, py::arg("args"), py::arg("device"), py::arg("stream"), nogil);
#endif
}

}  // namespace tforge::bind
