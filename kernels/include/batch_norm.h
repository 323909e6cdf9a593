// The entry points of the batch_norm kernels: what kernels/binding/batch_norm.cpp calls.
//
// The input (N, C, *) is viewed as (N, C, L), L the product of the trailing sizes, dense in
// one of two layouts (BatchNormShape::channels_last):
//   planar (NCHW contiguous): x[(n * C + c) * L + l], a row of L values per (n, c);
//   channels-last (NHWC, and any (N, C) input): x[(n * L + l) * C + c], C channels per position.
// Per channel, over the M = N * L values of that channel:
//
//     mean = sum(x) / M,  var = sum((x - mean)^2) / M,  invstd = 1 / sqrt(var + eps)
//     y = (x - mean) * invstd * weight + bias
//
// training uses the batch's mean and (biased) var and writes the new running estimates
//     new_running_mean = (1 - momentum) * running_mean + momentum * mean
//     new_running_var  = (1 - momentum) * running_var  + momentum * var * M / (M - 1)
// eval uses mean = running_mean, var = running_var. Either way the kernels write the
// (mean, invstd) they used, which is what the backward needs:
//
//     grad_bias = sum(dy),  grad_weight = sum(dy * (x - mean)) * invstd
//     training: dx = (dy - sum(dy) / M - (x - mean) * invstd^2 * sum(dy * (x - mean)) / M)
//                    * invstd * weight
//     eval:     dx = dy * invstd * weight
//
// Per-channel vectors (weight, bias, running stats, mean, invstd, grad_weight, grad_bias) are
// in the accumulation type A: float for float / half / bfloat16 data, double for double.
// Optional pointers are nullptr when absent: weight (= 1), bias (= 0), the running stats
// (training without them updates nothing), and the backward outputs not asked for.
#pragma once

#include <cstdint>

namespace cnnops {

struct BatchNormShape {
  int64_t N, C, L;     // input (N, C, L)
  bool channels_last;  // layout: channels-last (CPU kernels only) or planar
};

// ---- C++ (CPU), float and double (A = T) ---------------------------------------------------
template <typename T>
void batch_norm_forward_cpu(const T* input, const T* weight, const T* bias,
                            const T* running_mean, const T* running_var, T* output,
                            T* save_mean, T* save_invstd, T* new_running_mean,
                            T* new_running_var, const BatchNormShape& s, bool training,
                            double momentum, double eps);
template <typename T>
void batch_norm_backward_cpu(const T* grad_output, const T* input, const T* weight,
                             const T* save_mean, const T* save_invstd, T* grad_input,
                             T* grad_weight, T* grad_bias, const BatchNormShape& s,
                             bool training);

}  // namespace cnnops

#ifdef CNNOPS_WITH_CUDA
#include <cuda_runtime_api.h>

#include "kernels.h"  // DType

namespace cnnops {

// Data pointers (input, output, grads of them) are of `dtype`; per-channel pointers are of its
// accumulation type (float, or double for f64). Planar layout only (cudaErrorInvalidValue for
// channels_last). Launch on `stream`, return the launch's error.
cudaError_t batch_norm_forward_cuda(DType dtype, const void* input, const void* weight,
                                    const void* bias, const void* running_mean,
                                    const void* running_var, void* output, void* save_mean,
                                    void* save_invstd, void* new_running_mean,
                                    void* new_running_var, const BatchNormShape& s,
                                    bool training, double momentum, double eps,
                                    cudaStream_t stream);
// `reduce_scratch`: 2 * C accumulation-type elements (sum(dy), sum(dy * (x - mean))).
cudaError_t batch_norm_backward_cuda(DType dtype, const void* grad_output, const void* input,
                                     const void* weight, const void* save_mean,
                                     const void* save_invstd, void* grad_input,
                                     void* grad_weight, void* grad_bias, void* reduce_scratch,
                                     const BatchNormShape& s, bool training,
                                     cudaStream_t stream);

}  // namespace cnnops
#endif  // CNNOPS_WITH_CUDA
