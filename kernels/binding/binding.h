// The helpers of the torch binding (kernels/binding/*.cpp): the one place where torch types meet
// the raw-pointer kernels of kernels/include/kernels.h and batch_norm.h.
//
// Division of labour. cnnops/_validate.py checks every user argument and raises ValueError /
// TypeError; cnnops/backends/native.py then calls the ops with normalised arguments and the
// output sizes from cnnops/shapes.py. The binding therefore checks only what keeps the raw
// pointers in bounds and typed (ranks, sizes against buffers, dtypes and devices of the
// pointers): CNNOPS_INTERNAL_CHECK, whose message says that reaching it is a bug of the caller,
// not a user error.
#pragma once

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#include <optional>

#ifdef CNNOPS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "batch_norm.h"
#include "kernels.h"

namespace cnnops {
namespace binding {

using at::IntArrayRef;
using at::Tensor;

// An invariant the validated caller guarantees; raised as RuntimeError naming the op.
#define CNNOPS_INTERNAL_CHECK(cond, op, ...)                                              \
  TORCH_CHECK(cond, op, ": internal error (cnnops validates arguments before this op; " \
              "please report): ", __VA_ARGS__)

// `t` is on `ref`'s device with `ref`'s dtype: the kernels read both through one pointer type.
inline void check_like(const Tensor& t, const char* name, const Tensor& ref, const char* op) {
  CNNOPS_INTERNAL_CHECK(t.device() == ref.device() && t.scalar_type() == ref.scalar_type(), op,
                        name, " is ", t.scalar_type(), " on ", t.device(), ", expected ",
                        ref.scalar_type(), " on ", ref.device());
}

inline void check_rank(const Tensor& t, int64_t rank, const char* name, const char* op) {
  CNNOPS_INTERNAL_CHECK(t.dim() == rank, op, name, " must be ", rank, "-D, got shape ",
                        t.sizes());
}

inline void check_pair(IntArrayRef v, const char* name, const char* op) {
  CNNOPS_INTERNAL_CHECK(v.size() == 2, op, name, " must have 2 entries, got ", v);
}

// The output (H, W) the caller computed (cnnops.shapes); a SymInt[2] in the schemas so that
// torch.compile can pass symbolic sizes to the fakes. Here the sizes are always concrete.
inline std::array<int64_t, 2> output_hw(c10::SymIntArrayRef size, const char* op) {
  CNNOPS_INTERNAL_CHECK(size.size() == 2, op, "output_size must have 2 entries, got ",
                        size.size());
  const std::array<int64_t, 2> hw{size[0].expect_int(), size[1].expect_int()};
  CNNOPS_INTERNAL_CHECK(hw[0] >= 0 && hw[1] >= 0, op, "negative output_size ", size);
  return hw;
}

template <typename T>
const T* ptr(const Tensor& t) { return t.defined() ? t.const_data_ptr<T>() : nullptr; }
template <typename T>
T* mut(Tensor& t) { return t.defined() ? t.mutable_data_ptr<T>() : nullptr; }
inline const void* vptr(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
inline void* vmut(Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; }

#ifdef CNNOPS_WITH_CUDA
// The CUDA kernels' element type; the dispatcher declares these four dtypes for CUDA.
inline DType cuda_dtype(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: CNNOPS_INTERNAL_CHECK(false, op, "no CUDA kernel for dtype ", t.scalar_type());
  }
  return DType::f32;  // unreachable
}

inline void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

inline cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }
#endif

// Runs CPU_BODY with scalar_t bound to float or double on CPU tensors, or launches CUDA_BODY
// (an expression returning cudaError_t, with `dtype` bound) under a device guard on PyTorch's
// current stream. AT_DISPATCH raises for any other CPU dtype: the dispatcher declares float32
// and float64 for native on the CPU, so that is an internal error too.
#ifdef CNNOPS_WITH_CUDA
#define CNNOPS_RUN(tensor, op, CPU_BODY, CUDA_BODY)                                      \
  if ((tensor).is_cuda()) {                                                              \
    const c10::cuda::CUDAGuard device_guard((tensor).device());                          \
    const ::cnnops::DType dtype = ::cnnops::binding::cuda_dtype(tensor, op);             \
    ::cnnops::binding::check_launch(CUDA_BODY, op);                                      \
  } else {                                                                               \
    AT_DISPATCH_FLOATING_TYPES((tensor).scalar_type(), op, [&] CPU_BODY);               \
  }
#else
#define CNNOPS_RUN(tensor, op, CPU_BODY, CUDA_BODY)                                      \
  CNNOPS_INTERNAL_CHECK((tensor).device().is_cpu(), op, "built without CUDA kernels, got " \
                        "a tensor on ", (tensor).device());                              \
  AT_DISPATCH_FLOATING_TYPES((tensor).scalar_type(), op, [&] CPU_BODY);
#endif

// ---- the ops (registered in ops.cpp) ---------------------------------------------------------
// conv2d and pooling: ops.cpp; batch norm: batch_norm.cpp.

Tensor conv2d(const Tensor& input, const Tensor& weight, const std::optional<Tensor>& bias,
              IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
              c10::SymIntArrayRef output_size, bool relu, int64_t algo);
Tensor conv2d_grad_input(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                         IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                         int64_t groups);
Tensor conv2d_grad_weight(const Tensor& grad_output, const Tensor& input, const Tensor& weight,
                          IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                          int64_t groups);
Tensor conv2d_grad_bias(const Tensor& grad_output);

std::tuple<Tensor, Tensor> max_pool2d(const Tensor& input, IntArrayRef kernel_size,
                                      IntArrayRef stride, IntArrayRef padding,
                                      IntArrayRef dilation, c10::SymIntArrayRef output_size);
Tensor max_pool2d_grad_input(const Tensor& grad_output, const Tensor& input,
                             const Tensor& indices, IntArrayRef kernel_size, IntArrayRef stride,
                             IntArrayRef padding, IntArrayRef dilation);
Tensor avg_pool2d(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                  IntArrayRef padding, bool count_include_pad,
                  std::optional<int64_t> divisor_override, c10::SymIntArrayRef output_size);
Tensor avg_pool2d_grad_input(const Tensor& grad_output, const Tensor& input,
                             IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                             bool count_include_pad, std::optional<int64_t> divisor_override);

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> batch_norm(
    const Tensor& input, const std::optional<Tensor>& weight, const std::optional<Tensor>& bias,
    const std::optional<Tensor>& running_mean, const std::optional<Tensor>& running_var,
    bool training, double momentum, double eps);
std::tuple<Tensor, Tensor, Tensor> batch_norm_grad(
    const Tensor& grad_output, const Tensor& input, const std::optional<Tensor>& weight,
    const Tensor& save_mean, const Tensor& save_invstd, bool training,
    std::array<bool, 3> output_mask);

}  // namespace binding
}  // namespace cnnops
