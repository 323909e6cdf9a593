// avg_pool2d on the CPU, NCHW contiguous, float and double.
//
// Forward: the window sums of an output row's interior (windows inside the row along W) are
// accumulated in chunks of 16 floats / 8 doubles, every tap over the same chunk (as in
// max_pool2d.cpp), the border outputs one at a time; then each is divided by its divisor
// (index_math.h: avg_window / avg_divisor, ATen's clipping). Backward scatters grad / divisor
// back over the same taps; a thread owns whole planes, so no atomics. The divisor factors into
// a row part and a column part; the column parts are computed once per call. The whole-window
// 2x2, stride 2 pooling (LeNet, DenseNet) has its own one-pass forward and backward, and
// global pooling (one window = the plane) a forward vectorised across planes. With AVX-512
// active (cpu_isa_active()) and stride_w 1 or 2 the other forwards run avg_rows_avx512
// (masked chunks along the output row, max_pool2d.cpp's scheme; bit-equal to ATen).
// Channels-last input has its own forward and backward (avg_pool2d_*_nhwc_cpu, the vector
// over channels). The backward with stride_w 1 under AVX-512 is a gather
// (avg_backward_plane_gather_s1: each grad_input element written once, ATen's sums).
#include <algorithm>
#include <type_traits>
#include <vector>

#include "conv2d_blocked.h"  // cpu_isa_active
#include "cpu_common.h"
#include "kernels.h"

#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#include <immintrin.h>
#endif

namespace cnnops {
namespace {

// Per output column: the padded and the clipped window width (avg_window), and its valid
// taps [kw_lo, kw_hi); the interior [lo_all, hi_all): outputs whose every tap is in the row.
struct ColumnWindows {
  std::vector<int64_t> padded, clipped, kw_lo, kw_hi;
  int64_t lo_all, hi_all;
  ColumnWindows(const Pool2dShape& s)
      : padded(s.OW), clipped(s.OW), kw_lo(s.OW), kw_hi(s.OW) {
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      int64_t w0, w1;
      padded[ow] = avg_window(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, &w0, &w1);
      clipped[ow] = w1 - w0;
      valid_taps(ow, s.W, s.kernel_w, s.stride_w, s.pad_w, 1, &kw_lo[ow], &kw_hi[ow]);
    }
    int64_t unused;
    valid_outputs(s.W, s.OW, s.stride_w, s.pad_w, 0, &lo_all, &unused);
    valid_outputs(s.W, s.OW, s.stride_w, s.pad_w, s.kernel_w - 1, &unused, &hi_all);
    if (hi_all < lo_all) hi_all = lo_all;
  }
};

// Forward, interior outputs [ow0, ow0 + kWidth) of row oh: row[ow] = the sum of its window,
// every tap (kh, kw) added over the same kWidth outputs (a fixed trip count: vectorised, no
// scalar tail; each tap's loads line up with the previous tap's stores).
template <typename T, int kStride, int kWidth>
CNNOPS_INLINE void sum_chunk(const T* __restrict__ in_plane, T* __restrict__ row,
                             const Pool2dShape& s, int64_t oh, int64_t kh_lo, int64_t kh_hi,
                             int64_t ow0) {
  const int64_t st = kStride ? kStride : s.stride_w;
  for (int64_t ow = ow0; ow < ow0 + kWidth; ++ow) row[ow] = T(0);
  for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
    const T* in_row = in_plane + (oh * s.stride_h - s.pad_h + kh) * s.W - s.pad_w;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      const T* __restrict__ in = in_row + kw;  // in[ow * stride]: tap (kh, kw) of output ow
      for (int64_t ow = ow0; ow < ow0 + kWidth; ++ow) row[ow] += in[ow * st];
    }
  }
}

// The interior [lo, hi) in chunks of kWidth, the last one shifted left to end at hi (it
// recomputes a few sums from scratch, with identical results).
template <typename T, int kStride, int kWidth>
CNNOPS_INLINE void sum_chunks(const T* in_plane, T* row, const Pool2dShape& s, int64_t oh,
                              int64_t kh_lo, int64_t kh_hi, int64_t lo, int64_t hi) {
  for (int64_t ow0 = lo; ow0 < hi; ow0 += kWidth)
    sum_chunk<T, kStride, kWidth>(in_plane, row, s, oh, kh_lo, kh_hi, std::min(ow0, hi - kWidth));
}

// Forward, the interior with the widest chunk that fits (16, 8 or 4 floats; 8 or 4 doubles).
// Returns false when it is narrower than 4 (the caller then sums it one output at a time).
template <typename T, int kStride>
CNNOPS_INLINE bool sum_interior(const T* in_plane, T* row, const Pool2dShape& s, int64_t oh,
                                int64_t kh_lo, int64_t kh_hi, int64_t lo, int64_t hi) {
  constexpr int kWide = 64 / sizeof(T);
  if (hi - lo >= kWide) sum_chunks<T, kStride, kWide>(in_plane, row, s, oh, kh_lo, kh_hi, lo, hi);
  else if (hi - lo >= kWide / 2)
    sum_chunks<T, kStride, kWide / 2>(in_plane, row, s, oh, kh_lo, kh_hi, lo, hi);
  else if (hi - lo >= 4) sum_chunks<T, kStride, 4>(in_plane, row, s, oh, kh_lo, kh_hi, lo, hi);
  else return false;
  return true;
}

// dst[ow * stride] (or dst[ow]) += src[ow] (or src[ow * stride]) over [lo, hi).
// kStride: the stride when known at compile time (1, 2), else 0 and `stride` is used.
template <typename T, int kStride, bool kScatter>
CNNOPS_INLINE void add_tap(T* __restrict__ dst, const T* __restrict__ src, int64_t lo,
                           int64_t hi, int64_t stride) {
  const int64_t st = kStride ? kStride : stride;
  for (int64_t ow = lo; ow < hi; ++ow) {
    if (kScatter) dst[ow * st] += src[ow];
    else dst[ow] += src[ow * st];
  }
}

// forward (kScatter false): row[ow] += the input under tap (kh, kw) of output ow, for every
// tap; backward (kScatter true): the input under the taps += row[ow].
template <typename T, bool kScatter>
CNNOPS_INLINE void add_taps(std::conditional_t<kScatter, const T*, T*> row,
                            std::conditional_t<kScatter, T*, const T*> plane,
                            const Pool2dShape& s, int64_t oh) {
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, 1, &kh_lo, &kh_hi);
  for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
    auto* in_row = plane + (oh * s.stride_h - s.pad_h + kh) * s.W;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      int64_t lo, hi;
      valid_outputs(s.W, s.OW, s.stride_w, s.pad_w, kw, &lo, &hi);
      auto* in = in_row - s.pad_w + kw;  // in[ow * stride] is tap (kh, kw) of output ow
      T* dst;
      const T* src;
      if constexpr (kScatter) dst = in, src = row;
      else dst = row, src = in;
      if (s.stride_w == 1) add_tap<T, 1, kScatter>(dst, src, lo, hi, 1);
      else if (s.stride_w == 2) add_tap<T, 2, kScatter>(dst, src, lo, hi, 2);
      else add_tap<T, 0, kScatter>(dst, src, lo, hi, s.stride_w);
    }
  }
}

// The divisor of each output of row oh.
template <typename T>
CNNOPS_INLINE void row_divisors(T* divisor, const ColumnWindows& cols, const Pool2dShape& s,
                                int64_t oh, bool count_include_pad, int64_t divisor_override) {
  int64_t h0, h1;
  const int64_t padded_h = avg_window(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, &h0, &h1);
  for (int64_t ow = 0; ow < s.OW; ++ow)
    divisor[ow] = static_cast<T>(avg_divisor(padded_h, cols.padded[ow], h1 - h0,
                                             cols.clipped[ow], count_include_pad,
                                             divisor_override));
}

template <typename T>
CNNOPS_SIMD_CLONES void avg_pool_row(const T* in_plane, T* out_row, T* divisor,
                                     const ColumnWindows& cols, const Pool2dShape& s, int64_t oh,
                                     bool count_include_pad, int64_t divisor_override) {
  // window sums: the interior in chunks, the border outputs (and a narrow interior) one at
  // a time over their valid taps, in the same (kh, kw) order
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, 1, &kh_lo, &kh_hi);
  const int64_t lo = cols.lo_all, hi = cols.hi_all;
  bool chunked;
  if (s.stride_w == 1) chunked = sum_interior<T, 1>(in_plane, out_row, s, oh, kh_lo, kh_hi, lo, hi);
  else if (s.stride_w == 2) chunked = sum_interior<T, 2>(in_plane, out_row, s, oh, kh_lo, kh_hi, lo, hi);
  else chunked = sum_interior<T, 0>(in_plane, out_row, s, oh, kh_lo, kh_hi, lo, hi);
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    if (chunked && ow == lo) ow = hi;  // skip the interior
    if (ow >= s.OW) break;
    T sum = T(0);
    for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
      const T* in_row = in_plane + (oh * s.stride_h - s.pad_h + kh) * s.W;
      for (int64_t kw = cols.kw_lo[ow]; kw < cols.kw_hi[ow]; ++kw)
        sum += in_row[ow * s.stride_w - s.pad_w + kw];
    }
    out_row[ow] = sum;
  }
  row_divisors(divisor, cols, s, oh, count_include_pad, divisor_override);
  for (int64_t ow = 0; ow < s.OW; ++ow) out_row[ow] /= divisor[ow];
}

template <typename T>
CNNOPS_SIMD_CLONES void avg_pool_backward_plane(const T* gout_plane, T* gin_plane, T* scaled,
                                                const ColumnWindows& cols, const Pool2dShape& s,
                                                bool count_include_pad,
                                                int64_t divisor_override) {
  for (int64_t i = 0; i < s.H * s.W; ++i) gin_plane[i] = T(0);
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    row_divisors(scaled, cols, s, oh, count_include_pad, divisor_override);
    for (int64_t ow = 0; ow < s.OW; ++ow) scaled[ow] = gout_plane[oh * s.OW + ow] / scaled[ow];
    add_taps<T, true>(scaled, gin_plane, s, oh);
  }
}

// The classic 2x2, stride 2 pooling (LeNet, DenseNet's transitions) when every window is
// whole (no padding, no clipped last window): out[oh, ow] = the sum of the 2x2 block in ATen's
// order (row by row) / divisor, one plane at a time; a plain loop over a row with stride-2
// loads, which GCC vectorises. No per-row tables, so short rows (12 or 14 outputs) stay cheap.
template <typename T>
CNNOPS_SIMD_CLONES void avg_pool_2x2_plane(const T* __restrict__ in, T* __restrict__ out,
                                           const Pool2dShape& s, T divisor) {
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    const T* __restrict__ top = in + 2 * oh * s.W;
    const T* __restrict__ bottom = top + s.W;
    T* __restrict__ row = out + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ++ow)
      row[ow] = (top[2 * ow] + top[2 * ow + 1] + bottom[2 * ow] + bottom[2 * ow + 1]) / divisor;
  }
}

// Backward of the whole-window 2x2, stride 2 pooling: each output's gradient / divisor goes to
// its 4 inputs (the windows do not overlap, so it is written, not added: no zero fill of the
// plane first); an odd last row or column belongs to no window and gets 0. One pass over the
// plane, which GCC vectorises (a division and duplicating stores per row pair).
template <typename T>
CNNOPS_SIMD_CLONES void avg_pool_2x2_backward_plane(const T* __restrict__ gout,
                                                    T* __restrict__ gin, const Pool2dShape& s,
                                                    T divisor) {
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    const T* __restrict__ g = gout + oh * s.OW;
    T* __restrict__ top = gin + 2 * oh * s.W;
    T* __restrict__ bottom = top + s.W;
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      const T v = g[ow] / divisor;
      top[2 * ow] = v;
      top[2 * ow + 1] = v;
    }
    for (int64_t w = 2 * s.OW; w < s.W; ++w) top[w] = T(0);
    for (int64_t w = 0; w < s.W; ++w) bottom[w] = top[w];
  }
  for (int64_t i = 2 * s.OH * s.W; i < s.H * s.W; ++i) gin[i] = T(0);
}

// Global pooling (one window = the whole plane: GlobalAvgPool2d): each plane's sum in ATen's
// order (row by row, left to right, one running sum), 16 planes at a time, one lane per plane,
// so the loop vectorises across planes without changing any plane's summation order.
template <typename T>
CNNOPS_SIMD_CLONES void avg_pool_global_planes(const T* __restrict__ in, T* __restrict__ out,
                                               int64_t planes, int64_t HW, T divisor) {
  constexpr int kBlock = 16;
  int64_t p0 = 0;
  for (; p0 + kBlock <= planes; p0 += kBlock) {
    T sum[kBlock] = {};
    for (int64_t i = 0; i < HW; ++i)
      for (int j = 0; j < kBlock; ++j) sum[j] += in[(p0 + j) * HW + i];
    for (int j = 0; j < kBlock; ++j) out[p0 + j] = sum[j] / divisor;
  }
  for (; p0 < planes; ++p0) {
    T sum = T(0);
    for (int64_t i = 0; i < HW; ++i) sum += in[p0 * HW + i];
    out[p0] = sum / divisor;
  }
}

bool is_global(const Pool2dShape& s) {
  return s.OH == 1 && s.OW == 1 && s.pad_h == 0 && s.pad_w == 0 && s.kernel_h == s.H &&
         s.kernel_w == s.W;
}

bool is_whole_2x2_stride_2(const Pool2dShape& s) {
  return s.kernel_h == 2 && s.kernel_w == 2 && s.stride_h == 2 && s.stride_w == 2 &&
         s.pad_h == 0 && s.pad_w == 0 && 2 * s.OH <= s.H && 2 * s.OW <= s.W;
}


// ---- AVX-512 forward row kernel (stride_w 1 or 2) -------------------------------------------
// The scheme of max_pool2d.cpp's max_row_avx512: the vector runs along the output row, 16
// floats / 8 doubles of one row per register, every output (borders included) in masked
// chunks; a tap is one masked load (stride 2: two and a vpermt2ps/pd keeping the even
// elements) whose lanes outside [0, W) read 0. The window sum runs over the taps in ATen's
// order (kh, then kw; a masked lane adds +0, which changes no sum: a sum that starts at +0
// never becomes -0), then one division by the divisor (ATen's clipping: the padded or the
// clipped window, or the override), so the result is ATen's bit for bit.
#if defined(__x86_64__) && defined(__GNUC__) && !defined(__clang__)
#define CNNOPS_AVG_AVX512 1
#define CNNOPS_AVG_TARGET __attribute__((target("avx512f,avx512vl,avx512bw,avx512dq,avx2,fma")))
#define CNNOPS_AVG_INLINE CNNOPS_AVG_TARGET inline __attribute__((always_inline))

template <typename T>
struct AvgAvx512;

template <>
struct AvgAvx512<float> {
  static constexpr int kLanes = 16;
  using V = __m512;
  static CNNOPS_AVG_INLINE V zero() { return _mm512_setzero_ps(); }
  static CNNOPS_AVG_INLINE V set1(float x) { return _mm512_set1_ps(x); }
  static CNNOPS_AVG_INLINE V load(uint32_t m, const float* p) {
    return _mm512_maskz_loadu_ps(static_cast<__mmask16>(m), p);
  }
  static CNNOPS_AVG_INLINE V loadu(const float* p) { return _mm512_loadu_ps(p); }
  static CNNOPS_AVG_INLINE V even(V lo, V hi) {
    const __m512i idx = _mm512_setr_epi32(0, 2, 4, 6, 8, 10, 12, 14, 16, 18, 20, 22, 24, 26, 28, 30);
    return _mm512_permutex2var_ps(lo, idx, hi);
  }
  static CNNOPS_AVG_INLINE V add(V a, V b) { return _mm512_add_ps(a, b); }
  static CNNOPS_AVG_INLINE V mul(V a, V b) { return _mm512_mul_ps(a, b); }
  static CNNOPS_AVG_INLINE V div(V a, V b) { return _mm512_div_ps(a, b); }
  static CNNOPS_AVG_INLINE void store(float* p, uint32_t m, V v) {
    _mm512_mask_storeu_ps(p, static_cast<__mmask16>(m), v);
  }
};

template <>
struct AvgAvx512<double> {
  static constexpr int kLanes = 8;
  using V = __m512d;
  static CNNOPS_AVG_INLINE V zero() { return _mm512_setzero_pd(); }
  static CNNOPS_AVG_INLINE V set1(double x) { return _mm512_set1_pd(x); }
  static CNNOPS_AVG_INLINE V load(uint32_t m, const double* p) {
    return _mm512_maskz_loadu_pd(static_cast<__mmask8>(m), p);
  }
  static CNNOPS_AVG_INLINE V loadu(const double* p) { return _mm512_loadu_pd(p); }
  static CNNOPS_AVG_INLINE V even(V lo, V hi) {
    const __m512i idx = _mm512_setr_epi64(0, 2, 4, 6, 8, 10, 12, 14);
    return _mm512_permutex2var_pd(lo, idx, hi);
  }
  static CNNOPS_AVG_INLINE V add(V a, V b) { return _mm512_add_pd(a, b); }
  static CNNOPS_AVG_INLINE V mul(V a, V b) { return _mm512_mul_pd(a, b); }
  static CNNOPS_AVG_INLINE V div(V a, V b) { return _mm512_div_pd(a, b); }
  static CNNOPS_AVG_INLINE void store(double* p, uint32_t m, V v) {
    _mm512_mask_storeu_pd(p, static_cast<__mmask8>(m), v);
  }
};

// Per call: chunk starts (the last shifted left to end at OW; OW < L: one masked chunk), load
// masks per chunk and tap kw (stride 2: the pair lo, hi), and per lane the column part of the
// divisor (padded or clipped window width; 1 with an override).
template <typename T>
struct AvgPlan {
  std::vector<int64_t> ow0;
  std::vector<uint32_t> store_mask, load_mask;
  std::vector<T> col_part;
};

inline uint32_t avg_column_mask(int64_t c, int64_t W, int n) {
  uint32_t m = 0;
  for (int i = 0; i < n; ++i)
    if (c + i >= 0 && c + i < W) m |= uint32_t(1) << i;
  return m;
}

template <typename T>
void plan_avg_rows(AvgPlan<T>& p, const ColumnWindows& cols, const Pool2dShape& s,
                   bool count_include_pad, int64_t divisor_override) {
  constexpr int L = AvgAvx512<T>::kLanes;
  p.ow0.clear();
  if (s.OW >= L) {
    for (int64_t ow = 0; ow < s.OW; ow += L) p.ow0.push_back(std::min(ow, s.OW - L));
  } else {
    p.ow0.push_back(0);
  }
  const int64_t chunks = static_cast<int64_t>(p.ow0.size());
  p.store_mask.assign(chunks, (uint32_t(1) << L) - 1);
  if (s.OW < L) p.store_mask[0] = (uint32_t(1) << s.OW) - 1;
  p.load_mask.assign(chunks * s.kernel_w * 2, 0);
  p.col_part.assign(chunks * L, T(1));
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t ow0 = p.ow0[c];
    for (int64_t kw = 0; kw < s.kernel_w; ++kw) {
      const int64_t col = ow0 * s.stride_w - s.pad_w + kw;
      p.load_mask[(c * s.kernel_w + kw) * 2] = avg_column_mask(col, s.W, L);
      if (s.stride_w == 2)
        p.load_mask[(c * s.kernel_w + kw) * 2 + 1] = avg_column_mask(col + L, s.W, L - 1);
    }
    for (int j = 0; j < L; ++j) {
      const int64_t ow = std::min(ow0 + j, s.OW - 1);
      if (divisor_override == 0)
        p.col_part[c * L + j] =
            static_cast<T>(count_include_pad ? cols.padded[ow] : cols.clipped[ow]);
    }
  }
}

// Output rows oh .. oh + kRows - 1 (kRows 1, 2 or 4; with more than 1 the caller ensures every
// row has all KH taps inside the input): the chunks of the rows summed in lockstep, so the kRows add
// chains (each in ATen's order) overlap instead of waiting on each other.
template <typename T, int kS, int kRows>
CNNOPS_AVG_TARGET void avg_rows_avx512(const T* in_plane, T* out_row, const AvgPlan<T>& p,
                                       const Pool2dShape& s, int64_t oh, bool count_include_pad,
                                       int64_t divisor_override) {
  using A = AvgAvx512<T>;
  using V = typename A::V;
  constexpr int L = A::kLanes;
  int64_t kh_lo, kh_hi;
  valid_taps(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, 1, &kh_lo, &kh_hi);
  // the divisor of output (oh, ow): row part * col_part[ow] (exact: small integers), or the
  // override; with kRows > 1 the rows are whole in H, so they share the row part
  int64_t h0, h1;
  const int64_t padded_h = avg_window(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, &h0, &h1);
  const V row_part = A::set1(static_cast<T>(
      divisor_override != 0 ? divisor_override : count_include_pad ? padded_h : h1 - h0));
  const int64_t ih0 = oh * s.stride_h - s.pad_h, W = s.W, KW = s.kernel_w;
  const int64_t row_step = s.stride_h * W;  // input offset of the next output row
  const int64_t chunks = static_cast<int64_t>(p.ow0.size());
  for (int64_t c = 0; c < chunks; ++c) {
    const int64_t ow0 = p.ow0[c];
    const uint32_t* mask = p.load_mask.data() + c * KW * 2;
    V sum[kRows];
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r) sum[r] = A::zero();
    for (int64_t kh = kh_lo; kh < kh_hi; ++kh) {
      const T* row = in_plane + (ih0 + kh) * W + ow0 * kS - s.pad_w;
#pragma GCC unroll 4
      for (int64_t kw = 0; kw < KW; ++kw) {
#pragma GCC unroll 4
        for (int r = 0; r < kRows; ++r) {
          const T* q = row + r * row_step + kw;
          V v;
          if (kS == 1) v = A::load(mask[2 * kw], q);
          else v = A::even(A::load(mask[2 * kw], q), A::load(mask[2 * kw + 1], q + L));
          sum[r] = A::add(sum[r], v);
        }
      }
    }
    const V divisor = A::mul(row_part, A::loadu(p.col_part.data() + c * L));
#pragma GCC unroll 4
    for (int r = 0; r < kRows; ++r)
      A::store(out_row + r * s.OW + ow0, p.store_mask[c], A::div(sum[r], divisor));
  }
}

// Whether output row oh has all kernel_h taps inside the input (no clipping in H).
inline bool whole_in_h(const Pool2dShape& s, int64_t oh) {
  const int64_t start = oh * s.stride_h - s.pad_h;
  return start >= 0 && start + s.kernel_h <= s.H;
}

// The rows of one plane: 4 or 2 whole rows in lockstep, the others one at a time.
template <typename T, int kS>
CNNOPS_AVG_TARGET void avg_plane_rows_avx512(const T* in_plane, T* out_plane, const AvgPlan<T>& p,
                                             const Pool2dShape& s, int64_t oh_begin,
                                             int64_t oh_end, bool count_include_pad,
                                             int64_t divisor_override) {
  for (int64_t oh = oh_begin; oh < oh_end;) {
    if (oh + 3 < oh_end && whole_in_h(s, oh) && whole_in_h(s, oh + 3)) {
      avg_rows_avx512<T, kS, 4>(in_plane, out_plane + oh * s.OW, p, s, oh, count_include_pad,
                                divisor_override);
      oh += 4;
    } else if (oh + 1 < oh_end && whole_in_h(s, oh) && whole_in_h(s, oh + 1)) {
      avg_rows_avx512<T, kS, 2>(in_plane, out_plane + oh * s.OW, p, s, oh, count_include_pad,
                                divisor_override);
      oh += 2;
    } else {
      avg_rows_avx512<T, kS, 1>(in_plane, out_plane + oh * s.OW, p, s, oh, count_include_pad,
                                divisor_override);
      oh += 1;
    }
  }
}

// Backward, stride_w 1 (AVX-512): a gather instead of a scatter. grad_input[ih][iw] is the sum
// of grad / divisor over the outputs whose window holds (ih, iw); ATen adds them output by
// output ((oh, ow) increasing) into a zeroed plane, so for each input element the terms
// arrive in (oh, ow) order. Here a vector of 16 (8) consecutive iw sums, for each covering
// output row oh in increasing order, the scaled output row at ow = iw + pad_w - kw for kw
// from KW - 1 down to 0 (ow increasing), masked to 0 <= ow < OW (a masked lane adds +0,
// which changes no sum that starts at +0): ATen's sums, in one pass that writes each
// grad_input element once (no zero fill, no read-modify-write).
template <typename T>
CNNOPS_AVG_TARGET void avg_backward_plane_gather_s1(const T* gout, T* gin, T* scaled,
                                                    const AvgPlan<T>& p,
                                                    const Pool2dShape& s, bool count_include_pad,
                                                    int64_t divisor_override) {
  using A = AvgAvx512<T>;
  constexpr int L = A::kLanes;
  // scaled = grad / divisor (ATen's grad_delta); the divisor row part * column part (exact)
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    int64_t h0, h1;
    const int64_t padded_h = avg_window(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, &h0, &h1);
    const T row_part = static_cast<T>(
        divisor_override != 0 ? divisor_override : count_include_pad ? padded_h : h1 - h0);
    const T* __restrict__ col_part = p.col_part.data();
    const T* __restrict__ g = gout + oh * s.OW;
    T* __restrict__ out = scaled + oh * s.OW;
    for (int64_t ow = 0; ow < s.OW; ++ow) out[ow] = g[ow] / (row_part * col_part[ow]);
  }
  const int64_t KW = s.kernel_w, chunks = (s.W + L - 1) / L;
  for (int64_t ih = 0; ih < s.H; ++ih) {
    // output rows whose window holds ih: oh * sh - ph + kh = ih, 0 <= kh < KH
    const int64_t top = ih + s.pad_h - (s.kernel_h - 1);
    const int64_t oh_lo = top <= 0 ? 0 : ceil_div(top, s.stride_h);
    const int64_t oh_hi = std::min(s.OH, (ih + s.pad_h) / s.stride_h + 1);
    for (int64_t c = 0; c < chunks; ++c) {
      const int64_t iw0 = c * L;
      const uint32_t* mask = p.load_mask.data() + c * KW;  // [chunk][kw]
      typename A::V sum = A::zero();
      for (int64_t oh = oh_lo; oh < oh_hi; ++oh) {
        const T* row = scaled + oh * s.OW + iw0 + s.pad_w;
#pragma GCC unroll 4
        for (int64_t kw = KW - 1; kw >= 0; --kw) sum = A::add(sum, A::load(mask[kw], row - kw));
      }
      A::store(gin + ih * s.W + iw0, p.store_mask[c], sum);
    }
  }
}

// Per call: per input chunk c (16 / 8 columns from c * L) and tap kw the mask of lanes j
// with 0 <= c * L + j + pad_w - kw < OW (stored in AvgPlan::load_mask as [chunk][kw]), the
// store mask of columns < W, and the column part of each output's divisor (col_part[ow]).
template <typename T>
void plan_gather_s1(AvgPlan<T>& p, const ColumnWindows& cols, const Pool2dShape& s,
                    bool count_include_pad, int64_t divisor_override) {
  constexpr int L = AvgAvx512<T>::kLanes;
  const int64_t chunks = (s.W + L - 1) / L;
  p.ow0.clear();
  p.col_part.assign(s.OW, T(1));  // [ow] here
  if (divisor_override == 0)
    for (int64_t ow = 0; ow < s.OW; ++ow)
      p.col_part[ow] = static_cast<T>(count_include_pad ? cols.padded[ow] : cols.clipped[ow]);
  p.load_mask.assign(chunks * s.kernel_w, 0);
  p.store_mask.assign(chunks, 0);
  for (int64_t c = 0; c < chunks; ++c) {
    for (int j = 0; j < L; ++j)
      if (c * L + j < s.W) p.store_mask[c] |= uint32_t(1) << j;
    for (int64_t kw = 0; kw < s.kernel_w; ++kw)
      p.load_mask[c * s.kernel_w + kw] =
          avg_column_mask(c * L + s.pad_w - kw, s.OW, L) & p.store_mask[c];
  }
}
#endif  // CNNOPS_AVG_AVX512


// ---- channels-last (NHWC) forward and backward --------------------------------------------
// The vector runs over channels. Forward: for each output pixel its channels' sums over the
// window's in-bounds taps in ATen's order (kh, then kw), accumulated in the output row itself,
// then one division by the pixel's divisor. Backward: each output pixel, in output order,
// adds grad / divisor to its taps' channels (ATen's channels-last order). Portable loops,
// compiled per ISA by target_clones; a thread owns whole output rows (forward) or images
// (backward).
template <typename T>
CNNOPS_SIMD_CLONES void avg_row_nhwc(const T* __restrict__ in_image, T* __restrict__ out_row,
                                     const ColumnWindows& cols, const Pool2dShape& s, int64_t C,
                                     int64_t oh, bool count_include_pad,
                                     int64_t divisor_override) {
  int64_t h0, h1;
  const int64_t padded_h = avg_window(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, &h0, &h1);
  for (int64_t ow = 0; ow < s.OW; ++ow) {
    T* __restrict__ sum = out_row + ow * C;
    for (int64_t c = 0; c < C; ++c) sum[c] = T(0);
    const int64_t w0 = ow * s.stride_w - s.pad_w;
    for (int64_t ih = h0; ih < h1; ++ih)
      for (int64_t kw = cols.kw_lo[ow]; kw < cols.kw_hi[ow]; ++kw) {
        const T* __restrict__ v = in_image + (ih * s.W + w0 + kw) * C;
        for (int64_t c = 0; c < C; ++c) sum[c] += v[c];
      }
    const T divisor = static_cast<T>(avg_divisor(padded_h, cols.padded[ow], h1 - h0,
                                                 cols.clipped[ow], count_include_pad,
                                                 divisor_override));
    for (int64_t c = 0; c < C; ++c) sum[c] = sum[c] / divisor;
  }
}

template <typename T>
CNNOPS_SIMD_CLONES void avg_backward_image_nhwc(const T* __restrict__ gout,
                                                T* __restrict__ gin, T* __restrict__ scaled,
                                                const ColumnWindows& cols, const Pool2dShape& s,
                                                int64_t C, bool count_include_pad,
                                                int64_t divisor_override) {
  for (int64_t i = 0; i < s.H * s.W * C; ++i) gin[i] = T(0);
  for (int64_t oh = 0; oh < s.OH; ++oh) {
    int64_t h0, h1;
    const int64_t padded_h = avg_window(oh, s.H, s.kernel_h, s.stride_h, s.pad_h, &h0, &h1);
    for (int64_t ow = 0; ow < s.OW; ++ow) {
      const T divisor = static_cast<T>(avg_divisor(padded_h, cols.padded[ow], h1 - h0,
                                                   cols.clipped[ow], count_include_pad,
                                                   divisor_override));
      const T* __restrict__ g = gout + (oh * s.OW + ow) * C;
      for (int64_t c = 0; c < C; ++c) scaled[c] = g[c] / divisor;
      const int64_t w0 = ow * s.stride_w - s.pad_w;
      for (int64_t ih = h0; ih < h1; ++ih)
        for (int64_t kw = cols.kw_lo[ow]; kw < cols.kw_hi[ow]; ++kw) {
          T* __restrict__ d = gin + (ih * s.W + w0 + kw) * C;
          for (int64_t c = 0; c < C; ++c) d[c] += scaled[c];
        }
    }
  }
}

}  // namespace

template <typename T>
void avg_pool2d_forward_cpu(const T* input, T* output, const Pool2dShape& s,
                            bool count_include_pad, int64_t divisor_override) {
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
  if (is_global(s)) {
    const T divisor = static_cast<T>(divisor_override != 0 ? divisor_override : s.H * s.W);
    const int64_t blocks = (s.planes + 15) / 16;
#pragma omp parallel for schedule(static) if (work > kParallelWork)
    for (int64_t b = 0; b < blocks; ++b) {
      const int64_t p0 = b * 16, n = std::min<int64_t>(16, s.planes - p0);
      avg_pool_global_planes(input + p0 * s.H * s.W, output + p0, n, s.H * s.W, divisor);
    }
    return;
  }
  if (is_whole_2x2_stride_2(s)) {
    // every window has 4 elements inside the input, so the divisor is 4 or the override
    const T divisor = static_cast<T>(divisor_override != 0 ? divisor_override : 4);
#pragma omp parallel for schedule(static) if (work > kParallelWork)
    for (int64_t p = 0; p < s.planes; ++p)
      avg_pool_2x2_plane(input + p * s.H * s.W, output + p * s.OH * s.OW, s, divisor);
    return;
  }
  const ColumnWindows cols(s);
#ifdef CNNOPS_AVG_AVX512
  if (cpu_isa_active() == CpuIsa::kAvx512 && (s.stride_w == 1 || s.stride_w == 2)) {
    static thread_local AvgPlan<T> my_plan;  // the calling thread's; the team reads it
    plan_avg_rows(my_plan, cols, s, count_include_pad, divisor_override);
    const AvgPlan<T>& plan = my_plan;
    // work items: (plane, block of up to 8 rows), so that row groups stay inside an item
    constexpr int64_t kRowBlock = 8;
    const int64_t blocks = (s.OH + kRowBlock - 1) / kRowBlock;
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelWork)
    for (int64_t p = 0; p < s.planes; ++p)
      for (int64_t b = 0; b < blocks; ++b) {
        const int64_t oh0 = b * kRowBlock, oh1 = std::min(s.OH, oh0 + kRowBlock);
        if (s.stride_w == 1)
          avg_plane_rows_avx512<T, 1>(input + p * s.H * s.W, output + p * s.OH * s.OW, plan, s,
                                      oh0, oh1, count_include_pad, divisor_override);
        else
          avg_plane_rows_avx512<T, 2>(input + p * s.H * s.W, output + p * s.OH * s.OW, plan, s,
                                      oh0, oh1, count_include_pad, divisor_override);
      }
    return;
  }
#endif
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<T> divisor(s.OW);
#pragma omp for collapse(2) schedule(static)
    for (int64_t p = 0; p < s.planes; ++p)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        avg_pool_row(input + p * s.H * s.W, output + (p * s.OH + oh) * s.OW, divisor.data(),
                     cols, s, oh, count_include_pad, divisor_override);
  }
}

template <typename T>
void avg_pool2d_grad_input_cpu(const T* grad_output, T* grad_input, const Pool2dShape& s,
                             bool count_include_pad, int64_t divisor_override) {
  const ColumnWindows cols(s);
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
  if (is_whole_2x2_stride_2(s)) {
    const T divisor = static_cast<T>(divisor_override != 0 ? divisor_override : 4);
#pragma omp parallel for schedule(static) if (s.planes * s.H * s.W > kParallelWork)
    for (int64_t p = 0; p < s.planes; ++p)
      avg_pool_2x2_backward_plane(grad_output + p * s.OH * s.OW, grad_input + p * s.H * s.W, s,
                                  divisor);
    return;
  }
#ifdef CNNOPS_AVG_AVX512
  if (cpu_isa_active() == CpuIsa::kAvx512 && s.stride_w == 1) {
    static thread_local AvgPlan<T> my_plan;  // the calling thread's; the team reads it
    plan_gather_s1(my_plan, cols, s, count_include_pad, divisor_override);
    const AvgPlan<T>& plan = my_plan;
#pragma omp parallel if (work > kParallelWork)
    {
      std::vector<T> scaled(s.OH * s.OW + 2 * 64);  // grad / divisor of one plane, + margins
#pragma omp for schedule(static)
      for (int64_t p = 0; p < s.planes; ++p)
        avg_backward_plane_gather_s1(grad_output + p * s.OH * s.OW, grad_input + p * s.H * s.W,
                                     scaled.data() + 64, plan, s, count_include_pad,
                                     divisor_override);
    }
    return;
  }
#endif
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<T> scaled(s.OW);  // one row of grad_output / divisor
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.planes; ++p)
      avg_pool_backward_plane(grad_output + p * s.OH * s.OW, grad_input + p * s.H * s.W,
                              scaled.data(), cols, s, count_include_pad, divisor_override);
  }
}

template <typename T>
void avg_pool2d_forward_nhwc_cpu(const T* input, T* output, int64_t C, const Pool2dShape& s,
                                 bool count_include_pad, int64_t divisor_override) {
  const int64_t N = C > 0 ? s.planes / C : 0;
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
  const ColumnWindows cols(s);
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelWork)
  for (int64_t n = 0; n < N; ++n)
    for (int64_t oh = 0; oh < s.OH; ++oh)
      avg_row_nhwc(input + n * s.H * s.W * C, output + (n * s.OH + oh) * s.OW * C, cols, s, C,
                   oh, count_include_pad, divisor_override);
}

template <typename T>
void avg_pool2d_grad_input_nhwc_cpu(const T* grad_output, T* grad_input, int64_t C,
                                    const Pool2dShape& s, bool count_include_pad,
                                    int64_t divisor_override) {
  const int64_t N = C > 0 ? s.planes / C : 0;
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
  const ColumnWindows cols(s);
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<T> scaled(C);  // one output pixel's grad / divisor
#pragma omp for schedule(static)
    for (int64_t n = 0; n < N; ++n)
      avg_backward_image_nhwc(grad_output + n * s.OH * s.OW * C, grad_input + n * s.H * s.W * C,
                              scaled.data(), cols, s, C, count_include_pad, divisor_override);
  }
}

#define CNNOPS_INSTANTIATE(T)                                                             \
  template void avg_pool2d_forward_nhwc_cpu<T>(const T*, T*, int64_t, const Pool2dShape&,   \
                                               bool, int64_t);                              \
  template void avg_pool2d_grad_input_nhwc_cpu<T>(const T*, T*, int64_t, const Pool2dShape&, \
                                                  bool, int64_t);                           \
  template void avg_pool2d_forward_cpu<T>(const T*, T*, const Pool2dShape&, bool, int64_t); \
  template void avg_pool2d_grad_input_cpu<T>(const T*, T*, const Pool2dShape&, bool, int64_t);
CNNOPS_INSTANTIATE(float)
CNNOPS_INSTANTIATE(double)
#undef CNNOPS_INSTANTIATE

}  // namespace cnnops
