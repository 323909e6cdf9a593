// avg_pool2d on the CPU, NCHW contiguous, float and double.
//
// Forward: the window sums of an output row's interior (windows inside the row along W) are
// accumulated in chunks of 16 floats / 8 doubles, every tap over the same chunk (as in
// max_pool2d.cpp), the border outputs one at a time; then each is divided by its divisor
// (index_math.h: avg_window / avg_divisor, ATen's clipping). Backward scatters grad / divisor
// back over the same taps; a thread owns whole planes, so no atomics. The divisor factors into
// a row part and a column part; the column parts are computed once per call. The whole-window
// 2x2, stride 2 pooling (LeNet, DenseNet) has its own one-pass forward and backward, and
// global pooling (one window = the plane) a forward vectorised across planes.
#include <algorithm>
#include <type_traits>
#include <vector>

#include "cpu_common.h"
#include "kernels.h"

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
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<T> scaled(s.OW);  // one row of grad_output / divisor
#pragma omp for schedule(static)
    for (int64_t p = 0; p < s.planes; ++p)
      avg_pool_backward_plane(grad_output + p * s.OH * s.OW, grad_input + p * s.H * s.W,
                              scaled.data(), cols, s, count_include_pad, divisor_override);
  }
}

#define CNNOPS_INSTANTIATE(T)                                                             \
  template void avg_pool2d_forward_cpu<T>(const T*, T*, const Pool2dShape&, bool, int64_t); \
  template void avg_pool2d_grad_input_cpu<T>(const T*, T*, const Pool2dShape&, bool, int64_t);
CNNOPS_INSTANTIATE(float)
CNNOPS_INSTANTIATE(double)
#undef CNNOPS_INSTANTIATE

}  // namespace cnnops
