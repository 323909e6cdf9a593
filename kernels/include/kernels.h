// The entry points of the conv2d and pooling kernels: what kernels/binding/ops.cpp calls.
//
// Every function takes raw pointers to NCHW-contiguous buffers and a shape struct from
// index_math.h; no torch types cross this line. CPU functions are templates instantiated for
// float and double. CUDA launchers take the element type as a DType, launch on the given stream
// and return cudaGetLastError() of the launch; they exist only when built with CUDA.
#pragma once

#include <cstdint>

#include "index_math.h"

namespace cnnops {

// ---- C++ (CPU), OpenMP over planes / rows ------------------------------------------------
template <typename T>
void conv2d_forward_cpu(const T* input, const T* weight, const T* bias, T* output,
                        const Conv2dShape& s, bool relu);
template <typename T>
void conv2d_grad_input_cpu(const T* grad_output, const T* weight, T* grad_input,
                               const Conv2dShape& s);
template <typename T>
void conv2d_grad_weight_cpu(const T* grad_output, const T* input, T* grad_weight,
                                const Conv2dShape& s);
template <typename T>
void conv2d_grad_bias_cpu(const T* grad_output, T* grad_bias, const Conv2dShape& s);

// indices: nullptr for the values only (max_pool2d_values: no index computed or written).
template <typename T>
void max_pool2d_forward_cpu(const T* input, T* output, int64_t* indices, const Pool2dShape& s);
// Channels-last: input (N, H, W, C) dense, output and indices (N, OH, OW, C), s.planes = N * C;
// indices nullptr for the values only.
template <typename T>
void max_pool2d_forward_nhwc_cpu(const T* input, T* output, int64_t* indices, int64_t C,
                                 const Pool2dShape& s);
template <typename T>
void max_pool2d_grad_input_cpu(const T* grad_output, const int64_t* indices, T* grad_input,
                             const Pool2dShape& s);
// Channels-last: grad_output, indices (N, OH, OW, C) and grad_input (N, H, W, C) dense.
template <typename T>
void max_pool2d_grad_input_nhwc_cpu(const T* grad_output, const int64_t* indices,
                                    T* grad_input, int64_t C, const Pool2dShape& s);

// divisor_override: 0 for none.
template <typename T>
void avg_pool2d_forward_cpu(const T* input, T* output, const Pool2dShape& s,
                            bool count_include_pad, int64_t divisor_override);
template <typename T>
void avg_pool2d_grad_input_cpu(const T* grad_output, T* grad_input, const Pool2dShape& s,
                             bool count_include_pad, int64_t divisor_override);
// Channels-last: input / grad_input (N, H, W, C) and output / grad_output (N, OH, OW, C)
// dense, s.planes = N * C.
template <typename T>
void avg_pool2d_forward_nhwc_cpu(const T* input, T* output, int64_t C, const Pool2dShape& s,
                                 bool count_include_pad, int64_t divisor_override);
template <typename T>
void avg_pool2d_grad_input_nhwc_cpu(const T* grad_output, T* grad_input, int64_t C,
                                    const Pool2dShape& s, bool count_include_pad,
                                    int64_t divisor_override);

// conv2d forward algorithms, as the `algo` argument of cnnops::conv2d.
enum ConvAlgo : int64_t {
  kConvAuto = 0,   // CPU: the one C++ kernel; CUDA: tiled where its shared memory fits, else naive
  kConvNaive = 1,  // CUDA: one thread per output element, every operand from global memory
  kConvTiled = 2,  // CUDA: input patch and weights staged in shared memory, 4 channels a thread
};

}  // namespace cnnops

#ifdef CNNOPS_WITH_CUDA
#include <cuda_runtime_api.h>

namespace cnnops {

// Element types of the CUDA kernels; half types accumulate in float.
enum class DType { f32, f64, f16, bf16 };

cudaError_t conv2d_forward_cuda(DType dtype, const void* input, const void* weight,
                                const void* bias, void* output, const Conv2dShape& s, bool relu,
                                int64_t algo, cudaStream_t stream);
cudaError_t conv2d_grad_input_cuda(DType dtype, const void* grad_output, const void* weight,
                                       void* grad_input, const Conv2dShape& s,
                                       cudaStream_t stream);
cudaError_t conv2d_grad_weight_cuda(DType dtype, const void* grad_output, const void* input,
                                        void* grad_weight, const Conv2dShape& s,
                                        cudaStream_t stream);
cudaError_t conv2d_grad_bias_cuda(DType dtype, const void* grad_output, void* grad_bias,
                                      const Conv2dShape& s, cudaStream_t stream);
// Whether the tiled conv2d forward kernel can run this shape (its shared memory fits).
bool conv2d_tiled_fits(const Conv2dShape& s, DType dtype);

cudaError_t max_pool2d_forward_cuda(DType dtype, const void* input, void* output,
                                    int64_t* indices, const Pool2dShape& s, cudaStream_t stream);
cudaError_t max_pool2d_grad_input_cuda(DType dtype, const void* grad_output,
                                     const int64_t* indices, void* grad_input,
                                     const Pool2dShape& s, cudaStream_t stream);
cudaError_t avg_pool2d_forward_cuda(DType dtype, const void* input, void* output,
                                    const Pool2dShape& s, bool count_include_pad,
                                    int64_t divisor_override, cudaStream_t stream);
cudaError_t avg_pool2d_grad_input_cuda(DType dtype, const void* grad_output, void* grad_input,
                                     const Pool2dShape& s, bool count_include_pad,
                                     int64_t divisor_override, cudaStream_t stream);

}  // namespace cnnops
#endif  // CNNOPS_WITH_CUDA
