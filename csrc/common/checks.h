// Argument checks for native entry points. Every check throws a C++ exception
// that pybind11 turns into a Python exception: std::invalid_argument ->
// ValueError (bad arguments), std::runtime_error -> RuntimeError (environment,
// e.g. no GPU). Native code never aborts on bad input.
#pragma once
#include <sstream>
#include <stdexcept>
#include <string>

namespace tforge {

template <typename... Args>
std::string concat(const Args&... args) {
  std::ostringstream os;
  (os << ... << args);
  return os.str();
}

}  // namespace tforge

#define TF_CHECK_ARG(cond, ...)                                                     \
  do {                                                                              \
    if (!(cond)) throw std::invalid_argument(::tforge::concat("tforge._C: ", __VA_ARGS__)); \
  } while (0)

#define TF_CHECK_RUNTIME(cond, ...)                                                 \
  do {                                                                              \
    if (!(cond)) throw std::runtime_error(::tforge::concat("tforge._C: ", __VA_ARGS__)); \
  } while (0)
