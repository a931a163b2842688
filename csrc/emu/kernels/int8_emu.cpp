// int8.cu compiled as host C++ for the warp-level emulator (see emu/cuda_prelude.h): the
// unmodified CUDA source, not a copy.
#include "cuda/int8.cu"
