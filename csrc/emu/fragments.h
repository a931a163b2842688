// Fragment layouts of the warp-wide instructions the emulator executes,
// written from the PTX ISA (PTX ISA 8.x, section 9.7.14 "Warp Level Matrix
// Multiply-Accumulate Instructions"; 9.7.14.4.x "Matrix Fragments for mma"
// and 9.7.14.5.x for mma.sp; ldmatrix in 9.7.14.3 / "ldmatrix").
// Each function maps (lane, register, element in the register) to the
// (row, column) of the matrix that element holds. g = lane / 4 ("groupID"),
// t = lane % 4 ("threadID_in_group").
//
// tests/test_emu_layouts.py checks every table against CUTLASS/CuTe's MMA
// and ldmatrix traits, an independent transcription of the same hardware.
#pragma once

namespace tforge::emu::frag {

struct RC {
  int row, col;
};

// mma.m16n8k16 .f16/.bf16, A (16 x 16, row): 4 registers x 2 halves ("Figure: MMA .m16n8k16 fragment
// layout for matrix A with .f16/.bf16 type"). a_i, i = 2 * reg + half:
// row = g for a0, a1, a4, a5 and g + 8 for a2, a3, a6, a7; col = 2t + (i & 1) (+ 8 for i >= 4).
inline RC m16n8k16_a(int lane, int reg, int half) {
  return {lane / 4 + 8 * (reg & 1), 2 * (lane % 4) + half + 8 * (reg >> 1)};
}
// B (16 x 8, col), 2 registers x 2 halves: row (k) = 2t + (i & 1) (+ 8 for b2, b3), col (n) = g.
inline RC m16n8k16_b(int lane, int reg, int half) { return {2 * (lane % 4) + half + 8 * reg, lane / 4}; }
// C / D (16 x 8, fp32 or s32), 4 registers: row = g (c0, c1) or g + 8 (c2, c3), col = 2t + (i & 1).
inline RC m16n8_c(int lane, int reg) { return {lane / 4 + 8 * (reg >> 1), 2 * (lane % 4) + (reg & 1)}; }

// mma.m16n8k32 .s8, A (16 x 32, row): 4 registers x 4 bytes, a_i with i = 4 * reg + byte:
// row = g for a0..a3, a8..a11 and g + 8 for a4..a7, a12..a15; col = 4t + (i & 3) (+ 16 for i >= 8).
inline RC m16n8k32_s8_a(int lane, int reg, int byte) {
  return {lane / 4 + 8 * (reg & 1), 4 * (lane % 4) + byte + 16 * (reg >> 1)};
}
// B (32 x 8, col), 2 registers x 4 bytes: row (k) = 4t + byte (+ 16 for b4..b7), col (n) = g.
inline RC m16n8k32_s8_b(int lane, int reg, int byte) { return {4 * (lane % 4) + byte + 16 * reg, lane / 4}; }

// mma.sp.m16n8k32 .f16/.bf16: A is given compressed, 16 x 16 kept values in the m16n8k16 A layout
// ("the sparse matrix A fragment ... same as the dense m16n8k16 layout of the compressed matrix");
// B (32 x 8, col), 4 registers x 2 halves: row (k) = 2t + half + 8 * reg, col (n) = g.
inline RC m16n8k32_sp_b(int lane, int reg, int half) { return {2 * (lane % 4) + half + 8 * reg, lane / 4}; }
// Metadata, sparsity selector 0 ("Sparse MMA metadata ... .f16/.bf16 m16n8k32"): the metadata of
// rows g and g + 8 is read from lanes 4g and 4g + 1 only. Lane 4g + p holds, for compressed columns
// 8p .. 8p + 7 (dense columns 16p .. 16p + 15, four groups of 4), one 4-bit field per group: bits
// 4j .. 4j + 3 for row g's group 4p + j, bits 16 + 4j .. for row g + 8's; each field is i0 | i1 << 2,
// the positions (0..3, i0 < i1) inside the group of the two kept values.
// meta_lane(row, group) = the lane whose metadata register describes that (row, group of 4), and
// meta_shift the bit offset of its 4-bit field.
inline int sp_meta_lane(int row, int group) { return 4 * (row % 8) + group / 4; }
inline int sp_meta_shift(int row, int group) { return 4 * (group % 4) + 16 * (row / 8); }

// ldmatrix .m8n8 .b16, .x1 / .x2 / .x4: lanes 8j .. 8j + 7 give the addresses of rows 0..7 of
// matrix j. Without .trans lane l receives in register j the elements (row l / 4, columns
// 2 (l % 4) and 2 (l % 4) + 1) of matrix j; with .trans the elements (rows 2 (l % 4) and
// 2 (l % 4) + 1, column l / 4). half = which of the two 16-bit elements (0: low bits).
inline RC ldmatrix(int lane, int half, bool trans) {
  return trans ? RC{2 * (lane % 4) + half, lane / 4} : RC{lane / 4, 2 * (lane % 4) + half};
}

}  // namespace tforge::emu::frag
