"""RMSNorm and fused add+RMSNorm: every backend on this machine against
rms_norm_ref, forward and gradients of x, residual and weight."""
import pytest

from backend_cases import backend_params
from norm_cases import RMS_NORM, cases, check_family


@pytest.mark.parametrize("backend,dtype,shape,layout", cases())
def test_rms_norm(backend, dtype, shape, layout):
    check_family(RMS_NORM, backend, dtype, shape, layout, fused=False, affine=True)


@pytest.mark.parametrize("backend,dtype,shape,layout", cases())
def test_add_rms_norm(backend, dtype, shape, layout):
    check_family(RMS_NORM, backend, dtype, shape, layout, fused=True, affine=True)


@pytest.mark.parametrize("backend", backend_params())
def test_rms_norm_without_weight(backend):
    import torch
    check_family(RMS_NORM, backend, torch.float32, (5, 33), "contig", fused=False, affine=False)
    check_family(RMS_NORM, backend, torch.float32, (5, 33), "sliced", fused=True,
                 affine=False)
