// conv2d on the CPU by direct convolution (no im2col), NCHW contiguous, float and double.
// float32 forward with C_out >= 16 and groups == 1 goes to the channel-blocked kernel of
// conv2d_blocked.cpp; this file keeps the row-vectorised kernel for the rest.
//
// The book's corr2d takes one dot product per output element. Here a small block of outputs
// is computed at once and kept in registers: kOcBlock output channels x V neighbouring
// columns of one output row. For every tap (ic, kh, kw) the block loads V inputs once and
// adds them, times one weight each, to kOcBlock accumulator vectors: the loads are shared by
// kOcBlock channels and the output is written once, after the last tap. The input is copied
// once into a zero-padded buffer when padding > 0, so the inner loops have no bounds checks
// and vectorise (V a multiple of the SIMD width; the last block of a row overlaps the one
// before instead of running a scalar tail). OpenMP runs (n, channel block, output row) units
// in parallel.
#include <algorithm>
#include <cstring>
#include <type_traits>
#include <vector>

#include <omp.h>

#include "conv2d_blocked.h"
#include "cpu_common.h"
#include "cpu_simd.h"
#include "kernels.h"

namespace cnnops {
namespace {

constexpr int kOcBlock = 4;  // output channels a register block computes


// Integer vector of T's lane width, for shuffle masks.
template <typename T>
struct MaskOf;
template <>
struct MaskOf<float> { typedef int32_t type __attribute__((vector_size(32))); };
template <>
struct MaskOf<double> { typedef int64_t type __attribute__((vector_size(32))); };

// V from src[0], src[stride], ... (one T when V is T itself). kStride is the stride when
// known at compile time (1 or 2), else 0. Stride 2 loads two vectors and keeps the even
// lanes: it reads one element past the last one used (PaddedInput leaves room for it).
template <typename T, typename V, int kStride>
CNNOPS_INLINE void load(V& v, const T* src, int64_t stride) {
  constexpr int L = sizeof(V) / sizeof(T);
  if constexpr (L == 1) {
    v = *src;
  } else if constexpr (kStride == 1) {
    std::memcpy(&v, src, sizeof(V));
#if defined(__GNUC__) && !defined(__clang__)
  } else if constexpr (kStride == 2) {
    V lo, hi;
    std::memcpy(&lo, src, sizeof(V));
    std::memcpy(&hi, src + L, sizeof(V));
    typename MaskOf<T>::type even;
    for (int l = 0; l < L; ++l) even[l] = 2 * l;
    v = __builtin_shuffle(lo, hi, even);
#endif
  } else {
    T lanes[L];
    for (int l = 0; l < L; ++l) lanes[l] = src[l * stride];
    std::memcpy(&v, lanes, sizeof(V));
  }
}

// The input as the kernels read it: zero-padded planes of Hp x Wp, plus room after the last
// plane for the stride-2 loads' extra element. The input itself when no copy is needed.
template <typename T>
struct PaddedInput {
  const T* data;
  int64_t Hp, Wp;
  std::vector<T> storage;
};

template <typename T>
void pad_input(const T* input, const Conv2dShape& s, PaddedInput<T>& p) {
  p.Hp = s.H + 2 * s.pad_h;
  p.Wp = s.W + 2 * s.pad_w;
  if (s.pad_h == 0 && s.pad_w == 0 && s.stride_w != 2) {
    p.data = input;
    return;
  }
  constexpr int64_t kSlack = 64 / sizeof(T);
  p.storage.assign(s.N * s.C_in * p.Hp * p.Wp + kSlack, T(0));
  T* out = p.storage.data();
  const int64_t planes = s.N * s.C_in;
#pragma omp parallel for schedule(static) if (planes * p.Hp * p.Wp > kParallelWork)
  for (int64_t q = 0; q < planes; ++q)
    for (int64_t h = 0; h < s.H; ++h)
      std::copy(input + (q * s.H + h) * s.W, input + (q * s.H + h + 1) * s.W,
                out + (q * p.Hp + h + s.pad_h) * p.Wp + s.pad_w);
  p.data = out;
}

// OCB output channels x NV vectors of columns starting at ow0 of output row oh, accumulated
// in registers. V is a GCC vector type (or T itself for narrow rows).
// x: the group's first padded input plane of image n; w: the first channel's filters;
// out: the first channel's output row.
template <typename T, typename V, int OCB, int NV, int kStride>
CNNOPS_INLINE void conv_block(const T* __restrict__ x, const T* __restrict__ w,
                              const T* __restrict__ bias, T* __restrict__ out,
                              const Conv2dShape& s, int64_t Hp, int64_t Wp, int64_t oh,
                              int64_t ow0, bool relu) {
  constexpr int L = sizeof(V) / sizeof(T);  // columns per vector
  const int64_t cin_g = s.C_in / s.groups, taps = s.KH * s.KW, filter = cin_g * taps;
  const int64_t sw = kStride ? kStride : s.stride_w;
  V acc[OCB][NV];
  for (int j = 0; j < OCB; ++j)
    for (int k = 0; k < NV; ++k) acc[j][k] = V{} + (bias ? bias[j] : T(0));
  for (int64_t icg = 0; icg < cin_g; ++icg) {
    const T* plane = x + icg * Hp * Wp;
    const T* filters = w + icg * taps;
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const T* row = plane + (oh * s.stride_h + kh * s.dil_h) * Wp + ow0 * sw;
      for (int64_t kw = 0; kw < s.KW; ++kw) {
        const T* src = row + kw * s.dil_w;
        V in[NV];
        for (int k = 0; k < NV; ++k) load<T, V, kStride>(in[k], src + k * L * sw, sw);
        const T* tap = filters + kh * s.KW + kw;
        for (int j = 0; j < OCB; ++j) {
          const T wj = tap[j * filter];
          for (int k = 0; k < NV; ++k) acc[j][k] += wj * in[k];
        }
      }
    }
  }
  for (int j = 0; j < OCB; ++j)
    for (int k = 0; k < NV; ++k) {
      const V y = relu ? (acc[j][k] < T(0) ? V{} : acc[j][k]) : acc[j][k];  // keeps NaN
      std::memcpy(out + j * s.OH * s.OW + ow0 + k * L, &y, sizeof(V));
    }
}

// A whole output row for OCB channels in blocks of NV vectors, the last block shifted left to
// end at the row's end (it recomputes a few columns, with identical results).
template <typename T, typename V, int OCB, int NV, int kStride>
CNNOPS_INLINE void conv_row_blocks(const T* x, const T* w, const T* bias, T* out,
                                   const Conv2dShape& s, int64_t Hp, int64_t Wp, int64_t oh,
                                   bool relu) {
  constexpr int64_t width = NV * sizeof(V) / sizeof(T);
  for (int64_t ow0 = 0; ow0 < s.OW; ow0 += width)
    conv_block<T, V, OCB, NV, kStride>(x, w, bias, out, s, Hp, Wp, oh,
                                           std::min(ow0, s.OW - width), relu);
}

// Picks the widest block that fits the row: two 32-byte vectors (16 floats, 8 doubles), one,
// four scalars, one scalar.
template <typename T, int OCB, int kStride>
CNNOPS_INLINE void conv_row(const T* x, const T* w, const T* bias, T* out, const Conv2dShape& s,
                            int64_t Hp, int64_t Wp, int64_t oh, bool relu) {
  using V = Vec32<T>;
  constexpr int64_t L = sizeof(V) / sizeof(T);
  if (s.OW >= 2 * L) conv_row_blocks<T, V, OCB, 2, kStride>(x, w, bias, out, s, Hp, Wp, oh, relu);
  else if (s.OW >= L) conv_row_blocks<T, V, OCB, 1, kStride>(x, w, bias, out, s, Hp, Wp, oh, relu);
  else if (s.OW >= 4) conv_row_blocks<T, T, OCB, 4, kStride>(x, w, bias, out, s, Hp, Wp, oh, relu);
  else conv_row_blocks<T, T, OCB, 1, kStride>(x, w, bias, out, s, Hp, Wp, oh, relu);
}

template <typename T, int OCB>
CNNOPS_INLINE void conv_row_any_stride(const T* x, const T* w, const T* bias, T* out,
                                       const Conv2dShape& s, int64_t Hp, int64_t Wp, int64_t oh,
                                       bool relu) {
  if (s.stride_w == 1) conv_row<T, OCB, 1>(x, w, bias, out, s, Hp, Wp, oh, relu);
  else if (s.stride_w == 2) conv_row<T, OCB, 2>(x, w, bias, out, s, Hp, Wp, oh, relu);
  else conv_row<T, OCB, 0>(x, w, bias, out, s, Hp, Wp, oh, relu);
}

// Output row oh of channels [oc0, oc0 + count) (count <= kOcBlock, one group) of image n.
template <typename T>
CNNOPS_SIMD_CLONES void conv_forward_row(const T* xpad, int64_t Hp, int64_t Wp, const T* weight,
                                         const T* bias, T* output, const Conv2dShape& s,
                                         int64_t n, int64_t oc0, int64_t count, int64_t oh,
                                         bool relu) {
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
  const T* x = xpad + (n * s.C_in + (oc0 / cout_g) * cin_g) * Hp * Wp;
  for (int64_t oc = oc0; oc < oc0 + count;) {
    const T* w = weight + oc * cin_g * s.KH * s.KW;
    const T* b = bias ? bias + oc : nullptr;
    T* out = output + ((n * s.C_out + oc) * s.OH + oh) * s.OW;
    if (oc + kOcBlock <= oc0 + count) {
      conv_row_any_stride<T, kOcBlock>(x, w, b, out, s, Hp, Wp, oh, relu);
      oc += kOcBlock;
    } else {
      conv_row_any_stride<T, 1>(x, w, b, out, s, Hp, Wp, oh, relu);
      oc += 1;
    }
  }
}

}  // namespace

template <typename T>
void conv2d_forward_cpu(const T* input, const T* weight, const T* bias, T* output,
                        const Conv2dShape& s, bool relu) {
  // float32 with enough output channels: the channel-blocked kernel (conv2d_blocked.cpp).
  // float64 and thin or grouped layers keep the row-vectorised kernel below.
  if constexpr (std::is_same_v<T, float>) {
    if (conv2d_blocked_applies(s)) {
      conv2d_forward_blocked_f32(input, weight, bias, output, s, relu);
      return;
    }
  }
  PaddedInput<T> xpad;
  pad_input(input, s, xpad);
  const int64_t cout_g = s.C_out / s.groups;
  const int64_t blocks_per_group = ceil_div(cout_g, kOcBlock);
  const int64_t blocks = s.groups * blocks_per_group;
  const int64_t work = s.N * s.C_out * s.OH * s.OW * (s.C_in / s.groups) * s.KH * s.KW;
#pragma omp parallel for collapse(3) schedule(static) if (work > kParallelWork)
  for (int64_t n = 0; n < s.N; ++n) {
    for (int64_t b = 0; b < blocks; ++b) {
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const int64_t g = b / blocks_per_group, first = (b % blocks_per_group) * kOcBlock;
        const int64_t oc0 = g * cout_g + first;
        conv_forward_row(xpad.data, xpad.Hp, xpad.Wp, weight, bias, output, s, n, oc0,
                         std::min<int64_t>(kOcBlock, cout_g - first), oh, relu);
      }
    }
  }
}

namespace {

// grad_input plane (n, ic) by gathering, one input row ih at a time: the rows oh of
// grad_output that reach ih through a tap kh (oh * stride_h - pad_h + kh * dil_h = ih) are
// added, times the weights, into the row. Along W the stride splits the row into stride_w
// phases (iw mod stride_w); a tap kw feeds one phase from consecutive ow, so each update is a
// contiguous, vectorisable axpy into that phase's buffer. The phases are interleaved into the
// row at the end. Used when the stride is not 1 (or the padding exceeds dilation *
// (kernel - 1)); a thread owns whole planes, so no atomics.
template <typename T>
CNNOPS_SIMD_CLONES void conv_input_plane_gather(const T* grad_output, const T* weight,
                                                T* gin_plane, const Conv2dShape& s, int64_t n,
                                                int64_t ic) {
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
  const int64_t g = ic / cin_g, icg = ic % cin_g, sw = s.stride_w;
  const int64_t M = ceil_div(s.W, sw);  // columns per phase
  // per tap kw: its valid outputs [lo, hi), and where they land: iw = ow * sw + offset =
  // sw * (ow + q) + r, i.e. phase r, column ow + q
  struct TapRange { int64_t lo, hi, start; };
  std::vector<TapRange> taps(s.KW);
  for (int64_t kw = 0; kw < s.KW; ++kw) {
    valid_outputs(s.W, s.OW, sw, s.pad_w, kw * s.dil_w, &taps[kw].lo, &taps[kw].hi);
    const int64_t offset = kw * s.dil_w - s.pad_w;
    const int64_t r = ((offset % sw) + sw) % sw, q = (offset - r) / sw;
    taps[kw].start = r * M + q;
  }
  std::vector<T> phases(sw * M);
  for (int64_t ih = 0; ih < s.H; ++ih) {
    std::fill(phases.begin(), phases.end(), T(0));
    for (int64_t kh = 0; kh < s.KH; ++kh) {
      const int64_t t = ih + s.pad_h - kh * s.dil_h;
      if (t < 0 || t % s.stride_h != 0 || t / s.stride_h >= s.OH) continue;
      const int64_t oh = t / s.stride_h;
      for (int64_t oc = g * cout_g; oc < (g + 1) * cout_g; ++oc) {
        const T* __restrict__ gout_row = grad_output + ((n * s.C_out + oc) * s.OH + oh) * s.OW;
        const T* w_row = weight + ((oc * cin_g + icg) * s.KH + kh) * s.KW;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          T* __restrict__ dst = phases.data() + taps[kw].start;
          const T w = w_row[kw];
          for (int64_t ow = taps[kw].lo; ow < taps[kw].hi; ++ow) dst[ow] += w * gout_row[ow];
        }
      }
    }
    T* gin_row = gin_plane + ih * s.W;
    for (int64_t r = 0; r < sw; ++r)
      for (int64_t m = 0; m * sw + r < s.W; ++m) gin_row[m * sw + r] = phases[r * M + m];
  }
}

// grad_weight of filter (oc, icg), any kernel width (used for KW > 7): every tap keeps a
// vector of partial sums over the output columns; per image and output row it gets grad_output row * the input row under the tap
// (from the zero-padded input, so no bounds checks). Lanes are summed once at the end.
template <typename T, int kStride>
CNNOPS_INLINE void conv_weight_filter_impl(const T* grad_output, const T* xpad, int64_t Hp,
                                           int64_t Wp, T* gw, const Conv2dShape& s, int64_t oc,
                                           int64_t ic) {
  using V = Vec32<T>;
  constexpr int64_t L = sizeof(V) / sizeof(T);
  const int64_t taps = s.KH * s.KW, full = s.OW / L * L;
  const int64_t sw = kStride ? kStride : s.stride_w;
  // per tap, L partial sums; plain T storage (heap memory need not be 32-byte aligned)
  std::vector<T> acc(taps * L, T(0));
  for (int64_t t = 0; t < taps; ++t) gw[t] = T(0);
  for (int64_t n = 0; n < s.N; ++n) {
    const T* gout_plane = grad_output + (n * s.C_out + oc) * s.OH * s.OW;
    const T* x_plane = xpad + (n * s.C_in + ic) * Hp * Wp;
    for (int64_t oh = 0; oh < s.OH; ++oh) {
      const T* gout_row = gout_plane + oh * s.OW;
      for (int64_t kh = 0; kh < s.KH; ++kh) {
        const T* x_row = x_plane + (oh * s.stride_h + kh * s.dil_h) * Wp;
        for (int64_t kw = 0; kw < s.KW; ++kw) {
          const T* x = x_row + kw * s.dil_w;  // x[ow * stride] is tap (kh, kw) of column ow
          T* partial = acc.data() + (kh * s.KW + kw) * L;
          V a;
          load<T, V, 1>(a, partial, 1);
          for (int64_t ow = 0; ow < full; ow += L) {
            V g, v;
            load<T, V, 1>(g, gout_row + ow, 1);
            load<T, V, kStride>(v, x + ow * sw, sw);
            a += g * v;
          }
          std::memcpy(partial, &a, sizeof(V));
          T tail = 0;
          for (int64_t ow = full; ow < s.OW; ++ow) tail += gout_row[ow] * x[ow * sw];
          gw[kh * s.KW + kw] += tail;
        }
      }
    }
  }
  for (int64_t t = 0; t < taps; ++t)
    for (int64_t l = 0; l < L; ++l) gw[t] += acc[t * L + l];
}

// conv_weight_block for rows narrower than a vector: scalar sums. A function of its own so
// that its scalar accumulators are not live in the vector loop (they took registers there).
template <typename T, int kStride, int KW, int OCB, int ICB>
CNNOPS_INLINE void conv_weight_block_narrow(const T* grad_output, const T* xpad, int64_t Hp,
                                            int64_t Wp, T* grad_weight, const Conv2dShape& s,
                                            int64_t oc0, int64_t icg0, int64_t n0, int64_t n1) {
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
  const int64_t ic0 = (oc0 / cout_g) * cin_g + icg0;
  const int64_t sw = kStride ? kStride : s.stride_w;
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    T acc[OCB][ICB][KW] = {};
    for (int64_t n = n0; n < n1; ++n)
      for (int64_t oh = 0; oh < s.OH; ++oh)
        for (int64_t ow = 0; ow < s.OW; ++ow)
          for (int j = 0; j < OCB; ++j) {
            const T g = grad_output[((n * s.C_out + oc0 + j) * s.OH + oh) * s.OW + ow];
            for (int i = 0; i < ICB; ++i) {
              const T* x = xpad + ((n * s.C_in + ic0 + i) * Hp + oh * s.stride_h +
                                   kh * s.dil_h) * Wp + ow * sw;
              for (int kw = 0; kw < KW; ++kw) acc[j][i][kw] += g * x[kw * s.dil_w];
            }
          }
    for (int j = 0; j < OCB; ++j)
      for (int i = 0; i < ICB; ++i)
        for (int kw = 0; kw < KW; ++kw) {
          T& gw = grad_weight[(((oc0 + j) * cin_g + icg0 + i) * s.KH + kh) * KW + kw];
          gw = n0 == 0 ? acc[j][i][kw] : gw + acc[j][i][kw];
        }
  }
}

// grad_weight of the OCB x ICB filters (oc0 + j, icg0 + i) for a kernel width known at
// compile time (KW <= 7), one filter row kh at a time: for every (n, oh) and every vector of
// L output columns, OCB grad_output vectors and ICB x KW input vectors are loaded and all
// OCB x ICB x KW products accumulated in registers. Each load feeds several FMAs (the input
// planes are read once per OCB output channels, grad_output once per ICB input channels),
// and the accumulators are independent chains. Columns past the last whole vector go as one
// more, masked vector (scalar sums only for rows narrower than a vector).
template <typename T, int kStride, int KW, int OCB, int ICB>
CNNOPS_INLINE void conv_weight_block(const T* grad_output, const T* xpad, int64_t Hp,
                                     int64_t Wp, T* grad_weight, const Conv2dShape& s,
                                     int64_t oc0, int64_t icg0, int64_t n0, int64_t n1) {
  using V = Vec32<T>;
  using Mask = typename MaskOf<T>::type;
  constexpr int64_t L = sizeof(V) / sizeof(T);
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
  const int64_t ic0 = (oc0 / cout_g) * cin_g + icg0;  // the input channel of icg0
  if (s.OW < L) {
    conv_weight_block_narrow<T, kStride, KW, OCB, ICB>(grad_output, xpad, Hp, Wp, grad_weight, s,
                                                       oc0, icg0, n0, n1);
    return;
  }
  const int64_t sw = kStride ? kStride : s.stride_w, full = s.OW / L * L;
  for (int64_t kh = 0; kh < s.KH; ++kh) {
    V acc[OCB][ICB][KW];
    for (int j = 0; j < OCB; ++j)
      for (int i = 0; i < ICB; ++i)
        for (int kw = 0; kw < KW; ++kw) acc[j][i][kw] = V{};
    for (int64_t n = n0; n < n1; ++n) {
      for (int64_t oh = 0; oh < s.OH; ++oh) {
        const T* g_row[OCB];
        const T* x_row[ICB];  // x_row[i][kw * dil + ow * stride]: tap (kh, kw) of column ow
        for (int j = 0; j < OCB; ++j)
          g_row[j] = grad_output + ((n * s.C_out + oc0 + j) * s.OH + oh) * s.OW;
        for (int i = 0; i < ICB; ++i)
          x_row[i] = xpad + ((n * s.C_in + ic0 + i) * Hp + oh * s.stride_h + kh * s.dil_h) * Wp;
        for (int64_t ow = 0; ow < full; ow += L) {
          V g[OCB];
          for (int j = 0; j < OCB; ++j) load<T, V, 1>(g[j], g_row[j] + ow, 1);
          for (int i = 0; i < ICB; ++i)
            for (int kw = 0; kw < KW; ++kw) {
              V x;
              load<T, V, kStride>(x, x_row[i] + kw * s.dil_w + ow * sw, sw);
              for (int j = 0; j < OCB; ++j) acc[j][i][kw] += g[j] * x;
            }
        }
        if (full < s.OW) {
          // the last columns as one vector: the row's last L columns, with the lanes the loop
          // above already summed set to zero in both factors (so they add exactly +0)
          const int64_t ow = s.OW - L;
          Mask keep;
          for (int64_t l = 0; l < L; ++l) keep[l] = ow + l >= full ? -1 : 0;
          V g[OCB];
          for (int j = 0; j < OCB; ++j) {
            load<T, V, 1>(g[j], g_row[j] + ow, 1);
            g[j] = (V)((Mask)g[j] & keep);
          }
          for (int i = 0; i < ICB; ++i)
            for (int kw = 0; kw < KW; ++kw) {
              V x;
              load<T, V, kStride>(x, x_row[i] + kw * s.dil_w + ow * sw, sw);
              x = (V)((Mask)x & keep);
              for (int j = 0; j < OCB; ++j) acc[j][i][kw] += g[j] * x;
            }
        }
      }
    }
    for (int j = 0; j < OCB; ++j)
      for (int i = 0; i < ICB; ++i)
        for (int kw = 0; kw < KW; ++kw) {
          T sum = acc[j][i][kw][0];
          for (int64_t l = 1; l < L; ++l) sum += acc[j][i][kw][l];
          T& gw = grad_weight[(((oc0 + j) * cin_g + icg0 + i) * s.KH + kh) * KW + kw];
          gw = n0 == 0 ? sum : gw + sum;  // images [n0, n1) add to the earlier images' sum
        }
  }
}

// The filters (oc0 .. oc0 + oc_count) x (icg0 .. icg0 + ic_count) with blocks of OCB x ICB
// (about 12-16 accumulators: KW = 1: 4 x 4, KW <= 3: 4 x 1, else 2 x 1, or 3 x 1 where the
// AVX-512 clones run: wide_blocks), a partial block as single filters.
template <typename T, int kStride, int KW, int OCB, int ICB>
CNNOPS_INLINE void conv_weight_unit(const T* grad_output, const T* xpad, int64_t Hp, int64_t Wp,
                                    T* grad_weight, const Conv2dShape& s, int64_t oc0,
                                    int64_t oc_count, int64_t icg0, int64_t ic_count,
                                    int64_t n0, int64_t n1) {
  if (oc_count == OCB && ic_count == ICB) {
    conv_weight_block<T, kStride, KW, OCB, ICB>(grad_output, xpad, Hp, Wp, grad_weight, s, oc0,
                                                icg0, n0, n1);
    return;
  }
  for (int64_t j = 0; j < oc_count; ++j)
    for (int64_t i = 0; i < ic_count; ++i)
      conv_weight_block<T, kStride, KW, 1, 1>(grad_output, xpad, Hp, Wp, grad_weight, s,
                                              oc0 + j, icg0 + i, n0, n1);
}

// The block shape the driver uses for kernel width KW (0: KW > 7, the generic loop).
CNNOPS_INLINE int64_t weight_oc_block(int64_t KW, bool wide) {
  return KW == 1 || KW <= 3 ? 4 : KW <= 7 ? (wide ? 3 : 2) : 1;
}
// Whether the loader runs the x86-64-v4 (AVX-512) clones: 32 vector registers, room for 3 x KW
// accumulators plus the loads (the AVX2 and baseline clones have 16 and keep 2 x KW). The
// block shape does not change any weight's sum (each accumulator adds the same products in
// the same order), only how many filters share the input loads.
CNNOPS_INLINE bool wide_blocks() {
#if defined(__x86_64__) && defined(__GNUC__) && __GNUC__ >= 12 && !defined(__clang__)
  static const bool wide = __builtin_cpu_supports("x86-64-v4");
  return wide;
#else
  return false;
#endif
}
CNNOPS_INLINE int64_t weight_ic_block(int64_t KW) { return KW == 1 ? 4 : 1; }

template <typename T, int kStride>
CNNOPS_INLINE void conv_weight_unit_any(const T* grad_output, const T* xpad, int64_t Hp,
                                        int64_t Wp, T* grad_weight, const Conv2dShape& s,
                                        int64_t oc0, int64_t oc_count, int64_t icg0,
                                        int64_t ic_count, int64_t n0, int64_t n1, bool wide) {
#define CNNOPS_UNIT(KW, OCB, ICB) \
  return conv_weight_unit<T, kStride, KW, OCB, ICB>(grad_output, xpad, Hp, Wp, grad_weight, s, \
                                                    oc0, oc_count, icg0, ic_count, n0, n1)
  switch (s.KW) {
    case 1: CNNOPS_UNIT(1, 4, 4);
    case 2: CNNOPS_UNIT(2, 4, 1);
    case 3: CNNOPS_UNIT(3, 4, 1);
    case 4: if (wide) CNNOPS_UNIT(4, 3, 1); else CNNOPS_UNIT(4, 2, 1);
    case 5: if (wide) CNNOPS_UNIT(5, 3, 1); else CNNOPS_UNIT(5, 2, 1);
    case 6: if (wide) CNNOPS_UNIT(6, 3, 1); else CNNOPS_UNIT(6, 2, 1);
    case 7: if (wide) CNNOPS_UNIT(7, 3, 1); else CNNOPS_UNIT(7, 2, 1);
    default: {  // wide kernels (AlexNet's 11): the generic loop over all images, one filter at
               // a time (the driver calls it with the whole batch, n0 = 0, n1 = N)
      const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups;
      for (int64_t oc = oc0; oc < oc0 + oc_count; ++oc)
        for (int64_t icg = icg0; icg < icg0 + ic_count; ++icg)
          conv_weight_filter_impl<T, kStride>(grad_output, xpad, Hp, Wp,
                                              grad_weight + (oc * cin_g + icg) * s.KH * s.KW,
                                              s, oc, (oc / cout_g) * cin_g + icg);
    }
  }
#undef CNNOPS_UNIT
}

template <typename T>
CNNOPS_SIMD_CLONES void conv_weight_unit_cloned(const T* grad_output, const T* xpad, int64_t Hp,
                                                int64_t Wp, T* grad_weight, const Conv2dShape& s,
                                                int64_t oc0, int64_t oc_count, int64_t icg0,
                                                int64_t ic_count, int64_t n0, int64_t n1,
                                                bool wide) {
  if (s.stride_w == 1)
    conv_weight_unit_any<T, 1>(grad_output, xpad, Hp, Wp, grad_weight, s, oc0, oc_count, icg0, ic_count, n0, n1, wide);
  else if (s.stride_w == 2)
    conv_weight_unit_any<T, 2>(grad_output, xpad, Hp, Wp, grad_weight, s, oc0, oc_count, icg0, ic_count, n0, n1, wide);
  else
    conv_weight_unit_any<T, 0>(grad_output, xpad, Hp, Wp, grad_weight, s, oc0, oc_count, icg0, ic_count, n0, n1, wide);
}

}  // namespace

// grad_input = the transposed convolution of grad_output. With stride 1 it is a plain
// convolution of grad_output (padded by dilation * (kernel - 1) - padding) with the filters
// flipped and their channel axes swapped, so the forward kernel computes it. Otherwise each
// grad_input plane is gathered by the thread that owns it (conv_input_plane_gather).
template <typename T>
void conv2d_grad_input_cpu(const T* grad_output, const T* weight, T* grad_input,
                               const Conv2dShape& s) {
  // float32 with C_in >= 16: stride-phase sub-convolutions on the blocked forward
  // (conv2d_blocked_grad_input.cpp)
  if constexpr (std::is_same_v<T, float>) {
    if (conv2d_grad_input_blocked_f32(grad_output, weight, grad_input, s)) return;
  }
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups, taps = s.KH * s.KW;
  const int64_t pad_h = s.dil_h * (s.KH - 1) - s.pad_h, pad_w = s.dil_w * (s.KW - 1) - s.pad_w;
  if (s.stride_h == 1 && s.stride_w == 1 && pad_h >= 0 && pad_w >= 0) {
    Conv2dShape t = s;
    t.C_in = s.C_out, t.H = s.OH, t.W = s.OW, t.C_out = s.C_in, t.OH = s.H, t.OW = s.W;
    t.pad_h = pad_h, t.pad_w = pad_w;
    // flipped[ic, oc_in_group, kh, kw] = weight[oc, ic_in_group, KH - 1 - kh, KW - 1 - kw]
    std::vector<T> flipped(s.C_in * cout_g * taps);
    for (int64_t ic = 0; ic < s.C_in; ++ic) {
      const int64_t g = ic / cin_g, icg = ic % cin_g;
      for (int64_t ocg = 0; ocg < cout_g; ++ocg)
        for (int64_t k = 0; k < taps; ++k)
          flipped[(ic * cout_g + ocg) * taps + k] =
              weight[((g * cout_g + ocg) * cin_g + icg) * taps + taps - 1 - k];
    }
    conv2d_forward_cpu(grad_output, flipped.data(), static_cast<const T*>(nullptr), grad_input,
                       t, false);
    return;
  }
  const int64_t work = s.N * s.C_out * s.OH * s.OW * cin_g * taps;
#pragma omp parallel for collapse(2) schedule(static) if (work > kParallelWork)
  for (int64_t n = 0; n < s.N; ++n)
    for (int64_t ic = 0; ic < s.C_in; ++ic)
      conv_input_plane_gather(grad_output, weight, grad_input + (n * s.C_in + ic) * s.H * s.W,
                              s, n, ic);
}

// grad_weight[oc, icg, kh, kw] = sum over n, oh, ow of grad_output * the input under that tap.
// The batch is cut into chunks of images whose input and grad_output planes fit in about
// 1 MiB (half an L2), all of one size (the last may be shorter). The chunks depend on the
// shape only, never on the thread count: every weight is the sum of its per-chunk sums taken
// in chunk order, so the bits are the same for any thread count and run to run. Two drivers
// compute exactly these sums:
// - many filter blocks (units of OCB output channels x ICB input channels, conv_weight_block):
//   the chunks one after the other, the units of a chunk split among the threads (each thread
//   keeps the same units, so no two threads write one filter); a chunk's planes are read from
//   memory once and then from L2 by every unit.
// - few filter blocks (thin layers: LeNet's conv1 1->6 5x5 has 3 units for 2 threads, and a
//   barrier per chunk): the (chunk, unit) pairs in one parallel loop, each chunk's sums into
//   its own slot, then the slots added in chunk order. The zero-padded copy of the input is
//   made per chunk into a thread's own buffer (it stays in L2) instead of for the whole batch.
// Kernels wider than 7 go over the whole batch at once (the generic loop).
template <typename T>
void conv2d_grad_weight_cpu(const T* grad_output, const T* input, T* grad_weight,
                                const Conv2dShape& s) {
  if constexpr (std::is_same_v<T, float>) {
    if (conv2d_grad_weight_blocked_f32(grad_output, input, grad_weight, s)) return;
  }
  const int64_t cin_g = s.C_in / s.groups, cout_g = s.C_out / s.groups, taps = s.KH * s.KW;
  const int64_t work = s.N * s.C_out * s.OH * s.OW * cin_g * taps;
  const bool wide = wide_blocks();
  const int64_t ocb = weight_oc_block(s.KW, wide), icb = weight_ic_block(s.KW);
  const int64_t oc_blocks = ceil_div(cout_g, ocb);  // per group
  const int64_t oc_units = s.groups * oc_blocks, ic_units = ceil_div(cin_g, icb);
  const int64_t units = oc_units * ic_units;
  const int64_t Hp = s.H + 2 * s.pad_h, Wp = s.W + 2 * s.pad_w;
  const int64_t image_bytes =
      (s.C_in * Hp * Wp + s.C_out * s.OH * s.OW) * static_cast<int64_t>(sizeof(T));
  const int64_t max_chunk =
      s.KW > 7 ? s.N : std::max<int64_t>(1, (int64_t(1) << 20) / image_bytes);
  const int64_t chunks = std::max<int64_t>(1, ceil_div(s.N, max_chunk));
  const int64_t chunk = ceil_div(s.N, chunks);  // 0 for an empty batch: no chunk runs
  const int64_t weight_size = s.C_out * cin_g * taps;
  const bool parallel = work > kParallelWork;
  // the unit (oc0, count, icg0, count) of unit index u
  auto run_unit = [&](const T* gout, const T* x, int64_t xHp, int64_t xWp, T* gw, int64_t u,
                      int64_t n0, int64_t n1) {
    const int64_t ou = u / ic_units, v = u % ic_units;
    const int64_t g = ou / oc_blocks, first = (ou % oc_blocks) * ocb;
    conv_weight_unit_cloned(gout, x, xHp, xWp, gw, s, g * cout_g + first,
                            std::min(ocb, cout_g - first), v * icb,
                            std::min(icb, cin_g - v * icb), n0, n1, wide);
  };
  const bool split = s.KW <= 7 && chunks > 1 && parallel &&
                     units < 4 * static_cast<int64_t>(omp_get_max_threads());
  if (!split) {
    PaddedInput<T> xpad;
    pad_input(input, s, xpad);
#pragma omp parallel if (parallel)
    for (int64_t n0 = 0; n0 < s.N; n0 += chunk) {
#pragma omp for schedule(static)
      for (int64_t u = 0; u < units; ++u)
        run_unit(grad_output, xpad.data, xpad.Hp, xpad.Wp, grad_weight, u, n0,
                 std::min(n0 + chunk, s.N));
    }
    return;
  }
  // every chunk's sums in its own slot (chunk c: grad_weight's layout at sums + c weight_size)
  std::vector<T> sums(chunks * weight_size);
  const bool copy = s.pad_h != 0 || s.pad_w != 0 || s.stride_w == 2;  // as pad_input
  const int64_t plane = Hp * Wp, out_image = s.C_out * s.OH * s.OW;
#pragma omp parallel
  {
    // this thread's zero-padded copy of one chunk (the borders stay zero: only the interior
    // is rewritten), with room after it for the stride-2 loads' extra element
    std::vector<T> buffer(copy ? chunk * s.C_in * plane + 64 / sizeof(T) : 0, T(0));
    int64_t copied = -1;  // the chunk in buffer
#pragma omp for schedule(static)
    for (int64_t i = 0; i < chunks * units; ++i) {
      const int64_t c = i / units, u = i % units;
      const int64_t n0 = c * chunk, count = std::min(chunk, s.N - n0);
      const T* x = input + n0 * s.C_in * s.H * s.W;
      if (copy) {
        if (copied != c) {
          for (int64_t q = 0; q < count * s.C_in; ++q)
            for (int64_t h = 0; h < s.H; ++h)
              std::copy(x + (q * s.H + h) * s.W, x + (q * s.H + h + 1) * s.W,
                        buffer.data() + (q * Hp + h + s.pad_h) * Wp + s.pad_w);
          copied = c;
        }
        x = buffer.data();
      }
      // images n0 .. n0 + count as images 0 .. count: the unit writes its chunk sums
      run_unit(grad_output + n0 * out_image, x, Hp, Wp, sums.data() + c * weight_size, u, 0,
               count);
    }
#pragma omp for schedule(static)
    for (int64_t k = 0; k < weight_size; ++k) {
      T sum = sums[k];
      for (int64_t c = 1; c < chunks; ++c) sum = sum + sums[c * weight_size + k];
      grad_weight[k] = sum;
    }
  }
}

namespace {

// grad_bias[oc]: the sum of one channel's grad_output planes over the batch. Four vectors of
// partial sums (independent add chains; one chain is add-latency bound), then a vector at a
// time, then the last columns of a plane one by one; the lanes are added at the end. A
// cloned function, so the AVX2 / AVX-512 builds vectorise it (an OpenMP body is not cloned).
template <typename T>
CNNOPS_SIMD_CLONES T grad_bias_channel(const T* grad_output, const Conv2dShape& s, int64_t oc) {
  using V = Vec32<T>;
  constexpr int64_t L = sizeof(V) / sizeof(T);
  const int64_t plane = s.OH * s.OW, quad = plane / (4 * L) * (4 * L), full = plane / L * L;
  V acc[4] = {V{}, V{}, V{}, V{}};
  T tail = 0;
  for (int64_t n = 0; n < s.N; ++n) {
    const T* g = grad_output + (n * s.C_out + oc) * plane;
    for (int64_t i = 0; i < quad; i += 4 * L)
      for (int k = 0; k < 4; ++k) {
        V v;
        load<T, V, 1>(v, g + i + k * L, 1);
        acc[k] += v;
      }
    for (int64_t i = quad; i < full; i += L) {
      V v;
      load<T, V, 1>(v, g + i, 1);
      acc[0] += v;
    }
    for (int64_t i = full; i < plane; ++i) tail += g[i];
  }
  const V a = (acc[0] + acc[1]) + (acc[2] + acc[3]);
  T sum = tail;
  for (int64_t l = 0; l < L; ++l) sum += a[l];
  return sum;
}

}  // namespace

template <typename T>
void conv2d_grad_bias_cpu(const T* grad_output, T* grad_bias, const Conv2dShape& s) {
#pragma omp parallel for schedule(static) if (s.N * s.C_out * s.OH * s.OW > kParallelWork)
  for (int64_t oc = 0; oc < s.C_out; ++oc) grad_bias[oc] = grad_bias_channel(grad_output, s, oc);
}

#define CNNOPS_INSTANTIATE(T)                                                               \
  template void conv2d_forward_cpu<T>(const T*, const T*, const T*, T*, const Conv2dShape&, \
                                      bool);                                                \
  template void conv2d_grad_input_cpu<T>(const T*, const T*, T*, const Conv2dShape&);   \
  template void conv2d_grad_weight_cpu<T>(const T*, const T*, T*, const Conv2dShape&);  \
  template void conv2d_grad_bias_cpu<T>(const T*, T*, const Conv2dShape&);
CNNOPS_INSTANTIATE(float)
CNNOPS_INSTANTIATE(double)
#undef CNNOPS_INSTANTIATE

}  // namespace cnnops
