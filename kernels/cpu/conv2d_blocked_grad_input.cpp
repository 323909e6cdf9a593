// conv2d grad_input, float32, as stride-phase sub-convolutions on the channel-blocked forward
// (issue 14; the decomposition of oneDNN's backward-data kernels: no atomics, no masked taps).
//
// The forward reads input row ih = oh sh - ph + kh dh from output row oh, so grad_input row ih
// gathers the grad_output rows oh with  oh sh = ih + ph - kh dh.  Write ih + ph = sh u + r with
// 0 <= r < sh: only the taps of residue r, kh dh = sh m_kh + r, reach such a row, from
// oh = u - m_kh. Along one axis the rows of one residue are therefore a stride-1 convolution of
// grad_output with the taps of that residue, flipped (their m_kh step by dh / gcd(dh, sh): the
// sub-convolution's dilation) and with the channel axes of the weights swapped:
//
//   for each residue pair (r_h, r_w):                       (sh sw sub-convolutions)
//     gI[n, ic, first_h + sh o_h, first_w + sw o_w] =
//         sum_{oc, t_h, t_w} gO[n, oc, o_h - pad'_h + t_h dil'_h, o_w - pad'_w + t_w dil'_w]
//                            * W[oc, ic, kh(last - t_h), kw(last - t_w)]
//
// with o running over the rows of that residue inside the input and pad' = m_last - u_first
// (negative when the first rows of grad_output reach no row of the residue: they are cropped).
// Each sub-convolution is a plain forward convolution of grad_output (C_out input channels)
// into C_in output channels, run by conv2d_blocked_forward, which reads the layer's weights in
// place (transposed and flipped through its weight-layout arguments; it repacks them anyway)
// and writes its result straight into every sh-th row and sw-th column of grad_input. A residue no tap has (stride > kernel,
// or a dilation sharing a factor with the stride) gets zeros.
#include <algorithm>
#include <cstring>
#include <vector>

#include "conv2d_blocked.h"

namespace cnnops {
namespace {

int64_t floor_div(int64_t a, int64_t b) { return a >= 0 ? a / b : -((-a + b - 1) / b); }  // b > 0

// One axis of one residue r: which taps it has and where its positions lie.
struct PhaseAxis {
  std::vector<int64_t> taps;  // kernel indices k with k dil = stride m + r, ascending
  int64_t dil = 1;            // grad_output distance between neighbouring taps (m step)
  int64_t pad = 0;            // leading padding of the sub-convolution (may be negative)
  int64_t first = 0;          // input position of the sub-convolution's output 0
  int64_t count = 0;          // input positions of this residue
};

PhaseAxis phase_axis(int64_t r, int64_t size, int64_t kernel, int64_t stride, int64_t pad,
                     int64_t dil) {
  PhaseAxis a;
  for (int64_t k = 0; k < kernel; ++k)
    if ((k * dil) % stride == r) a.taps.push_back(k);
  // positions i = stride u + r - pad with 0 <= i < size
  const int64_t u_lo = -floor_div(r - pad, stride);
  const int64_t u_hi = floor_div(size - 1 + pad - r, stride);
  a.count = u_hi >= u_lo ? u_hi - u_lo + 1 : 0;
  a.first = stride * u_lo + r - pad;
  if (a.taps.empty()) return a;
  const int64_t m_last = (a.taps.back() * dil - r) / stride;
  if (a.taps.size() > 1) a.dil = (a.taps[1] - a.taps[0]) * dil / stride;
  a.pad = m_last - u_lo;
  return a;
}

}  // namespace

bool conv2d_grad_input_blocked_f32(const float* grad_output, const float* weight,
                                   float* grad_input, const Conv2dShape& s) {
  // C_in is the sub-convolutions' output channel count: the blocked forward's vector runs
  // over it (conv2d_blocked_applies).
  if (s.groups != 1 || s.C_in < 16 || s.N <= 0 || s.C_out <= 0 || s.H <= 0 || s.W <= 0 ||
      s.OH <= 0 || s.OW <= 0)
    return false;
  const int64_t sh = s.stride_h, sw = s.stride_w, taps = s.KH * s.KW;
  std::vector<PhaseAxis> rows, cols;
  for (int64_t r = 0; r < sh; ++r) rows.push_back(phase_axis(r, s.H, s.KH, sh, s.pad_h, s.dil_h));
  for (int64_t r = 0; r < sw; ++r) cols.push_back(phase_axis(r, s.W, s.KW, sw, s.pad_w, s.dil_w));
  bool all_covered = true;
  for (const PhaseAxis& a : rows) all_covered &= a.count == 0 || !a.taps.empty();
  for (const PhaseAxis& a : cols) all_covered &= a.count == 0 || !a.taps.empty();
  if (!all_covered) {  // in parts over the team: a serial memset was 12% of a 1x1/2 layer
    const int64_t n = s.N * s.C_in * s.H * s.W, part = 1 << 16;
#pragma omp parallel for schedule(static) if (n > 2 * part)
    for (int64_t i = 0; i < n; i += part)
      std::memset(grad_input + i, 0, sizeof(float) * std::min(part, n - i));
  }

  std::vector<int64_t> tap_at;  // the sub-convolution's tap t -> the layer's weight offset
  for (const PhaseAxis& ph : rows)
    for (const PhaseAxis& pw : cols) {
      if (ph.taps.empty() || pw.taps.empty() || ph.count == 0 || pw.count == 0) continue;
      const int64_t KH = static_cast<int64_t>(ph.taps.size());
      const int64_t KW = static_cast<int64_t>(pw.taps.size());
      // sub-convolution weight (ic, oc, th, tw) = W[oc, ic, kh(KH - 1 - th), kw(KW - 1 - tw)]
      tap_at.resize(KH * KW);
      for (int64_t th = 0; th < KH; ++th)
        for (int64_t tw = 0; tw < KW; ++tw)
          tap_at[th * KW + tw] = ph.taps[KH - 1 - th] * s.KW + pw.taps[KW - 1 - tw];
      BlockedForward f;
      f.input = grad_output, f.N = s.N, f.C_in = s.C_out, f.H = s.OH, f.W = s.OW;
      f.weight = weight, f.bias = nullptr, f.relu = false;
      f.w_tap = tap_at.data(), f.w_out = taps, f.w_in = s.C_in * taps;
      f.C_out = s.C_in, f.KH = KH, f.KW = KW, f.stride_h = 1, f.stride_w = 1;
      f.dil_h = ph.dil, f.dil_w = pw.dil, f.pad_top = ph.pad, f.pad_left = pw.pad;
      f.OH = ph.count, f.OW = pw.count;
      f.out = grad_input + ph.first * s.W + pw.first;
      f.out_image = s.C_in * s.H * s.W, f.out_plane = s.H * s.W;
      f.out_row = sh * s.W, f.out_col = sw;
      f.cache_weights = false;  // new weights every call (training): nothing to reuse
      conv2d_blocked_forward(f);
    }
  return true;
}

}  // namespace cnnops
