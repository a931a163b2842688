// tforge._C: one pybind11 module, deliberately thin. Each op binds its argument structs once and
// defines its entries in csrc/bind/<op>.cpp (the convention: csrc/bind/args.h); tforge/_native.py
// fills those structs from tensors (addresses, strides, dtype codes). An entry releases the GIL and
// calls the checked kernel entry; errors become Python exceptions (std::invalid_argument -> ValueError,
// std::runtime_error -> RuntimeError). No libtorch: one build serves every torch version. Built twice:
// as tforge._C, and with TFORGE_EMULATOR as tforge._emu, whose *_cuda entries run the same CUDA sources
// on the CPU under the warp-level emulator (csrc/emu).
#include <pybind11/pybind11.h>

#include <string>

#include "common/cpu_features.h"
#if defined(TFORGE_WITH_CUDA)
#include "cuda/norm.h"  // device_count, runtime_info
#endif

namespace py = pybind11;

namespace tforge::bind {  // csrc/bind/<op>.cpp
void def_norm(py::module_& m);
void def_attention(py::module_& m);
void def_int8(py::module_& m);
void def_sparse24(py::module_& m);
void def_cross_entropy(py::module_& m);
}  // namespace tforge::bind

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
  tforge::bind::def_norm(m);
  tforge::bind::def_attention(m);
  tforge::bind::def_int8(m);
  tforge::bind::def_sparse24(m);
  tforge::bind::def_cross_entropy(m);

  m.def("cpu_isa", &tforge::cpu_kernel_isa, "CPU kernel set chosen at run time: 'avx2' or 'scalar'");
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
