"""The emulator's fragment tables (csrc/emu/fragments.h, written from the PTX ISA) against a second,
independent transcription of the same hardware: CUTLASS/CuTe's MMA and ldmatrix traits
(cute/atom/mma_traits_sm80.hpp, cute/atom/copy_traits_sm75.hpp), whose (thread, value) -> index
layouts are copied below as shape/stride numbers and evaluated here. Also the emulator's fp32 ->
bf16 / fp16 rounding against PyTorch's."""
import pytest
import torch

from tforge import _native

try:
    EMU = _native.load_emulator()
except RuntimeError as exc:  # built by `make install` (TFORGE_EMULATOR=ON), as in CI
    pytest.skip(str(exc), allow_module_level=True)


def _flat(t):
    return [x for e in t for x in _flat(e)] if isinstance(t, tuple) else [t]


def cute(layout, *coords):
    """CuTe layout function: each top-level coordinate is split colexicographically over its mode's
    (nested) shape and dotted with the strides."""
    shape, stride = layout
    idx = 0
    for c, sh, st in zip(coords, shape, stride):
        for s, d in zip(_flat(sh), _flat(st)):
            idx += (c % s) * d
            c //= s
    return idx


# (T32, V) -> column-major index into (M, K), (N, K) or (M, N); CuTe's names in the comments.
SM80_16x8x16_A = (((4, 8), (2, 2, 2)), ((32, 1), (16, 8, 128)))  # MMA_Traits<SM80_16x8x16_F16F16F16F16_TN>
SM80_16x8x16_B = (((4, 8), (2, 2)), ((16, 1), (8, 64)))
SM80_16x8_Row = (((4, 8), (2, 2)), ((32, 1), (16, 8)))         # CLayout of both
SM80_16x8x32_S8_A = (((4, 8), (4, 2, 2)), ((64, 1), (16, 8, 256)))  # MMA_Traits<SM80_16x8x32_S32S8S8S32_TN>
SM80_16x8x32_S8_B = (((4, 8), (4, 2)), ((32, 1), (8, 128)))
# (thread, bit) -> bit of the 32 x 128-bit source rows (thread t's address supplies row t).
LDSM_U32x4_N_DST = ((32, (32, 4)), (32, (1, 1024)))            # Copy_Traits<SM75_U32x4_LDSM_N>
LDSM_U16x8_T_DST = (((4, 8), (16, 2, 4)), ((256, 16), (1, 128, 1024)))  # Copy_Traits<SM75_U16x8_LDSM_T>


def _table(name):
    return {(lane, reg, e): (row, col) for lane, reg, e, row, col in EMU.fragment_table(name)}


def _check(name, expected):
    table = _table(name)
    assert set(table) == set(expected), f"{name}: different (lane, register, element) sets"
    wrong = {k: (table[k], expected[k]) for k in table if table[k] != expected[k]}
    assert not wrong, f"{name}: {len(wrong)} entries differ from CuTe, e.g. {list(wrong.items())[:3]}"


def test_mma_m16n8k16_a():
    exp = {}
    for lane in range(32):
        for reg in range(4):
            for h in range(2):
                i = cute(SM80_16x8x16_A, lane, 2 * reg + h)
                exp[(lane, reg, h)] = (i % 16, i // 16)  # (m, k)
    _check("m16n8k16_a", exp)


def test_mma_m16n8k16_b():
    exp = {}
    for lane in range(32):
        for reg in range(2):
            for h in range(2):
                i = cute(SM80_16x8x16_B, lane, 2 * reg + h)
                exp[(lane, reg, h)] = (i // 8, i % 8)  # (k, n)
    _check("m16n8k16_b", exp)


def test_mma_accumulator():
    exp = {(lane, reg, 0): (cute(SM80_16x8_Row, lane, reg) % 16, cute(SM80_16x8_Row, lane, reg) // 16)
           for lane in range(32) for reg in range(4)}
    _check("m16n8_c", exp)


def test_mma_m16n8k32_s8():
    a, b = {}, {}
    for lane in range(32):
        for reg in range(4):
            for byte in range(4):
                i = cute(SM80_16x8x32_S8_A, lane, 4 * reg + byte)
                a[(lane, reg, byte)] = (i % 16, i // 16)
        for reg in range(2):
            for byte in range(4):
                i = cute(SM80_16x8x32_S8_B, lane, 4 * reg + byte)
                b[(lane, reg, byte)] = (i // 8, i % 8)
    _check("m16n8k32_s8_a", a)
    _check("m16n8k32_s8_b", b)


def test_mma_sp_b_is_two_dense_k16_fragments():
    """mma.sp.m16n8k32's B fragment (PTX ISA) is the dense m16n8k16 B fragment for k 0-15 in registers
    0-1 and for k 16-31 in registers 2-3; the dense part is checked against CuTe above. (The sparse
    metadata distribution has no second public transcription we could find: docs/emulator.md.)"""
    exp = {}
    for lane in range(32):
        for reg in range(4):
            for h in range(2):
                i = cute(SM80_16x8x16_B, lane, 2 * (reg % 2) + h)
                exp[(lane, reg, h)] = (i // 8 + 16 * (reg // 2), i % 8)
    _check("m16n8k32_sp_b", exp)


@pytest.mark.parametrize("trans", [False, True])
def test_ldmatrix(trans):
    """Register j of every lane holds elements of matrix j (source rows 8j..8j+7); (row, col) in it."""
    dst = LDSM_U16x8_T_DST if trans else LDSM_U32x4_N_DST
    exp = {}
    for lane in range(32):
        for j in range(4):
            for h in range(2):
                bit = cute(dst, lane, 16 * h + 32 * j)  # value = bit 16h of register j
                src_row, elem = bit // 128, (bit % 128) // 16
                assert src_row // 8 == j, "CuTe: register j comes from matrix j"
                exp[(lane, 0, h, j)] = (src_row % 8, elem)
    table = _table("ldmatrix_trans" if trans else "ldmatrix")
    got = {(lane, 0, h, j): table[(lane, 0, h)] for lane in range(32) for j in range(4) for h in range(2)}
    assert got == exp


def test_sparse_metadata_covers_every_group_once():
    """Every (row, group of 4) of the 16 x 32 A tile has exactly one 4-bit field, in lanes 4g / 4g + 1."""
    rows = EMU.fragment_table("sp_meta")
    assert sorted((r, g) for _, _, _, r, g in rows) == [(r, g) for r in range(16) for g in range(8)]
    fields = {(lane, shift) for lane, _, shift, _, _ in rows}
    assert len(fields) == 16 * 8
    assert all(lane % 4 in (0, 1) and shift % 4 == 0 and 0 <= shift < 32 for lane, shift in fields)


@pytest.mark.parametrize("dtype", [torch.bfloat16, torch.float16])
def test_16bit_rounding_matches_torch(dtype):
    special = torch.tensor([0.0, -0.0, 1.0, -1.0, 65504.0, 65519.0, 65520.0, 1e30, -1e30, float("inf"),
                            float("-inf"), 5.96e-8, 2.98e-8, 2.99e-8, 1e-45, 3.4e38, 1.00390625, 1.0078125])
    x = torch.cat([special, torch.randn(20000) * 1e3, torch.randn(20000) * 1e-6, torch.rand(20000) * 1e-4,
                   (torch.randn(20000) * 60).exp()]).float()
    out = torch.empty(x.numel(), dtype=torch.int16)
    EMU.round_to_16bit(x.data_ptr(), out.data_ptr(), x.numel(), dtype == torch.bfloat16)
    expected = x.to(dtype).view(torch.int16)
    assert torch.equal(out, expected), f"{(out != expected).sum().item()} values round differently"
    nan = torch.full((4,), float("nan"))
    out = torch.empty(4, dtype=torch.int16)
    EMU.round_to_16bit(nan.data_ptr(), out.data_ptr(), 4, dtype == torch.bfloat16)
    assert out.view(dtype).isnan().all()
