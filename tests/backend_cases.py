"""Backend parameters for the op tests, taken from tforge.backends() (tforge.testing.backend_names): a
backend added to tforge is tested by every op test, and one unavailable here skips at run time."""
import pytest
import torch

from tforge.testing import backend_names

HAS_CUDA = torch.cuda.is_available()


def backend_params(device: str | None = None) -> list:
    """pytest params, one per backend (see backend_names). On a GPU machine every backend but "cpu" runs on
    CUDA tensors, and "cuda" always does: those are marked `gpu`."""
    return [pytest.param(b, marks=[pytest.mark.gpu] if b == "cuda" or (HAS_CUDA and b != "cpu") else [])
            for b in backend_names(device)]
