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
//
// Python: NormFwdArgs(x=..., rows=...) fills the named fields in one call (the rest keep the struct's
// defaults); each field is also an attribute.
#pragma once
#include <pybind11/pybind11.h>

#include <cstdint>
#include <functional>
#include <memory>
#include <string>
#include <type_traits>
#include <utility>
#include <vector>

namespace tforge::bind {

template <class S>
class Args : public pybind11::class_<S> {
 public:
  // module_local: tforge._C and tforge._emu both bind the same structs, and may be loaded together.
  Args(pybind11::module_& m, const char* name)
      : pybind11::class_<S>(m, name, pybind11::module_local()), setters_(std::make_shared<Setters>()) {
    this->def(pybind11::init([setters = setters_, name](const pybind11::kwargs& kw) {
      S s;
      size_t next = 0;  // callers usually pass the fields in declaration order: look there first
      for (auto item : kw) next = set(*setters, next, s, item.first, item.second, name);
      return s;
    }));
  }

  // A field Python may set by name. Pointers cross as integers (addresses from tforge/_native.py);
  // everything else as its own type (pybind11 converts and checks it).
  template <class T>
  Args& field(const char* name, T S::*member) {
    using Stored = std::conditional_t<std::is_pointer_v<T>, uintptr_t, T>;
    // Interned: keyword names written in Python source are interned too, so a match is one pointer compare.
    setters_->push_back({PyUnicode_InternFromString(name), name, [member](S& s, pybind11::handle v) {
      if constexpr (std::is_pointer_v<T>) s.*member = reinterpret_cast<T>(v.cast<uintptr_t>());
      else s.*member = v.cast<T>();
    }});
    if constexpr (std::is_pointer_v<T>) {
      this->def_property(
          name, [member](const S& s) { return reinterpret_cast<Stored>(s.*member); },
          [member](S& s, Stored p) { s.*member = reinterpret_cast<T>(p); });
    } else {
      this->def_readwrite(name, member);
    }
    return *this;
  }

 private:
  struct Setter {
    PyObject* key;  // interned name, kept for the life of the process
    const char* name;
    std::function<void(S&, pybind11::handle)> set;
  };
  using Setters = std::vector<Setter>;

  // Sets the field named `key` (looked up from index `next` on); returns the index after it.
  static size_t set(const Setters& setters, size_t next, S& s, pybind11::handle key, pybind11::handle value,
                    const char* type) {
    const size_t n = setters.size();
    size_t i = n;
    for (size_t j = 0; j < n && i == n; ++j)
      if (setters[(next + j) % n].key == key.ptr()) i = (next + j) % n;
    for (size_t j = 0; j < n && i == n; ++j)  // a name built at run time: compare the text
      if (PyUnicode_Compare(setters[j].key, key.ptr()) == 0) i = j;
    if (i == n)
      throw pybind11::type_error(std::string(type) + " has no field '" + pybind11::str(key).cast<std::string>() + "'");
    try {
      setters[i].set(s, value);
    } catch (const pybind11::cast_error&) {
      throw pybind11::type_error(std::string(type) + "." + setters[i].name + ": cannot take a " +
                                 Py_TYPE(value.ptr())->tp_name);
    }
    return i + 1;
  }

  std::shared_ptr<Setters> setters_;
};

}  // namespace tforge::bind
