// Channel-blocked direct convolution (float32 forward), the fast path of conv2d_forward_cpu.
//
// Plain C++ (no torch types): NCHW-contiguous raw pointers and the Conv2dShape of index_math.h.
#pragma once

#include <cstdint>

#include "index_math.h"

namespace cnnops {

// The vector instruction sets the blocked kernels are compiled for. The best one the CPU has
// is used, unless the environment variable CNNOPS_CPU_ISA (read on every call, so tests can
// switch it) names a lower one: "avx512", "avx2" or "baseline" (portable GCC vector code,
// SSE2 on x86-64). A name above what the CPU supports falls back to the best supported one.
enum class CpuIsa : int { kBaseline = 0, kAvx2 = 1, kAvx512 = 2 };
CpuIsa cpu_isa_supported();  // the best the CPU has
CpuIsa cpu_isa_active();     // after the CNNOPS_CPU_ISA override

// Whether conv2d_forward_blocked_f32 handles this shape (groups == 1, C_out >= 16, enough
// multiply-adds per output for the channel blocking to pay; see the .cpp).
bool conv2d_blocked_applies(const Conv2dShape& s);

// out = conv(input, weight) + bias (optional), relu optional; NCHW in and out, OH/OW set.
// Requires conv2d_blocked_applies(s).
void conv2d_forward_blocked_f32(const float* input, const float* weight, const float* bias,
                                float* output, const Conv2dShape& s, bool relu);

// The blocked forward in general form, for the callers that run a convolution other than the
// layer's own (grad_input's stride-phase sub-convolutions): input NCHW contiguous, weight
// [C_out][C_in][KH][KW] contiguous, padding only above and left (possibly negative: rows and
// columns cropped), the output size given (rows past the input read zeros), and the output
// element (n, oc, oh, ow) written at out + n out_image + oc out_plane + oh out_row + ow out_col.
// Requires C_out >= 16 (see conv2d_blocked_applies) and N, OH, OW, C_in > 0.
struct BlockedForward {
  const float* input = nullptr;
  int64_t N, C_in, H, W;
  const float* weight;
  const float* bias;  // may be null
  bool relu;
  int64_t C_out, KH, KW, stride_h, stride_w, dil_h, dil_w, pad_top, pad_left;
  int64_t OH, OW;
  float* out;
  int64_t out_image, out_plane, out_row, out_col;
  bool cache_weights;  // keep the repacked weights for the next call with these weights
  // Optional weight layout (when w_tap is not null): weight (oc, ic, tap = kh KW + kw) is at
  // weight + oc w_out + ic w_in + w_tap[tap] (grad_input reads the layer's own weights
  // transposed and flipped this way, without a copy). cache_weights must then be false.
  const int64_t* w_tap = nullptr;
  int64_t w_in = 0, w_out = 0;
};
void conv2d_blocked_forward(const BlockedForward& f);

// grad_input of a float32 convolution by stride-phase sub-convolutions on the blocked forward
// (kernels/cpu/conv2d_blocked_grad_input.cpp). Returns false, writing nothing, for shapes it
// does not handle (then conv2d.cpp's row kernels run).
bool conv2d_grad_input_blocked_f32(const float* grad_output, const float* weight,
                                   float* grad_input, const Conv2dShape& s);

// grad_weight = sum over the batch of grad_output x the input under each tap, float32, NCHW
// in, [C_out][C_in / groups][KH][KW] out (kernels/cpu/conv2d_blocked_grad_weight.cpp).
// Returns false, writing nothing, for shapes it does not handle (the caller then runs the
// row kernel of conv2d.cpp).
bool conv2d_grad_weight_blocked_f32(const float* grad_output, const float* input,
                                    float* grad_weight, const Conv2dShape& s);

// dst[j dst_stride + l] = src[l][j sw] for j in [0, count), l < 16: 16 rows gathered into
// 16-float pixels (the blocked kernels' channel-blocked copies) by in-register transposes
// (AVX-512: sw 1 or 2; AVX2: sw 1), else value by value
// (kernels/cpu/conv2d_blocked_grad_weight.cpp).
void gather_rows16(const float* const* src, int64_t sw, int64_t count, float* dst,
                   int64_t dst_stride, CpuIsa isa);

}  // namespace cnnops
