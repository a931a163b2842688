"""What the Triton launchers share: whether a kernel runs under the interpreter, and the SM count
that launch heuristics are tuned against.

The launchers pick the same tile sizes, num_warps and num_stages whether the kernel is compiled for a
GPU or run by the interpreter (TRITON_INTERPRET=1, the CPU test path), so the tests exercise the
configurations and code paths the GPU runs. The differences are the interpreter workarounds listed
in docs/triton-interpreter.md (bf16 tl.dot operands and bf16 rounding) and, unless
TFORGE_TRITON_GPU_CONFIGS=1, the launch-size exceptions listed there (a launch the GPU config would
split into very many programs, each of which costs milliseconds of Python in the interpreter).
"""

import functools
import os

import torch

# SM count assumed for launch heuristics when there is no GPU (the interpreter): an H100 SXM / H200,
# the GPU the launchers are tuned on, so interpreted launches pick what that GPU would.
INTERP_SM_COUNT = 132


# Interpreter launches whose GPU config would need more programs than this take wider tiles instead,
# unless TFORGE_TRITON_GPU_CONFIGS=1 (the same kernel and code path, only the tile width differs).
INTERP_MAX_PROGRAMS = 64


def force_gpu_configs() -> bool:
    """TFORGE_TRITON_GPU_CONFIGS=1: the interpreter takes the GPU configs even where they are slow there."""
    return os.environ.get("TFORGE_TRITON_GPU_CONFIGS", "0") == "1"


def interpreting(x) -> bool:
    """True when a kernel on tensor x runs under the Triton interpreter (CPU tensors can only run there)."""
    return os.environ.get("TRITON_INTERPRET", "0") == "1" or not x.is_cuda


@functools.lru_cache(maxsize=None)
def _device_sm_count(index):
    return torch.cuda.get_device_properties(index).multi_processor_count


def sm_count(x) -> int:
    """SMs of x's GPU; INTERP_SM_COUNT for tensors that are not on a GPU."""
    if not x.is_cuda:
        return INTERP_SM_COUNT
    return _device_sm_count(x.device.index if x.device.index is not None else torch.cuda.current_device())
