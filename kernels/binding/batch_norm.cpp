// The torch binding of the batch_norm kernels (batch_norm.h): schemas, argument checks, output
// allocation, and the call into the CPU templates or the CUDA launchers (on PyTorch's current
// stream, launch checked). Fakes and autograd are registered in Python:
// cnnops/native/batch_norm.py.
//
// Both ops are functional (no argument is mutated): batch_norm_forward returns the new running
// statistics and the Python wrapper copies them into running_mean / running_var. That keeps
// the op registrable with torch.library.register_autograd, which takes functional ops only.
//
// Layout: on the CPU a dense channels-last 4-D input is read as it is and the output (and
// grad_input) is channels-last; every other input (any strides, and every CUDA input) is made
// NCHW-contiguous first (a copy unless it already is) and the output is NCHW. The Python fake
// (and wrapper) apply the same rule, `keeps_channels_last` here.
// Per-channel tensors (weight, bias, running stats) may have the input's dtype or its
// accumulation dtype (float for half / bfloat16, as F.batch_norm allows); they are converted
// to the accumulation dtype, in which save_mean, save_invstd, the new running stats,
// grad_weight and grad_bias are returned.
#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <ATen/OpMathType.h>
#include <torch/library.h>

#include <array>
#include <tuple>

#ifdef CNNOPS_WITH_CUDA
#include <c10/cuda/CUDAGuard.h>
#include <c10/cuda/CUDAStream.h>
#endif

#include "batch_norm.h"

namespace cnnops {
namespace {

using at::Tensor;

BatchNormShape shape_of(const Tensor& input, const char* op) {
  TORCH_CHECK(input.dim() >= 2, op, ": input must be (N, C, *) with at least 2 dims, got shape ",
              input.sizes());
  TORCH_CHECK_TYPE(input.is_floating_point(), op, ": input must be floating point, got ",
                   input.scalar_type());
  BatchNormShape s{input.size(0), input.size(1), 1, false};
  for (int64_t d = 2; d < input.dim(); ++d) s.L *= input.size(d);
  return s;
}

// Whether the CPU kernels read `input` in place as channels-last (and write their output so).
bool keeps_channels_last(const Tensor& input) {
  return input.is_cpu() && input.dim() == 4 && !input.is_contiguous() &&
         input.is_contiguous(at::MemoryFormat::ChannelsLast);
}

// `t` dense in the layout the kernels read for an input like `like`; sets s->channels_last.
// An (N, C) input (L = 1) is the same memory in both layouts: the CPU reads it channels-last.
Tensor dense_layout(const Tensor& t, const Tensor& like, BatchNormShape* s) {
  if (keeps_channels_last(like)) {
    s->channels_last = true;
    return t.contiguous(at::MemoryFormat::ChannelsLast);
  }
  s->channels_last = like.is_cpu() && s->L == 1;
  return t.contiguous();
}

// The CPU kernels take float and double; say so as a TypeError, not a dispatch error.
void check_device_dtype(const Tensor& input, const char* op) {
  if (input.is_cuda()) {
#ifdef CNNOPS_WITH_CUDA
    const auto t = input.scalar_type();
    TORCH_CHECK_TYPE(t == at::kFloat || t == at::kDouble || t == at::kHalf || t == at::kBFloat16,
                     op, ": CUDA kernels take float32, float64, float16 and bfloat16, got ", t);
#else
    TORCH_CHECK(false, op, ": cnnops was built without CUDA kernels, got a tensor on ",
                input.device());
#endif
  } else {
    TORCH_CHECK(input.device().is_cpu(), op, ": no kernel for device ", input.device());
    TORCH_CHECK_TYPE(input.scalar_type() == at::kFloat || input.scalar_type() == at::kDouble, op,
                     ": the C++ CPU kernels take float32 and float64, got ",
                     input.scalar_type(), " (float16 / bfloat16 run on CUDA)");
  }
}

// A per-channel vector as a contiguous (C,) tensor of the accumulation dtype `acc`, or an
// undefined tensor when absent.
Tensor per_channel(const std::optional<Tensor>& t, const char* name, const Tensor& input,
                   at::ScalarType acc, int64_t C, const char* op) {
  if (!t.has_value() || !t->defined()) return Tensor();
  TORCH_CHECK(t->device() == input.device(), op, ": ", name, " is on ", t->device(),
              " but input is on ", input.device());
  TORCH_CHECK_TYPE(t->scalar_type() == input.scalar_type() || t->scalar_type() == acc, op, ": ",
                   name, " has dtype ", t->scalar_type(), " but input has ",
                   input.scalar_type(), "; expected ", input.scalar_type(), " or ", acc);
  TORCH_CHECK(t->dim() == 1 && t->size(0) == C, op, ": ", name, " must have shape (", C,
              ") for input with ", C, " channels, got ", t->sizes());
  return t->to(acc).contiguous();
}

template <typename T>
const T* typed_or_null(const Tensor& t) { return t.defined() ? t.const_data_ptr<T>() : nullptr; }
template <typename T>
T* typed_mut_or_null(Tensor& t) { return t.defined() ? t.mutable_data_ptr<T>() : nullptr; }

#ifdef CNNOPS_WITH_CUDA
const void* ptr_or_null(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
void* mut_or_null(Tensor& t) { return t.defined() ? t.mutable_data_ptr() : nullptr; }

DType cuda_dtype(const Tensor& t) {
  switch (t.scalar_type()) {
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: return DType::f32;  // check_device_dtype let nothing else through
  }
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}
#endif

// ---- forward --------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> batch_norm_forward(
    const Tensor& input_, const std::optional<Tensor>& weight_,
    const std::optional<Tensor>& bias_, const std::optional<Tensor>& running_mean_,
    const std::optional<Tensor>& running_var_, bool training, double momentum, double eps) {
  static constexpr const char* op = "cnnops::batch_norm_forward";
  BatchNormShape s = shape_of(input_, op);
  check_device_dtype(input_, op);
  const at::ScalarType acc = at::toOpMathType(input_.scalar_type());
  const Tensor weight = per_channel(weight_, "weight", input_, acc, s.C, op);
  const Tensor bias = per_channel(bias_, "bias", input_, acc, s.C, op);
  const Tensor running_mean = per_channel(running_mean_, "running_mean", input_, acc, s.C, op);
  const Tensor running_var = per_channel(running_var_, "running_var", input_, acc, s.C, op);
  TORCH_CHECK(running_mean.defined() == running_var.defined(), op,
              ": running_mean and running_var must be given together");
  TORCH_CHECK(training || running_mean.defined(), op,
              ": running_mean and running_var must be given when training=False");
  TORCH_CHECK(!training || s.N * s.L != 1, op, ": expected more than 1 value per channel when "
              "training, got input of shape ", input_.sizes());
  TORCH_CHECK(eps >= 0, op, ": eps must be >= 0, got ", eps);

  const Tensor input = dense_layout(input_, input_, &s);
  const auto acc_options = input.options().dtype(acc);
  const bool update = training && running_mean.defined();
  Tensor output = at::empty_like(input, at::MemoryFormat::Preserve);  // input is dense
  Tensor save_mean = at::empty({s.C}, acc_options), save_invstd = at::empty({s.C}, acc_options);
  Tensor new_running_mean = at::empty({update ? s.C : 0}, acc_options);
  Tensor new_running_var = at::empty({update ? s.C : 0}, acc_options);
  if (input.numel() == 0) {  // no values: the statistics are unchanged, as in torch
    save_mean.zero_();
    save_invstd.zero_();
    if (update) {
      new_running_mean.copy_(running_mean);
      new_running_var.copy_(running_var);
    }
    return {output, save_mean, save_invstd, new_running_mean, new_running_var};
  }
  if (input.is_cuda()) {
#ifdef CNNOPS_WITH_CUDA
    const c10::cuda::CUDAGuard device_guard(input.device());
    check_launch(batch_norm_forward_cuda(
                     cuda_dtype(input), input.const_data_ptr(), ptr_or_null(weight),
                     ptr_or_null(bias), ptr_or_null(running_mean), ptr_or_null(running_var),
                     output.mutable_data_ptr(), save_mean.mutable_data_ptr(),
                     save_invstd.mutable_data_ptr(), mut_or_null(new_running_mean),
                     mut_or_null(new_running_var), s, training, momentum, eps,
                     c10::cuda::getCurrentCUDAStream().stream()),
                 op);
#endif
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), op, [&] {
      batch_norm_forward_cpu<scalar_t>(
          input.const_data_ptr<scalar_t>(), typed_or_null<scalar_t>(weight),
          typed_or_null<scalar_t>(bias), typed_or_null<scalar_t>(running_mean),
          typed_or_null<scalar_t>(running_var), output.mutable_data_ptr<scalar_t>(),
          save_mean.mutable_data_ptr<scalar_t>(), save_invstd.mutable_data_ptr<scalar_t>(),
          update ? new_running_mean.mutable_data_ptr<scalar_t>() : nullptr,
          update ? new_running_var.mutable_data_ptr<scalar_t>() : nullptr, s, training,
          momentum, eps);
    });
  }
  return {output, save_mean, save_invstd, new_running_mean, new_running_var};
}

// ---- backward -------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> batch_norm_backward(
    const Tensor& grad_output_, const Tensor& input_, const std::optional<Tensor>& weight_,
    const Tensor& save_mean_, const Tensor& save_invstd_, bool training,
    std::array<bool, 3> output_mask) {
  static constexpr const char* op = "cnnops::batch_norm_backward";
  BatchNormShape s = shape_of(input_, op);
  check_device_dtype(input_, op);
  const at::ScalarType acc = at::toOpMathType(input_.scalar_type());
  TORCH_CHECK(grad_output_.sizes() == input_.sizes(), op, ": grad_output has shape ",
              grad_output_.sizes(), ", expected the input's ", input_.sizes());
  TORCH_CHECK_TYPE(grad_output_.scalar_type() == input_.scalar_type(), op,
                   ": grad_output has dtype ", grad_output_.scalar_type(), " but input has ",
                   input_.scalar_type());
  TORCH_CHECK(grad_output_.device() == input_.device(), op, ": grad_output is on ",
              grad_output_.device(), " but input is on ", input_.device());
  const Tensor weight = per_channel(weight_, "weight", input_, acc, s.C, op);
  for (const Tensor* t : {&save_mean_, &save_invstd_}) {
    TORCH_CHECK(t->scalar_type() == acc && t->dim() == 1 && t->size(0) == s.C &&
                t->device() == input_.device(), op, ": save_mean and save_invstd must be the ",
                acc, " (", s.C, ") statistics batch_norm_forward returned, got ",
                t->scalar_type(), " ", t->sizes());
  }
  const Tensor grad_output = dense_layout(grad_output_, input_, &s);
  const Tensor input = dense_layout(input_, input_, &s);
  const Tensor save_mean = save_mean_.contiguous(), save_invstd = save_invstd_.contiguous();
  const auto acc_options = input.options().dtype(acc);
  Tensor grad_input = output_mask[0] ? at::empty_like(input, at::MemoryFormat::Preserve)
                                     : at::empty({0}, input.options());
  Tensor grad_weight = at::empty({output_mask[1] ? s.C : 0}, acc_options);
  Tensor grad_bias = at::empty({output_mask[2] ? s.C : 0}, acc_options);
  if (input.numel() == 0) {  // sums over no values
    grad_weight.zero_();
    grad_bias.zero_();
    return {grad_input, grad_weight, grad_bias};
  }
  Tensor no_output;
  Tensor& dx = output_mask[0] ? grad_input : no_output;
  Tensor& dw = output_mask[1] ? grad_weight : no_output;
  Tensor& db = output_mask[2] ? grad_bias : no_output;
  if (input.is_cuda()) {
#ifdef CNNOPS_WITH_CUDA
    const c10::cuda::CUDAGuard device_guard(input.device());
    Tensor scratch = at::empty({2 * s.C}, acc_options);
    check_launch(batch_norm_backward_cuda(
                     cuda_dtype(input), grad_output.const_data_ptr(), input.const_data_ptr(),
                     ptr_or_null(weight), save_mean.const_data_ptr(),
                     save_invstd.const_data_ptr(), mut_or_null(dx), mut_or_null(dw),
                     mut_or_null(db), scratch.mutable_data_ptr(), s, training,
                     c10::cuda::getCurrentCUDAStream().stream()),
                 op);
#endif
  } else {
    AT_DISPATCH_FLOATING_TYPES(input.scalar_type(), op, [&] {
      batch_norm_backward_cpu<scalar_t>(
          grad_output.const_data_ptr<scalar_t>(), input.const_data_ptr<scalar_t>(),
          typed_or_null<scalar_t>(weight), save_mean.const_data_ptr<scalar_t>(),
          save_invstd.const_data_ptr<scalar_t>(), typed_mut_or_null<scalar_t>(dx),
          typed_mut_or_null<scalar_t>(dw), typed_mut_or_null<scalar_t>(db), s, training);
    });
  }
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace

TORCH_LIBRARY_FRAGMENT(cnnops, m) {
  m.def("batch_norm_forward(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
        "Tensor? running_var, bool training, float momentum, float eps) "
        "-> (Tensor output, Tensor save_mean, Tensor save_invstd, Tensor new_running_mean, "
        "Tensor new_running_var)");
  m.def("batch_norm_backward(Tensor grad_output, Tensor input, Tensor? weight, "
        "Tensor save_mean, Tensor save_invstd, bool training, bool[3] output_mask) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

TORCH_LIBRARY_IMPL(cnnops, CPU, m) {
  m.impl("batch_norm_forward", &batch_norm_forward);
  m.impl("batch_norm_backward", &batch_norm_backward);
}

#ifdef CNNOPS_WITH_CUDA
TORCH_LIBRARY_IMPL(cnnops, CUDA, m) {
  m.impl("batch_norm_forward", &batch_norm_forward);
  m.impl("batch_norm_backward", &batch_norm_backward);
}
#endif

}  // namespace cnnops
