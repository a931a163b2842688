// The native argument convention: each op's argument struct (csrc/common/<op>_args.h) is bound to
// Python once, here-style, and every entry takes that struct. Python builds it by field name
// (tforge/_native.py: Args), so an argument is spelled in the struct, in its one binding line and
// at the one Python call site, never again as a lambda parameter list or a py::arg macro.
//
//   tforge::bind::Args<tforge::NormFwdArgs>(m, "NormFwdArgs")
//       .field("x", &tforge::NormFwdArgs::x)          // pointer fields take an address (int)
//       .field("rows", &tforge::NormFwdArgs::rows);   // scalars take their value
//   m.def("layer_norm_fwd_cpu", [](const tforge::NormFwdArgs& a, int threads) {...},
//         py::arg("args"), py::arg("threads"), py::call_guard<py::gil_scoped_release>());
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <type_traits>

namespace tforge::bind {

template <class S>
class Args : public pybind11::class_<S> {
 public:
  // module_local: tforge._C and tforge._emu bind the same structs, and pybind11 would otherwise refuse
  // the second module's registration of a C++ type the first one already registered.
  Args(pybind11::module_& m, const char* name) : pybind11::class_<S>(m, name, pybind11::module_local()) {
    this->def(pybind11::init<>());
  }

  // A field Python may set and read by name. Pointers cross as integers (addresses from
  // tforge/_native.py); everything else as its own type (pybind11 checks it on assignment).
  template <class T>
  Args& field(const char* name, T S::*member) {
    if constexpr (std::is_pointer_v<T>) {
      this->def_property(
          name, [member](const S& s) { return reinterpret_cast<uintptr_t>(s.*member); },
          [member](S& s, uintptr_t p) { s.*member = reinterpret_cast<T>(p); });
    } else {
      this->def_readwrite(name, member);
    }
    return *this;
  }
};

}  // namespace tforge::bind
