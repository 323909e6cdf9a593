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

// grad_weight = sum over the batch of grad_output x the input under each tap, float32, NCHW
// in, [C_out][C_in / groups][KH][KW] out (kernels/cpu/conv2d_blocked_grad_weight.cpp).
// Returns false, writing nothing, for shapes it does not handle (the caller then runs the
// row kernel of conv2d.cpp).
bool conv2d_grad_weight_blocked_f32(const float* grad_output, const float* input,
                                    float* grad_weight, const Conv2dShape& s);

}  // namespace cnnops
