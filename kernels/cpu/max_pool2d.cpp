// max_pool2d on the CPU, NCHW contiguous, float and double.
//
// One output row at a time. Its interior (outputs whose window lies inside the row along W)
// goes in chunks of 16 floats / 8 doubles: each chunk keeps its running maxima and winning
// taps in registers over every tap (kh, kw) and is stored once, so the loop over the chunk
// has a fixed trip count and no bounds checks and vectorises (stride 2: a load and a
// shuffle). The few border outputs go one at a time. The scan order per output element is
// PyTorch's (kh, then kw), and so are the rules: a value replaces the running maximum when
// it is greater or NaN (so a NaN in the window wins and the last NaN's index is kept), and
// an all -inf window reports its first in-bounds element. The winning tap kh * KW + kw is
// kept as an int32 (the lane width of float, so the select vectorises) and turned into
// PyTorch's flat index h * W + w at the store: the window's first element plus the tap's
// offset from it (a table per call, so no division per output).
#include <algorithm>
#include <cstdint>
#include <limits>
#include <vector>

#include "cpu_common.h"
#include "kernels.h"

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

}  // namespace

template <typename T>
void max_pool2d_forward_cpu(const T* input, T* output, int64_t* indices, const Pool2dShape& s) {
  const int64_t work = s.planes * s.OH * s.OW * s.kernel_h * s.kernel_w;
  // tap_offset[kh * KW + kw]: the tap's input offset from its window's first element
  std::vector<int64_t> tap_offset(s.kernel_h * s.kernel_w);
  for (int64_t kh = 0; kh < s.kernel_h; ++kh)
    for (int64_t kw = 0; kw < s.kernel_w; ++kw)
      tap_offset[kh * s.kernel_w + kw] = kh * s.dil_h * s.W + kw * s.dil_w;
  const ColumnTaps cols(s);
#pragma omp parallel if (work > kParallelWork)
  {
    std::vector<int32_t> tap(s.OW);  // the winning tap of each output of a row
#pragma omp for collapse(2) schedule(static)
    for (int64_t p = 0; p < s.planes; ++p)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        max_pool_row(input + p * s.H * s.W, output + (p * s.OH + oh) * s.OW,
                     indices + (p * s.OH + oh) * s.OW, tap.data(), tap_offset.data(), cols, s,
                     oh);
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

template void max_pool2d_forward_cpu<float>(const float*, float*, int64_t*, const Pool2dShape&);
template void max_pool2d_forward_cpu<double>(const double*, double*, int64_t*,
                                             const Pool2dShape&);
template void max_pool2d_grad_input_cpu<float>(const float*, const int64_t*, float*,
                                             const Pool2dShape&);
template void max_pool2d_grad_input_cpu<double>(const double*, const int64_t*, double*,
                                              const Pool2dShape&);

}  // namespace cnnops
