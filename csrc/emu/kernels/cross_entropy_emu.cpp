// cross_entropy.cu compiled as host C++ for the warp-level emulator (see emu/cuda_prelude.h): the
// unmodified CUDA source, not a copy.
#include "cuda/cross_entropy.cu"
