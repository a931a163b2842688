"""LayerNorm and fused add+LayerNorm: every backend on this machine against
layer_norm_ref, forward and gradients of x, residual, weight and bias."""
import pytest

from backend_cases import backend_params
from norm_cases import LAYER_NORM, cases, check_family


@pytest.mark.parametrize("backend,dtype,shape,layout", cases())
def test_layer_norm(backend, dtype, shape, layout):
    check_family(LAYER_NORM, backend, dtype, shape, layout, fused=False, affine=True)


@pytest.mark.parametrize("backend,dtype,shape,layout", cases())
def test_add_layer_norm(backend, dtype, shape, layout):
    check_family(LAYER_NORM, backend, dtype, shape, layout, fused=True, affine=True)


@pytest.mark.parametrize("backend", backend_params())
@pytest.mark.parametrize("affine,has_bias", [(False, False), (True, False)])
def test_layer_norm_without_params(backend, affine, has_bias):
    import torch
    check_family(LAYER_NORM, backend, torch.float32, (5, 33), "contig", fused=False, affine=affine,
                 has_bias=has_bias)
    check_family(LAYER_NORM, backend, torch.float32, (5, 33), "sliced", fused=True, affine=affine,
                 has_bias=has_bias)
