// The torch binding of the batch_norm kernels (kernels/include/batch_norm.h): layout, output
// allocation, and the call into the CPU templates or the CUDA launchers (on PyTorch's current
// stream). The schemas and the registration are with the other ops in ops.cpp; fakes and
// autograd in cnnops/backends/native.py.
//
// Both ops are functional (no argument is mutated): batch_norm returns the new running
// statistics and the backend copies them into running_mean / running_var (the one running-stats
// rule of every backend). That also keeps the op registrable with
// torch.library.register_autograd, which takes functional ops only.
//
// Layout: on the CPU a dense channels-last 4-D input is read as it is and the output (and
// grad_input) is channels-last; every other input (any strides, and every CUDA input) is made
// NCHW-contiguous first (a copy unless it already is) and the output is NCHW. The Python fake
// applies the same rule (`keeps_channels_last` here).
// Per-channel tensors (weight, bias, running stats) may have the input's dtype or its
// accumulation dtype (float for half / bfloat16, as F.batch_norm allows); they are converted
// to the accumulation dtype, in which save_mean, save_invstd, the new running stats,
// grad_weight and grad_bias are returned.
// An empty batch (no values per channel) returns an empty output, zero save_mean / save_invstd,
// the running statistics unchanged and zero grad_weight / grad_bias, as torch does.
#include <ATen/OpMathType.h>

#include "binding.h"

namespace cnnops {
namespace binding {
namespace {

BatchNormShape shape_of(const Tensor& input, const char* op) {
  CNNOPS_INTERNAL_CHECK(input.dim() >= 2, op, "input must be (N, C, *), got shape ",
                        input.sizes());
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

// A per-channel vector as a contiguous (C,) tensor of the accumulation dtype `acc`, or an
// undefined tensor when absent.
Tensor per_channel(const std::optional<Tensor>& t, const char* name, const Tensor& input,
                   at::ScalarType acc, int64_t C, const char* op) {
  if (!t.has_value() || !t->defined()) return Tensor();
  CNNOPS_INTERNAL_CHECK(t->device() == input.device() &&
                        (t->scalar_type() == input.scalar_type() || t->scalar_type() == acc) &&
                        t->dim() == 1 && t->size(0) == C, op, name, " must be a (", C, ") ",
                        input.scalar_type(), " or ", acc, " tensor on ", input.device(),
                        ", got ", t->scalar_type(), " ", t->sizes(), " on ", t->device());
  return t->to(acc).contiguous();
}

}  // namespace

// ---- forward --------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor, Tensor, Tensor> batch_norm(
    const Tensor& input_, const std::optional<Tensor>& weight_,
    const std::optional<Tensor>& bias_, const std::optional<Tensor>& running_mean_,
    const std::optional<Tensor>& running_var_, bool training, double momentum, double eps) {
  static constexpr const char* op = "cnnops::batch_norm";
  BatchNormShape s = shape_of(input_, op);
  const at::ScalarType acc = at::toOpMathType(input_.scalar_type());
  const Tensor weight = per_channel(weight_, "weight", input_, acc, s.C, op);
  const Tensor bias = per_channel(bias_, "bias", input_, acc, s.C, op);
  const Tensor running_mean = per_channel(running_mean_, "running_mean", input_, acc, s.C, op);
  const Tensor running_var = per_channel(running_var_, "running_var", input_, acc, s.C, op);
  // The kernels read both running stats, or neither (training only).
  CNNOPS_INTERNAL_CHECK(running_mean.defined() == running_var.defined() &&
                        (training || running_mean.defined()), op,
                        "running_mean and running_var must be given together, and in eval");

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
  CNNOPS_RUN(input, op, {
    batch_norm_forward_cpu<scalar_t>(
        ptr<scalar_t>(input), ptr<scalar_t>(weight), ptr<scalar_t>(bias),
        ptr<scalar_t>(running_mean), ptr<scalar_t>(running_var), mut<scalar_t>(output),
        mut<scalar_t>(save_mean), mut<scalar_t>(save_invstd),
        update ? mut<scalar_t>(new_running_mean) : nullptr,
        update ? mut<scalar_t>(new_running_var) : nullptr, s, training, momentum, eps);
  }, batch_norm_forward_cuda(dtype, vptr(input), vptr(weight), vptr(bias), vptr(running_mean),
                             vptr(running_var), vmut(output), vmut(save_mean), vmut(save_invstd),
                             update ? vmut(new_running_mean) : nullptr,
                             update ? vmut(new_running_var) : nullptr, s, training, momentum,
                             eps, current_stream()));
  return {output, save_mean, save_invstd, new_running_mean, new_running_var};
}

// ---- backward -------------------------------------------------------------------------------

std::tuple<Tensor, Tensor, Tensor> batch_norm_grad(
    const Tensor& grad_output_, const Tensor& input_, const std::optional<Tensor>& weight_,
    const Tensor& save_mean_, const Tensor& save_invstd_, bool training,
    std::array<bool, 3> output_mask) {
  static constexpr const char* op = "cnnops::batch_norm_grad";
  BatchNormShape s = shape_of(input_, op);
  const at::ScalarType acc = at::toOpMathType(input_.scalar_type());
  check_like(grad_output_, "grad_output", input_, op);
  CNNOPS_INTERNAL_CHECK(grad_output_.sizes() == input_.sizes(), op, "grad_output has shape ",
                        grad_output_.sizes(), ", expected the input's ", input_.sizes());
  const Tensor weight = per_channel(weight_, "weight", input_, acc, s.C, op);
  for (const Tensor* t : {&save_mean_, &save_invstd_}) {
    CNNOPS_INTERNAL_CHECK(t->scalar_type() == acc && t->dim() == 1 && t->size(0) == s.C &&
                          t->device() == input_.device(), op, "save_mean and save_invstd must "
                          "be the ", acc, " (", s.C, ") statistics batch_norm returned, got ",
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
  Tensor none;  // the outputs not asked for: null pointers
  Tensor& dx = output_mask[0] ? grad_input : none;
  Tensor& dw = output_mask[1] ? grad_weight : none;
  Tensor& db = output_mask[2] ? grad_bias : none;
#ifdef CNNOPS_WITH_CUDA
  Tensor scratch = input.is_cuda() ? at::empty({2 * s.C}, acc_options) : Tensor();
#endif
  CNNOPS_RUN(input, op, {
    batch_norm_backward_cpu<scalar_t>(
        ptr<scalar_t>(grad_output), ptr<scalar_t>(input), ptr<scalar_t>(weight),
        ptr<scalar_t>(save_mean), ptr<scalar_t>(save_invstd), mut<scalar_t>(dx),
        mut<scalar_t>(dw), mut<scalar_t>(db), s, training);
  }, batch_norm_backward_cuda(dtype, vptr(grad_output), vptr(input), vptr(weight),
                              vptr(save_mean), vptr(save_invstd), vmut(dx), vmut(dw), vmut(db),
                              vmut(scratch), s, training, current_stream()));
  return {grad_input, grad_weight, grad_bias};
}

}  // namespace binding
}  // namespace cnnops
