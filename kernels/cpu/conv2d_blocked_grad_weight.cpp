// conv2d grad_weight on the channel-blocked scheme, float32 (issue 14).
//
//   dW[oc, ic, kh, kw] = sum over n, oh, ow of
//                        gO[n, oc, oh, ow] * Xpad[n, ic, oh sh + kh dh, ow sw + kw dw]
//
// The vector runs over output channels: one register holds VW = 16 (AVX-512), 8 (AVX2) or 4
// (baseline, SSE2) output channels. A register tile holds J channel blocks x E reduction
// entries (an entry is one (ic, kh, kw) of the filter; 24 accumulators on AVX-512, 12 on AVX2
// and the baseline, whose 16 registers also hold the J loads and the broadcast); the
// loop runs over output pixels: per pixel it loads the J grad_output vectors and broadcasts the
// E input values under the entries' taps, then does J * E FMAs.
//
// The pixels (n, oh, ow) of the batch are split into `parts` equal ranges, one per thread
// (two for one or two threads). A thread walks its range in super-chunks of whole images
// (~768 KiB of repacked data, in L2), repacked by itself into its own buffers (per thread,
// reused across calls):
//  * grad_output, NCHW -> pixel-major [images][OH OW][CP] (CP = C_out rounded up to 16, zero
//    lanes): the J vectors of a pixel are consecutive, one pointer;
//  * the input into the zero-padded, stride-phase-split copy of the forward
//    (conv2d_blocked.cpp): plane (a, b) holds Xpad[i sh + a][j sw + b], so that output pixel
//    (oh, ow) reads every tap at a fixed offset from x[oh Wq + ow]. With C_in >= 4 the copy is
//    channel-blocked by 16 ([C_in / 16][planes][16]: the entries of a tile are lanes of a few
//    64-byte lines); thinner inputs stay planar.
// Both are 16 x 16 transposes (AVX-512 shuffles; a scalar 16-stream gather ran at ~1 ns a float
// and cost as much as a third of a layer). Entries come in "units" of RC consecutive floats of
// the copy (RC lanes of one tap; RC = 1: any (ic, kh, kw), in the filter's own order); a tile
// takes T units (T base pointers), E = T * RC. Lanes past C_in and the padding units of the
// last group are computed and dropped. Only real output pixels are visited (a list of their
// offsets in the copy), so the columns of the copy past OW never enter a sum: an inf there
// cannot turn into a NaN through a zero gradient.
//
// Work split and determinism: a work item is (J channel blocks, one group of T units); its
// accumulators live in a per-item slot between pixel chunks of <= 96 pixels (the chunk's
// grad_output vectors stay in L1 for all the items). The threads split either the pixels into
// `parts` ranges, each with its own slots, added in part order when the slots are transposed
// into grad_weight (overwritten, every element once); or, for layers whose slots outweigh the
// repacked batch (many weights, few pixels: 256->256 at 6x6, 512->512 at 3x3), the items, every
// thread repacking the whole batch for itself. There are 2 parts for 1 or 2 threads, and an
// item split sums each item exactly as a single part does, so each dW element is summed in one
// fixed order: bitwise identical run to run and for 1 and 2 threads (with T > 2 threads there
// are T parts: deterministic for a given T). No barrier until the end: an earlier version
// shared each super-chunk between the threads, with a barrier per super-chunk; with other
// processes on the cores, 2 threads took 130 ms on the ResNet stem (4 ms on idle cores; torch
// 24-36 ms then). An image split between two parts is repacked by both.
#include "conv2d_blocked.h"

#include <algorithm>
#include <cstring>
#include <vector>

#ifdef _OPENMP
#include <omp.h>
#endif

#include "cpu_common.h"
#include "cpu_simd.h"

namespace cnnops {

namespace {


// Accumulate pixels [0, np) into the tile's slot `acc_io` (J x E vectors; zero first when
// `first`). g: grad_output of the first pixel at the tile's first channel block, CP floats
// per pixel; xo: the pixels' offsets in the input copy; base[t]: the copy at unit t's offset.
template <int VW, int J, int T, int RC>
CNNOPS_INLINE void gw_tile(const float* __restrict__ g, int64_t CP, const int64_t* __restrict__ xo,
                           int64_t np, const float* const* base, float* __restrict__ acc_io,
                           bool first) {
  using V = typename FloatVec<VW>::type;
  constexpr int E = T * RC;
  V negzero;
#pragma GCC unroll 16
  for (int l = 0; l < VW; ++l) negzero[l] = -0.0f;
  V acc[J][E];
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 28
    for (int e = 0; e < E; ++e) {
      if (first) acc[j][e] = V{};
      else std::memcpy(&acc[j][e], acc_io + (j * E + e) * VW, sizeof(V));
    }
  const float* __restrict__ b[T];
#pragma GCC unroll 8
  for (int t = 0; t < T; ++t) b[t] = base[t];
  for (int64_t p = 0; p < np; ++p) {
    const float* __restrict__ gp = g + p * CP;
    const int64_t o = xo[p];
    V gv[J];
#pragma GCC unroll 4
    for (int j = 0; j < J; ++j) std::memcpy(&gv[j], gp + j * VW, sizeof(V));
#pragma GCC unroll 8
    for (int t = 0; t < T; ++t)
#pragma GCC unroll 8
      for (int r = 0; r < RC; ++r) {
        const V xb = negzero + b[t][o + r];  // broadcast, folded into the FMA's memory operand
#pragma GCC unroll 4
        for (int j = 0; j < J; ++j) acc[j][t * RC + r] += gv[j] * xb;
      }
  }
#pragma GCC unroll 4
  for (int j = 0; j < J; ++j)
#pragma GCC unroll 28
    for (int e = 0; e < E; ++e) std::memcpy(acc_io + (j * E + e) * VW, &acc[j][e], sizeof(V));
}

// Everything the items need, computed once per call.
struct GwCall {
  const float* g;         // repacked grad_output, [N * OH * OW][CP]
  int64_t CP;
  const float* x;         // input copy
  const int64_t* xo;      // per output pixel, its offset in x
  const int64_t* uoff;    // per group, T unit offsets (T = the call's T)
  float* slots;           // per item, J * E * VW floats
  int64_t slot_floats;    // Jmain * E * VW
  int64_t groups;         // unit groups
  int64_t ocgroups;
  int Jmain, blocks, T, RC;
};

template <int VW, int J, int T, int RC>
CNNOPS_INLINE void gw_items(const GwCall& c, int64_t i0, int64_t i1, int64_t p0, int64_t np,
                            bool first) {
  for (int64_t i = i0; i < i1; ++i) {
    const int64_t ocg = i / c.groups, grp = i % c.groups;
    const float* base[T];
    for (int t = 0; t < T; ++t) base[t] = c.x + c.uoff[grp * T + t];
    gw_tile<VW, J, T, RC>(c.g + p0 * c.CP + ocg * c.Jmain * VW, c.CP, c.xo + p0, np, base,
                          c.slots + i * c.slot_floats, first);
  }
}


// Items [i0, i1) of one oc group size J (the last oc group may be narrower than Jmain).
#define CNNOPS_GW_CASE(VW, J, T, RC) \
  case (J) * 10000 + (T) * 100 + (RC): gw_items<VW, J, T, RC>(c, i0, i1, p0, np, first); break;

CNNOPS_TARGET_AVX512 __attribute__((noinline)) void gw_run_avx512(const GwCall& c, int J, int64_t i0,
                                                              int64_t i1, int64_t p0, int64_t np,
                                                              bool first) {
  switch (J * 10000 + c.T * 100 + c.RC) {
    CNNOPS_GW_CASE(16, 4, 6, 1) CNNOPS_GW_CASE(16, 3, 6, 1) CNNOPS_GW_CASE(16, 2, 6, 1)
    CNNOPS_GW_CASE(16, 1, 6, 1)
    CNNOPS_GW_CASE(16, 3, 8, 1) CNNOPS_GW_CASE(16, 2, 8, 1) CNNOPS_GW_CASE(16, 1, 8, 1)
    CNNOPS_GW_CASE(16, 2, 3, 4) CNNOPS_GW_CASE(16, 1, 3, 4)
    CNNOPS_GW_CASE(16, 2, 2, 6) CNNOPS_GW_CASE(16, 1, 2, 6)
    CNNOPS_GW_CASE(16, 1, 3, 8) CNNOPS_GW_CASE(16, 1, 4, 6)
    default: break;
  }
}

CNNOPS_TARGET_AVX2 __attribute__((noinline)) void gw_run_avx2(const GwCall& c, int J, int64_t i0,
                                                          int64_t i1, int64_t p0, int64_t np,
                                                          bool first) {
  switch (J * 10000 + c.T * 100 + c.RC) {
    CNNOPS_GW_CASE(8, 2, 6, 1) CNNOPS_GW_CASE(8, 1, 6, 1)
    CNNOPS_GW_CASE(8, 1, 3, 4) CNNOPS_GW_CASE(8, 1, 2, 6) CNNOPS_GW_CASE(8, 1, 8, 1)
    default: break;
  }
}

__attribute__((noinline)) void gw_run_baseline(const GwCall& c, int J, int64_t i0, int64_t i1,
                                               int64_t p0, int64_t np, bool first) {
  switch (J * 10000 + c.T * 100 + c.RC) {
    CNNOPS_GW_CASE(4, 2, 6, 1) CNNOPS_GW_CASE(4, 1, 6, 1)
    default: break;
  }
}
#undef CNNOPS_GW_CASE


// 16 x 16 transposes for the repacks (a scalar 16-stream gather runs at ~1 ns a float):
// dst[i * dst_stride + l] = src[l][i * SW], i, l < 16. SW = 2 takes the even floats of 32.
#ifdef CNNOPS_CPU_X86
// The first n (1..16) columns: masked loads (no fault past the row), n stores.
template <int SW>
CNNOPS_TARGET_AVX512 void gw_transpose16(const float* const* src, float* dst, int64_t dst_stride,
                                     int n = 16) {
  __m512 r[16];
  const __m512i even =
      _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
  // floats read per row: n (SW = 1) or 2 n - 1 (SW = 2), in one or two 16-float loads
  const int need = SW == 1 ? n : 2 * n - 1;
  const __mmask16 m0 = static_cast<__mmask16>(need >= 16 ? 0xFFFF : (1u << need) - 1);
  const __mmask16 m1 =
      static_cast<__mmask16>(need >= 32 ? 0xFFFF : need <= 16 ? 0 : (1u << (need - 16)) - 1);
#pragma GCC unroll 16
  for (int l = 0; l < 16; ++l) {
    if (SW == 1) {
      r[l] = _mm512_maskz_loadu_ps(m0, src[l]);
    } else {
      r[l] = _mm512_permutex2var_ps(_mm512_maskz_loadu_ps(m0, src[l]), even,
                                    _mm512_maskz_loadu_ps(m1, src[l] + 16));
    }
  }
  transpose16(r);
  if (n == 16) {
#pragma GCC unroll 16
    for (int i = 0; i < 16; ++i) _mm512_storeu_ps(dst + i * dst_stride, r[i]);
  } else {
    for (int i = 0; i < n; ++i) _mm512_storeu_ps(dst + i * dst_stride, r[i]);
  }
}

// dst[j * dst_stride + l] = src[l][j * sw] for j in [0, count), l < 16 (all 16 rows given).
// 8 x 8 for the AVX2 variant: dst[i * dst_stride + l] = src[l][i], the first n (1..8) columns.
CNNOPS_TARGET_AVX2 void gw_transpose8(const float* const* src, float* dst, int64_t dst_stride,
                                  int n) {
  __m256 r[8];
  const __m256i lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
  const __m256i mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(n), lane);  // lanes < n
#pragma GCC unroll 8
  for (int l = 0; l < 8; ++l) r[l] = _mm256_maskload_ps(src[l], mask);
  transpose8(r);
  for (int i = 0; i < n; ++i) _mm256_storeu_ps(dst + i * dst_stride, r[i]);
}
#endif

// dst[j * dst_stride + l] = src[l][j * sw] for j in [0, count), l < 16 (all 16 rows given).
// vec: 2 = AVX-512 transposes (sw 1 or 2), 1 = AVX2 (sw 1), 0 = scalar.
void gw_gather16(const float* const* src, int64_t sw, int64_t count, float* dst,
                 int64_t dst_stride, int vec) {
  int64_t j = 0;
#ifdef CNNOPS_CPU_X86
  const float* p[16];
  if (vec == 2 && (sw == 1 || sw == 2)) {
    for (; j < count; j += 16) {
      const int n = static_cast<int>(std::min<int64_t>(16, count - j));
      for (int l = 0; l < 16; ++l) p[l] = src[l] + j * sw;
      if (sw == 1) gw_transpose16<1>(p, dst + j * dst_stride, dst_stride, n);
      else gw_transpose16<2>(p, dst + j * dst_stride, dst_stride, n);
    }
  } else if (vec == 1 && sw == 1) {
    for (; j < count; j += 8) {
      const int n = static_cast<int>(std::min<int64_t>(8, count - j));
      for (int l = 0; l < 16; ++l) p[l] = src[l] + j;
      gw_transpose8(p, dst + j * dst_stride, dst_stride, n);
      gw_transpose8(p + 8, dst + j * dst_stride + 8, dst_stride, n);
    }
  }
#endif
  for (; j < count; ++j)
#pragma GCC unroll 16
    for (int l = 0; l < 16; ++l) dst[j * dst_stride + l] = src[l][j * sw];
}

// Tile shapes (T units of RC floats) per main group size J, candidates in order of preference;
// the driver takes the one that computes the fewest padded entries.
struct GwShape { int J, T, RC; bool blocked_only; };
constexpr GwShape kGw512[] = {{4, 6, 1, false}, {3, 8, 1, false}, {2, 3, 4, true},
                              {2, 2, 6, true},  {2, 8, 1, false}, {1, 3, 8, true},
                              {1, 4, 6, true},  {1, 8, 1, false}};
constexpr GwShape kGw2[] = {{2, 6, 1, false}, {1, 3, 4, true}, {1, 2, 6, true},
                            {1, 8, 1, false}};
constexpr GwShape kGwBase[] = {{2, 6, 1, false}, {1, 6, 1, false}};

struct GwWorkspace {
  std::vector<float> g, x, slots;
  std::vector<int64_t> xo, uoff, ukidx, kpos, phase_id;
};
GwWorkspace& gw_workspace() {
  static thread_local GwWorkspace ws;
  return ws;
}
float* gw_align64(std::vector<float>& v, size_t n) {
  if (v.size() < n + 16) v.resize(n + 16);
  return align64(v.data());
}

// Pixels per chunk: the chunk's grad_output vectors of one item (J * VW floats a pixel) in
// about 24 KiB of L1.
constexpr int64_t kGwChunkBytes = 24 << 10;

}  // namespace

void gather_rows16(const float* const* src, int64_t sw, int64_t count, float* dst,
                   int64_t dst_stride, CpuIsa isa) {
  gw_gather16(src, sw, count, dst, dst_stride,
              isa == CpuIsa::kAvx512 ? 2 : isa == CpuIsa::kAvx2 ? 1 : 0);
}

bool conv2d_grad_weight_blocked_f32(const float* grad_output, const float* input,
                                    float* grad_weight, const Conv2dShape& s) {
  // Thin output (C_out < 16) leaves most lanes empty: the row kernel of conv2d.cpp is better.
  if (s.groups != 1 || s.C_out < 16 || s.N <= 0 || s.OH <= 0 || s.OW <= 0 || s.C_in <= 0 ||
      s.H <= 0 || s.W <= 0)
    return false;
  const CpuIsa isa = cpu_isa_active();
  const int VW = isa == CpuIsa::kAvx512 ? 16 : isa == CpuIsa::kAvx2 ? 8 : 4;
  const GwShape* shapes = isa == CpuIsa::kAvx512 ? kGw512 : isa == CpuIsa::kAvx2 ? kGw2 : kGwBase;
  const int nshapes = isa == CpuIsa::kAvx512 ? 8 : isa == CpuIsa::kAvx2 ? 4 : 2;
  const int Jmax = shapes[0].J;
  GwWorkspace& ws = gw_workspace();

  const int64_t taps = s.KH * s.KW, K = s.C_in * taps;
  const int64_t plane = s.OH * s.OW, pixels = s.N * plane;
  const int64_t work = pixels * s.C_out * K;
  const bool parallel = work > kParallelWork;
  const int64_t CP = ceil_div(s.C_out, 16) * 16;
  const int blocks = static_cast<int>(ceil_div(s.C_out, VW));

  // ---- geometry of the phase planes (as the forward)
  const int64_t sh = s.stride_h, sw = s.stride_w;
  const int64_t Hp = s.H + 2 * s.pad_h, Wp = s.W + 2 * s.pad_w;
  const int64_t Hq = ceil_div(Hp, sh), Wq = ceil_div(Wp, sw);
  const int64_t phase_plane = Hq * Wq;
  std::vector<int64_t>& phase_id = ws.phase_id;
  phase_id.assign(sh * sw, -1);
  for (int64_t kh = 0; kh < s.KH; ++kh)
    for (int64_t kw = 0; kw < s.KW; ++kw)
      phase_id[((kh * s.dil_h) % sh) * sw + (kw * s.dil_w) % sw] = 0;
  int64_t phases = 0;
  for (auto& id : phase_id)
    if (id == 0) id = phases++;
  const bool blocked = s.C_in >= 4;
  const int64_t XS = blocked ? 16 : 1;
  // planar: a channel stride of an odd number of 64-byte lines (L1 sets, see the forward)
  const int64_t chan = blocked ? phases * phase_plane * 16
                               : (ceil_div(phases * phase_plane, 16) | 1) * 16;
  const int64_t cunits = blocked ? ceil_div(s.C_in, 16) : s.C_in;
  const int64_t x_image = cunits * chan;

  // ---- tile shape: J = min(Jmax, blocks) for the main oc groups; (T, RC) with the fewest
  // padded entries
  const int Jmain = std::min(Jmax, blocks);
  int T = 0, RC = 0;
  int64_t best = -1, units_best = 0;
  for (int i = 0; i < nshapes; ++i) {
    const GwShape& sh_ = shapes[i];
    if (sh_.J != Jmain || (sh_.blocked_only && !blocked)) continue;
    int64_t units = 0;
    if (blocked) {
      for (int64_t icb = 0; icb < cunits; ++icb)
        units += taps * ceil_div(std::min<int64_t>(16, s.C_in - icb * 16), sh_.RC);
    } else {
      units = s.C_in * taps;  // RC = 1
    }
    const int64_t cost = ceil_div(units, sh_.T) * sh_.T * sh_.RC;
    if (best < 0 || cost < best) best = cost, T = sh_.T, RC = sh_.RC, units_best = units;
  }
  if (best < 0) return false;
  const int64_t groups = ceil_div(units_best, T);
  const int E = T * RC;

  // ---- units: offset in the copy and the filter index of each of their RC lanes (-1:
  // dropped). RC = 1: in the filter's own order (ic, kh, kw), so that the unpack reads the slots
  // in order; RC > 1: (ic / 16, kh, kw, lane group).
  ws.uoff.assign(groups * T, 0);
  ws.ukidx.assign(groups * E, -1);
  {
    int64_t u = 0;
    for (int64_t icu = 0; icu < cunits; ++icu) {
      const int64_t valid = blocked ? std::min<int64_t>(16, s.C_in - icu * 16) : 1;
      for (int64_t l0 = 0; l0 < valid; l0 += (RC == 1 ? 1 : valid))
        for (int64_t kh = 0; kh < s.KH; ++kh)
          for (int64_t kw = 0; kw < s.KW; ++kw) {
            const int64_t rh = kh * s.dil_h, rw = kw * s.dil_w;
            const int64_t at =
                phase_id[(rh % sh) * sw + rw % sw] * phase_plane + (rh / sh) * Wq + rw / sw;
            if (RC == 1) {
              ws.uoff[u] = icu * chan + at * XS + l0;
              ws.ukidx[u] = (((blocked ? icu * 16 : icu) + l0) * s.KH + kh) * s.KW + kw;
              ++u;
              continue;
            }
            for (int64_t m0 = 0; m0 < valid; m0 += RC, ++u) {
              ws.uoff[u] = icu * chan + at * 16 + m0;
              for (int r = 0; r < RC && m0 + r < valid; ++r)
                ws.ukidx[u * RC + r] = ((icu * 16 + m0 + r) * s.KH + kh) * s.KW + kw;
            }
          }
    }
    for (; u < groups * T; ++u) ws.uoff[u] = ws.uoff[0];  // padding units: read, dropped
  }

  // ---- super-chunks of `ipc` images, repacked by the thread that works on them into its own
  // buffers: grad_output pixel-major [ipc * OH * OW][CP], the input into the phase-split copy.
  // ~768 KiB, so that they stay in L2 for all the items; at least ~2 pixel chunks, so that the
  // items' setup and slot traffic stay small.
  const int64_t g_image = plane * CP;
  const int64_t chunk_px =
      std::max<int64_t>(8, kGwChunkBytes / (int64_t(std::min(Jmax, blocks)) * VW * 4));
  const int64_t ipc = std::max<int64_t>(
      1, std::min<int64_t>(s.N, std::max<int64_t>((int64_t(768) << 10) / (4 * (g_image + x_image)),
                                                  ceil_div(2 * chunk_px, plane))));
  const int64_t g_sc = ipc * g_image, x_sc = ipc * x_image + 64 + 16;  // x: slack past the end
  const int vec = isa == CpuIsa::kAvx512 ? 2 : isa == CpuIsa::kAvx2 ? 1 : 0;
  const int64_t gblocks = CP / 16;

  // one image's 16 output channels, pixel-major
  auto repack_g = [&](int64_t n, int64_t ob, float* gdst) {
    const int lanes = static_cast<int>(std::min<int64_t>(16, s.C_out - ob * 16));
    float* dst = gdst + ob * 16;
    const float* src = grad_output + (n * s.C_out + ob * 16) * plane;
    if (lanes == 16) {
      const float* rows[16];
      for (int l = 0; l < 16; ++l) rows[l] = src + l * plane;
      gw_gather16(rows, 1, plane, dst, CP, vec);
    } else {
      for (int64_t p = 0; p < plane; ++p)
        for (int l = 0; l < 16; ++l) dst[p * CP + l] = l < lanes ? src[l * plane + p] : 0.0f;
    }
  };
  // one image's channel block (blocked) or channel (planar), phase-split and zero-padded
  auto repack_x = [&](int64_t n, int64_t icu, float* dst) {
    if (blocked) {
      const int lanes = static_cast<int>(std::min<int64_t>(16, s.C_in - icu * 16));
      if (lanes < 16) std::fill(dst, dst + chan, 0.0f);  // lanes never read, kept finite
      for (int64_t a = 0; a < sh; ++a)
        for (int64_t b = 0; b < sw; ++b) {
          if (phase_id[a * sw + b] < 0) continue;
          for (int64_t i = 0; i < Hq; ++i) {
            float* row = dst + (phase_id[a * sw + b] * phase_plane + i * Wq) * 16;
            const int64_t r = i * sh + a - s.pad_h;
            int64_t lo = 0, hi = 0;
            if (r >= 0 && r < s.H) valid_outputs(s.W, Wq, sw, s.pad_w, b, &lo, &hi);
            std::fill(row, row + lo * 16, 0.0f);
            std::fill(row + hi * 16, row + Wq * 16, 0.0f);
            if (hi <= lo) continue;
            const float* srow[16];
            for (int l = 0; l < lanes; ++l)
              srow[l] = input + ((n * s.C_in + icu * 16 + l) * s.H + r) * s.W + b - s.pad_w +
                        lo * sw;
            if (lanes == 16) {
              gw_gather16(srow, sw, hi - lo, row + lo * 16, 16, vec);
            } else {
              for (int64_t j = 0; j < hi - lo; ++j)
                for (int l = 0; l < lanes; ++l) row[(lo + j) * 16 + l] = srow[l][j * sw];
            }
          }
        }
    } else {
      const float* src = input + (n * s.C_in + icu) * s.H * s.W;
      std::fill(dst + phases * phase_plane, dst + chan, 0.0f);  // the alignment gap
      for (int64_t a = 0; a < sh; ++a)
        for (int64_t b = 0; b < sw; ++b) {
          if (phase_id[a * sw + b] < 0) continue;
          for (int64_t i = 0; i < Hq; ++i) {
            float* row = dst + phase_id[a * sw + b] * phase_plane + i * Wq;
            const int64_t r = i * sh + a - s.pad_h;
            if (r < 0 || r >= s.H) {
              std::fill(row, row + Wq, 0.0f);
              continue;
            }
            const float* srow = src + r * s.W;
            int64_t lo, hi;
            valid_outputs(s.W, Wq, sw, s.pad_w, b, &lo, &hi);
            std::fill(row, row + lo, 0.0f);
            for (int64_t j = lo; j < hi; ++j) row[j] = srow[j * sw + b - s.pad_w];
            std::fill(row + std::max(lo, hi), row + Wq, 0.0f);
          }
        }
    }
  };

  // ---- offsets of a super-chunk's output pixels in its copy
  const int64_t sc_pixels = ipc * plane;
  if (ws.xo.size() < static_cast<size_t>(sc_pixels)) ws.xo.resize(sc_pixels);
  for (int64_t n = 0, p = 0; n < ipc; ++n)
    for (int64_t oh = 0; oh < s.OH; ++oh)
      for (int64_t ow = 0; ow < s.OW; ++ow) ws.xo[p++] = n * x_image + (oh * Wq + ow) * XS;

  // ---- items: oc groups (of Jmain blocks, the last narrower) x unit groups
  const int64_t ocgroups = ceil_div(blocks, Jmain);
  const int64_t items = ocgroups * groups;
  const int64_t slot_floats = int64_t(Jmain) * E * VW;
  const int64_t last0 = (ocgroups - 1) * groups;  // the items of the last (narrower) group
  const int Jlast = blocks - int(ocgroups - 1) * Jmain;

  // ---- work split (see the file comment): the pixels in `parts` ranges with their own slots,
  // or, when the slots are large next to the repacked batch (many weights, few pixels: the
  // added slots would cost more than a second repack), the items: every thread then repacks the
  // whole batch itself and sums its items over all the pixels, exactly as one part would.
  const int64_t total_px = s.N * plane;
  const int64_t slot_total = items * slot_floats;
#ifdef _OPENMP
  const int64_t threads = omp_get_max_threads();
#else
  const int64_t threads = 1;
#endif
  const bool by_items = parallel && 2 * slot_total > s.N * (g_image + x_image) &&
                        items >= 16 * std::max<int64_t>(2, threads);
  int64_t parts = 1;
  if (parallel && !by_items && total_px >= 2 * 8) {
    parts = std::max<int64_t>(2, threads);
    const int64_t cap = std::max<int64_t>(2, (int64_t(64) << 20) / (4 * slot_total));
    parts = std::min({parts, cap, total_px / 8});
  }
  const int64_t tasks = by_items ? std::max<int64_t>(1, threads) : parts;
  float* slots = gw_align64(ws.slots, parts * slot_total);
  const int64_t* xo = ws.xo.data();
  const int64_t* uoff = ws.uoff.data();

  // task t: pixels [A, B) of items [ia, ib)
  auto run_task = [&](int64_t t) {
    const int64_t A = by_items ? 0 : total_px * t / parts;
    const int64_t B = by_items ? total_px : total_px * (t + 1) / parts;
    const int64_t ia = by_items ? items * t / tasks : 0;
    const int64_t ib = by_items ? items * (t + 1) / tasks : items;
    if (A >= B || ia >= ib) return;
    GwWorkspace& own = gw_workspace();  // this thread's buffers
    float* gb = gw_align64(own.g, g_sc);
    float* xb = gw_align64(own.x, x_sc);
    std::fill(xb + ipc * x_image, xb + x_sc, 0.0f);
    float* part_slots = slots + (by_items ? 0 : t) * slot_total;
    bool first = true;
    for (int64_t n0 = A / plane; n0 * plane < B; n0 += ipc) {
      const int64_t nimg = std::min(ipc, s.N - n0);
      for (int64_t m = 0; m < nimg; ++m) {
        for (int64_t ob = 0; ob < gblocks; ++ob) repack_g(n0 + m, ob, gb + m * g_image);
        for (int64_t icu = 0; icu < cunits; ++icu)
          repack_x(n0 + m, icu, xb + m * x_image + icu * chan);
      }
      GwCall c{gb,     CP,       xb,    xo,     uoff, part_slots, slot_floats,
               groups, ocgroups, Jmain, blocks, T,    RC};
      // this part's pixels of the super-chunk, in chunks of equal size (at most chunk_px)
      const int64_t q0 = std::max(A, n0 * plane) - n0 * plane;
      const int64_t q1 = std::min(B, (n0 + nimg) * plane) - n0 * plane;
      const int64_t nch = ceil_div(q1 - q0, chunk_px);
      for (int64_t ci = 0; ci < nch; ++ci, first = false) {
        const int64_t p0 = q0 + (q1 - q0) * ci / nch, p1 = q0 + (q1 - q0) * (ci + 1) / nch;
        for (int half = 0; half < 2; ++half) {
          const int64_t lo = std::max(ia, half ? last0 : int64_t(0));
          const int64_t hi = std::min(ib, half ? items : last0);
          const int J = half ? Jlast : Jmain;
          if (lo >= hi) continue;
          if (isa == CpuIsa::kAvx512) gw_run_avx512(c, J, lo, hi, p0, p1 - p0, first);
          else if (isa == CpuIsa::kAvx2) gw_run_avx2(c, J, lo, hi, p0, p1 - p0, first);
          else gw_run_baseline(c, J, lo, hi, p0, p1 - p0, first);
        }
      }
    }
    // large one-off layers should not hold their buffers for the life of the thread
    if (own.x.capacity() * sizeof(float) > (size_t(64) << 20)) std::vector<float>().swap(own.x);
    if (own.g.capacity() * sizeof(float) > (size_t(64) << 20)) std::vector<float>().swap(own.g);
  };
#ifdef _OPENMP
  const int team = static_cast<int>(std::min<int64_t>(tasks, omp_get_max_threads()));
#else
  const int team = 1;
#endif
#pragma omp parallel for schedule(static) num_threads(team) if (team > 1)
  for (int64_t t = 0; t < tasks; ++t) run_task(t);

  // ---- unpack the slots into grad_weight [C_out][C_in][KH][KW] (every element written
  // once): per 16 output channels x 16 filter indices, a transpose
  ws.kpos.assign(K, 0);
  for (int64_t e = 0; e < groups * E; ++e)
    if (ws.ukidx[e] >= 0) ws.kpos[ws.ukidx[e]] = (e / E) * slot_floats + (e % E) * VW;
  const int64_t kblocks = ceil_div(K, 16);
  const int64_t* kpos = ws.kpos.data();
#pragma omp parallel for schedule(static) if (parallel && blocks * K * VW > kParallelWork)
  for (int64_t bk = 0; bk < blocks * kblocks; ++bk) {
    const int64_t ob = bk / kblocks, k0 = (bk % kblocks) * 16;
    const int64_t ocg = ob / Jmain, j = ob % Jmain, kn = std::min<int64_t>(16, K - k0);
    const float* region = slots + ocg * groups * slot_floats + j * E * VW;
    const int lanes = static_cast<int>(std::min<int64_t>(VW, s.C_out - ob * VW));
    const float* src[16];
    alignas(64) float sum[16][16];
    for (int64_t kk = 0; kk < kn; ++kk) {
      src[kk] = region + kpos[k0 + kk];
      if (parts == 1) continue;
      for (int l = 0; l < VW; ++l) sum[kk][l] = src[kk][l];
      for (int64_t h = 1; h < parts; ++h)  // fixed order: part 0 + part 1 + ...
        for (int l = 0; l < VW; ++l) sum[kk][l] += src[kk][h * slot_total + l];
      src[kk] = sum[kk];
    }
    float* dst = grad_weight + ob * VW * K + k0;
#ifdef CNNOPS_CPU_X86
    if (vec == 2 && VW == 16 && lanes == 16 && kn == 16) {
      gw_transpose16<1>(src, dst, K);
      continue;
    }
#endif
    for (int l = 0; l < lanes; ++l)
      for (int64_t kk = 0; kk < kn; ++kk) dst[l * K + kk] = src[kk][l];
  }
  if (ws.slots.capacity() * sizeof(float) > (size_t(64) << 20)) std::vector<float>().swap(ws.slots);
  return true;
}

}  // namespace cnnops
