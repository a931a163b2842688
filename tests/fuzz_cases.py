"""Hypothesis building blocks for tests/test_fuzz*.py: tensors of random shape
(0, 1, primes), dtype and layout (contiguous, transposed, sliced, expanded,
overlapping), with NaN / inf sprinkled in; the profiles (short and seeded for
`make test`, long under the `slow` marker); and the one assertion every fuzz
case ends in: a clear one-line ValueError/TypeError, or a result within the
testing.py tolerance of the float64 reference wherever that reference is finite."""
from __future__ import annotations

import pytest
import torch
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st

from tforge.testing import assert_close, backend_names

# derandomize: the same examples every run (CI must not flake); no example database on disk.
_COMMON = dict(derandomize=True, deadline=None, database=None, print_blob=True,
               suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large, HealthCheck.filter_too_much])
FAST = settings(max_examples=50, **_COMMON)
LONG = settings(max_examples=400, **_COMMON)


def profiles(fn):
    """The test twice: `fast` in `make test`, `long` (more examples) under the slow marker."""
    return pytest.mark.parametrize("profile", [pytest.param(FAST, id="fast"),
                                               pytest.param(LONG, id="long", marks=pytest.mark.slow)])(fn)


def run(profile, given_fn):
    profile(given_fn)()


SIZES = [0, 1, 2, 3, 5, 7, 13, 17, 31, 64]
SMALL = [0, 1, 2, 3, 5, 7]
LAYOUTS = ["contiguous", "transposed", "sliced", "expanded", "overlapping"]
BACKENDS = backend_names("cpu") + [None]  # None: automatic choice
FLOATS = [torch.float32, torch.bfloat16, torch.float16, torch.float64]
CPU_DTYPES = (torch.float32, torch.bfloat16)


def rare(draw) -> bool:
    """True one time in six: invalid or special choices stay a minority, so most cases compute."""
    return draw(st.integers(0, 5)) == 3  # (not 0 or 5: Hypothesis favours boundary values)


def pick(draw, common, odd):
    """A draw from `common`, or (rarely) from `odd`."""
    return draw(st.sampled_from(odd if rare(draw) else common))


def generator(draw) -> torch.Generator:
    """A torch generator seeded by Hypothesis: every random tensor of a case comes from the draws."""
    return torch.Generator().manual_seed(draw(st.integers(0, 2 ** 31 - 1)))


def make(draw, shape, dtype=torch.float32, *, layout=None, specials=True, scale=1.0, low=None, high=None):
    """A tensor of `shape` and `dtype` laid out as `layout` (drawn when None); values randn * scale (or ints
    in [low, high)), with NaN / +-inf at a few places when `specials`."""
    shape = tuple(shape)
    layout = layout or draw(st.sampled_from(LAYOUTS))
    seed = draw(st.integers(0, 2 ** 31 - 1))
    gen = torch.Generator().manual_seed(seed)
    numel = 1
    for s in shape:
        numel *= s

    def values(n):
        if low is not None:
            return torch.randint(low, high, (n,), generator=gen).to(dtype)
        v = torch.randn(n, generator=gen, dtype=torch.float64) * scale
        if specials and n and rare(draw):
            for _ in range(draw(st.integers(1, 3))):
                v[draw(st.integers(0, n - 1))] = draw(st.sampled_from([float("nan"), float("inf"), float("-inf")]))
        return v.to(dtype)

    if layout == "transposed" and len(shape) >= 2:
        return values(numel).view(*shape[:-2], shape[-1], shape[-2]).transpose(-1, -2)
    if layout == "sliced" and shape:  # every other element of a wider last dimension
        wide = values(numel * 2).view(*shape[:-1], 2 * shape[-1])
        return wide[..., 1::2] if draw(st.booleans()) else wide[..., :shape[-1]]
    if layout == "expanded" and shape and shape[0] > 1:  # stride 0 along the first dimension
        return values(numel // shape[0]).view(1, *shape[1:]).expand(shape)
    if layout == "overlapping" and len(shape) >= 2 and numel:  # rows that share elements
        strides = [1] * len(shape)
        strides[-1] = 1
        size = sum((s - 1) * st_ for s, st_ in zip(shape, strides)) + 1
        return values(size).as_strided(shape, strides)
    return values(numel).view(shape)


def finite_ref_close(out, ref, dtype, *, backward=False, name="output"):
    """out within `dtype`'s tolerance of the fp64 reference wherever the reference is finite (where it is
    NaN / inf the math has no finite answer; the op may return anything there)."""
    assert out.shape == ref.shape, f"{name}: shape {tuple(out.shape)} != {tuple(ref.shape)}"
    keep = torch.isfinite(ref)
    assert_close(out[keep], ref.to(dtype)[keep], dtype, backward=backward, name=name)


def expect(valid: bool, fn):
    """fn() when the inputs are valid; otherwise a one-line ValueError/TypeError. Returns fn's result or None."""
    if valid:
        return fn()
    with pytest.raises((ValueError, TypeError)) as info:
        fn()
    msg = str(info.value)
    assert msg and "\n" not in msg.strip(), f"not a one-line error: {msg!r}"
    return None


def backend_ok(backend, dtype) -> bool:
    """Whether `backend` (None: automatic) serves `dtype` on a CPU tensor."""
    if backend == "cpu":
        return dtype in CPU_DTYPES
    return dtype in FLOATS
