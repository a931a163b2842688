#!/usr/bin/env python
"""A tiny driver for compute-sanitizer (memcheck / racecheck), run by gpu_check.sh.

Calls every CUDA op of tforge once, forward and backward where there is one,
through the public API with backend="cuda", at small odd shapes: rows that do
not fill a block (7, 5, 3), hidden 33 (no 16-byte vectors), seqlen 63 / 65
(partial query and key tiles), GQA, M = 7, K = 100 (partial GEMM tiles and the
misaligned fallback), strided views that force the unaligned load paths. The
sizes are tiny on purpose: under the sanitizer every access is checked, and
out-of-bounds bugs live at tile edges, not at large sizes. Numerics are the
tests' job; this only has to touch every kernel path.

Run it with the caching allocator off (PYTORCH_NO_CUDA_MEMORY_CACHING=1, as
gpu_check.sh does) so that each tensor is its own allocation and memcheck sees
an access past its end. Exits 1 if any call raised.

    compute-sanitizer --tool memcheck python benchmarks/gpu_sanitize.py
    python benchmarks/gpu_sanitize.py --device cpu --backend cpu   # the same calls on CPU (dry run)
"""
from __future__ import annotations

import argparse
import sys
import traceback

import torch

import tforge

CASES = []  # (name, fn(device, dtype, backend)) in the order they run


def case(fn):
    CASES.append((fn.__name__, fn))
    return fn


def _rand(*shape, device, dtype, grad=False, scale=1.0):
    t = (torch.randn(*shape) * scale).to(device=device, dtype=dtype)
    return t.requires_grad_(grad)


def _backward(outs, leaves):
    """One backward through every output, with random upstream gradients."""
    outs = [o for o in (outs if isinstance(outs, (tuple, list)) else [outs])]
    torch.autograd.grad(outs, leaves, [torch.randn_like(o) for o in outs])


# ---------------------------------------------------------------- norms (fwd + bwd)

# (rows, hidden, wider): wider > hidden reads the rows of a wider tensor in place
# (row stride != hidden); 1040 bf16 keeps 16-byte rows, 33 and 5001 do not.
NORM_SHAPES = ((7, 33, 33), (5, 1024, 1040), (3, 5001, 5001), (3, 20000, 20000))


@case
def norms(device, dtype, backend):
    for rows, hidden, wider in NORM_SHAPES:
        x = _rand(rows, wider, device=device, dtype=dtype)[:, :hidden].requires_grad_(True)
        r = _rand(rows, hidden, device=device, dtype=dtype, grad=True)
        w = _rand(hidden, device=device, dtype=dtype, grad=True, scale=0.1)
        b = _rand(hidden, device=device, dtype=dtype, grad=True, scale=0.1)
        _backward(tforge.layer_norm(x, w, b, backend=backend), [x, w, b])
        _backward(tforge.rms_norm(x, w, backend=backend), [x, w])
        _backward(tforge.add_layer_norm(x, r, w, b, backend=backend), [x, r, w, b])
        _backward(tforge.add_rms_norm(x, r, w, backend=backend), [x, r, w])
        with torch.no_grad():  # no weight: the affine-free kernels
            tforge.layer_norm(x, None, None, backend=backend)


# ---------------------------------------------------------------- attention (fwd + bwd)

@case
def attention(device, dtype, backend):
    for d in (32, 64, 128):
        q = _rand(2, 63, 4, d, device=device, dtype=dtype, grad=True)
        k = _rand(2, 65, 2, d, device=device, dtype=dtype, grad=True)  # GQA 4/2, seqlen_k != seqlen_q
        v = _rand(2, 65, 2, d, device=device, dtype=dtype, grad=True)
        for kw in (dict(causal=False), dict(causal=True), dict(window=(16, 3))):
            _backward(tforge.attention(q, k, v, backend=backend, **kw), [q, k, v])
    # additive bias (broadcast over batch), plus a row that sees no key at all (-inf)
    q = _rand(1, 63, 4, 64, device=device, dtype=dtype, grad=True)
    k = _rand(1, 65, 4, 64, device=device, dtype=dtype, grad=True)
    v = _rand(1, 65, 4, 64, device=device, dtype=dtype, grad=True)
    bias = torch.randn(1, 4, 63, 65, device=device)
    bias[:, :, 5, :] = float("-inf")
    _backward(tforge.attention(q, k, v, attn_bias=bias, causal=True, backend=backend), [q, k, v])
    # head rows 132 bytes apart: not 16-byte aligned, the element-load path
    wide = _rand(1, 65, 4, 66, device=device, dtype=dtype)
    qs, ks, vs = (wide[:, :63, :, :64].detach().requires_grad_(True), wide[..., :64].detach().requires_grad_(True),
                  wide[..., 1:65].detach().requires_grad_(True))
    _backward(tforge.attention(qs, ks, vs, backend=backend), [qs, ks, vs])
    # (B, H, S, D) storage seen as (B, S, H, D): SDPA's layout
    qt = _rand(1, 4, 65, 64, device=device, dtype=dtype).transpose(1, 2).detach().requires_grad_(True)
    _backward(tforge.attention(qt, qt, qt, causal=True, backend=backend), [qt])


@case
def attention_varlen(device, dtype, backend):
    lengths = [63, 1, 65, 0, 7]
    cu = tforge.cu_seqlens_from_lengths(lengths, device=device)
    total = sum(lengths)
    q = _rand(total, 4, 64, device=device, dtype=dtype, grad=True)
    k = _rand(total, 2, 64, device=device, dtype=dtype, grad=True)
    v = _rand(total, 2, 64, device=device, dtype=dtype, grad=True)
    for causal in (False, True):
        out = tforge.attention_varlen(q, k, v, cu, cu, max(lengths), max(lengths), causal=causal, backend=backend)
        _backward(out, [q, k, v])


# ---------------------------------------------------------------- int8 (inference only)

@case
def int8(device, dtype, backend):
    # (M, N, K): K = 100 and N = 33 are unaligned (fallback GEMM); 7 x 64 x 128 is the tensor-core
    # path with a partial M tile; 17 x 96 x 256 the mid config; 1 x 40 x 1000 the decode config.
    for m, n, k in ((7, 33, 100), (7, 64, 128), (17, 96, 256), (1, 40, 1000), (130, 264, 64)):
        x = _rand(m, k, device=device, dtype=dtype)
        w = _rand(n, k, device=device, dtype=dtype)
        xq, xs = tforge.quantize_per_token(x, backend=backend)
        wq, ws = tforge.quantize_per_channel(w, backend=backend)
        tforge.quantize_per_token(x, col_scale=torch.rand(k, device=device, dtype=dtype) + 0.5, backend=backend)
        tforge.int8_matmul(xq, wq, backend=backend)
        bias = torch.randn(n, device=device, dtype=dtype)
        for out_dtype in (torch.float32, dtype):
            tforge.int8_linear(xq, xs, wq, ws, bias, out_dtype=out_dtype, backend=backend)
        tforge.int8_linear(xq, None, wq, ws, None, out_dtype=dtype, backend=backend)


# ---------------------------------------------------------------- 2:4 sparse (fwd + x grad)

@case
def sparse24(device, dtype, backend):
    for m, n, k in ((7, 33, 100), (1, 64, 128), (65, 40, 260)):
        w = _rand(n, k, device=device, dtype=dtype)
        tforge.nm_mask(w.float().abs(), 2, 4, backend=backend)
        mask = tforge.nm_mask(w.abs(), 2, 4, backend=backend)
        if k % 8 == 0:
            tforge.nm_mask(w.abs(), 3, 8, backend=backend)
        packed = tforge.pack_2to4(w * mask)
        x = _rand(m, k, device=device, dtype=dtype, grad=True)
        bias = _rand(n, device=device, dtype=dtype, grad=True)
        _backward(tforge.sparse24_linear(x, packed, bias, backend=backend), [x, bias])
        with torch.no_grad():
            tforge.sparse24_linear(x, packed, None, backend=backend)


def main(argv=None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--device", default="cuda")
    p.add_argument("--backend", default=None, help="default: the device type (cuda, or cpu for a dry run)")
    p.add_argument("--only", default=None, help="comma-separated case names (" + ",".join(n for n, _ in CASES) + ")")
    args = p.parse_args(argv)
    device = torch.device(args.device)
    backend = args.backend or device.type
    # fp16 only on CUDA: the CPU kernels take fp32 / bf16
    dtypes = (torch.bfloat16, torch.float16) if device.type == "cuda" else (torch.bfloat16,)
    only = set(args.only.split(",")) if args.only else None
    torch.manual_seed(0)
    failed = 0
    for name, fn in CASES:
        if only and name not in only:
            continue
        for dtype in dtypes:
            label = f"{name} {str(dtype).replace('torch.', '')} backend={backend}"
            try:
                fn(device, dtype, backend)
                if device.type == "cuda":
                    torch.cuda.synchronize()
                print(f"ok      {label}", flush=True)
            except Exception:
                failed += 1
                print(f"FAILED  {label}", flush=True)
                traceback.print_exc()
    print(f"gpu_sanitize: {'all calls ok' if not failed else f'{failed} case(s) FAILED'}", flush=True)
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
