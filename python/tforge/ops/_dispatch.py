"""Registering tforge's custom ops, and calling them cheaply.

A torch.library custom op costs tens of microseconds of Python per call
(autograd wrapper, dispatcher round trip), several times a small kernel's
run time. When nothing needs that machinery (eager mode, no tensor requiring
grad, plain tensors, no tracing or dispatch mode active) calling the op's own
implementation is equivalent, so ``call`` does that; everything else (autograd,
torch.compile, fake tensors, export, user dispatch modes) goes through the op.
"""
import torch
from torch.utils._python_dispatch import _get_current_dispatch_mode


def custom_op(name: str, **kwargs):
    """torch.library.custom_op, keeping the plain implementation as ``op.eager_impl``."""
    def wrap(fn):
        op = torch.library.custom_op(name, fn, mutates_args=(), **kwargs)
        op.eager_impl = fn
        return op
    return wrap


def _direct_ok(args) -> bool:
    if torch.compiler.is_compiling() or torch.jit.is_tracing() or _get_current_dispatch_mode() is not None:
        return False
    grad = torch.is_grad_enabled()
    for a in args:
        if isinstance(a, torch.Tensor) and (type(a) is not torch.Tensor or (grad and a.requires_grad)):
            return False
    return True


def call(op, *args):
    """op(*args), through the op's plain implementation when that is equivalent."""
    return op.eager_impl(*args) if _direct_ok(args) else op(*args)
