// The weight repack of the channel-blocked convolution by tile transposes (see the header).
//
// The packed weights are [C_out / lanes][K][lanes]: for each reduction step k, `lanes`
// consecutive output channels. The weights are [oc][...] with oc outermost (forward) or, in
// grad_input's transposed view, with the packed output channel at a small stride (the real
// layer's taps). Either way a block of `lanes` output channels x VW source columns is a small
// matrix whose transpose is VW packed rows: loaded as VW row vectors (masked at the edges,
// rows past C_out zero), transposed in registers (VW = 16: AVX-512; 8: AVX2) and stored as
// whole rows where the reduction order puts them. The scalar gather it replaces did one 4-byte
// load at a large stride (w_out) and one store per weight.
//
// Two drivers:
// - forward (w_tap null, w_in = taps): the source row of an output channel is its K weights in
//   (ic, tap) order, contiguous. Tiles run along it, 16 columns at a time, and column c goes to
//   packed row inv[c] (the identity for the planar order; (ic / 16, tap, ic % 16) for the
//   channel-blocked one). Reads: `lanes` sequential streams; writes: within the 16 taps x 64 B
//   of one channel block.
// - strided (grad_input, any w_tap): for each (block, ic) the `lanes` output channels x w_out
//   columns are contiguous (the real layer's [ic_r][tap] weights); one tile per VW columns
//   that some tap reads, the taps' columns stored.
// The drivers are plain C++; the tile functions are compiled per instruction set (a call per
// 16 x 16 tile costs little next to its 64 shuffles). The baseline ISA, tiny layers and the
// cases where the tiles measured slower run the scalar gather.
#include "conv2d_blocked_pack.h"

#include <algorithm>
#include <cstring>
#include <vector>

#include "conv2d_blocked.h"
#include "cpu_common.h"
#include "cpu_simd.h"

namespace cnnops {

namespace {

// Runs body(ob) for the blocks ob in [0, blocks): on the OpenMP team when `parallel`, else
// on this thread outside any parallel region (an if (false) region still costs ~0.3 us, a
// third of a LeNet layer's pack).
template <class F>
void for_blocks(int64_t blocks, bool parallel, const F& body) {
  if (!parallel) {
    for (int64_t ob = 0; ob < blocks; ++ob) body(ob);
    return;
  }
#pragma omp parallel for schedule(static)
  for (int64_t ob = 0; ob < blocks; ++ob) body(ob);
}

// Block ob of the scalar gather, everything in arguments (inside the OpenMP body, read through
// the spec the loop ran 1.2x slower).
void scalar_block(const float* weight, int64_t C_out, int64_t w_out, const int64_t* korder,
                  int64_t K, int64_t lanes, int64_t ob, float* dst) {
  for (int64_t k = 0; k < K; ++k)
    for (int64_t l = 0; l < lanes; ++l) {
      const int64_t oc = ob * lanes + l;
      dst[(ob * K + k) * lanes + l] = oc < C_out ? weight[oc * w_out + korder[k]] : 0.0f;
    }
}

// The scalar gather (conv2d_blocked.cpp's loop): korder[k] is the offset of step k's weight
// from its output channel's first weight.
void pack_scalar(const PackSpec& p, float* dst, bool parallel) {
  static thread_local std::vector<int64_t> korder;  // kept between calls: allocating it cost ~2 us a call
  korder.resize(p.K);
  int64_t k = 0;
  const int64_t cblocks = (p.C_in + 15) / 16;
  for (int64_t icb = 0; icb < (p.blocked_in ? cblocks : p.C_in); ++icb)
    for (int64_t t = 0; t < p.taps; ++t) {
      const int64_t wt = p.w_tap ? p.w_tap[t] : t;
      if (!p.blocked_in) {
        korder[k++] = icb * p.w_in + wt;
        continue;
      }
      for (int64_t l = 0; l < 16 && icb * 16 + l < p.C_in; ++l)
        korder[k++] = (icb * 16 + l) * p.w_in + wt;
    }
  const int64_t lanes = p.lanes, blocks = (p.C_out + lanes - 1) / lanes;
  const int64_t* ko = korder.data();  // this thread's (thread_local), read by the team
  for_blocks(blocks, parallel,
             [&](int64_t ob) { scalar_block(p.weight, p.C_out, p.w_out, ko, p.K, lanes, ob, dst); });
}

}  // namespace

void pack_blocked_weights_reference(const PackSpec& p, float* dst) { pack_scalar(p, dst, false); }

namespace {

// One tile: rows r < nrows of a VW x VW matrix (row r at src + r stride, the columns set in
// colmask; the rest read as zero), transposed; its column col[i] (i when col is null) is
// stored as R floats (R <= VW, the first R rows) at dst + row[i] R, for i < n.
typedef void (*TileFn)(const float* src, int64_t stride, int nrows, uint32_t colmask, int n,
                       const int8_t* col, const int64_t* row, float* dst, int R);

#if CNNOPS_CPU_X86
CNNOPS_TARGET_AVX512 void tile_avx512(const float* src, int64_t stride, int nrows,
                                      uint32_t colmask, int n, const int8_t* col,
                                      const int64_t* row, float* dst, int R) {
  const __mmask16 sm = static_cast<__mmask16>((1u << R) - 1);
  const __mmask16 cm = static_cast<__mmask16>(colmask);
  __m512 r[16];
  for (int i = 0; i < 16; ++i)
    r[i] = i < nrows ? _mm512_maskz_loadu_ps(cm, src + i * stride) : _mm512_setzero_ps();
  transpose16(r);
  // r[j] is column j
  if (R == 16 && n == 16 && !col) {  // a whole tile of the forward driver: registers stay
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + row[i] * 16, r[i]);
    return;
  }
  if (R == 16) {
    for (int i = 0; i < n; ++i) _mm512_storeu_ps(dst + row[i] * 16, r[col ? col[i] : i]);
    return;
  }
  for (int i = 0; i < n; ++i) _mm512_mask_storeu_ps(dst + row[i] * R, sm, r[col ? col[i] : i]);
}

CNNOPS_TARGET_AVX2 void tile_avx2(const float* src, int64_t stride, int nrows, uint32_t colmask,
                                  int n, const int8_t* col, const int64_t* row, float* dst,
                                  int R) {
  const __m256i bit = _mm256_setr_epi32(1, 2, 4, 8, 16, 32, 64, 128);
  const __m256i cm = _mm256_cmpeq_epi32(
      _mm256_and_si256(_mm256_set1_epi32(static_cast<int>(colmask)), bit), bit);
  __m256 r[8];
  for (int i = 0; i < 8; ++i)
    r[i] = i < nrows ? _mm256_maskload_ps(src + i * stride, cm) : _mm256_setzero_ps();
  transpose8(r);
  // r[j] is column j
  if (R == 8 && n == 8 && !col) {
#pragma GCC unroll 8
    for (int i = 0; i < 8; ++i) _mm256_storeu_ps(dst + row[i] * 8, r[i]);
    return;
  }
  if (R == 8) {  // vmaskmovps stores are microcoded on AMD (Zen 4: 5-7x slower in total)
    for (int i = 0; i < n; ++i) _mm256_storeu_ps(dst + row[i] * 8, r[col ? col[i] : i]);
    return;
  }
  const __m256i sm = _mm256_cmpgt_epi32(_mm256_set1_epi32(R), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
  for (int i = 0; i < n; ++i) _mm256_maskstore_ps(dst + row[i] * R, sm, r[col ? col[i] : i]);
}
#endif

// Per-call tables, kept by the calling thread (read-only inside the OpenMP region).
struct PackScratch {
  std::vector<int64_t> inv;  // forward driver: packed row of source column c
  // strided driver: the tiles over a (block, ic) pair's columns, each a VW-aligned column
  // range [c0, c0 + VW) with the taps that read it: taps tap[first..last) at columns col[]
  std::vector<int64_t> c0, first, tap;
  std::vector<uint32_t> mask;
  std::vector<int8_t> col;
};
PackScratch& scratch() {
  static thread_local PackScratch s;
  return s;
}

// The packed row of reduction step (ic, tap): its index k.
inline int64_t packed_row(const PackSpec& p, int64_t ic, int64_t t) {
  if (!p.blocked_in) return ic * p.taps + t;
  const int64_t icb = ic / 16, n_in = std::min<int64_t>(16, p.C_in - icb * 16);
  return icb * 16 * p.taps + t * n_in + ic % 16;
}

// A per-thread buffer of at least `floats` floats, 64-byte aligned.
float* stage_buffer(int64_t floats) {
  static thread_local std::vector<float> buf;
  if (buf.size() < static_cast<size_t>(floats + 16)) buf.resize(floats + 16);
  return align64(buf.data());
}

constexpr int64_t kStageBytes = int64_t(8) << 20;

void pack_forward(const PackSpec& p, float* dst, bool parallel, TileFn tile, int VW) {
  // Segments of the source row that map onto a contiguous range of packed rows: the whole row
  // (planar), or one block of 16 input channels (blocked_in: columns [icb 16 taps, + n_in
  // taps) to the same packed rows, as (tap, ic % 16)). inv[c]: source column c's packed row,
  // from its segment's first.
  std::vector<int64_t>& inv = scratch().inv;
  inv.resize(p.K);
  for (int64_t ic = 0; ic < p.C_in; ++ic)
    for (int64_t t = 0; t < p.taps; ++t)
      inv[ic * p.taps + t] = packed_row(p, ic, t) - (p.blocked_in ? ic / 16 * 16 * p.taps : 0);
  const int R = p.lanes;
  const int64_t blocks = (p.C_out + R - 1) / R;
  const int64_t seg = p.blocked_in ? 16 * p.taps : p.K;
  const int64_t* invp = inv.data();
  // blocked_in, over 8 MiB: a segment's rows are stored (out of order: tap-major) into an
  // L1-sized buffer, then copied out in order; storing them to dst directly, full lines but
  // 16 taps apart, took 1.05-1.25x longer on ResNet-18's 512 -> 512 3x3 (9.4 MB: the line fills
  // of scattered stores are not prefetched). Up to 256 -> 512 3x3 (4.7 MB) the extra copy
  // cost more (1.2-1.3x) than it saved.
  const bool staged = p.blocked_in && blocks * p.K * R * int64_t(sizeof(float)) > kStageBytes;
  for_blocks(blocks, parallel, [&](int64_t ob) {
    const int nrows = static_cast<int>(std::min<int64_t>(R, p.C_out - ob * R));
    const float* src = p.weight + ob * R * p.w_out;
    float* stage = staged ? stage_buffer(seg * R) : nullptr;
    for (int64_t s0 = 0; s0 < p.K; s0 += seg) {
      const int64_t s1 = std::min(p.K, s0 + seg);
      float* d = dst + (ob * p.K + s0) * R;
      for (int64_t c0 = s0; c0 < s1; c0 += VW) {
        const int ncol = static_cast<int>(std::min<int64_t>(VW, s1 - c0));
        tile(src + c0, p.w_out, nrows, (1u << ncol) - 1, ncol, nullptr, invp + c0, stage ? stage : d, R);
      }
      if (stage) std::memcpy(d, stage, (s1 - s0) * R * sizeof(float));
    }
  });
}

// Calls whose taps are this few run the scalar gather: grad_input's stride phases read 1 to 4
// of a 3x3 layer's 9 taps, and a transpose for them (64 shuffles whatever the columns) was
// slower than the scalar copy (measured, benchmarks/NOTES-cpu-pack.md).
constexpr int64_t kScalarTaps = 4;
constexpr int64_t kTinyFloats = 256;

void pack_strided(const PackSpec& p, float* dst, bool parallel, TileFn tile, int VW) {
  const int R = p.lanes;
  const int64_t blocks = (p.C_out + R - 1) / R;
  auto w_tap = [&](int64_t t) { return p.w_tap ? p.w_tap[t] : t; };
  if (p.w_out == 1) {
    // the block's output channels are consecutive floats: each packed row is a plain copy
    for_blocks(blocks, parallel, [&](int64_t ob) {
      const int nrows = static_cast<int>(std::min<int64_t>(R, p.C_out - ob * R));
      float* d = dst + ob * p.K * R;
      for (int64_t ic = 0; ic < p.C_in; ++ic) {
        const float* src = p.weight + ob * R + ic * p.w_in;
        for (int64_t t = 0; t < p.taps; ++t) {
          float* row = d + packed_row(p, ic, t) * R;
          const float* s = src + w_tap(t);
          if (nrows == 16 && R == 16) std::memcpy(row, s, 16 * sizeof(float));
          else if (nrows == 8 && R == 8) std::memcpy(row, s, 8 * sizeof(float));
          else
            for (int l = 0; l < R; ++l) row[l] = l < nrows ? s[l] : 0.0f;
        }
      }
    });
    return;
  }
  // the tiles: taps grouped by the VW-aligned column range their column falls in
  PackScratch& s = scratch();
  s.c0.clear(), s.first.clear(), s.tap.clear(), s.mask.clear(), s.col.clear();
  std::vector<int64_t> order(p.taps);
  for (int64_t t = 0; t < p.taps; ++t) order[t] = t;
  std::stable_sort(order.begin(), order.end(),
                   [&](int64_t a, int64_t b) { return w_tap(a) / VW < w_tap(b) / VW; });
  for (int64_t t : order) {
    const int64_t c0 = w_tap(t) / VW * VW;
    if (s.c0.empty() || s.c0.back() != c0) {
      s.c0.push_back(c0), s.first.push_back(static_cast<int64_t>(s.tap.size())), s.mask.push_back(0);
    }
    s.tap.push_back(t);
    s.col.push_back(static_cast<int8_t>(w_tap(t) - c0));
    s.mask.back() |= 1u << (w_tap(t) - c0);
  }
  s.first.push_back(static_cast<int64_t>(s.tap.size()));
  const int64_t tiles = static_cast<int64_t>(s.c0.size());
  const int64_t *c0s = s.c0.data(), *first = s.first.data(), *taps = s.tap.data();
  const uint32_t* masks = s.mask.data();
  const int8_t* cols = s.col.data();
  // blocked_in, over 8 MiB: the rows a channel fills are 16 rows apart (a line each, not
  // prefetched by the hardware); prefetching the next channel block's lines for writing took
  // ResNet-18's 512 -> 512 3x3 from 1.75-2.0x to 1.45-1.75x the copy bound (in cache, up to
  // 256 -> 256, the prefetches cost 5%)
  const bool prefetch = p.blocked_in && blocks * p.K * R * int64_t(sizeof(float)) > kStageBytes;
  // Order: output-channel blocks, then input channels. (Runs of 16 input channels outside
  // the blocks, so that each source row is read in order, measured no faster on 512 -> 512
  // and slower on the planar order; the machine was noisy.)
  // (an explicit OpenMP loop, not for_blocks: through the lambda this loop ran 1.2x slower;
  // the parallel region's 0.3 us is nothing next to a layer with 5+ taps)
#pragma omp parallel for schedule(static) if (parallel)
  for (int64_t ob = 0; ob < blocks; ++ob) {
    const int nrows = static_cast<int>(std::min<int64_t>(R, p.C_out - ob * R));
    float* d = dst + ob * p.K * R;
    int64_t rows[32];
    for (int64_t ic = 0; ic < p.C_in; ++ic) {
      const float* src = p.weight + ob * R * p.w_out + ic * p.w_in;
      if (prefetch) {
        // 1/16 of the next channel block's rows per channel
        const int64_t next = (ic / 16 + 1) * 16 * p.taps;
        const int64_t r0 = next + (ic % 16) * p.taps, r1 = std::min(p.K, r0 + p.taps);
        for (int64_t f = r0 * R; f < r1 * R; f += 16) __builtin_prefetch(d + f, 1);
      }
      for (int64_t i = 0; i < tiles; ++i) {
        const int n = static_cast<int>(first[i + 1] - first[i]);
        for (int j = 0; j < n; ++j) rows[j] = packed_row(p, ic, taps[first[i] + j]);
        tile(src + c0s[i], p.w_out, nrows, masks[i], n, cols + first[i], rows, d, R);
      }
    }
  }
}

}  // namespace

void pack_blocked_weights(const PackSpec& p, float* dst, bool parallel) {
  const int R = p.lanes;
  bool negative_tap = false;
  for (int64_t t = 0; p.w_tap && t < p.taps; ++t) negative_tap |= p.w_tap[t] < 0;
  TileFn tile = nullptr;  // baseline: the scalar gather (scalar tiles ran at 0.7-0.8x its speed)
  int VW = 16;
#if CNNOPS_CPU_X86
  const CpuIsa isa = cpu_isa_active();
  if (isa == CpuIsa::kAvx512 && R <= 16) tile = tile_avx512, VW = 16;
  else if (isa == CpuIsa::kAvx2 && R <= 8) tile = tile_avx2, VW = 8;
#endif
  const int64_t blocks = (p.C_out + R - 1) / R;
  parallel = parallel && blocks > 1 && blocks * p.K * R > kParallelWork;
  const bool forward = !p.w_tap && p.w_in == p.taps;
  // the strided driver on AVX2 (8 x 8 tiles: a 3x3 layer's 9 taps take two, the second for
  // one column) was no faster than the scalar gather, and 2-3x slower on 512 channels
  const bool strided_scalar = !forward && p.w_out > 1 && (p.taps <= kScalarTaps || VW < 16);
  // tiny layers (LeNet's conv1, 150 weights) gain nothing from the tables
  const bool scalar = !tile || blocks * p.K * R < kTinyFloats;
  if (R < 1 || R > VW || negative_tap || p.K != p.C_in * p.taps || strided_scalar || scalar)
    pack_scalar(p, dst, parallel);  // outside what the drivers are written for, or no faster
  else if (forward) pack_forward(p, dst, parallel, tile, VW);
  else pack_strided(p, dst, parallel, tile, VW);
}

}  // namespace cnnops
