// max_pool2d on the CPU, NCHW contiguous, float and double.
//
// Two row kernels; both give PyTorch's results bit for bit, indices included. The scan order
// per output element is PyTorch's (kh, then kw), and so are the rules: a value replaces the
// running maximum when it is greater or NaN (so a NaN in the window wins and the last NaN's
// index is kept), and an all -inf window reports its first in-bounds element.
//
// - AVX-512 / AVX2 (as cpu_isa_active() says, stride_w 1 or 2; issue 14): the vector runs
//   along the output row, every output of the row (borders included) in masked chunks of
//   16 floats / 8 doubles (AVX2: 8 / 4), the stride-2 taps deinterleaved by vpermt2ps/pd
//   (AVX2: vshufps/vunpcklpd + vpermpd); the running max and index live in registers and are
//   written once. Without indices (indices == nullptr, the op max_pool2d_values) the update
//   is one masked vmaxps per tap. See max_row_avx512 / max_row_avx2.
// - Channels-last input: max_pool2d_forward_nhwc_cpu, the vector over channels.
// - Otherwise (baseline, stride_w > 2) the portable kernel below, compiled per ISA by
//   target_clones: one output row at a time, its interior (outputs whose window lies inside
//   the row along W) in chunks of 16 floats / 8 doubles: each chunk keeps its running maxima
//   and winning taps over every tap (kh, kw) and is stored once, so the loop over the chunk
//   has a fixed trip count and vectorises. The few border outputs go one at a time. The
//   winning tap kh * KW + kw is kept as an int32 and turned into PyTorch's flat index
//   h * W + w at the store: the window's first element plus the tap's offset from it.
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "conv2d_blocked.h"  // cpu_isa_active
#include "cpu_common.h"
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

namespace cnnops {
namespace {

// The running maximum of one output, PyTorch's rule: v replaces it when greater or NaN.
template <typename T>
CNNOPS_INLINE void take_max(T v, int32_t this_tap, T& best, int32_t& best_tap) {
  const bool take = v > best || v != v;  // v != v: NaN
  best = take ? v : best;
  best_tap = take ? this_tap : best_tap;
}

// Per-call column tables (the same for every row): the interior [lo_all, hi_all), outputs
// whose every tap kw is inside the row, and each border output's valid taps [kw_lo, kw_hi).
struct ColumnTaps {
  int64_t lo_all, hi_all;
  std::vector<int64_t> kw_lo, kw_hi;
  explicit ColumnTaps(const Pool2dShape& s) : kw_lo(s.OW), kw_hi(s.OW) {
    int64_t unused;
    valid_outputs(s.W, s.OW, s.stride_w, s.pad_w, 0, &lo_all, &unused);
    valid_outputs(s.W, s.OW, s.stride_w, s.pad_w, (s.kernel_w - 1) * s.dil_w, &unused, &hi_all);
    if (hi_all < lo_all) hi_all = lo_all;
    for (int64_t ow = 0; ow < s.OW; ++ow)
      valid_taps(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, &kw_lo[ow], &kw_hi[ow]);
  }
};

// out[ow] = max(out[ow], in[ow * stride]) with PyTorch's NaN rule, tap[ow] = the winner's tap,
// for ow in [ow0, ow0 + kWidth): a fixed trip count, so it vectorises without a scalar tail.
template <typename T, int kStride, int kWidth>
CNNOPS_INLINE void max_tap_chunk(const T* __restrict__ in, T* __restrict__ out,
                                 int32_t* __restrict__ tap, int32_t this_tap, int64_t ow0,
                                 int64_t stride) {
  const int64_t st = kStride ? kStride : stride;
  for (int64_t ow = ow0; ow < ow0 + kWidth; ++ow) {
    const T v = in[ow * st];
    const bool take = v > out[ow] || v != v;  // v != v: NaN
    out[ow] = take ? v : out[ow];
    tap[ow] = take ? this_tap : tap[ow];
  }
}

// Interior outputs [ow0, ow0 + kWidth) of row oh, all taps (kh, kw) one after the other over
// the same kWidth outputs, so the running maxima stay in L1 and each tap's loads of out and
// tap match the previous tap's stores exactly (store-to-load forwarding works); then the
// winning taps become indices. kStride: the stride when known at compile time (1, 2), else 0.
template <typename T, int kStride, int kWidth>
CNNOPS_INLINE void max_chunk(const T* __restrict__ in_plane, T* __restrict__ out_row,
                             int64_t* __restrict__ idx_row, int32_t* __restrict__ tap,
                             const int64_t* tap_offset, const Pool2dShape& s, int64_t oh,
                             int64_t kh_lo, int64_t kh_hi, int64_t ow0) {
  for (int64_t ow = ow0; ow < ow0 + kWidth; ++ow) {
    out_row[ow] = -std::numeric_limits<T>::infinity();
    tap[ow] = static_cast<int32_t>(kh_lo * s.kernel_w);
  }
  for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
    const T* in_row = in_plane + (oh * s.stride_h - s.pad_h + kh * s.dil_h) * s.W;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw)
      max_tap_chunk<T, kStride, kWidth>(in_row - s.pad_w + kw * s.dil_w, out_row, tap,
                                        static_cast<int32_t>(kh * s.kernel_w + kw), ow0,
                                        s.stride_w);
  }
  const int64_t row_start = (oh * s.stride_h - s.pad_h) * s.W - s.pad_w;
  for (int64_t ow = ow0; ow < ow0 + kWidth; ++ow)
    idx_row[ow] = row_start + ow * s.stride_w + tap_offset[tap[ow]];
}

// The interior [lo, hi) in chunks of kWidth, the last one shifted left to end at hi (it
// recomputes a few outputs, with identical results).
template <typename T, int kStride, int kWidth>
CNNOPS_INLINE void max_chunks(const T* in_plane, T* out_row, int64_t* idx_row, int32_t* tap,
                              const int64_t* tap_offset, const Pool2dShape& s, int64_t oh,
                              int64_t kh_lo, int64_t kh_hi, int64_t lo, int64_t hi) {
  for (int64_t ow0 = lo; ow0 < hi; ow0 += kWidth)
    max_chunk<T, kStride, kWidth>(in_plane, out_row, idx_row, tap, tap_offset, s, oh, kh_lo, kh_hi,
                                  std::min(ow0, hi - kWidth));
}

// The interior with the widest chunk that fits: 16, 8 or 4 floats (8 or 4 doubles); the caller
// takes interiors narrower than 4 one output at a time.
template <typename T, int kStride>
CNNOPS_INLINE void max_interior(const T* in_plane, T* out_row, int64_t* idx_row, int32_t* tap,
                                const int64_t* tap_offset, const Pool2dShape& s, int64_t oh,
                                int64_t kh_lo, int64_t kh_hi, int64_t lo, int64_t hi) {
  constexpr int kWide = 64 / sizeof(T);
  if (hi - lo >= kWide)
    max_chunks<T, kStride, kWide>(in_plane, out_row, idx_row, tap, tap_offset, s, oh, kh_lo, kh_hi,
                                  lo, hi);
  else if (hi - lo >= kWide / 2)
    max_chunks<T, kStride, kWide / 2>(in_plane, out_row, idx_row, tap, tap_offset, s, oh, kh_lo,
                                      kh_hi, lo, hi);
  else if (hi - lo >= 4)
    max_chunks<T, kStride, 4>(in_plane, out_row, idx_row, tap, tap_offset, s, oh, kh_lo, kh_hi, lo,
                              hi);
}

// Output row oh: the interior by max_interior, the few border outputs (windows cut by the
// left or right edge) one at a time over their valid taps, in the same (kh, kw) order.
template <typename T>
CNNOPS_SIMD_CLONES void max_pool_row(const T* in_plane, T* out_row, int64_t* idx_row,
                                     int32_t* tap, const int64_t* tap_offset, const ColumnTaps& cols,
                                     const Pool2dShape& s, int64_t oh) {
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, &kh_lo, &kh_hi);
  const int64_t lo = cols.lo_all, hi = cols.hi_all;
  const bool chunked = hi - lo >= 4;  // else the interior goes one at a time too
  if (s.stride_w == 1) max_interior<T, 1>(in_plane, out_row, idx_row, tap, tap_offset, s, oh, kh_lo, kh_hi, lo, hi);
  else if (s.stride_w == 2) max_interior<T, 2>(in_plane, out_row, idx_row, tap, tap_offset, s, oh, kh_lo, kh_hi, lo, hi);
  else max_interior<T, 0>(in_plane, out_row, idx_row, tap, tap_offset, s, oh, kh_lo, kh_hi, lo, hi);
  const int64_t row_start = (oh * s.stride_h - s.pad_h) * s.W - s.pad_w;
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    if (chunked && ow == lo) ow = hi;  // skip the interior
    if (ow >= s.OW) break;
    T best = -std::numeric_limits<T>::infinity();
    int32_t best_tap = static_cast<int32_t>(kh_lo * s.kernel_w + cols.kw_lo[ow]);
    for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
      const T* in_row = in_plane + (oh * s.stride_h - s.pad_h + kh * s.dil_h) * s.W;
      for (int64_t kw = cols.kw_lo[ow]; kw < cols.kw_hi[ow]; ++kw)
        take_max(in_row[ow * s.stride_w - s.pad_w + kw * s.dil_w],
                 static_cast<int32_t>(kh * s.kernel_w + kw), best, best_tap);
    }
    out_row[ow] = best;
    idx_row[ow] = row_start + ow * s.stride_w + tap_offset[best_tap];
  }
}


// ---- AVX-512 row kernel (float32 and float64, stride_w 1 or 2) ------------------------------
// The vector runs along the output row: L = 16 floats / 8 doubles outputs of one row per
// register. For each tap (kh, kw) the L inputs under it are one masked load (stride 1) or two
// masked loads and one vpermt2ps/pd that keeps the even elements (stride 2). The load masks
// (per call: the same for every row) leave out columns outside [0, W) and the lanes read
// -inf there, which never wins (it is neither greater nor NaN), so border outputs need no
// scalar path and no padded copy. The running maximum and the winning flat index h * W + w
// (int32 lanes, widened to int64 at the store) stay in registers over every tap and are
// written once. The rule is PyTorch's scan: in (kh, kw) order a value replaces the running
// maximum when it is greater or NaN, and the index starts at the window's first in-bounds
// element (an all -inf window reports it). Without indices the update is one masked vmaxps
// (v > best ? v : best; a NaN best stays; a NaN v is taken by the mask of ordered lanes).
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CNNOPS_POOL_X86 1
// GCC 12's own intrinsic headers (_mm512_castsi512_si256 and friends, via _mm256_undefined_*)
// trip -Wmaybe-uninitialized where they are inlined; nothing here is uninitialised.
#pragma GCC diagnostic push
#pragma GCC diagnostic ignored "-Wmaybe-uninitialized"
#define CNNOPS_TARGET_AVX512 __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define CNNOPS_AVX512_INLINE CNNOPS_TARGET_AVX512 inline __attribute__((always_inline))
#define CNNOPS_AVX512_INLINE_LAMBDA __attribute__((always_inline, target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))

template <typename T>
struct Avx512;

template <>
struct Avx512<float> {
  static constexpr int kLanes = 16;
  using V = __m512;
  using IV = __m512i;  // int32 lanes
  using M = __mmask16;
  static CNNOPS_AVX512_INLINE V set1(float x) { return _mm512_set1_ps(x); }
  static CNNOPS_AVX512_INLINE V load(V src, uint32_t m, const float* p) {
    return _mm512_mask_loadu_ps(src, static_cast<M>(m), p);
  }
  static CNNOPS_AVX512_INLINE V even(V lo, V hi) {
    const IV idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, idx, hi);
  }
  static CNNOPS_AVX512_INLINE M take(V v, V best) {
    return _mm512_cmp_ps_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_ps_mask(v, v, _CMP_UNORD_Q);
  }
  static CNNOPS_AVX512_INLINE V mov(V a, M m, V b) { return _mm512_mask_mov_ps(a, m, b); }
  static CNNOPS_AVX512_INLINE V max_or_nan(V v, V best) {
    return _mm512_mask_max_ps(v, _mm512_cmp_ps_mask(v, v, _CMP_ORD_Q), v, best);
  }
  static CNNOPS_AVX512_INLINE IV iset1(int32_t x) { return _mm512_set1_epi32(x); }
  static CNNOPS_AVX512_INLINE IV iload(const int32_t* p) { return _mm512_loadu_si512(p); }
  static CNNOPS_AVX512_INLINE IV iadd(IV a, IV b) { return _mm512_add_epi32(a, b); }
  static CNNOPS_AVX512_INLINE IV imov(IV a, M m, IV b) { return _mm512_mask_mov_epi32(a, m, b); }
  static CNNOPS_AVX512_INLINE void store(float* p, uint32_t m, V v) {
    _mm512_mask_storeu_ps(p, static_cast<M>(m), v);
  }
  static CNNOPS_AVX512_INLINE void store_index(int64_t* p, uint32_t m, IV v) {
    _mm512_mask_storeu_epi64(p, static_cast<__mmask8>(m),
                             _mm512_maskz_cvtepi32_epi64(0xff, _mm512_castsi512_si256(v)));
    _mm512_mask_storeu_epi64(p + 8, static_cast<__mmask8>(m >> 8),
                             _mm512_maskz_cvtepi32_epi64(0xff, _mm512_extracti64x4_epi64(v, 1)));
  }
};

template <>
struct Avx512<double> {
  static constexpr int kLanes = 8;
  using V = __m512d;
  using IV = __m256i;  // int32 lanes
  using M = __mmask8;
  static CNNOPS_AVX512_INLINE V set1(double x) { return _mm512_set1_pd(x); }
  static CNNOPS_AVX512_INLINE V load(V src, uint32_t m, const double* p) {
    return _mm512_mask_loadu_pd(src, static_cast<M>(m), p);
  }
  static CNNOPS_AVX512_INLINE V even(V lo, V hi) {
    const __m512i idx = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    return _mm512_permutex2var_pd(lo, idx, hi);
  }
  static CNNOPS_AVX512_INLINE M take(V v, V best) {
    return _mm512_cmp_pd_mask(v, best, _CMP_GT_OQ) | _mm512_cmp_pd_mask(v, v, _CMP_UNORD_Q);
  }
  static CNNOPS_AVX512_INLINE V mov(V a, M m, V b) { return _mm512_mask_mov_pd(a, m, b); }
  static CNNOPS_AVX512_INLINE V max_or_nan(V v, V best) {
    return _mm512_mask_max_pd(v, _mm512_cmp_pd_mask(v, v, _CMP_ORD_Q), v, best);
  }
  static CNNOPS_AVX512_INLINE IV iset1(int32_t x) { return _mm256_set1_epi32(x); }
  static CNNOPS_AVX512_INLINE IV iload(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static CNNOPS_AVX512_INLINE IV iadd(IV a, IV b) { return _mm256_add_epi32(a, b); }
  static CNNOPS_AVX512_INLINE IV imov(IV a, M m, IV b) { return _mm256_mask_mov_epi32(a, m, b); }
  static CNNOPS_AVX512_INLINE void store(double* p, uint32_t m, V v) {
    _mm512_mask_storeu_pd(p, static_cast<M>(m), v);
  }
  static CNNOPS_AVX512_INLINE void store_index(int64_t* p, uint32_t m, IV v) {
    _mm512_mask_storeu_epi64(p, static_cast<__mmask8>(m), _mm512_maskz_cvtepi32_epi64(0xff, v));
  }
};

// Per call (the same for every row): the chunks of L outputs that cover a row (starts ow0;
// the last one shifted left to end at OW when OW >= L, else one chunk stored under a mask),
// and per chunk and tap kw the load masks of the columns inside [0, W); per lane the column
// of the window's first in-bounds tap and the window's start column ow * stride - pad.
struct RowPlan {
  int lanes = 0;
  std::vector<int64_t> ow0;
  std::vector<uint32_t> store_mask;
  std::vector<uint32_t> load_mask;  // [chunk][kw][2]: (lo, hi) of stride 2; stride 1 uses lo
  std::vector<int32_t> first_col, start_col;  // [chunk][lane]
  // AVX2: the masks as vectors, [..][lane] of 0 / -1 (int32 lanes for float, int64 for double)
  std::vector<int32_t> lane_load32, lane_store32;
  std::vector<int64_t> lane_load64, lane_store64;
  template <typename MI>
  const MI* lane_load() const {
    if constexpr (sizeof(MI) == 4) return lane_load32.data();
    else return lane_load64.data();
  }
  template <typename MI>
  const MI* lane_store() const {
    if constexpr (sizeof(MI) == 4) return lane_store32.data();
    else return lane_store64.data();
  }
};

// Bits i in [0, n) of a mask whose lane i reads column c + i, set where 0 <= c + i < W.
inline uint32_t column_mask(int64_t c, int64_t W, int n) {
  uint32_t m = 0;
  for (int i = 0; i < n; ++i)
    if (c + i >= 0 && c + i < W) m |= uint32_t(1) << i;
  return m;
}

inline void plan_rows(RowPlan& p, const Pool2dShape& s, int lanes) {
  const int L = lanes;
  p.lanes = L;
  p.ow0.clear();
  if (s.OW >= L) {
    for (int64_t ow = 0; ow < s.OW; ow += L) p.ow0.push_back(std::min(ow, s.OW - L));
  } else {
    p.ow0.push_back(0);
  }
  const int64_t chunks = static_cast<int64_t>(p.ow0.size());
  const uint32_t full = L == 32 ? ~uint32_t(0) : (uint32_t(1) << L) - 1;
  p.store_mask.assign(chunks, full);
  if (s.OW < L) p.store_mask[0] = (uint32_t(1) << s.OW) - 1;
  p.load_mask.assign(chunks * s.kernel_w * 2, 0);
  p.first_col.assign(chunks * L, 0);
  p.start_col.assign(chunks * L, 0);
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t ow0 = p.ow0[c];
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      const int64_t col = ow0 * s.stride_w - s.pad_w + kw * s.dil_w;
      if (s.stride_w == 1) {
        p.load_mask[(c * s.kernel_w + kw) * 2] = column_mask(col, s.W, L);
      } else {  // stride 2: lanes of the pair (lo, hi) read columns col .. col + 2L - 1; the
                // last (odd) one is never used
        p.load_mask[(c * s.kernel_w + kw) * 2] = column_mask(col, s.W, L);
        p.load_mask[(c * s.kernel_w + kw) * 2 + 1] = column_mask(col + L, s.W, L - 1);
      }
    }
    for (int j = 0; j < L; ++j) {
      const int64_t ow = std::min(ow0 + j, s.OW - 1);  // lanes past OW: any valid window
      int64_t kw_lo, kw_hi;
      valid_taps(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, &kw_lo, &kw_hi);
      p.start_col[c * L + j] = static_cast<int32_t>((ow0 + j) * s.stride_w - s.pad_w);
      p.first_col[c * L + j] = static_cast<int32_t>(ow * s.stride_w - s.pad_w + kw_lo * s.dil_w);
    }
  }
}

// Output row oh of one plane. kS: stride_w (1 or 2); kK: kernel_w when known at compile time
// (2 or 3), else 0; kIdx: also the indices.
template <typename T, int kS, int kK, bool kIdx>
CNNOPS_TARGET_AVX512 void max_row_avx512(const T* in_plane, T* out_row, int64_t* idx_row,
                                         const RowPlan& p, const Pool2dShape& s, int64_t oh) {
  using A = Avx512<T>;
  constexpr int L = A::kLanes;
  const int64_t KW = kK ? kK : s.kernel_w;
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, &kh_lo, &kh_hi);
  const int64_t ih0 = oh * s.stride_h - s.pad_h;
  const int64_t W = s.W, dw = s.dil_w;
  const typename A::V ninf = A::set1(-std::numeric_limits<T>::infinity());
  const typename A::IV step = A::iset1(static_cast<int32_t>(dw));
  const int64_t chunks = static_cast<int64_t>(p.ow0.size());
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t ow0 = p.ow0[c];
    const uint32_t* mask = p.load_mask.data() + c * KW * 2;
    typename A::V best = ninf;
    typename A::IV best_idx{}, start{};
    if (kIdx) {
      best_idx = A::iadd(A::iload(p.first_col.data() + c * L),
                         A::iset1(static_cast<int32_t>((ih0 + kh_lo * s.dil_h) * W)));
      start = A::iload(p.start_col.data() + c * L);
    }
    for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
      const int64_t ih = ih0 + kh * s.dil_h;
      const T* row = in_plane + ih * W + ow0 * kS - s.pad_w;
      typename A::IV cand{};
      if (kIdx) cand = A::iadd(start, A::iset1(static_cast<int32_t>(ih * W)));
#pragma GCC unroll 4
      for (int64_t kw = 0; kw < KW; ++kw) {
        const T* q = row + kw * dw;
        typename A::V v;
        if (kS == 1) v = A::load(ninf, mask[2 * kw], q);
        else v = A::even(A::load(ninf, mask[2 * kw], q), A::load(ninf, mask[2 * kw + 1], q + L));
        if (kIdx) {
          const auto take = A::take(v, best);
          best = A::mov(best, take, v);
          best_idx = A::imov(best_idx, take, cand);
          cand = A::iadd(cand, step);
        } else {
          best = A::max_or_nan(v, best);
        }
      }
    }
    A::store(out_row + ow0, p.store_mask[c], best);
    if (kIdx) A::store_index(idx_row + ow0, p.store_mask[c], best_idx);
  }
}


// Separable variant for kernel_h == 3, stride_h == 1, dil_h == 1 (GoogLeNet's 3x3/1p1): every
// input row is read by 3 output rows, so its row result (max and argmax over the kw taps of
// each output's window in that row, torch's rule within the row) is computed once, and an
// output is the rule applied again to its (up to) 3 row results in row order. That is torch's
// (kh, kw) scan exactly: the first strict maximum is the first row's first maximum; the last
// NaN is the last row-with-NaN's last NaN; an all -inf window keeps its first row's first
// element. One column chunk at a time walks down the plane with the last row results in
// registers. Per output chunk: KW taps + 2 merges instead of 3 * KW taps.
template <typename T, int kS, int kK, bool kIdx>
CNNOPS_TARGET_AVX512 void max_plane_avx512_rows3(const T* in_plane, T* out_plane,
                                                 int64_t* idx_plane, const RowPlan& p,
                                                 const Pool2dShape& s) {
  using A = Avx512<T>;
  using V = typename A::V;
  using IV = typename A::IV;
  constexpr int L = A::kLanes;
  const int64_t KW = kK ? kK : s.kernel_w;
  const int64_t W = s.W, H = s.H, dw = s.dil_w;
  const V ninf = A::set1(-std::numeric_limits<T>::infinity());
  const IV step = A::iset1(static_cast<int32_t>(dw));
  const int64_t chunks = static_cast<int64_t>(p.ow0.size());
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t ow0 = p.ow0[c];
    const uint32_t* mask = p.load_mask.data() + c * KW * 2;
    IV first{}, start{};
    if (kIdx) {
      first = A::iload(p.first_col.data() + c * L);
      start = A::iload(p.start_col.data() + c * L);
    }
    // row result of input row ih (0 <= ih < H)
    auto row_result = [&](int64_t ih, V& best, IV& best_idx) CNNOPS_AVX512_INLINE_LAMBDA {
      const T* row = in_plane + ih * W + ow0 * kS - s.pad_w;
      best = ninf;
      IV cand{};
      if (kIdx) {
        const IV base = A::iset1(static_cast<int32_t>(ih * W));
        best_idx = A::iadd(first, base);
        cand = A::iadd(start, base);
      }
#pragma GCC unroll 4
      for (int64_t kw = 0; kw < KW; ++kw) {
        const T* q = row + kw * dw;
        V v;
        if (kS == 1) v = A::load(ninf, mask[2 * kw], q);
        else v = A::even(A::load(ninf, mask[2 * kw], q), A::load(ninf, mask[2 * kw + 1], q + L));
        if (kIdx) {
          const auto take = A::take(v, best);
          best = A::mov(best, take, v);
          best_idx = A::imov(best_idx, take, cand);
          cand = A::iadd(cand, step);
        } else {
          best = A::max_or_nan(v, best);
        }
      }
    };
    // the window of output oh is rows oh - pad_h .. oh - pad_h + 2; a, b, c hold them
    V va = ninf, vb = ninf, vc = ninf;
    IV ia{}, ib{}, ic{};
    int64_t ih = -s.pad_h;
    if (ih >= 0 && ih < H) row_result(ih, va, ia);
    if (ih + 1 >= 0 && ih + 1 < H) row_result(ih + 1, vb, ib);
    for (int64_t oh = 0; oh < s.OH; ++oh, ++ih) {
      const bool ok_a = ih >= 0 && ih < H, ok_b = ih + 1 >= 0 && ih + 1 < H,
                 ok_c = ih + 2 >= 0 && ih + 2 < H;
      if (ok_c) row_result(ih + 2, vc, ic);
      V best;
      IV best_idx{};
      if (ok_a && ok_b && ok_c) {  // the interior: merge b and c into a
        best = va;
        if (kIdx) {
          best_idx = ia;
          auto take = A::take(vb, best);
          best = A::mov(best, take, vb);
          best_idx = A::imov(best_idx, take, ib);
          take = A::take(vc, best);
          best = A::mov(best, take, vc);
          best_idx = A::imov(best_idx, take, ic);
        } else {
          best = A::max_or_nan(vc, A::max_or_nan(vb, best));
        }
      } else {  // the top and bottom rows: the valid ones in order (at least one)
        bool have = false;
        const V* vs[3] = {&va, &vb, &vc};
        const IV* is[3] = {&ia, &ib, &ic};
        const bool ok[3] = {ok_a, ok_b, ok_c};
        best = ninf;
        for (int r = 0; r < 3; ++r) {
          if (!ok[r]) continue;
          if (!have) {
            best = *vs[r];
            if (kIdx) best_idx = *is[r];
            have = true;
          } else if (kIdx) {
            const auto take = A::take(*vs[r], best);
            best = A::mov(best, take, *vs[r]);
            best_idx = A::imov(best_idx, take, *is[r]);
          } else {
            best = A::max_or_nan(*vs[r], best);
          }
        }
      }
      A::store(out_plane + oh * s.OW + ow0, p.store_mask[c], best);
      if (kIdx) A::store_index(idx_plane + oh * s.OW + ow0, p.store_mask[c], best_idx);
      va = vb, ia = ib, vb = vc, ib = ic;
    }
  }
}

using PlaneFn = void (*)(const void*, void*, int64_t*, const RowPlan&, const Pool2dShape&);

template <typename T, int kS, int kK, bool kIdx>
void max_plane_rows3_erased(const void* in_plane, void* out_plane, int64_t* idx_plane,
                            const RowPlan& p, const Pool2dShape& s) {
  max_plane_avx512_rows3<T, kS, kK, kIdx>(static_cast<const T*>(in_plane),
                                          static_cast<T*>(out_plane), idx_plane, p, s);
}

// The separable plane kernel when it applies (AVX-512 active, kernel_h 3, stride_h 1,
// dil_h 1, stride_w 1 or 2, kernel_w 3, int32 indices), else nullptr.
template <typename T>
PlaneFn rows3_plane_kernel(const Pool2dShape& s, bool with_indices) {
  if (cpu_isa_active() != CpuIsa::kAvx512 || s.kernel_h != 3 || s.stride_h != 1 ||
      s.dil_h != 1 || s.kernel_w != 3 || (s.stride_w != 1 && s.stride_w != 2))
    return nullptr;
  if (s.stride_w == 1)
    return with_indices ? &max_plane_rows3_erased<T, 1, 3, true> : &max_plane_rows3_erased<T, 1, 3, false>;
  return with_indices ? &max_plane_rows3_erased<T, 2, 3, true> : &max_plane_rows3_erased<T, 2, 3, false>;
}

using RowFn = void (*)(const void*, void*, int64_t*, const RowPlan&, const Pool2dShape&, int64_t);

// ---- AVX2 row kernel (the same scheme as the AVX-512 one, 8 floats / 4 doubles) ------------
// Masked loads are vmaskmovps/pd (0 in masked lanes, no fault) blended with -inf; the stride-2
// taps are deinterleaved by vshufps + vpermpd (float) or vunpcklpd + vpermpd (double); the
// masks are vectors (RowPlan::lane_mask*). float indices are int32 lanes widened at the store,
// double indices int64 lanes.
#define CNNOPS_TARGET_AVX2 __attribute__((target("avx2,fma")))
#define CNNOPS_AVX2_INLINE CNNOPS_TARGET_AVX2 inline __attribute__((always_inline))

template <typename T>
struct Avx2;

template <>
struct Avx2<float> {
  static constexpr int kLanes = 8;
  using V = __m256;
  using IV = __m256i;
  using MI = int32_t;  // lane mask element
  static CNNOPS_AVX2_INLINE V set1(float x) { return _mm256_set1_ps(x); }
  static CNNOPS_AVX2_INLINE IV mask(const int32_t* m) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m));
  }
  static CNNOPS_AVX2_INLINE V load(V ninf, IV m, const float* p) {
    return _mm256_blendv_ps(ninf, _mm256_maskload_ps(p, m), _mm256_castsi256_ps(m));
  }
  static CNNOPS_AVX2_INLINE V even(V lo, V hi) {
    const V sh = _mm256_shuffle_ps(lo, hi, _MM_SHUFFLE(2, 0, 2, 0));
    return _mm256_castpd_ps(_mm256_permute4x64_pd(_mm256_castps_pd(sh), _MM_SHUFFLE(3, 1, 2, 0)));
  }
  static CNNOPS_AVX2_INLINE V take(V v, V best) {
    return _mm256_or_ps(_mm256_cmp_ps(v, best, _CMP_GT_OQ), _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  static CNNOPS_AVX2_INLINE V sel(V a, V b, V m) { return _mm256_blendv_ps(a, b, m); }
  static CNNOPS_AVX2_INLINE IV isel(IV a, IV b, V m) {
    return _mm256_castps_si256(
        _mm256_blendv_ps(_mm256_castsi256_ps(a), _mm256_castsi256_ps(b), m));
  }
  static CNNOPS_AVX2_INLINE V max_or_nan(V v, V best) {
    return _mm256_blendv_ps(_mm256_max_ps(v, best), v, _mm256_cmp_ps(v, v, _CMP_UNORD_Q));
  }
  static CNNOPS_AVX2_INLINE IV iset1(int64_t x) { return _mm256_set1_epi32(static_cast<int32_t>(x)); }
  static CNNOPS_AVX2_INLINE IV iload(const int32_t* p) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(p));
  }
  static CNNOPS_AVX2_INLINE IV iadd(IV a, IV b) { return _mm256_add_epi32(a, b); }
  static CNNOPS_AVX2_INLINE void store(float* p, IV m, V v) { _mm256_maskstore_ps(p, m, v); }
  static CNNOPS_AVX2_INLINE void store_index(int64_t* p, IV m, IV v) {
    const __m256i m_lo = _mm256_cvtepi32_epi64(_mm256_castsi256_si128(m));
    const __m256i m_hi = _mm256_cvtepi32_epi64(_mm256_extracti128_si256(m, 1));
    _mm256_maskstore_epi64(reinterpret_cast<long long*>(p), m_lo,
                           _mm256_cvtepi32_epi64(_mm256_castsi256_si128(v)));
    _mm256_maskstore_epi64(reinterpret_cast<long long*>(p + 4), m_hi,
                           _mm256_cvtepi32_epi64(_mm256_extracti128_si256(v, 1)));
  }
};

template <>
struct Avx2<double> {
  static constexpr int kLanes = 4;
  using V = __m256d;
  using IV = __m256i;  // int64 lanes
  using MI = int64_t;
  static CNNOPS_AVX2_INLINE V set1(double x) { return _mm256_set1_pd(x); }
  static CNNOPS_AVX2_INLINE IV mask(const int64_t* m) {
    return _mm256_loadu_si256(reinterpret_cast<const __m256i*>(m));
  }
  static CNNOPS_AVX2_INLINE V load(V ninf, IV m, const double* p) {
    return _mm256_blendv_pd(ninf, _mm256_maskload_pd(p, m), _mm256_castsi256_pd(m));
  }
  static CNNOPS_AVX2_INLINE V even(V lo, V hi) {
    return _mm256_permute4x64_pd(_mm256_unpacklo_pd(lo, hi), _MM_SHUFFLE(3, 1, 2, 0));
  }
  static CNNOPS_AVX2_INLINE V take(V v, V best) {
    return _mm256_or_pd(_mm256_cmp_pd(v, best, _CMP_GT_OQ), _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
  }
  static CNNOPS_AVX2_INLINE V sel(V a, V b, V m) { return _mm256_blendv_pd(a, b, m); }
  static CNNOPS_AVX2_INLINE IV isel(IV a, IV b, V m) {
    return _mm256_castpd_si256(
        _mm256_blendv_pd(_mm256_castsi256_pd(a), _mm256_castsi256_pd(b), m));
  }
  static CNNOPS_AVX2_INLINE V max_or_nan(V v, V best) {
    return _mm256_blendv_pd(_mm256_max_pd(v, best), v, _mm256_cmp_pd(v, v, _CMP_UNORD_Q));
  }
  static CNNOPS_AVX2_INLINE IV iset1(int64_t x) { return _mm256_set1_epi64x(x); }
  static CNNOPS_AVX2_INLINE IV iload(const int32_t* p) {
    return _mm256_cvtepi32_epi64(_mm_loadu_si128(reinterpret_cast<const __m128i*>(p)));
  }
  static CNNOPS_AVX2_INLINE IV iadd(IV a, IV b) { return _mm256_add_epi64(a, b); }
  static CNNOPS_AVX2_INLINE void store(double* p, IV m, V v) { _mm256_maskstore_pd(p, m, v); }
  static CNNOPS_AVX2_INLINE void store_index(int64_t* p, IV m, IV v) {
    _mm256_maskstore_epi64(reinterpret_cast<long long*>(p), m, v);
  }
};

// The vector masks of a plan's bit masks (AVX2 has no mask registers).
template <typename MI>
void expand_masks(const RowPlan& p, std::vector<MI>& load, std::vector<MI>& store) {
  const int L = p.lanes;
  load.assign(p.load_mask.size() * L, 0);
  for (size_t i = 0; i < p.load_mask.size(); ++i)
    for (int j = 0; j < L; ++j) load[i * L + j] = (p.load_mask[i] >> j) & 1 ? MI(-1) : MI(0);
  store.assign(p.store_mask.size() * L, 0);
  for (size_t i = 0; i < p.store_mask.size(); ++i)
    for (int j = 0; j < L; ++j) store[i * L + j] = (p.store_mask[i] >> j) & 1 ? MI(-1) : MI(0);
}

template <typename T, int kS, int kK, bool kIdx>
CNNOPS_TARGET_AVX2 void max_row_avx2(const T* in_plane, T* out_row, int64_t* idx_row,
                                     const RowPlan& p, const Pool2dShape& s, int64_t oh) {
  using A = Avx2<T>;
  using MI = typename A::MI;
  constexpr int L = A::kLanes;
  const MI* lane_load = p.template lane_load<MI>();
  const MI* lane_store = p.template lane_store<MI>();
  const int64_t KW = kK ? kK : s.kernel_w;
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, &kh_lo, &kh_hi);
  const int64_t ih0 = oh * s.stride_h - s.pad_h;
  const int64_t W = s.W, dw = s.dil_w;
  const typename A::V ninf = A::set1(-std::numeric_limits<T>::infinity());
  const typename A::IV step = A::iset1(dw);
  const int64_t chunks = static_cast<int64_t>(p.ow0.size());
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t ow0 = p.ow0[c];
    const MI* mask = lane_load + c * KW * 2 * L;
    typename A::V best = ninf;
    typename A::IV best_idx{}, start{};
    if (kIdx) {
      best_idx = A::iadd(A::iload(p.first_col.data() + c * L),
                         A::iset1((ih0 + kh_lo * s.dil_h) * W));
      start = A::iload(p.start_col.data() + c * L);
    }
    for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
      const int64_t ih = ih0 + kh * s.dil_h;
      const T* row = in_plane + ih * W + ow0 * kS - s.pad_w;
      typename A::IV cand{};
      if (kIdx) cand = A::iadd(start, A::iset1(ih * W));
#pragma GCC unroll 4
      for (int64_t kw = 0; kw < KW; ++kw) {
        const T* q = row + kw * dw;
        typename A::V v;
        if (kS == 1) v = A::load(ninf, A::mask(mask + 2 * kw * L), q);
        else v = A::even(A::load(ninf, A::mask(mask + 2 * kw * L), q),
                         A::load(ninf, A::mask(mask + (2 * kw + 1) * L), q + L));
        if (kIdx) {
          const typename A::V take = A::take(v, best);
          best = A::sel(best, v, take);
          best_idx = A::isel(best_idx, cand, take);
          cand = A::iadd(cand, step);
        } else {
          best = A::max_or_nan(v, best);
        }
      }
    }
    const typename A::IV smask = A::mask(lane_store + c * L);
    A::store(out_row + ow0, smask, best);
    if (kIdx) A::store_index(idx_row + ow0, smask, best_idx);
  }
}

template <typename T, int kS, int kK, bool kIdx>
void max_row_avx2_erased(const void* in_plane, void* out_row, int64_t* idx_row,
                         const RowPlan& p, const Pool2dShape& s, int64_t oh) {
  max_row_avx2<T, kS, kK, kIdx>(static_cast<const T*>(in_plane), static_cast<T*>(out_row),
                                idx_row, p, s, oh);
}


template <typename T, int kS, int kK, bool kIdx>
void max_row_avx512_erased(const void* in_plane, void* out_row, int64_t* idx_row,
                           const RowPlan& p, const Pool2dShape& s, int64_t oh) {
  max_row_avx512<T, kS, kK, kIdx>(static_cast<const T*>(in_plane), static_cast<T*>(out_row),
                                  idx_row, p, s, oh);
}

template <typename T, int kS, bool kIdx>
RowFn pick_kernel_w(int64_t kw, bool avx512) {
  if (avx512) {
    if (kw == 2) return &max_row_avx512_erased<T, kS, 2, kIdx>;
    if (kw == 3) return &max_row_avx512_erased<T, kS, 3, kIdx>;
    return &max_row_avx512_erased<T, kS, 0, kIdx>;
  }
  if (kw == 2) return &max_row_avx2_erased<T, kS, 2, kIdx>;
  if (kw == 3) return &max_row_avx2_erased<T, kS, 3, kIdx>;
  return &max_row_avx2_erased<T, kS, 0, kIdx>;
}

// The vector row kernel for this call (AVX-512 or AVX2, as cpu_isa_active() says), with its
// lanes per chunk in *lanes; nullptr when none applies (baseline active, stride_w > 2, or
// flat indices past int32).
template <typename T>
RowFn vector_row_kernel(const Pool2dShape& s, bool with_indices, int* lanes) {
  const CpuIsa isa = cpu_isa_active();
  if (isa == CpuIsa::kBaseline) return nullptr;
  const bool avx512 = isa == CpuIsa::kAvx512;
  *lanes = avx512 ? Avx512<T>::kLanes : Avx2<T>::kLanes;
  if (s.stride_w != 1 && s.stride_w != 2) return nullptr;
  // int32 lanes hold h * W + w and the candidates' columns, down to -pad and up to
  // (H + pad + dilated kernel) * W
  if ((s.H + 2 * s.pad_h + s.kernel_h * s.dil_h + 2) * (s.W + 2 * s.pad_w + s.kernel_w * s.dil_w + 64) >
      std::numeric_limits<int32_t>::max())
    return nullptr;
  const int64_t kw = s.kernel_w;
  if (s.stride_w == 1)
    return with_indices ? pick_kernel_w<T, 1, true>(kw, avx512) : pick_kernel_w<T, 1, false>(kw, avx512);
  return with_indices ? pick_kernel_w<T, 2, true>(kw, avx512) : pick_kernel_w<T, 2, false>(kw, avx512);
}
#pragma GCC diagnostic pop
#endif  // CNNOPS_POOL_X86

// ---- channels-last (NHWC) forward --------------------------------------------------------
// The vector runs over channels: for one output pixel, every channel's running max and index
// over the window's in-bounds taps (the window is clipped, so there is no -inf padding), in
// PyTorch's (kh, kw) order and rules; the index of a tap is the same for every channel.
// Whole output rows per call (OpenMP over the N * OH rows).

// The portable version (compiled per ISA by target_clones): best / idx of C channels in the
// output row's own memory (best) and an int32 scratch row (idx), updated tap by tap.
template <typename T>
CNNOPS_SIMD_CLONES void max_row_nhwc(const T* __restrict__ in_image, T* __restrict__ out_row,
                                     int64_t* __restrict__ idx_row, int32_t* __restrict__ tap,
                                     const Pool2dShape& s, int64_t C, int64_t oh) {
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, &kh_lo, &kh_hi);
  const int64_t ih0 = oh * s.stride_h - s.pad_h;
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    int64_t kw_lo, kw_hi;
    valid_taps(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, &kw_lo, &kw_hi);
    const int64_t iw0 = ow * s.stride_w - s.pad_w;
    T* __restrict__ best = out_row + ow * C;
    const int32_t first = static_cast<int32_t>((ih0 + kh_lo * s.dil_h) * s.W + iw0 + kw_lo * s.dil_w);
    for (int64_t c = 0; c < C; ++c) {
      best[c] = -std::numeric_limits<T>::infinity();
      tap[c] = first;
    }
    for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
      const int64_t ih = ih0 + kh * s.dil_h;
      for (int64_t kw = kw_lo; kw < kw_hi; ++kw) {
        const int64_t iw = iw0 + kw * s.dil_w;
        const T* __restrict__ v = in_image + (ih * s.W + iw) * C;
        const int32_t this_tap = static_cast<int32_t>(ih * s.W + iw);
        for (int64_t c = 0; c < C; ++c) {
          const bool take = v[c] > best[c] || v[c] != v[c];  // v != v: NaN
          best[c] = take ? v[c] : best[c];
          tap[c] = take ? this_tap : tap[c];
        }
      }
    }
    if (idx_row != nullptr)
      for (int64_t c = 0; c < C; ++c) idx_row[ow * C + c] = tap[c];
  }
}

#ifdef CNNOPS_POOL_X86
// AVX-512: up to 4 vectors of channels (64 floats / 32 doubles) held in registers over the
// window's taps, then stored once; the last group's vectors are masked.
template <typename T, bool kIdx>
CNNOPS_TARGET_AVX512 void max_row_nhwc_avx512(const T* in_image, T* out_row, int64_t* idx_row,
                                              const Pool2dShape& s, int64_t C, int64_t oh) {
  using A = Avx512<T>;
  constexpr int L = A::kLanes, U = 4;
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, &kh_lo, &kh_hi);
  const int64_t ih0 = oh * s.stride_h - s.pad_h;
  const typename A::V ninf = A::set1(-std::numeric_limits<T>::infinity());
  const uint32_t full = (uint32_t(1) << L) - 1;
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    int64_t kw_lo, kw_hi;
    valid_taps(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, &kw_lo, &kw_hi);
    const int64_t iw0 = ow * s.stride_w - s.pad_w;
    const int32_t first =
        static_cast<int32_t>((ih0 + kh_lo * s.dil_h) * s.W + iw0 + kw_lo * s.dil_w);
    for (int64_t c0 = 0; c0 < C; c0 += U * L) {
      uint32_t mask[U];
      typename A::V best[U];
      typename A::IV bidx[U];
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        const int64_t left = C - c0 - u * L;
        mask[u] = left >= L ? full : left > 0 ? (uint32_t(1) << left) - 1 : 0;
        best[u] = ninf;
        if (kIdx) bidx[u] = A::iset1(first);
      }
      for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
        const int64_t ih = ih0 + kh * s.dil_h;
        for (int64_t kw = kw_lo; kw < kw_hi; ++kw) {
          const int64_t iw = iw0 + kw * s.dil_w;
          const T* v = in_image + (ih * s.W + iw) * C + c0;
          typename A::IV cand{};
          if (kIdx) cand = A::iset1(static_cast<int32_t>(ih * s.W + iw));
#pragma GCC unroll 4
          for (int u = 0; u < U; ++u) {
            const typename A::V x = A::load(ninf, mask[u], v + u * L);
            if (kIdx) {
              const auto take = A::take(x, best[u]);
              best[u] = A::mov(best[u], take, x);
              bidx[u] = A::imov(bidx[u], take, cand);
            } else {
              best[u] = A::max_or_nan(x, best[u]);
            }
          }
        }
      }
#pragma GCC unroll 4
      for (int u = 0; u < U; ++u) {
        A::store(out_row + ow * C + c0 + u * L, mask[u], best[u]);
        if (kIdx) A::store_index(idx_row + ow * C + c0 + u * L, mask[u], bidx[u]);
      }
    }
  }
}
#endif

}  // namespace

// Channels-last: input (N, H, W, C) dense, output and indices (N, OH, OW, C); indices ==
// nullptr for the values only. s.planes is N * C.
template <typename T>
void max_pool2d_forward_nhwc_cpu(const T* input, T* output, int64_t* indices, int64_t C,
                                 const Pool2dShape& s) {
  const int64_t N = C > 0 ? s.planes / C : 0;
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
  const int64_t in_image = s.H * s.W * C, out_row = s.OW * C;
  const bool with_indices = indices != nullptr;
#ifdef CNNOPS_POOL_X86
  if (cpu_isa_active() == CpuIsa::kAvx512 && s.H * s.W < std::numeric_limits<int32_t>::max()) {
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelWork)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        T* out = output + (n * s.OH + oh) * out_row;
        if (with_indices)
          max_row_nhwc_avx512<T, true>(input + n * in_image, out,
                                       indices + (n * s.OH + oh) * out_row, s, C, oh);
        else
          max_row_nhwc_avx512<T, false>(input + n * in_image, out, nullptr, s, C, oh);
      }
    return;
  }
#endif
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<int32_t> tap(C);
#pragma omp for collapse(2) schedule(static)
    for (int64_t n = 0; n < N; ++n)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        max_row_nhwc(input + n * in_image, output + (n * s.OH + oh) * out_row,
                     with_indices ? indices + (n * s.OH + oh) * out_row : nullptr, tap.data(),
                     s, C, oh);
  }
}

namespace {
}  // namespace

// indices == nullptr: the values only (no index is computed or written).
template <typename T>
void max_pool2d_forward_cpu(const T* input, T* output, int64_t* indices, const Pool2dShape& s) {
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
  const bool with_indices = indices != nullptr;
#ifdef CNNOPS_POOL_X86
  int lanes = 0;
  if (const RowFn row = vector_row_kernel<T>(s, with_indices, &lanes)) {
    // the calling thread's plan, reused across calls; the team reads it through this reference
    // (inside the parallel region the name would be each thread's own, empty, instance)
    static thread_local RowPlan my_plan;
    const RowPlan& plan = my_plan;
    plan_rows(my_plan, s, lanes);
    if (lanes == 8 && sizeof(T) == 4) expand_masks(my_plan, my_plan.lane_load32, my_plan.lane_store32);
    if (lanes == 4) expand_masks(my_plan, my_plan.lane_load64, my_plan.lane_store64);
    if (const PlaneFn plane = rows3_plane_kernel<T>(s, with_indices)) {
      if (plane != nullptr && lanes == Avx512<T>::kLanes) {
#pragma omp parallel for schedule(static) if (work > kParallelWork)
        for (int64_t p = 0; p < s.planes; ++p)
          plane(input + p * s.H * s.W, output + p * s.OH * s.OW,
                with_indices ? indices + p * s.OH * s.OW : nullptr, plan, s);
        return;
      }
    }
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelWork)
    for (int64_t p = 0; p < s.planes; ++p)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        row(input + p * s.H * s.W, output + (p * s.OH + oh) * s.OW,
            with_indices ? indices + (p * s.OH + oh) * s.OW : nullptr, plan, s, oh);
    return;
  }
#endif
  // tap_offset[kh * KW + kw]: the tap's input offset from its window's first element
  std::vector<int64_t> tap_offset(s.kernel_h * s.kernel_w);
  for (int64_t kh = 0; kh < s.kernel_h; ++kh)
    for (int64_t kw = 0; kw < s.kernel_w; ++kw)
      tap_offset[kh * s.kernel_w + kw] = kh * s.dil_h * s.W + kw * s.dil_w;
  const ColumnTaps cols(s);
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<int32_t> tap(s.OW);  // the winning tap of each output of a row
    std::vector<int64_t> scratch(with_indices ? 0 : s.OW);  // indices nobody asked for
#pragma omp for collapse(2) schedule(static)
    for (int64_t p = 0; p < s.planes; ++p)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        max_pool_row(input + p * s.H * s.W, output + (p * s.OH + oh) * s.OW,
                     with_indices ? indices + (p * s.OH + oh) * s.OW : scratch.data(),
                     tap.data(), tap_offset.data(), cols, s, oh);
  }
}

// grad_input[p, indices[p, o]] += grad_output[p, o]. A thread owns whole planes (no atomics);
// windows overlap when stride < kernel, so one input element may collect several outputs.
template <typename T>
void max_pool2d_grad_input_cpu(const T* grad_output, const int64_t* indices, T* grad_input,
                             const Pool2dShape& s) {
  const int64_t out_plane = s.OH * s.OW, in_plane = s.H * s.W;
#pragma omp parallel for schedule(static) if (s.planes * (out_plane + in_plane) > kParallelWork)
  for (int64_t p = 0; p < s.planes; ++p) {
    T* gin = grad_input + p * in_plane;
    const T* gout = grad_output + p * out_plane;
    const int64_t* idx = indices + p * out_plane;
    for (int64_t i = 0; i < in_plane; ++i) gin[i] = T(0);
    for (int64_t o = 0; o < out_plane; ++o) gin[idx[o]] += gout[o];
  }
}

// Channels-last: grad_input[n, indices[n, o, c], c] += grad_output[n, o, c], every tensor
// (N, *, *, C) dense; in output order, channel by channel, as ATen's channels-last kernel.
// A thread owns whole images.
template <typename T>
void max_pool2d_grad_input_nhwc_cpu(const T* grad_output, const int64_t* indices,
                                    T* grad_input, int64_t C, const Pool2dShape& s) {
  const int64_t N = C > 0 ? s.planes / C : 0;
  const int64_t out_image = s.OH * s.OW * C, in_image = s.H * s.W * C;
#pragma omp parallel for schedule(static) if (N * (out_image + in_image) > kParallelWork)
  for (int64_t n = 0; n < N; ++n) {
    T* gin = grad_input + n * in_image;
    const T* gout = grad_output + n * out_image;
    const int64_t* idx = indices + n * out_image;
    for (int64_t i = 0; i < in_image; ++i) gin[i] = T(0);
    for (int64_t o = 0; o < s.OH * s.OW; ++o)
      for (int64_t c = 0; c < C; ++c) gin[idx[o * C + c] * C + c] += gout[o * C + c];
  }
}

template void max_pool2d_forward_cpu<float>(const float*, float*, int64_t*, const Pool2dShape&);
template void max_pool2d_grad_input_nhwc_cpu<float>(const float*, const int64_t*, float*,
                                                    int64_t, const Pool2dShape&);
template void max_pool2d_grad_input_nhwc_cpu<double>(const double*, const int64_t*, double*,
                                                     int64_t, const Pool2dShape&);
template void max_pool2d_forward_cpu<double>(const double*, double*, int64_t*,
                                             const Pool2dShape&);
template void max_pool2d_forward_nhwc_cpu<float>(const float*, float*, int64_t*, int64_t,
                                                 const Pool2dShape&);
template void max_pool2d_forward_nhwc_cpu<double>(const double*, double*, int64_t*, int64_t,
                                                  const Pool2dShape&);
template void max_pool2d_grad_input_cpu<float>(const float*, const int64_t*, float*,
                                             const Pool2dShape&);
template void max_pool2d_grad_input_cpu<double>(const double*, const int64_t*, double*,
                                              const Pool2dShape&);

}  // namespace cnnops
