// Channel-blocked direct convolution, float32 forward (issue 14; the scheme of oneDNN's
// direct kernels and of Georganas et al., SC'18).
//
// The vector runs over output channels: one register holds VW = 16 (AVX-512) or 8 (AVX2)
// output channels of one output pixel. A register tile holds J channel blocks x P pixels
// (24-28 accumulators on AVX-512); for every reduction step k = (ic, kh, kw) it loads J
// weight vectors and broadcasts P input values, then does J * P FMAs. Every layer uses the
// full vector width, whatever its output width (the old kernels vectorised along the output
// row and wasted lanes on 6-, 12- and 24-wide rows).
//
// So that the P pixels of a tile sit at one fixed distance from each other in memory for every
// tap, the input is repacked once per call into a zero-padded, stride-phase-split copy: for
// strides (sh, sw), channel ic becomes up to sh * sw planes (those some tap reads)
// X_ab[i][j] = Xpad[i sh + a][j sw + b] of Hq x Wq. Output pixel (oh, ow) reads tap (kh, kw)
// from plane (kh dh mod sh, kw dw mod sw) at (oh + kh dh / sh, ow + kw dw / sw): a stride-1
// convolution on the phase planes, so with the flat pixel index q = oh Wq + ow every tap is
// "x[q + offset[k]]". Tiles are P consecutive q; the columns ow in [OW, Wq) are computed and
// dropped (Wq - OW = (dilated kernel - 1) / sw columns per row) when a tile spans rows; tiles
// placed along rows compute none of them. A 1x1 stride-1 unpadded convolution is a plain
// matrix product and reads the NCHW input as it is (no repack) unless its planes alias in L1.
// With C_in >= 16 the copy is channel-blocked by 16 (see `blocked_in`).
//
// The weights are repacked into [C_out / VW][C_in * KH * KW][VW] by in-register transposes
// (conv2d_blocked_pack.cpp) and kept per thread while their bytes are unchanged (an optimizer
// updates weights in place, at the same address: the key is a memcmp of the bytes).
//
// Taps that read only padding are skipped: per tile, the kernel rows and columns that reach
// the input for some pixel of the tile (tile_taps). Tiles along a row skip the kernel rows of
// the top and bottom output rows; batch-inner tiles (P images at one position, below) skip
// exactly. A plan per layer picks the tile width per channel-group size, the split of the
// channel blocks into groups, and per-image or batch-inner tiles, by the pixel-taps computed
// plus the cost of the epilogue's stores.
//
// Accumulators go to a stack tile (or a per-thread buffer, vec_out) and the out-of-line
// epilogue writes them, with bias and ReLU, to NCHW output (keeps the register allocation of
// the hot loop free of the epilogue's needs).
#include "conv2d_blocked.h"
#include "conv2d_blocked_pack.h"

#include <algorithm>
#include <cstdlib>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "cpu_common.h"
#include "cpu_simd.h"

namespace cnnops {

namespace {

// Everything a tile needs, computed once per call.
struct BlockedConv {
  const float* x;        // repacked (or original) input, image 0
  int64_t x_image;       // elements per image of x
  const float* w;        // repacked weights, [C_out blocks][K][VW]
  int64_t K;             // C_in * KH * KW
  const int64_t* off;    // offset of reduction step k from the tile's first pixel
  const float* bias;
  float* out;             // output (oc, oh, ow) of image n at
  int64_t out_image, out_plane, out_row, out_col;  // n out_image + oc out_plane + oh out_row + ow out_col
  int64_t C_out, OH, OW, Wq, total;  // total = OH * Wq flat pixels per image
  int xs;                            // distance of neighbouring pixels in x: 1 or 16
  bool relu;
  int64_t batch;  // > 0: batch-inner copy, pixel q is image q % batch at position q / batch
  bool vec_out;   // the unit's tiles go to a per-thread buffer, written out transposed (below)
  int isa;        // CpuIsa, for that write
  // Taps that read only padding are skipped: output row oh reaches the input with the taps
  // kh in [tap_rows[2 oh], tap_rows[2 oh + 1]), column ow with kw in [tap_cols[2 ow], ...).
  // Null when every tap of every pixel reaches the input (nothing to skip).
  const int64_t* tap_rows;
  const int64_t* tap_cols;
  int64_t KW, taps, C_in;  // the reduction's layout: step k of channel block b (cw channels
  int64_t cw;              // a block: 16 channel-blocked, 1 planar) and tap t is
                           // b taps cw + t lanes(b) + lane, lanes(b) = min(cw, C_in - b cw)
  bool edges;  // row tiles also skip their first / last pixel's padding columns (tile_taps)
};

// One unit of work: J channel blocks starting at block `ocb`, `tiles` tiles of P pixels.
struct TileItem {
  int32_t ocb, J, P, tiles;
  const int64_t* q0;  // first pixel of each tile
};

// The reduction runs in chunks of kc steps, the chunk's weights (J * kc * VW floats, see
// chunk_weight_bytes) staying in cache for all the tiles of a unit; the tiles' partial sums
// wait in a per-thread buffer (up to 64 KiB, in L2) between chunks.
// 96 KiB (in L2): on Zen 4 (32 KiB L1) chunks of 24 KiB, meant to stay in L1, ran 1-3.5%
// slower than 96 KiB or no chunking at all (fewer partial-sum round trips; the weights stream
// from L2 at ~11 B a cycle). CNNOPS_CPU_CHUNK_KB, read once, overrides it (to tune another CPU).
int64_t chunk_weight_bytes() {
  static const int64_t bytes = [] {
    const char* env = std::getenv("CNNOPS_CPU_CHUNK_KB");
    const int64_t kb = env ? std::atoll(env) : 0;
    return (kb > 0 ? kb : 96) << 10;
  }();
  return bytes;
}
constexpr int64_t kPartialBytes = 64 << 10;

// The per-thread buffer of a unit's results (vec_out), grown when a unit needs more.
float* unit_out_buffer(int64_t floats) {
  static thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(floats + 16)) buf.resize(floats + 16);
  return align64(buf.data());
}

void write_unit(const BlockedConv& c, int64_t n, int ocb, int J, int64_t qbase, int64_t span,
                const float* buf);

void tile_taps(const BlockedConv& c, int64_t q0, int P, int64_t* kh0, int64_t* kh1, int64_t* kw0,
               int64_t* kw1, int64_t* edges = nullptr);

int64_t* unit_taps_buffer(int64_t n) {
  static thread_local std::vector<int64_t> buf;
  if (buf.size() < static_cast<size_t>(n)) buf.resize(n);
  return buf.data();
}

float* partial_buffer() {
  static thread_local std::vector<float> buf;
  if (buf.empty()) buf.resize(kPartialBytes / sizeof(float) + 16);
  return align64(buf.data());
}

template <int VW, int J, int P, int XS>
CNNOPS_INLINE void unit(const BlockedConv& c, int64_t n, const TileItem& t) {
  const int64_t kc = std::max<int64_t>(1, chunk_weight_bytes() / (J * VW * int64_t(sizeof(float))));
  float* partial = c.K > kc ? partial_buffer() : nullptr;
  // vec_out: the tiles' sums land in a buffer [J][span][VW] over the unit's pixel range (the
  // tiles of a unit are in pixel order), which write_unit transposes into the output
  const int64_t qbase = t.q0[0], span = t.q0[t.tiles - 1] + P - qbase;
  float* out_buf = c.vec_out ? unit_out_buffer(J * span * VW) : nullptr;
  // each tile's taps (tile_taps: kh0, kh1, kw0, kw1, edge masks), once for all the chunks
  int64_t* taps = c.tap_rows ? unit_taps_buffer(6 * t.tiles) : nullptr;
  for (int i = 0; taps && i < t.tiles; ++i) {
    int64_t* ti = taps + 6 * i;
    ti[4] = ti[5] = 0;
    tile_taps(c, t.q0[i], P, ti, ti + 1, ti + 2, ti + 3, c.edges ? ti + 4 : nullptr);
  }
  for (int64_t k0 = 0; k0 < c.K; k0 += kc) {
    const int64_t k1 = std::min(c.K, k0 + kc);
    for (int i = 0; i < t.tiles; ++i) {
      tile<VW, J, P, XS>(c, n, t.ocb, t.q0[i], k0, k1, k0 == 0, k1 == c.K,
                         partial ? partial + i * (J * P * VW) : nullptr,
                         out_buf ? out_buf + (t.q0[i] - qbase) * VW : nullptr, span * VW,
                         taps ? taps + 6 * i : nullptr);
    }
  }
  if (out_buf) write_unit(c, n, t.ocb, J, qbase, span, out_buf);
}

// Writes a tile of accumulators (buf[j][p][VW]) to the output (NCHW, or every sh-th row and
// sw-th column of it for grad_input's phases), dropping the padding columns and the channels
// past C_out. Out of line (see the file comment); a template so that
// the pixel loop is unrolled and each pixel's destination is computed once.
template <int VW, int J, int P>
__attribute__((noinline)) void store_tile(const BlockedConv& c, int64_t n, int ocb, int64_t q0,
                                          const float* buf) {
  const int64_t plane = c.out_plane;
  float* out_n = c.out + n * c.out_image;
  int64_t pos[P];  // output offset of pixel p in its plane, -1 if dropped
  for (int p = 0; p < P; ++p) {
    const int64_t q = c.batch ? (q0 + p) / c.batch : q0 + p, oh = q / c.Wq, ow = q - oh * c.Wq;
    pos[p] = q < c.total && ow < c.OW ? oh * c.out_row + ow * c.out_col : -1;
    if (c.batch && pos[p] >= 0) pos[p] += ((q0 + p) % c.batch) * c.out_image;
  }
  for (int j = 0; j < J; ++j) {
    const int64_t oc0 = int64_t(ocb + j) * VW;
    const int lanes = static_cast<int>(std::min<int64_t>(VW, c.C_out - oc0));
    for (int l = 0; l < lanes; ++l) {
      const float b = c.bias ? c.bias[oc0 + l] : 0.0f;
      float* dst = out_n + (oc0 + l) * plane;
      const float* src = buf + j * P * VW + l;
#pragma GCC unroll 28
      for (int p = 0; p < P; ++p) {
        float v = src[p * VW] + b;
        if (c.relu && v < 0.0f) v = 0.0f;  // false for NaN: ReLU keeps NaN, as torch does
        if (pos[p] >= 0) dst[pos[p]] = v;
      }
    }
  }
}


// The taps kh in [kh0, kh1), kw in [kw0, kw1) that reach the input for some pixel of the tile
// at flat pixel q0 (P pixels): a superset of each pixel's own range (computing a tap that
// reads padding is never wrong, the copy holds zeros there, only wasted). Per axis, the
// ranges' ends never grow with the position (see valid_taps), so the union over positions
// [a, b] lies within [lo(b), hi(a)). Pixels in the padding columns (dropped) do not count.
// `edges` (tiles of one image row, P >= 2, KW <= 62): edges[0] bit kw set when the tile's first
// pixel does not need kernel column kw, edges[1] the same for its last pixel; the tile skips
// those pixels' FMAs of that column (the edge columns of a 3x3 pad-1 row: 1 pixel-tap in 3 P
// at each end of the row). Zero when nothing is skipped that way.
__attribute__((noinline)) void tile_taps(const BlockedConv& c, int64_t q0, int P, int64_t* kh0,
                                         int64_t* kh1, int64_t* kw0, int64_t* kw1,
                                         int64_t* edges) {
  int64_t qa = q0, qb = q0 + P - 1;
  if (c.batch) qa /= c.batch, qb /= c.batch;
  qb = std::min(qb, c.total - 1);
  *kh0 = *kh1 = *kw0 = *kw1 = 0;
  if (edges) edges[0] = edges[1] = 0;
  if (qa > qb) return;
  const int64_t oh_a = qa / c.Wq, oh_b = qb / c.Wq;
  int64_t ow_a = 0, ow_b = c.OW - 1;
  if (oh_a == oh_b) ow_a = qa - oh_a * c.Wq, ow_b = std::min(ow_b, qb - oh_b * c.Wq);
  if (ow_a > ow_b) return;  // only padding columns
  *kh0 = c.tap_rows[2 * oh_b], *kh1 = c.tap_rows[2 * oh_a + 1];
  *kw0 = c.tap_cols[2 * ow_b], *kw1 = c.tap_cols[2 * ow_a + 1];
  if (*kh0 >= *kh1 || *kw0 >= *kw1) {
    *kh0 = *kh1 = *kw0 = *kw1 = 0;
    return;
  }
  // (channel-blocked copies only: with one channel a step, runs of one step cost more than
  // the FMAs they save)
  if (!edges || c.batch || c.cw < 16 || oh_a != oh_b || P < 2 || c.KW > 62 ||
      q0 + P - 1 >= c.total)
    return;
  // the kernel columns in [kw0, kw1) that the first / last pixel does not need (a pixel in
  // the dropped padding columns needs none)
  const int64_t first = q0 - oh_a * c.Wq, last = first + P - 1;
  for (int e = 0; e < 2; ++e) {
    const int64_t ow = e == 0 ? first : last;
    const int64_t lo = ow < c.OW ? c.tap_cols[2 * ow] : c.KW;
    const int64_t hi = ow < c.OW ? c.tap_cols[2 * ow + 1] : c.KW;
    for (int64_t kw = *kw0; kw < *kw1; ++kw)
      if (kw < lo || kw >= hi) edges[e] |= int64_t(1) << kw;
  }
}

// Reduction steps [k0, k1) of the tile; `first`: start from zero (else from `partial`),
// `last`: write the output (else save the sums to `partial`, J * P * VW floats).
template <int VW, int J, int P, int XS>
CNNOPS_INLINE void tile(const BlockedConv& c, int64_t n, int ocb, int64_t q0, int64_t k0,
                        int64_t k1, bool first, bool last, float* __restrict__ partial,
                        float* __restrict__ out_buf, int64_t out_block, const int64_t* taps) {
  using V = typename FloatVec<VW>::type;
  const float* __restrict__ x = c.x + n * c.x_image + q0 * XS;
  const float* __restrict__ w = c.w + int64_t(ocb) * c.K * VW;
  const int64_t* __restrict__ off = c.off;
  const int64_t wstride = c.K * VW;  // next channel block
  // -0.0f + v == v for every v (0.0f + v is not, for v = -0), so GCC folds the addition in
  // the broadcast below away and the broadcast becomes the memory operand of the FMA
  V negzero;
#pragma GCC unroll 16
  for (int l = 0; l < VW; ++l) negzero[l] = -0.0f;
  // every loop over the tile is fully unrolled, so that the accumulators live in registers
  V acc[J][P];
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 28
    for (int p = 0; p < P; ++p) {
      if (first) acc[j][p] = V{};
      else std::memcpy(&acc[j][p], partial + (j * P + p) * VW, sizeof(V));
    }
  // the reduction steps [ka, kb) for the pixels [PL, PH) of the tile
  auto steps = [&](int64_t ka, int64_t kb, auto pl, auto ph) __attribute__((always_inline)) {
    constexpr int PL = decltype(pl)::value, PH = decltype(ph)::value;
    for (int64_t k = ka; k < kb; ++k) {
      const float* __restrict__ xk = x + off[k];
      V wv[J];
#pragma GCC unroll 4
      for (int j = 0; j < J; ++j) std::memcpy(&wv[j], w + j * wstride + k * VW, sizeof(V));
#pragma GCC unroll 28
      for (int p = PL; p < PH; ++p) {
        const V xb = negzero + xk[p * XS];  // broadcast
#pragma GCC unroll 4
        for (int j = 0; j < J; ++j) acc[j][p] += xb * wv[j];
      }
    }
  };
  using All0 = std::integral_constant<int, 0>;
  using AllP = std::integral_constant<int, P>;
  if (!c.tap_rows || (taps[0] == 0 && taps[1] * c.KW == c.taps && taps[2] == 0 &&
                      taps[3] == c.KW && (taps[4] | taps[5]) == 0)) {
    steps(k0, k1, All0{}, AllP{});  // every tap
  } else if (P >= 2 && (taps[4] | taps[5]) != 0) {
    // a row's edge tiles: per channel block and kernel row, the first and last kernel columns
    // in runs of their own, without the first and / or last pixel where the column reaches
    // only padding for it; the columns between in one run (a run costs ~20 cycles to start:
    // one per column ate the FMAs saved)
    const int64_t kh0 = taps[0], kh1 = taps[1], kw0 = taps[2], kw1 = taps[3];
    const int64_t block = c.taps * c.cw;
    using One = std::integral_constant<int, (P >= 2 ? 1 : 0)>;
    using Pm1 = std::integral_constant<int, (P >= 2 ? P - 1 : P)>;
    auto run = [&](int64_t ka, int64_t kb, int cut) __attribute__((always_inline)) {
      ka = std::max(k0, ka), kb = std::min(k1, kb);
      if (ka >= kb) return;
      if (cut == 0) steps(ka, kb, All0{}, AllP{});
      else if (cut == 1) steps(ka, kb, One{}, AllP{});
      else if (cut == 2) steps(ka, kb, All0{}, Pm1{});
      else steps(ka, kb, One{}, Pm1{});
    };
    auto cut_at = [&](int64_t kw) {
      return int((taps[4] >> kw) & 1) | int((taps[5] >> kw) & 1) << 1;
    };
    for (int64_t b = k0 / block; b * block < k1; ++b) {
      const int64_t base = b * block, lanes = std::min(c.cw, c.C_in - b * c.cw);
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t row = base + kh * c.KW * lanes;
        int64_t kwa = kw0, kwb = kw1;
        if (const int cut = cut_at(kwa); cut != 0) {
          run(row + kwa * lanes, row + (kwa + 1) * lanes, cut);
          ++kwa;
        }
        if (kwb > kwa) {
          if (const int cut = cut_at(kwb - 1); cut != 0) {
            run(row + (kwb - 1) * lanes, row + kwb * lanes, cut);
            --kwb;
          }
        }
        if (kwb > kwa) run(row + kwa * lanes, row + kwb * lanes, 0);
      }
    }
  } else {
    // only the taps that reach the input for some pixel of the tile: per channel block and
    // kernel row one run of steps (the kernel columns of a row are consecutive steps; all the
    // kernel rows' in one run when every column is kept)
    const int64_t kh0 = taps[0], kh1 = taps[1], kw0 = taps[2], kw1 = taps[3];
    const bool whole_rows = kw0 == 0 && kw1 == c.KW;
    const int64_t block = c.taps * c.cw;
    for (int64_t b = k0 / block; b * block < k1; ++b) {
      const int64_t base = b * block, lanes = std::min(c.cw, c.C_in - b * c.cw);
      for (int64_t kh = kh0; kh < kh1; ++kh) {
        const int64_t ka = std::max(k0, base + (kh * c.KW + kw0) * lanes);
        const int64_t kb =
            std::min(k1, base + ((whole_rows ? kh1 - 1 : kh) * c.KW + kw1) * lanes);
        if (ka < kb) steps(ka, kb, All0{}, AllP{});
        if (whole_rows) break;
      }
    }
  }
  if (last && out_buf) {  // vec_out: [J][span][VW], this tile's pixels at their place
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j)
#pragma GCC unroll 28
      for (int p = 0; p < P; ++p)
        std::memcpy(out_buf + j * out_block + p * VW, &acc[j][p], sizeof(V));
    return;
  }
  alignas(64) float buf[J * P * VW];
  float* dst = last ? buf : partial;
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 28
    for (int p = 0; p < P; ++p) std::memcpy(dst + (j * P + p) * VW, &acc[j][p], sizeof(V));
  if (last) store_tile<VW, J, P>(c, n, ocb, q0, buf);
}

// Tile shapes (J, P): J channel blocks x P pixels, so that J * P accumulators + J weight
// vectors + 1 broadcast fit the register file (32 zmm; 16 ymm; 16 xmm for the baseline, where
// one 8-float vector takes two registers). Several P per J: the driver picks the one that
// wastes the fewest pixels on the layer's output width.
struct TileShape { int J, P; };
constexpr TileShape kAvx512Shapes[] = {{4, 6}, {3, 8}, {2, 14}, {2, 12}, {1, 28}, {1, 24}, {1, 10}};
constexpr TileShape kAvx2Shapes[] = {{2, 6}, {1, 12}};
constexpr TileShape kBaselineShapes[] = {{1, 6}};


CNNOPS_TARGET_AVX512 void run_avx512(const BlockedConv& c, int64_t n, const TileItem& t) {
  switch (t.J * 100 + t.P) {
    case 406: (c.xs == 16 ? unit<16, 4, 6, 16>(c, n, t) : unit<16, 4, 6, 1>(c, n, t)); break;
    case 308: (c.xs == 16 ? unit<16, 3, 8, 16>(c, n, t) : unit<16, 3, 8, 1>(c, n, t)); break;
    case 214: (c.xs == 16 ? unit<16, 2, 14, 16>(c, n, t) : unit<16, 2, 14, 1>(c, n, t)); break;
    case 212: (c.xs == 16 ? unit<16, 2, 12, 16>(c, n, t) : unit<16, 2, 12, 1>(c, n, t)); break;
    case 128: (c.xs == 16 ? unit<16, 1, 28, 16>(c, n, t) : unit<16, 1, 28, 1>(c, n, t)); break;
    case 110: (c.xs == 16 ? unit<16, 1, 10, 16>(c, n, t) : unit<16, 1, 10, 1>(c, n, t)); break;
    default: (c.xs == 16 ? unit<16, 1, 24, 16>(c, n, t) : unit<16, 1, 24, 1>(c, n, t)); break;
  }
}

CNNOPS_TARGET_AVX2 void run_avx2(const BlockedConv& c, int64_t n, const TileItem& t) {
  if (t.J == 2) (c.xs == 16 ? unit<8, 2, 6, 16>(c, n, t) : unit<8, 2, 6, 1>(c, n, t));
  else (c.xs == 16 ? unit<8, 1, 12, 16>(c, n, t) : unit<8, 1, 12, 1>(c, n, t));
}

void run_baseline(const BlockedConv& c, int64_t n, const TileItem& t) {
  (c.xs == 16 ? unit<8, 1, 6, 16>(c, n, t) : unit<8, 1, 6, 1>(c, n, t));
}



// The input copies' inner loop: row[j ds + l] = src[l][j sw] for j in [lo, hi), l < lanes
// (the last channel block may hold fewer than 16): whole blocks by grad_weight's transposing
// gather (gather_rows16), a short block value by value.
void gather_channels(const float* const* src, int lanes, int64_t lo, int64_t hi, int64_t sw,
                     float* row, int64_t ds, CpuIsa isa) {
  if (lanes == 16) {
    const float* p[16];
    for (int l = 0; l < 16; ++l) p[l] = src[l] + lo * sw;
    gather_rows16(p, sw, hi - lo, row + lo * ds, ds, isa);
    return;
  }
  for (int64_t j = lo; j < hi; ++j)
    for (int l = 0; l < lanes; ++l) row[j * ds + l] = src[l][j * sw];
}

// ---- vec_out: a unit's results [J][span][VW] (pixel-major, VW channels a pixel) written to
// NCHW output by VW x VW transposes: VW pixels of one output row x VW channels become VW
// channel rows of VW pixels, stored (masked) as whole vectors. Bias and ReLU are added before
// the transpose, where a vector holds VW channels. Replaces one scalar store per output value
// (as much time as the FMAs on layers with short reductions: LeNet's 6 -> 16 5x5 has 150).
#if CNNOPS_CPU_X86
CNNOPS_TARGET_AVX512 void write_unit_avx512(const BlockedConv& c, int64_t n, int ocb, int J,
                                            int64_t qbase, int64_t span, const float* buf) {
  float* out_n = c.out + n * c.out_image;
  const __m512 zero = _mm512_setzero_ps();
  for (int j = 0; j < J; ++j) {
    const int64_t oc0 = int64_t(ocb + j) * 16;
    const int lanes = static_cast<int>(std::min<int64_t>(16, c.C_out - oc0));
    const __mmask16 lane_mask = static_cast<__mmask16>((1u << lanes) - 1);
    const __m512 bias = c.bias ? _mm512_maskz_loadu_ps(lane_mask, c.bias + oc0) : zero;
    const float* src = buf + j * span * 16;
    for (int64_t q = qbase; q < qbase + span;) {
      const int64_t oh = q / c.Wq, ow = q - oh * c.Wq;
      const int64_t row_end = std::min(qbase + span, q - ow + c.Wq);  // end of this row's part
      if (oh >= c.OH || ow >= c.OW) {  // padding columns (or past the last row)
        q = row_end;
        continue;
      }
      const int64_t valid_end = std::min(row_end, q - ow + c.OW);
      for (; q < valid_end; q += 16) {
        const int cnt = static_cast<int>(std::min<int64_t>(16, valid_end - q));
        __m512 r[16];
        for (int i = 0; i < 16; ++i) {
          __m512 v = i < cnt ? _mm512_load_ps(src + (q - qbase + i) * 16) : zero;
          v = _mm512_add_ps(v, bias);
          // ReLU keeps NaN (a NaN compares false), as torch does
          if (c.relu) v = _mm512_mask_mov_ps(v, _mm512_cmp_ps_mask(v, zero, _CMP_LT_OQ), zero);
          r[i] = v;
        }
        transpose16(r);
        const __mmask16 m = static_cast<__mmask16>((1u << cnt) - 1);
        float* dst = out_n + oc0 * c.out_plane + oh * c.out_row + (q - (oh * c.Wq));
        for (int l = 0; l < lanes; ++l) _mm512_mask_storeu_ps(dst + l * c.out_plane, m, r[l]);
      }
      q = row_end;
    }
  }
}

CNNOPS_TARGET_AVX2 void write_unit_avx2(const BlockedConv& c, int64_t n, int ocb, int J,
                                        int64_t qbase, int64_t span, const float* buf) {
  float* out_n = c.out + n * c.out_image;
  const __m256 zero = _mm256_setzero_ps();
  for (int j = 0; j < J; ++j) {
    const int64_t oc0 = int64_t(ocb + j) * 8;
    const int lanes = static_cast<int>(std::min<int64_t>(8, c.C_out - oc0));
    alignas(32) float bias_lanes[8] = {0, 0, 0, 0, 0, 0, 0, 0};
    for (int l = 0; l < lanes && c.bias; ++l) bias_lanes[l] = c.bias[oc0 + l];
    const __m256 bias = _mm256_load_ps(bias_lanes);
    const float* src = buf + j * span * 8;
    for (int64_t q = qbase; q < qbase + span;) {
      const int64_t oh = q / c.Wq, ow = q - oh * c.Wq;
      const int64_t row_end = std::min(qbase + span, q - ow + c.Wq);
      if (oh >= c.OH || ow >= c.OW) {
        q = row_end;
        continue;
      }
      const int64_t valid_end = std::min(row_end, q - ow + c.OW);
      for (; q < valid_end; q += 8) {
        const int cnt = static_cast<int>(std::min<int64_t>(8, valid_end - q));
        __m256 r[8];
        for (int i = 0; i < 8; ++i) {
          __m256 v = i < cnt ? _mm256_load_ps(src + (q - qbase + i) * 8) : zero;
          v = _mm256_add_ps(v, bias);
          if (c.relu) v = _mm256_blendv_ps(v, zero, _mm256_cmp_ps(v, zero, _CMP_LT_OQ));
          r[i] = v;
        }
        transpose8(r);
        alignas(32) int32_t mask_lanes[8];
        for (int i = 0; i < 8; ++i) mask_lanes[i] = i < cnt ? -1 : 0;
        const __m256i m = _mm256_load_si256(reinterpret_cast<const __m256i*>(mask_lanes));
        float* dst = out_n + oc0 * c.out_plane + oh * c.out_row + (q - (oh * c.Wq));
        for (int l = 0; l < lanes; ++l) _mm256_maskstore_ps(dst + l * c.out_plane, m, r[l]);
      }
      q = row_end;
    }
  }
}
#endif

// The portable writer (baseline ISA), value by value.
void write_unit_scalar(const BlockedConv& c, int64_t n, int ocb, int J, int64_t qbase,
                       int64_t span, const float* buf) {
  const int VW = 8;
  float* out_n = c.out + n * c.out_image;
  for (int j = 0; j < J; ++j) {
    const int64_t oc0 = int64_t(ocb + j) * VW;
    const int lanes = static_cast<int>(std::min<int64_t>(VW, c.C_out - oc0));
    for (int64_t q = qbase; q < qbase + span; ++q) {
      const int64_t oh = q / c.Wq, ow = q - oh * c.Wq;
      if (oh >= c.OH || ow >= c.OW) continue;
      for (int l = 0; l < lanes; ++l) {
        float v = buf[(j * span + q - qbase) * VW + l] + (c.bias ? c.bias[oc0 + l] : 0.0f);
        if (c.relu && v < 0.0f) v = 0.0f;
        out_n[(oc0 + l) * c.out_plane + oh * c.out_row + ow] = v;
      }
    }
  }
}

void write_unit(const BlockedConv& c, int64_t n, int ocb, int J, int64_t qbase, int64_t span,
                const float* buf) {
#if (defined(__x86_64__) || defined(__i386__)) && defined(__GNUC__)
  if (c.isa == static_cast<int>(CpuIsa::kAvx512)) return write_unit_avx512(c, n, ocb, J, qbase, span, buf);
  if (c.isa == static_cast<int>(CpuIsa::kAvx2)) return write_unit_avx2(c, n, ocb, J, qbase, span, buf);
#endif
  write_unit_scalar(c, n, ocb, J, qbase, span, buf);
}

// ---- Thin output (C_out < 16): the vector runs over VW consecutive output pixels instead.
// A register tile holds OC output channels x PV pixel vectors; per reduction step k it loads PV
// input vectors (unaligned, from the planar copy: a tap is the fixed offset off[k]) and
// broadcasts OC weights, OC * PV FMAs. A pixel vector starts anywhere (vq): along a row when
// rows are at least VW wide (the last one of a row shifted back to end at the row's end, so
// every vector is stored whole), else over the flat pixel range including the padding
// columns, whose lanes are dropped when stored.
struct ThinConv {
  const float* x;
  int64_t x_image;
  const float* w;  // [C_out / OC][K][OC]
  int64_t K;
  const int64_t* off;
  const float* bias;
  float* out;
  int64_t out_image, out_plane, out_row, out_col;
  int64_t C_out, OW, Wq, total;
  bool relu;
  // Batch-inner (batch = N > 0): the copy is [C_in][phase planes][N] and a vector holds VW
  // images at one output position; a tile's PV vectors share that position, and the reduction
  // runs tap-major (k = tap C_in + ic) over the taps that reach the input there only
  // (tap_rows / tap_cols as in BlockedConv).
  int64_t batch;
  const int64_t* tap_rows;
  const int64_t* tap_cols;
  int64_t KW, C_in;
};

// PV per OC: accumulators + PV loaded vectors within the register file (AVX-512: 32 zmm, the
// weight broadcast folded into the FMA; AVX2: 16 ymm plus one broadcast register; baseline:
// an 8-float vector is two xmm of 16).
constexpr int kThinPvAvx512[9] = {0, 8, 8, 7, 6, 5, 4, 3, 3};
constexpr int kThinPvAvx2[9] = {0, 8, 4, 3, 3, 2, 2, 1, 1};
constexpr int kThinPvBaseline[9] = {0, 4, 2, 1, 1, 1, 1, 1, 1};

// Writes the vectors of a tile (buf[oc][v][VW]) that do not lie whole inside one output row
// (thin_tile stores those from its registers), lane by lane, with bias and ReLU. Out of line:
// rare (rows narrower than a vector, grad_input's strided phases).
template <int VW, int OC, int PV>
__attribute__((noinline)) void thin_store_lanes(const ThinConv& c, int64_t n, int64_t ob,
                                                const int64_t* vq, const float* buf) {
  float* out_n = c.out + n * c.out_image;
  for (int v = 0; v < PV; ++v) {
    const int64_t q0 = vq[v], oh = q0 / c.Wq, ow = q0 - oh * c.Wq;
    if (c.out_col == 1 && ow + VW <= c.OW && q0 + VW <= c.total) continue;  // stored whole
    for (int o = 0; o < OC; ++o) {
      const int64_t oc = ob * OC + o;
      if (oc >= c.C_out) break;
      const float b = c.bias ? c.bias[oc] : 0.0f;
      const float* src = buf + (o * PV + v) * VW;
      float* dst = out_n + oc * c.out_plane;
      for (int l = 0; l < VW; ++l) {
        const int64_t q = q0 + l, qh = q / c.Wq, qw = q - qh * c.Wq;
        if (q >= c.total || qw >= c.OW) continue;
        float y = src[l] + b;
        dst[qh * c.out_row + qw * c.out_col] = c.relu && y < 0.0f ? 0.0f : y;
      }
    }
  }
}

// Batch-inner: writes a tile (buf[oc][v][VW], lane l of vector v is image (vq[v] + l) % N at
// position (vq[v] + l) / N) value by value (the images of one channel lie an image apart).
template <int VW, int OC, int PV>
__attribute__((noinline)) void thin_store_batch(const ThinConv& c, int64_t ob, const int64_t* vq,
                                                const float* buf) {
  for (int v = 0; v < PV; ++v) {
    const int64_t pos = vq[v] / c.batch, n0 = vq[v] - pos * c.batch;
    const int64_t oh = pos / c.Wq, ow = pos - oh * c.Wq;
    float* dst = c.out + n0 * c.out_image + oh * c.out_row + ow * c.out_col;
    for (int o = 0; o < OC; ++o) {
      const int64_t oc = ob * OC + o;
      if (oc >= c.C_out) break;
      const float b = c.bias ? c.bias[oc] : 0.0f;
      const float* src = buf + (o * PV + v) * VW;
      for (int l = 0; l < VW; ++l) {
        const float y = src[l] + b;
        dst[l * c.out_image + oc * c.out_plane] = c.relu && y < 0.0f ? 0.0f : y;
      }
    }
  }
}

template <int VW, int OC, int PV>
CNNOPS_INLINE void thin_tile(const ThinConv& c, int64_t n, int64_t ob, const int64_t* vq) {
  using V = typename FloatVec<VW>::type;
  const float* __restrict__ x = c.x + n * c.x_image;
  const float* __restrict__ w = c.w + ob * c.K * OC;
  const int64_t* __restrict__ off = c.off;
  V negzero;
#pragma GCC unroll 16
  for (int l = 0; l < VW; ++l) negzero[l] = -0.0f;
  const float* xv[PV];
#pragma GCC unroll 8
  for (int v = 0; v < PV; ++v) xv[v] = x + vq[v];
  V acc[OC][PV];
#pragma GCC unroll 8
  for (int o = 0; o < OC; ++o)
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v) acc[o][v] = V{};
  auto steps = [&](int64_t ka, int64_t kb) __attribute__((always_inline)) {
    for (int64_t k = ka; k < kb; ++k) {
      V xk[PV];
#pragma GCC unroll 8
      for (int v = 0; v < PV; ++v) std::memcpy(&xk[v], xv[v] + off[k], sizeof(V));
      const float* wk = w + k * OC;
#pragma GCC unroll 8
      for (int o = 0; o < OC; ++o) {
        const V wb = negzero + wk[o];  // broadcast
#pragma GCC unroll 8
        for (int v = 0; v < PV; ++v) acc[o][v] += wb * xk[v];
      }
    }
  };
  if (!c.batch) {
    steps(0, c.K);
  } else {
    // one position: per kernel row, the kernel columns that reach the input, all channels
    const int64_t pos = vq[0] / c.batch, oh = pos / c.Wq, ow = pos - oh * c.Wq;
    const int64_t kw0 = c.tap_cols[2 * ow], kw1 = c.tap_cols[2 * ow + 1];
    for (int64_t kh = c.tap_rows[2 * oh]; kh < c.tap_rows[2 * oh + 1]; ++kh)
      if (kw0 < kw1) steps((kh * c.KW + kw0) * c.C_in, (kh * c.KW + kw1) * c.C_in);
  }
  if (c.batch) {
    alignas(64) float buf[OC * PV * VW];
#pragma GCC unroll 8
    for (int o = 0; o < OC; ++o)
#pragma GCC unroll 8
      for (int v = 0; v < PV; ++v) std::memcpy(buf + (o * PV + v) * VW, &acc[o][v], sizeof(V));
    thin_store_batch<VW, OC, PV>(c, ob, vq, buf);
    return;
  }
  // vectors inside one output row: bias, ReLU and a whole-vector store from the registers
  float* out_n = c.out + n * c.out_image;
  bool all_whole = true;
#pragma GCC unroll 8
  for (int v = 0; v < PV; ++v) {
    const int64_t q0 = vq[v], oh = q0 / c.Wq, ow = q0 - oh * c.Wq;
    if (!(c.out_col == 1 && ow + VW <= c.OW && q0 + VW <= c.total)) {
      all_whole = false;
      continue;
    }
#pragma GCC unroll 8
    for (int o = 0; o < OC; ++o) {
      const int64_t oc = ob * OC + o;
      if (oc >= c.C_out) break;
      V y = acc[o][v] + (c.bias ? c.bias[oc] : 0.0f);
      if (c.relu) y = y < V{} ? V{} : y;  // false for NaN: ReLU keeps NaN, as torch does
      std::memcpy(out_n + oc * c.out_plane + oh * c.out_row + ow, &y, sizeof(V));
    }
  }
  if (all_whole) return;
  alignas(64) float buf[OC * PV * VW];
#pragma GCC unroll 8
  for (int o = 0; o < OC; ++o)
#pragma GCC unroll 8
    for (int v = 0; v < PV; ++v) std::memcpy(buf + (o * PV + v) * VW, &acc[o][v], sizeof(V));
  thin_store_lanes<VW, OC, PV>(c, n, ob, vq, buf);
}

template <int VW, const int* PVS>
CNNOPS_INLINE void thin_dispatch(const ThinConv& c, int oc_block, int64_t n, int64_t ob,
                                 const int64_t* vq) {
  switch (oc_block) {
    case 1: thin_tile<VW, 1, PVS[1]>(c, n, ob, vq); break;
    case 2: thin_tile<VW, 2, PVS[2]>(c, n, ob, vq); break;
    case 3: thin_tile<VW, 3, PVS[3]>(c, n, ob, vq); break;
    case 4: thin_tile<VW, 4, PVS[4]>(c, n, ob, vq); break;
    case 5: thin_tile<VW, 5, PVS[5]>(c, n, ob, vq); break;
    case 6: thin_tile<VW, 6, PVS[6]>(c, n, ob, vq); break;
    case 7: thin_tile<VW, 7, PVS[7]>(c, n, ob, vq); break;
    default: thin_tile<VW, 8, PVS[8]>(c, n, ob, vq); break;
  }
}
CNNOPS_TARGET_AVX512 void thin_avx512(const ThinConv& c, int oc_block, int64_t n, int64_t ob,
                                      const int64_t* vq) {
  thin_dispatch<16, kThinPvAvx512>(c, oc_block, n, ob, vq);
}
CNNOPS_TARGET_AVX2 void thin_avx2(const ThinConv& c, int oc_block, int64_t n, int64_t ob,
                                  const int64_t* vq) {
  thin_dispatch<8, kThinPvAvx2>(c, oc_block, n, ob, vq);
}
void thin_baseline(const ThinConv& c, int oc_block, int64_t n, int64_t ob, const int64_t* vq) {
  thin_dispatch<8, kThinPvBaseline>(c, oc_block, n, ob, vq);
}

// x[0, n) = 0, in parts over the team when `parallel` (a serial fill of a few MB is 5-10% of
// a two-thread call)
void parallel_zero(float* x, int64_t n, bool parallel) {
  const int64_t part = 1 << 16;
#pragma omp parallel for schedule(static) if (parallel && n > 2 * part)
  for (int64_t i = 0; i < n; i += part) std::fill(x + i, x + std::min(n, i + part), 0.0f);
}

// memcmp(a, b, n floats) == 0, in parts over the team when `parallel` (the weight cache's
// check reads 9.4 MB on ResNet's 512-channel layers, every call)
bool parallel_equal(const float* a, const float* b, int64_t n, bool parallel) {
  const int64_t part = 1 << 16;
  if (!parallel || n <= 2 * part) return std::memcmp(a, b, n * sizeof(float)) == 0;
  int differ = 0;
#pragma omp parallel for schedule(static) reduction(| : differ)
  for (int64_t i = 0; i < n; i += part)
    differ |= std::memcmp(a + i, b + i, sizeof(float) * std::min(part, n - i)) != 0;
  return !differ;
}

bool vec_out_enabled() {
  const char* env = std::getenv("CNNOPS_CPU_VEC_OUT");
  return !(env && env[0] == '0');
}

// CNNOPS_CPU_SKIP_EDGES=0: row tiles compute their edge pixels' padding columns (to measure
// the skipping, BlockedConv::edges)
bool edge_skip_enabled() {
  const char* env = std::getenv("CNNOPS_CPU_SKIP_EDGES");
  return !(env && env[0] == '0');
}

// Per-call buffers, kept by the calling thread and reused (no allocation once they are big
// enough). Only the calling thread resizes them; the OpenMP team reads and fills them.
// A repacked weight tensor and the raw bytes it was packed from.
struct WeightEntry {
  const float* ptr;
  int64_t C_out, C_in, KH, KW;
  int isa;
  bool blocked_in;
  bool tap_major;  // the order of the reduction steps (thin batch-inner)
  int lanes;  // output channels per packed block: VW, or the thin tile's OC
  std::vector<float> raw, packed;
  // Weights that changed on two calls in a row (training: the optimizer writes them every
  // step) skip the compare and the copy of `raw` (a read and a write of the whole tensor) on
  // the next 15 calls, repacking each time; every 16th call checks again, so a model put to
  // inference finds its weights cached again within 17 calls.
  int changed = 0, unchecked = 0;
  bool raw_valid = false;  // packed was packed from raw (false after an unchecked repack)
};
// Entries per thread (a model's conv layers; the oldest goes first). Bounded by count, not by
// bytes: an entry is twice its layer's weights.
constexpr size_t kWeightEntries = 32;

struct Workspace {
  std::vector<float> x;
  std::vector<WeightEntry> weights;
  std::vector<int64_t> off, korder, phase_id;
  std::vector<TileItem> items;
  std::vector<int64_t> q0[5];  // tile starts, per J
  std::vector<int64_t> vq;     // pixel-vector starts of the thin tiles, grouped by PV
  std::vector<int64_t> tap_rows, tap_cols;  // the taps each output row / column reaches
  WeightEntry scratch;         // the packed weights of uncached calls
};
Workspace& workspace() {
  static thread_local Workspace ws;
  return ws;
}

}  // namespace

bool conv2d_blocked_applies(const Conv2dShape& s) {
  // groups: the weights of one channel block must share their input channels. Thin output
  // (C_out < 16) runs the pixel-vectorised tiles (ThinConv).
  return s.groups == 1 && s.N > 0 && s.OH > 0 && s.OW > 0 && s.C_in > 0 && s.C_out > 0;
}

void conv2d_forward_blocked_f32(const float* input, const float* weight, const float* bias,
                                float* output, const Conv2dShape& s, bool relu) {
  BlockedForward f;
  f.input = input, f.N = s.N, f.C_in = s.C_in, f.H = s.H, f.W = s.W;
  f.weight = weight, f.bias = bias, f.relu = relu;
  f.C_out = s.C_out, f.KH = s.KH, f.KW = s.KW, f.stride_h = s.stride_h, f.stride_w = s.stride_w;
  f.dil_h = s.dil_h, f.dil_w = s.dil_w, f.pad_top = s.pad_h, f.pad_left = s.pad_w;
  f.OH = s.OH, f.OW = s.OW;
  f.out = output, f.out_image = s.C_out * s.OH * s.OW, f.out_plane = s.OH * s.OW;
  f.out_row = s.OW, f.out_col = 1;
  f.cache_weights = true;
  conv2d_blocked_forward(f);
}

void conv2d_blocked_forward(const BlockedForward& f) {
  // the kernel below reads the geometry from a Conv2dShape; pad_h / pad_w there are the top and
  // left padding (possibly negative: the rows above the input are cropped), H / W the input's
  // size; the padded extent follows from the output size, not from the padding at the far end
  Conv2dShape s{f.N, f.C_in, f.H, f.W, f.C_out, f.KH, f.KW, f.OH, f.OW,
                f.stride_h, f.stride_w, f.pad_top, f.pad_left, f.dil_h, f.dil_w, 1};
  const float* input = f.input;
  const float* weight = f.weight;
  // where weight (oc, ic, tap) is: oc w_out + ic w_in + w_tap(tap)
  const int64_t w_in = f.w_tap ? f.w_in : f.KH * f.KW, w_out = f.w_tap ? f.w_out : f.C_in * w_in;
  auto w_tap = [&](int64_t tap) { return f.w_tap ? f.w_tap[tap] : tap; };
  const CpuIsa isa = cpu_isa_active();
  const int VW = isa == CpuIsa::kAvx512 ? 16 : 8;
  const TileShape* shapes = isa == CpuIsa::kAvx512 ? kAvx512Shapes
                            : isa == CpuIsa::kAvx2  ? kAvx2Shapes
                                                    : kBaselineShapes;
  const int nshapes = isa == CpuIsa::kAvx512 ? 7 : isa == CpuIsa::kAvx2 ? 2 : 1;
  const int Jmax = shapes[0].J;
  int Pmax = 0;
  for (int i = 0; i < nshapes; ++i) Pmax = std::max(Pmax, shapes[i].P);
  Workspace& ws = workspace();

  // ---- geometry of the phase planes
  const int64_t sh = s.stride_h, sw = s.stride_w;
  // rows / columns of one phase plane: the output's, plus the farthest tap's offset
  const int64_t Hq = s.OH + (s.KH - 1) * s.dil_h / sh, Wq = s.OW + (s.KW - 1) * s.dil_w / sw;
  // Channel stride of the copy: an odd number of 64-byte lines, so that the lines one tile
  // reads from consecutive channels fall into different L1 sets (a plane of 24 x 24 floats,
  // 36 lines, would put all channels into 16 of the 64 sets and thrash them).
  const int64_t phase_plane = Hq * Wq;
  // Only the phases some tap reads are copied, packed (a 1x1 stride-2 layer reads one of
  // four): phase_id[a * sw + b] is the phase's place in the copy, -1 when unused.
  std::vector<int64_t>& phase_id = ws.phase_id;
  phase_id.assign(sh * sw, -1);
  for (int64_t kh = 0; kh < s.KH; ++kh)
    for (int64_t kw = 0; kw < s.KW; ++kw)
      phase_id[((kh * s.dil_h) % sh) * sw + (kw * s.dil_w) % sw] = 0;
  int64_t phases = 0;
  for (auto& id : phase_id)
    if (id == 0) id = phases++;
  const int64_t chan = (ceil_div(phases * phase_plane, 16) | 1) * 16;
  // With C_in >= 16 the copy is channel-blocked, [C_in / 16][sh sw Hq Wq][16]: the reduction
  // runs over the 16 channels of a block innermost, reading consecutive floats, and a tile's
  // P pixels are P lines (planar copies put every channel on its own lines: a 1x1 layer with
  // large planes then reads one line per step, at a stride past the reach of the L1 prefetcher).
  // Thin inputs stay planar (a block of 16 would be mostly empty).
  const bool one_by_one = s.KH == 1 && s.KW == 1 && sh == 1 && sw == 1 && s.pad_h == 0 &&
                          s.pad_w == 0;
  // thin output: the vector runs over pixels, read from a planar copy
  const bool thin = s.C_out < 16;
  // `direct`: 1x1 stride 1 unpadded reads the input as it is (no copy: the copy costs as much
  // as the 1x1 convolution itself with few output channels), unless its planes alias in L1
  // (see `chan`) or are smaller than a tile (thin output reads whole 16-pixel vectors: the
  // plane must hold one).
  // A planar (C_in < 16) stride-1 unpadded convolution reads the input as it is too: its phase
  // plane is the input plane (Hq = H, Wq = W). Tiles then run along rows only (a flat tile's
  // dropped columns would read up to (KW - 1) dw floats past the last image), so at least one
  // one-block (J = 1) tile shape must fit a row: the plan's split of the channel blocks into
  // groups needs groups of one. LeNet's 6 -> 16 5x5 (b256): 1.37 -> 1.22 ms, the copy gone.
  int Pmin = Pmax;
  for (int i = 0; i < nshapes; ++i)
    if (shapes[i].J == 1) Pmin = std::min(Pmin, shapes[i].P);
  const bool direct_planar = !thin && s.C_in < 16 && sh == 1 && sw == 1 && s.pad_h == 0 &&
                             s.pad_w == 0 && !one_by_one && s.OW >= Pmin && Hq == s.H &&
                             Wq == s.W && (s.H * s.W) % 32 != 0;
  const bool direct = direct_planar ||
                      (one_by_one && s.OH == s.H && s.OW == s.W && s.OH * s.OW >= Pmax &&
                       (s.C_out >= 16 || s.OH * s.OW >= 16) && (s.H * s.W) % 32 != 0);
  const bool blocked_in = s.C_in >= 16 && !direct && !thin;
  const int64_t cblocks = ceil_div(s.C_in, 16), chan_b = phases * phase_plane * 16;
  const int64_t taps = s.KH * s.KW, K = s.C_in * taps;
  const int64_t total = s.OH * Wq;
  const int64_t work = s.N * s.C_out * s.OH * s.OW * K;
  // ---- taps that reach the input, per output row and column (BlockedConv::tap_rows)
  bool skip = false;
  ws.tap_rows.resize(2 * s.OH), ws.tap_cols.resize(2 * s.OW);
  for (int64_t o = 0; o < s.OH; ++o) {
    int64_t lo, hi;
    valid_taps(o, s.H, s.KH, sh, s.pad_h, s.dil_h, &lo, &hi);
    ws.tap_rows[2 * o] = std::min(lo, s.KH), ws.tap_rows[2 * o + 1] = std::min(hi, s.KH);
    skip |= ws.tap_rows[2 * o] > 0 || ws.tap_rows[2 * o + 1] < s.KH;
  }
  for (int64_t o = 0; o < s.OW; ++o) {
    int64_t lo, hi;
    valid_taps(o, s.W, s.KW, sw, s.pad_w, s.dil_w, &lo, &hi);
    ws.tap_cols[2 * o] = std::min(lo, s.KW), ws.tap_cols[2 * o + 1] = std::min(hi, s.KW);
    skip |= ws.tap_cols[2 * o] > 0 || ws.tap_cols[2 * o + 1] < s.KW;
  }
  // CNNOPS_CPU_SKIP_PAD=0 computes every tap (to measure the skipping)
  const bool has_pad = skip;
  if (const char* env = std::getenv("CNNOPS_CPU_SKIP_PAD"); env && env[0] == '0' && skip) {
    skip = false;
    for (int64_t o = 0; o < s.OH; ++o) ws.tap_rows[2 * o] = 0, ws.tap_rows[2 * o + 1] = s.KH;
    for (int64_t o = 0; o < s.OW; ++o) ws.tap_cols[2 * o] = 0, ws.tap_cols[2 * o + 1] = s.KW;
  }
  // Thin output, batch-inner (ThinConv::batch): a vector holds VW images at one position, so
  // that each position computes exactly its own taps. Chosen when that costs under 7/8 of
  // the per-image pixel vectors: heavily padded small planes (LeNet conv2's grad_input,
  // 14 x 14 outputs from 10 x 10 with a 4-wide ring of padding, computes half its taps on
  // zeros per image).
  bool thin_bi = false;
  const int thin_lanes = static_cast<int>(s.C_out <= 8 ? s.C_out : ceil_div(s.C_out, 2));
  const int thin_pv = (isa == CpuIsa::kAvx512 ? kThinPvAvx512
                       : isa == CpuIsa::kAvx2  ? kThinPvAvx2
                                               : kThinPvBaseline)[thin_lanes < 8 ? thin_lanes : 8];
  if (thin && !direct && s.N >= VW) {
    const int64_t vectors = s.OW >= VW ? s.OH * ceil_div(s.OW, VW) : ceil_div(total, VW);
    const int64_t image_cost = s.N * ceil_div(vectors, thin_pv) * thin_pv * VW * taps;
    int64_t row_taps = 0, col_taps = 0;
    for (int64_t o = 0; o < s.OH; ++o) row_taps += ws.tap_rows[2 * o + 1] - ws.tap_rows[2 * o];
    for (int64_t o = 0; o < s.OW; ++o) col_taps += ws.tap_cols[2 * o + 1] - ws.tap_cols[2 * o];
    const int64_t batch_cost = row_taps * col_taps * ceil_div(ceil_div(s.N, VW), thin_pv) * thin_pv * VW;
    // in cycles per output channel: lane-taps x C_in / VW (one FMA a cycle), plus for
    // batch-inner one scalar store per output value (~1.5 cycles: its images lie an image
    // apart; LeNet's conv1, K = 25, is faster per image)
    thin_bi = 8 * (batch_cost * s.C_in / VW + 3 * s.N * s.OH * s.OW / 2) < 7 * image_cost * s.C_in / VW;
  }

  // ---- tile placement. Tiles of P pixels of one image: along each output row (the last one
  // of a row shifted back to end at the row's end: it recomputes a few pixels,
  // bit-identically), or over the flat pixel range [0, total) including the padding columns
  // (when rows are narrower than a tile), the last shifted back to end at `total` so that no
  // tile reads past the image, except when the image has fewer than P pixels (then the slack of
  // the repacked copy covers it; `direct` needs total >= Pmax). Or, with the batch-inner copy
  // ([C_in / 16][Hq Wq][N][16]: the images of one position side by side, for small planes),
  // P images at one output position (the last tile shifted back to end at N), or when the
  // batch is smaller than a tile, flat over all (position, image) pixels.
  auto place = [&](bool bi, int P, std::vector<int64_t>& q) {
    q.clear();
    const int64_t flat = ceil_div(total, P) * P;
    const int64_t rows = s.OW >= P ? s.OH * ceil_div(s.OW, P) * P : flat;
    if (bi && s.N < P) {
      for (int64_t q0 = 0; q0 < total * s.N; q0 += P)
        q.push_back(total * s.N >= P ? std::min<int64_t>(q0, total * s.N - P) : 0);
    } else if (bi) {
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ++ow)
          for (int64_t n0 = 0; n0 < s.N; n0 += P)
            q.push_back((oh * Wq + ow) * s.N + std::min(n0, s.N - P));
    } else if (rows < flat || direct_planar) {
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ow += P) q.push_back(oh * Wq + std::min(ow, s.OW - P));
    } else {
      for (int64_t q0 = 0; q0 < total; q0 += P)
        q.push_back(total >= P ? std::min<int64_t>(q0, total - P) : 0);
    }
  };
  // The cost of a placement: the pixel-taps its tiles compute, over the whole batch (taps that
  // only read padding are skipped, see tile_taps).
  std::vector<int64_t> scratch_q;
  auto place_cost = [&](bool bi, int P, std::vector<int64_t>& q) {
    place(bi, P, q);
    BlockedConv g{};
    g.batch = bi ? s.N : 0, g.total = total, g.Wq = Wq, g.OW = s.OW;
    g.tap_rows = ws.tap_rows.data(), g.tap_cols = ws.tap_cols.data();
    int64_t cost = 0;
    for (const int64_t q0 : q) {
      int64_t kh0 = 0, kh1 = s.KH, kw0 = 0, kw1 = s.KW;
      if (skip) tile_taps(g, q0, P, &kh0, &kh1, &kw0, &kw1);
      cost += P * (kh1 - kh0) * (kw1 - kw0);
    }
    return bi ? cost : cost * s.N;
  };
  // A plan: per group size J (1..Jmax channel blocks) the cheapest tile width P, and the split
  // of the ceil(C_out / VW) channel blocks into groups with the least total cost (J x the cost
  // of J, per group; ties go to wider groups: fewer weight loads per FMA). With N = 32 the
  // batch-inner tiles of 3 blocks x 8 images compute no padding, those of 4 x 6 one image in 9.
  struct Plan {
    int64_t cost = -1;
    int p[5] = {0, 0, 0, 0, 0};
    std::vector<int> groups;  // J of each group, in channel order
  };
  const int64_t out_blocks = ceil_div(s.C_out, VW);
  auto plan = [&](bool bi) {
    Plan pl;
    int64_t cj[5] = {-1, -1, -1, -1, -1};
    for (int i = 0; i < nshapes; ++i) {
      const int J = shapes[i].J;
      if (direct_planar && shapes[i].P > s.OW) continue;  // tiles along rows only
      const int64_t cost = place_cost(bi, shapes[i].P, scratch_q);
      if (cj[J] < 0 || cost < cj[J]) cj[J] = cost, pl.p[J] = shapes[i].P;
    }
    std::vector<int64_t> best(out_blocks + 1, -1);
    std::vector<int> pick(out_blocks + 1, 0);
    best[0] = 0;
    for (int64_t nb = 1; nb <= out_blocks; ++nb)
      for (int J = Jmax; J >= 1; --J) {
        if (J > nb || cj[J] < 0 || best[nb - J] < 0) continue;
        const int64_t cost = best[nb - J] + J * cj[J];
        if (best[nb] < 0 || cost < best[nb]) best[nb] = cost, pick[nb] = J;
      }
    for (int64_t nb = out_blocks; nb > 0; nb -= pick[nb]) pl.groups.push_back(pick[nb]);
    std::reverse(pl.groups.begin(), pl.groups.end());
    pl.cost = best[out_blocks];
    return pl;
  };
  // The batch-inner copy when its plan costs less, in cycles: C_in FMAs per pixel-tap of a
  // channel block, plus ~2.5 cycles per output value for its scalar stores (the images of a
  // tile lie an image apart) and its scattered copy, against ~0.25 for the per-image tiles'
  // transposed vector stores (128 -> 128 3x3 on 12 x 12, batch 32: 3% fewer FMAs in batch-inner
  // tiles, measured no faster, stays per image).
  // Small planes: 3x3 outputs computed 18 pixels a tile for 9 useful, and per-image tiles
  // cannot skip the padded columns.
  Plan tiles_plan;
  bool batch_inner = false;
  if (!thin) {
    tiles_plan = plan(false);
    if (blocked_in) {
      Plan bi = plan(true);
      const int64_t outputs = s.N * s.OH * s.OW * s.C_out;
      if (bi.cost * s.C_in + 5 * outputs / 2 < tiles_plan.cost * s.C_in + outputs / 4)
        tiles_plan = std::move(bi), batch_inner = true;
    }
  }
  const bool parallel = work > kParallelWork;

  // ---- input: phase-split, zero-padded copy (or the input itself)
  // The phase rows of one group of up to 16 source planes (lane l at src + l lane_stride):
  // row_at(phase, i)[j ds + l] = source row i sh + a - pad_h, column j sw + b - pad_w, for
  // the columns inside the input; `zero_edges` zeroes the rest of each row of Wq pixels (ds =
  // 16) and the rows outside the input, else those are left as they are.
  auto copy_phase_rows = [&](const float* src, int64_t lane_stride, int lanes, int64_t ds,
                             bool zero_edges, auto&& row_at) {
    const float* srow[16];
    for (int64_t a = 0; a < sh; ++a)
      for (int64_t b = 0; b < sw; ++b) {
        const int64_t ph = phase_id[a * sw + b];
        if (ph < 0) continue;
        for (int64_t i = 0; i < Hq; ++i) {
          float* row = row_at(ph, i);
          const int64_t r = i * sh + a - s.pad_h;
          int64_t lo = 0, hi = 0;
          if (r >= 0 && r < s.H) valid_outputs(s.W, Wq, sw, s.pad_w, b, &lo, &hi);
          if (zero_edges) {
            std::fill(row, row + lo * ds, 0.0f);
            std::fill(row + hi * ds, row + Wq * ds, 0.0f);
          }
          if (hi <= lo) continue;
          // the group's source rows read side by side, the destination written in order
          for (int l = 0; l < lanes; ++l) srow[l] = src + l * lane_stride + r * s.W + b - s.pad_w;
          gather_channels(srow, lanes, lo, hi, sw, row, ds, isa);
        }
      }
  };
  const float* x = input;
  int64_t x_image = s.C_in * s.H * s.W;
  if (thin_bi) {
    // [C_in][phase planes][N]: the images of one position side by side, 16 at a time, each
    // 64-byte line written once. With the taps skipped exactly (skip), no computed tap reads
    // padding: only the input's own values are copied, nothing zeroed.
    const int64_t chan_p = phases * phase_plane;
    x_image = 0;
    const int64_t size = s.C_in * chan_p * s.N + 64;
    if (ws.x.size() < static_cast<size_t>(size + 16)) ws.x.resize(size + 16);
    float* xr = align64(ws.x.data());
    if (has_pad && !skip) parallel_zero(xr, size, parallel);
    const int64_t nblocks = ceil_div(s.N, 16);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t cb = 0; cb < s.C_in * nblocks; ++cb) {
      const int64_t ic = cb / nblocks, n0 = (cb % nblocks) * 16;
      const int lanes = static_cast<int>(std::min<int64_t>(16, s.N - n0));
      copy_phase_rows(input + (n0 * s.C_in + ic) * s.H * s.W, s.C_in * s.H * s.W, lanes, s.N,
                      false, [&](int64_t ph, int64_t i) {
                        return xr + (ic * chan_p + ph * phase_plane + i * Wq) * s.N + n0;
                      });
    }
    x = xr;
  } else if (batch_inner) {
    // [C_in / 16][phase planes][N][16], zero where nothing is copied (padding, lanes past
    // C_in); one "image" for the loops below
    x_image = 0;
    const int64_t size = cblocks * chan_b * s.N + (Pmax + 64) * 16;
    if (ws.x.size() < static_cast<size_t>(size + 16)) ws.x.resize(size + 16);
    float* xr = align64(ws.x.data());
    parallel_zero(xr, size, parallel);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t bn = 0; bn < cblocks * s.N; ++bn) {
      const int64_t icb = bn / s.N, n = bn % s.N;
      const int lanes = static_cast<int>(std::min<int64_t>(16, s.C_in - icb * 16));
      copy_phase_rows(input + (n * s.C_in + icb * 16) * s.H * s.W, s.H * s.W, lanes, s.N * 16,
                      false, [&](int64_t ph, int64_t i) {
                        return xr + icb * chan_b * s.N + ((ph * phase_plane + i * Wq) * s.N + n) * 16;
                      });
    }
    x = xr;
  } else if (!direct && blocked_in) {
    x_image = cblocks * chan_b;
    const int64_t size = s.N * x_image + chan_b + (Pmax + 64) * 16;
    if (ws.x.size() < static_cast<size_t>(size + 16)) ws.x.resize(size + 16);
    float* xr = align64(ws.x.data());
    std::fill(xr + s.N * x_image, xr + size, 0.0f);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t nb = 0; nb < s.N * cblocks; ++nb) {
      const int64_t n = nb / cblocks, icb = nb % cblocks;
      float* dst = xr + nb * chan_b;
      const int lanes = static_cast<int>(std::min<int64_t>(16, s.C_in - icb * 16));
      if (lanes < 16) std::fill(dst, dst + chan_b, 0.0f);  // lanes never read, kept finite
      copy_phase_rows(input + (n * s.C_in + icb * 16) * s.H * s.W, s.H * s.W, lanes, 16, true,
                      [&](int64_t ph, int64_t i) { return dst + (ph * phase_plane + i * Wq) * 16; });
    }
    x = xr;
  } else if (!direct) {
    x_image = s.C_in * chan;
    // slack past the last image: a tile may read up to Pmax pixels past the last row, plus
    // the largest tap offset within a channel (< chan)
    const int64_t size = s.N * x_image + chan + Pmax + 64;
    if (ws.x.size() < static_cast<size_t>(size)) ws.x.resize(size);
    float* xr = ws.x.data();
    std::fill(xr + s.N * x_image, xr + size, 0.0f);
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t nc = 0; nc < s.N * s.C_in; ++nc) {
      const float* src = input + nc * s.H * s.W;
      float* dst = xr + nc * chan;
      std::fill(dst + phases * phase_plane, dst + chan, 0.0f);  // the alignment gap
      for (int64_t a = 0; a < sh; ++a)
        for (int64_t b = 0; b < sw; ++b)
          for (int64_t i = 0; i < Hq; ++i) {
            if (phase_id[a * sw + b] < 0) continue;
            float* row = dst + phase_id[a * sw + b] * phase_plane + i * Wq;
            const int64_t r = i * sh + a - s.pad_h;
            if (r < 0 || r >= s.H) {
              std::fill(row, row + Wq, 0.0f);
              continue;
            }
            const float* srow = src + r * s.W;
            // columns j with 0 <= j sw + b - pad_w < W
            int64_t lo, hi;
            valid_outputs(s.W, Wq, sw, s.pad_w, b, &lo, &hi);
            std::fill(row, row + lo, 0.0f);
            if (sw == 1) {
              std::memcpy(row + lo, srow + lo + b - s.pad_w, (hi - lo) * sizeof(float));
            } else {
              for (int64_t j = lo; j < hi; ++j) row[j] = srow[j * sw + b - s.pad_w];
            }
            std::fill(row + hi, row + Wq, 0.0f);
          }
    }
    x = xr;
  }

  // ---- offsets of the reduction steps
  // (planar: k = (ic, kh, kw), the weights' own order; channel-blocked: k = (ic / 16, kh,
  // kw, ic % 16); korder[k] is the weight's offset from its output channel's first weight:
  // ic w_in + w_tap[tap], the weights' own order (ic taps + tap) unless the caller gives
  // another layout, see BlockedForward)
  if (ws.off.size() < static_cast<size_t>(K)) ws.off.resize(K), ws.korder.resize(K);
  if (thin_bi) {  // tap-major: k = tap C_in + ic (ThinConv::batch)
    int64_t k = 0;
    for (int64_t kh = 0; kh < s.KH; ++kh)
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const int64_t rh = kh * s.dil_h, rw = kw * s.dil_w;
        const int64_t at =
            phase_id[(rh % sh) * sw + rw % sw] * phase_plane + (rh / sh) * Wq + rw / sw;
        for (int64_t ic = 0; ic < s.C_in; ++ic) {
          ws.off[k] = (ic * phases * phase_plane + at) * s.N;
          ws.korder[k++] = ic * w_in + w_tap(kh * s.KW + kw);
        }
      }
  } else {
    int64_t k = 0;
    for (int64_t icb = 0; icb < (blocked_in ? cblocks : s.C_in); ++icb)
      for (int64_t kh = 0; kh < s.KH; ++kh)
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const int64_t rh = kh * s.dil_h, rw = kw * s.dil_w;
          const int64_t at =
              phase_id[(rh % sh) * sw + rw % sw] * phase_plane + (rh / sh) * Wq + rw / sw;
          if (!blocked_in) {
            // direct: the input's own planes (at = 0 for 1x1; Wq = W for direct_planar)
            ws.off[k] = direct ? icb * s.H * s.W + at : icb * chan + at;
            ws.korder[k++] = icb * w_in + w_tap(kh * s.KW + kw);
            continue;
          }
          for (int64_t l = 0; l < 16 && icb * 16 + l < s.C_in; ++l) {
            ws.off[k] = batch_inner ? (icb * chan_b + at * 16) * s.N + l : icb * chan_b + at * 16 + l;
            ws.korder[k++] = (icb * 16 + l) * w_in + w_tap(kh * s.KW + kw);
          }
        }
  }

  // ---- weights: [C_out blocks][K][lanes], channels past C_out zero; lanes = VW, or for thin
  // output the tile's OC (C_out up to 8 in one block, else two near-equal blocks)
  const int lanes = thin ? static_cast<int>(s.C_out <= 8 ? s.C_out : ceil_div(s.C_out, 2)) : VW;
  const int64_t blocks = ceil_div(s.C_out, lanes);
  // Cached per thread, keyed by everything the packing depends on, and reused only while the
  // weights are bytewise what they were (memcmp, exact: an optimizer updates weights in place
  // at the same address, so the address alone is no key). memcmp reads the weights once,
  // sequentially, in parts over the team.
  WeightEntry* e = nullptr;
  for (WeightEntry& c : ws.weights)
    if (c.ptr == weight && c.C_out == s.C_out && c.C_in == s.C_in && c.KH == s.KH &&
        c.KW == s.KW && c.isa == static_cast<int>(isa) && c.blocked_in == blocked_in &&
        c.tap_major == thin_bi && c.lanes == lanes)
      e = &c;
  const int64_t numel = s.C_out * K;
  bool hit = false, check = f.cache_weights;
  if (f.cache_weights && e) {
    if (e->unchecked > 0) --e->unchecked, check = false;
    else hit = e->raw_valid && parallel_equal(e->raw.data(), weight, numel, parallel);
    if (check && !hit && ++e->changed >= 2) e->unchecked = 15;
    if (hit) e->changed = 0;
  }
  if (!f.cache_weights) {
    e = &ws.scratch;  // uncached calls (grad_input's per-call weights) pack here
  } else if (!e) {
    if (ws.weights.size() >= kWeightEntries) ws.weights.erase(ws.weights.begin());  // oldest
    ws.weights.push_back(WeightEntry{weight, s.C_out, s.C_in, s.KH, s.KW, static_cast<int>(isa),
                                     blocked_in, thin_bi, lanes, {}, {}});
    e = &ws.weights.back();
  }
  if (!hit) {
    if (f.cache_weights) e->raw_valid = check;
    if (check) {
      e->raw.resize(numel);
      float* raw = e->raw.data();
      const int64_t part = 1 << 16;
#pragma omp parallel for schedule(static) if (parallel && numel > 2 * part)
      for (int64_t i = 0; i < numel; i += part)
        std::memcpy(raw + i, weight + i, sizeof(float) * std::min(part, numel - i));
    }
    // 64-byte aligned: a misaligned 64-byte load spans two cache lines (measured: half the
    // speed of the whole kernel)
    e->packed.resize(blocks * K * lanes + 16);
    float* dst = align64(e->packed.data());
    if (!thin_bi) {
      // by in-register transposes (conv2d_blocked_pack.cpp)
      PackSpec p;
      p.weight = weight, p.C_out = s.C_out, p.C_in = s.C_in, p.taps = taps;
      p.w_out = w_out, p.w_in = w_in, p.w_tap = f.w_tap, p.blocked_in = blocked_in;
      p.lanes = lanes, p.K = K;
      pack_blocked_weights(p, dst, parallel);
    } else {
      // tap-major (thin batch-inner): value by value, korder; thin weights are small
      for (int64_t ob = 0; ob < blocks; ++ob)
        for (int64_t k = 0; k < K; ++k)
          for (int64_t l = 0; l < lanes; ++l) {
            const int64_t oc = ob * lanes + l;
            dst[(ob * K + k) * lanes + l] = oc < s.C_out ? weight[oc * w_out + ws.korder[k]] : 0.0f;
          }
    }
  }
  const float* wr = align64(e->packed.data());

  if (thin) {
    // pixel vectors of one image: along rows when a row holds a whole vector, else flat over
    // [0, total) (the last one shifted back to end at `total`; an image of fewer than VW
    // pixels reads into the copy's slack), in groups of PV (a short last group repeats its
    // last vector: recomputed, stored twice, bit-identical)
    const int* pvs = isa == CpuIsa::kAvx512 ? kThinPvAvx512
                     : isa == CpuIsa::kAvx2  ? kThinPvAvx2
                                             : kThinPvBaseline;
    const int PV = pvs[lanes];
    std::vector<int64_t>& vq = ws.vq;
    vq.clear();
    if (thin_bi) {
      // per output position ceil(N / VW) image vectors (the last shifted back to end at N),
      // padded to whole groups by repeating the last: a group never spans two positions
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ++ow) {
          for (int64_t n0 = 0; n0 < s.N; n0 += VW)
            vq.push_back((oh * Wq + ow) * s.N + std::min(n0, s.N - VW));
          while (vq.size() % PV) vq.push_back(vq.back());
        }
    } else if (s.OW >= VW) {
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ow += VW) vq.push_back(oh * Wq + std::min(ow, s.OW - VW));
    } else {
      for (int64_t q0 = 0; q0 < total; q0 += VW)
        vq.push_back(total >= VW ? std::min<int64_t>(q0, total - VW) : 0);
    }
    while (vq.size() % PV) vq.push_back(vq.back());
    const int64_t groups = static_cast<int64_t>(vq.size()) / PV;
    ThinConv c{x, x_image, wr, K, ws.off.data(), f.bias, f.out, f.out_image, f.out_plane,
               f.out_row, f.out_col, s.C_out, s.OW, Wq, total, f.relu,
               thin_bi ? s.N : 0, ws.tap_rows.data(), ws.tap_cols.data(), s.KW, s.C_in};
    const int64_t* starts = vq.data();
    const int64_t images = thin_bi ? 1 : s.N;  // batch-inner: one "image" of all positions
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t u = 0; u < images * groups; ++u) {
      const int64_t n = u / groups, g = u % groups;
      for (int64_t ob = 0; ob < blocks; ++ob) {
        if (isa == CpuIsa::kAvx512) thin_avx512(c, lanes, n, ob, starts + g * PV);
        else if (isa == CpuIsa::kAvx2) thin_avx2(c, lanes, n, ob, starts + g * PV);
        else thin_baseline(c, lanes, n, ob, starts + g * PV);
      }
    }
    if (ws.x.capacity() * sizeof(float) > (size_t(256) << 20)) std::vector<float>().swap(ws.x);
    return;
  }

  // ---- work items: per channel-block group (tiles_plan) the tiles of its J, in units of up
  // to kPartialBytes of partial sums
  for (int J = 1; J <= Jmax; ++J)
    if (tiles_plan.p[J]) place(batch_inner, tiles_plan.p[J], ws.q0[J]);
  ws.items.clear();
  int64_t ob = 0;
  for (const int J : tiles_plan.groups) {
    const int P = tiles_plan.p[J];
    const int64_t tiles = static_cast<int64_t>(ws.q0[J].size());
    // parts of equal size; batch-inner (one "image": the items are all the parallel work)
    // at least 8 parts a group, shared out by cost below: a few large items of unequal J
    // left one of two threads idle for 10-20% of the call
    const int64_t per_unit =
        std::max<int64_t>(1, kPartialBytes / (J * P * VW * int64_t(sizeof(float))));
    const int64_t parts = std::min(tiles, std::max(ceil_div(tiles, per_unit), batch_inner ? int64_t(8) : int64_t(1)));
    const int64_t size = ceil_div(tiles, parts);
    for (int64_t t0 = 0; t0 < tiles; t0 += size)
      ws.items.push_back({static_cast<int32_t>(ob), J, P,
                          static_cast<int32_t>(std::min(size, tiles - t0)),
                          ws.q0[J].data() + t0});
    ob += J;
  }

  BlockedConv c{x,          x_image,     wr,        K,         ws.off.data(), f.bias,
                f.out,      f.out_image, f.out_plane, f.out_row, f.out_col,   s.C_out,
                s.OH,       s.OW,        Wq,        total,     blocked_in ? 16 : 1, f.relu,
                batch_inner ? s.N : 0,
                // vec_out: NCHW output with unit column stride (not grad_input's phases) and
                // per-image tiles; CNNOPS_CPU_VEC_OUT=0 turns it off (to measure it)
                !batch_inner && f.out_col == 1 && vec_out_enabled(),
                static_cast<int>(isa),
                skip ? ws.tap_rows.data() : nullptr, skip ? ws.tap_cols.data() : nullptr,
                s.KW, taps, s.C_in, blocked_in ? 16 : 1, edge_skip_enabled()};
  const int64_t items = static_cast<int64_t>(ws.items.size());
  const TileItem* item = ws.items.data();
  // Order of the work: image by image (the image's input copy stays in L2 for all its items)
  // unless the weights are large (deep layers: 2.4 MB at 256 -> 256 3x3, 9.4 MB at 512): then
  // item by item, all images in turn, so that each item's weights (J blocks, a few hundred KB)
  // are read from memory once rather than once per image.
  const int64_t images = batch_inner ? 1 : s.N;  // batch-inner: one image of N * OH * Wq pixels
  const bool images_inner = s.C_out * K * int64_t(sizeof(float)) > (int64_t(512) << 10);
  auto run_item = [&](int64_t u) {
    const int64_t n = images_inner ? u % images : u / items;
    const TileItem& t = item[images_inner ? u / images : u % items];
    if (isa == CpuIsa::kAvx512) run_avx512(c, n, t);
    else if (isa == CpuIsa::kAvx2) run_avx2(c, n, t);
    else run_baseline(c, n, t);
  };
  if (batch_inner) {
    // each thread a contiguous run of items of about equal cost (J x tiles): the parts of a
    // channel group stay on one core, whose L2 then holds the group's weights
    int64_t total_cost = 0;
    for (int64_t u = 0; u < items; ++u) total_cost += int64_t(item[u].J) * item[u].tiles;
#pragma omp parallel if (parallel)
    {
      const int64_t nth = omp_get_num_threads(), tid = omp_get_thread_num();
      int64_t before = 0;
      for (int64_t u = 0; u < items; ++u) {
        const int64_t cost = int64_t(item[u].J) * item[u].tiles;
        // the item goes to the thread whose share holds the item's middle
        if ((2 * before + cost) * nth / (2 * total_cost) == tid) run_item(u);
        before += cost;
      }
    }
  } else {
#pragma omp parallel for schedule(static) if (parallel)
    for (int64_t u = 0; u < images * items; ++u) run_item(u);
  }
  // The input copy is kept for the next call, unless it is large: a big one-off layer should
  // not hold its copy for the life of the thread.
  if (ws.x.capacity() * sizeof(float) > (size_t(256) << 20)) std::vector<float>().swap(ws.x);
}

}  // namespace cnnops
