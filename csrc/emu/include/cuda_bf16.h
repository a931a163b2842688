// Emulator shim for <cuda_bf16.h>: the host meanings of CUDA C++ (emu/cuda_prelude.h).
#pragma once
#include "emu/cuda_prelude.h"
