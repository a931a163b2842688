// The emulator's own entries in tforge._emu (the CUDA entries themselves are
// csrc/bind/<op>.cpp's, bound to the emulated kernels): the emulated device,
// the global buffers kernels may touch, launch counts, and the fragment
// tables and 16-bit conversions that tests check against independent sources.
#include <pybind11/pybind11.h>
#include <pybind11/stl.h>

#include <cstdint>
#include <cstring>
#include <stdexcept>
#include <string>
#include <tuple>
#include <vector>

#include "emu/emulator.h"
#include "emu/fragments.h"
#include "common/dtype.h"

namespace py = pybind11;

namespace tforge::emu {

namespace {

using Row = std::tuple<int, int, int, int, int>;  // lane, register, element, row, col

// (lane, register, element) -> (row, col) for every element of one fragment (emu/fragments.h).
std::vector<Row> fragment_table(const std::string& name) {
  std::vector<Row> t;
  auto each = [&](int regs, int elems, auto fn) {
    for (int lane = 0; lane < 32; ++lane)
      for (int r = 0; r < regs; ++r)
        for (int e = 0; e < elems; ++e) {
          const frag::RC rc = fn(lane, r, e);
          t.emplace_back(lane, r, e, rc.row, rc.col);
        }
  };
  if (name == "m16n8k16_a") each(4, 2, frag::m16n8k16_a);
  else if (name == "m16n8k16_b") each(2, 2, frag::m16n8k16_b);
  else if (name == "m16n8_c") each(4, 1, [](int l, int r, int) { return frag::m16n8_c(l, r); });
  else if (name == "m16n8k32_s8_a") each(4, 4, frag::m16n8k32_s8_a);
  else if (name == "m16n8k32_s8_b") each(2, 4, frag::m16n8k32_s8_b);
  else if (name == "m16n8k32_sp_b") each(4, 2, frag::m16n8k32_sp_b);
  else if (name == "ldmatrix") each(1, 2, [](int l, int, int h) { return frag::ldmatrix(l, h, false); });
  else if (name == "ldmatrix_trans") each(1, 2, [](int l, int, int h) { return frag::ldmatrix(l, h, true); });
  else if (name == "sp_meta") {  // (lane, 0, bit shift, row, group) for each (row, group of 4)
    for (int row = 0; row < 16; ++row)
      for (int grp = 0; grp < 8; ++grp)
        t.emplace_back(frag::sp_meta_lane(row, grp), 0, frag::sp_meta_shift(row, grp), row, grp);
  } else {
    throw std::invalid_argument("tforge._emu.fragment_table: unknown fragment '" + name + "'");
  }
  return t;
}

}  // namespace

void def_emulator(py::module_& m) {
  m.attr("emulated") = true;
  m.def(
      "configure",
      [](int sms, int cc_major, int cc_minor) { configure(DeviceConfig{sms, cc_major, cc_minor}); },
      py::arg("sms") = 132, py::arg("cc_major") = 9, py::arg("cc_minor") = 0,
      "Sets the emulated device: SM count (grid and split-K choices depend on it) and compute capability");
  m.def("device_config", []() {
    const DeviceConfig c = device_config();
    return py::dict(py::arg("sms") = c.sms, py::arg("cc_major") = c.cc_major, py::arg("cc_minor") = c.cc_minor);
  });
  m.def("register_buffer", &register_buffer, py::arg("ptr"), py::arg("nbytes"), py::arg("label") = "tensor",
        "Global memory kernels may access: [ptr, ptr + nbytes)");
  m.def("clear_buffers", &clear_buffers);
  m.def("launch_counts", &launch_counts, "Launches per kernel since reset_launch_counts()");
  m.def("reset_launch_counts", &reset_launch_counts);
  m.def("counters", &counters);
  m.def("fragment_table", &fragment_table, py::arg("name"),
        "[(lane, register, element, row, col)] of one warp-wide instruction's fragment (emu/fragments.h)");
  m.def(
      "round_to_16bit",
      [](uintptr_t src, uintptr_t dst, int64_t n, bool bf16) {
        const float* s = reinterpret_cast<const float*>(src);
        uint16_t* d = reinterpret_cast<uint16_t*>(dst);
        for (int64_t i = 0; i < n; ++i) d[i] = bf16 ? float_to_bf16(s[i]) : float_to_half(s[i]);
      },
      py::arg("src"), py::arg("dst"), py::arg("n"), py::arg("bf16"),
      "The emulator's fp32 -> bf16 / fp16 rounding of n floats (raw pointers), for tests");
}

}  // namespace tforge::emu
