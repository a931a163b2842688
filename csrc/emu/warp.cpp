// Warp-wide instructions under the emulator: every lane posts its operands and waits until all 32
// lanes of its warp have arrived; the last one computes every lane's result from the PTX ISA's
// fragment layouts (emu/fragments.h): shuffles and votes, __syncwarp, ldmatrix, mma (bf16 / fp16 and
// s8) and mma.sp with its metadata.
#include <cstring>
#include <sstream>
#include <string>

#include "emu/fragments.h"
#include "emu/ptx_emu.h"
#include "emu/state.h"

namespace tforge::emu {
namespace {

// ---- warp-wide instructions

uint32_t lane_word(const Warp& w, int lane, int i) { return w.in[lane][i]; }

float bf16f(uint32_t bits) { return bf16_to_float(static_cast<uint16_t>(bits)); }
float f16f(uint32_t bits) { return half_to_float(static_cast<uint16_t>(bits)); }
uint16_t half_of(uint32_t v, int h) { return static_cast<uint16_t>(h ? v >> 16 : v & 0xffffu); }

void compute_ldmatrix(Warp& w, int warp_id) {
  const int num = w.param & 7;
  const bool trans = (w.param & 8) != 0;
  uint16_t m[4][8][8];
  for (int j = 0; j < num; ++j) {
    for (int r = 0; r < 8; ++r) {
      const int lane = 8 * j + r;
      const uint32_t addr = lane_word(w, lane, 0);
      Fiber& reader = g.fibers[warp_id * 32 + lane];
      if (addr % 16 != 0) {
        std::ostringstream s;
        s << "tforge emulator: ldmatrix row address " << shared_text(addr) << " from " << where(reader.tid)
          << " is not 16-byte aligned";
        fail(s.str());
      }
      uintptr_t host;
      if (!window_to_host(addr, 16, host)) {
        std::ostringstream s;
        s << "tforge emulator: ldmatrix row address " << shared_text(addr) << " from " << where(reader.tid)
          << " is outside shared memory (" << g.dyn_size << " dynamic bytes)";
        fail(s.str());
      }
      shared_access(reader, host, 16, false, "ldmatrix");
      std::memcpy(m[j][r], reinterpret_cast<const void*>(host), 16);
    }
  }
  for (int l = 0; l < 32; ++l) {
    for (int j = 0; j < 4; ++j) {
      uint32_t v = 0;
      if (j < num) {
        for (int h = 0; h < 2; ++h) {
          const frag::RC rc = frag::ldmatrix(l, h, trans);
          v |= static_cast<uint32_t>(m[j][rc.row][rc.col]) << (16 * h);
        }
      }
      w.out[l][j] = v;
    }
  }
}

// Inputs: a[4], b0, b1, c[4] (float bits) -> d[4]. Products and sums in double, one rounding to
// fp32 at the end (the hardware's internal precision is at least fp32; tests allow for it).
void compute_mma_f16(Warp& w) {
  const bool bf = w.param != 0;
  auto cvt = [bf](uint32_t bits) { return bf ? bf16f(bits) : f16f(bits); };
  double A[16][16], B[16][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    for (int reg = 0; reg < 4; ++reg)
      for (int h = 0; h < 2; ++h) {
        const frag::RC rc = frag::m16n8k16_a(l, reg, h);
        A[rc.row][rc.col] = cvt(half_of(w.in[l][reg], h));
      }
    for (int reg = 0; reg < 2; ++reg)
      for (int h = 0; h < 2; ++h) {
        const frag::RC rc = frag::m16n8k16_b(l, reg, h);
        B[rc.row][rc.col] = cvt(half_of(w.in[l][4 + reg], h));
      }
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      C[rc.row][rc.col] = bits_f32(w.in[l][6 + reg]);
    }
  }
  for (int l = 0; l < 32; ++l)
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      double acc = C[rc.row][rc.col];
      for (int k = 0; k < 16; ++k) acc += A[rc.row][k] * B[k][rc.col];
      w.out[l][reg] = f32_bits(static_cast<float>(acc));
    }
}

void compute_mma_s8(Warp& w) {
  int32_t A[16][32], B[32][8], C[16][8];
  for (int l = 0; l < 32; ++l) {
    for (int reg = 0; reg < 4; ++reg)
      for (int byte = 0; byte < 4; ++byte) {
        const frag::RC rc = frag::m16n8k32_s8_a(l, reg, byte);
        A[rc.row][rc.col] = static_cast<int8_t>(w.in[l][reg] >> (8 * byte));
      }
    for (int reg = 0; reg < 2; ++reg)
      for (int byte = 0; byte < 4; ++byte) {
        const frag::RC rc = frag::m16n8k32_s8_b(l, reg, byte);
        B[rc.row][rc.col] = static_cast<int8_t>(w.in[l][4 + reg] >> (8 * byte));
      }
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      C[rc.row][rc.col] = static_cast<int32_t>(w.in[l][6 + reg]);
    }
  }
  for (int l = 0; l < 32; ++l)
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      uint32_t acc = static_cast<uint32_t>(C[rc.row][rc.col]);  // s32 accumulation wraps
      for (int k = 0; k < 32; ++k) acc += static_cast<uint32_t>(A[rc.row][k] * B[k][rc.col]);
      w.out[l][reg] = acc;
    }
}

// Inputs: a[4] (compressed 16x16, m16n8k16 A layout), b[4], e, c[4].
void compute_mma_sp(Warp& w, int warp_id) {
  const bool bf = w.param != 0;
  auto cvt = [bf](uint32_t bits) { return bf ? bf16f(bits) : f16f(bits); };
  double A[16][16], B[32][8], C[16][8];
  int col_of[16][16];  // dense column of compressed element (row, c)
  for (int l = 0; l < 32; ++l) {
    for (int reg = 0; reg < 4; ++reg)
      for (int h = 0; h < 2; ++h) {
        const frag::RC rc = frag::m16n8k16_a(l, reg, h);
        A[rc.row][rc.col] = cvt(half_of(w.in[l][reg], h));
      }
    for (int reg = 0; reg < 4; ++reg)
      for (int h = 0; h < 2; ++h) {
        const frag::RC rc = frag::m16n8k32_sp_b(l, reg, h);
        B[rc.row][rc.col] = cvt(half_of(w.in[l][4 + reg], h));
      }
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      C[rc.row][rc.col] = bits_f32(w.in[l][9 + reg]);
    }
  }
  for (int row = 0; row < 16; ++row)
    for (int grp = 0; grp < 8; ++grp) {
      const int lane = frag::sp_meta_lane(row, grp);
      const unsigned field = (w.in[lane][8] >> frag::sp_meta_shift(row, grp)) & 0xfu;
      const int i0 = field & 3, i1 = field >> 2;
      if (i0 >= i1) {  // mma.sp::ordered_metadata requires i0 < i1
        std::ostringstream s;
        s << "tforge emulator: mma.sp metadata of row " << row << ", group " << grp << " is 0x" << std::hex
          << field << std::dec << " (indices " << i0 << ", " << i1 << "): not two ordered positions, in "
          << where(warp_id * 32 + lane);
        fail(s.str());
      }
      col_of[row][2 * grp] = 4 * grp + i0;
      col_of[row][2 * grp + 1] = 4 * grp + i1;
    }
  for (int l = 0; l < 32; ++l)
    for (int reg = 0; reg < 4; ++reg) {
      const frag::RC rc = frag::m16n8_c(l, reg);
      double acc = C[rc.row][rc.col];
      for (int c = 0; c < 16; ++c) acc += A[rc.row][c] * B[col_of[rc.row][c]][rc.col];
      w.out[l][reg] = f32_bits(static_cast<float>(acc));
    }
}

void complete(Warp& w, int warp_id) {
  switch (w.op) {
    case Op::kExchange:
      for (int l = 0; l < 32; ++l)
        for (int s = 0; s < 32; ++s) {
          w.out[l][2 * s] = w.in[s][0];
          w.out[l][2 * s + 1] = w.in[s][1];
        }
      break;
    case Op::kSyncwarp: ++w.epoch; break;
    case Op::kLdmatrix: compute_ldmatrix(w, warp_id); break;
    case Op::kMmaF16: compute_mma_f16(w); break;
    case Op::kMmaS8: compute_mma_s8(w); break;
    case Op::kMmaSp: compute_mma_sp(w, warp_id); break;
    case Op::kNone: break;
  }
}

// One lane's part in a warp-wide instruction: post `nin` words, wait for the other 31 lanes, take
// `nout` words of the result.
void warp_op(Op op, int param, const char* what, const uint32_t* in, int nin, uint32_t* out, int nout) {
  Fiber& f = cur(what);
  Warp& w = g.warps[f.warp];
  if (w.lanes != 32) {
    std::ostringstream s;
    s << "tforge emulator: " << what << " in a warp of " << w.lanes << " threads (block of " << g.nthreads
      << "): warp-wide instructions need full warps, in " << where(f.tid);
    fail(s.str());
  }
  if (w.arrived == 0) {
    w.op = op;
    w.param = param;
    w.what = what;
  } else if (w.op != op || w.param != param) {
    fail("tforge emulator: lanes of warp " + std::to_string(f.warp) + " are at different warp-wide instructions (" +
         w.what + " and " + what + ") in " + where(f.tid));
  }
  for (int l = 0; l < 32; ++l)
    if (g.fibers[f.warp * 32 + l].st == St::kDone)
      fail("tforge emulator: " + std::string(what) + " in " + where(f.tid) + ", but " +
           thread_text(f.warp * 32 + l) + " of its warp has exited");
  std::memcpy(w.in[f.lane], in, sizeof(uint32_t) * nin);
  f.st = St::kWarp;
  if (++w.arrived == 32) {
    complete(w, f.warp);
    w.arrived = 0;
    w.op = Op::kNone;
    for (int l = 0; l < 32; ++l) g.fibers[f.warp * 32 + l].st = St::kReady;
  }
  yield(f);
  if (nout) std::memcpy(out, w.out[f.lane], sizeof(uint32_t) * nout);
}

}  // namespace

void syncwarp(unsigned mask) {
  if (mask != 0xffffffffu) fail("tforge emulator: __syncwarp with a partial mask is not emulated");
  warp_op(Op::kSyncwarp, 0, "__syncwarp", nullptr, 0, nullptr, 0);
}

void warp_exchange(uint64_t mine, unsigned mask, const char* what, uint64_t (&all)[32]) {
  if (mask != 0xffffffffu) fail(std::string("tforge emulator: ") + what + " with a partial mask is not emulated");
  const uint32_t in[2] = {static_cast<uint32_t>(mine), static_cast<uint32_t>(mine >> 32)};
  uint32_t out[64];
  warp_op(Op::kExchange, 0, what, in, 2, out, 64);
  for (int i = 0; i < 32; ++i) all[i] = out[2 * i] | (static_cast<uint64_t>(out[2 * i + 1]) << 32);
}

void ldmatrix(uint32_t (&r)[4], uint32_t addr, int num, bool trans) {
  uint32_t out[4];
  warp_op(Op::kLdmatrix, num | (trans ? 8 : 0), trans ? "ldmatrix.trans" : "ldmatrix", &addr, 1, out, 4);
  for (int j = 0; j < 4; ++j) r[j] = j < num ? out[j] : r[j];
}

void mma_m16n8k16(float (&c)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1, bool bf16) {
  uint32_t in[10] = {a[0], a[1], a[2], a[3], b0, b1, f32_bits(c[0]), f32_bits(c[1]), f32_bits(c[2]), f32_bits(c[3])};
  uint32_t out[4];
  warp_op(Op::kMmaF16, bf16 ? 1 : 0, bf16 ? "mma.m16n8k16.bf16" : "mma.m16n8k16.f16", in, 10, out, 4);
  for (int i = 0; i < 4; ++i) c[i] = bits_f32(out[i]);
}

void mma_m16n8k32_s8(int (&d)[4], const uint32_t (&a)[4], uint32_t b0, uint32_t b1) {
  uint32_t in[10] = {a[0],
                     a[1],
                     a[2],
                     a[3],
                     b0,
                     b1,
                     static_cast<uint32_t>(d[0]),
                     static_cast<uint32_t>(d[1]),
                     static_cast<uint32_t>(d[2]),
                     static_cast<uint32_t>(d[3])};
  uint32_t out[4];
  warp_op(Op::kMmaS8, 0, "mma.m16n8k32.s8", in, 10, out, 4);
  for (int i = 0; i < 4; ++i) d[i] = static_cast<int>(out[i]);
}

void mma_sp_m16n8k32(float (&d)[4], const uint32_t (&a)[4], const uint32_t (&b)[4], uint32_t e, bool bf16) {
  uint32_t in[13] = {a[0], a[1], a[2],        a[3],        b[0],        b[1],       b[2],
                     b[3], e,    f32_bits(d[0]), f32_bits(d[1]), f32_bits(d[2]), f32_bits(d[3])};
  uint32_t out[4];
  warp_op(Op::kMmaSp, bf16 ? 1 : 0, bf16 ? "mma.sp.m16n8k32.bf16" : "mma.sp.m16n8k32.f16", in, 13, out, 4);
  for (int i = 0; i < 4; ++i) d[i] = bits_f32(out[i]);
}

}  // namespace tforge::emu
