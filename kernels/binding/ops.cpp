// The torch binding of the conv2d and pooling kernels, and the registration of every native op
// (schemas and CPU / CUDA implementations; batch norm's functions are in batch_norm.cpp).
// The only files of kernels/ that include torch headers are the ones in kernels/binding/.
// Fakes (meta functions) and autograd are registered in Python: cnnops/backends/native.py.
//
// Every op takes NCHW tensors of any strides and makes them contiguous first: channels-last
// input is copied to NCHW and the output is NCHW (cnnops.functional gives it PyTorch's layout);
// except the CPU pooling ops, which read a dense channels-last input in place and return
// channels-last (reads_channels_last).
// The forward ops get the output (H, W) from their caller (cnnops.shapes, the one size rule);
// the backward ops read it off grad_output. Checks are internal invariants (binding.h).
#include <Python.h>

#include "binding.h"

extern "C" {
// `import cnnops._C` loads this library, whose static initialisers register the ops below.
// `with_cuda` tells Python whether the CUDA kernels were compiled in.
PyObject* PyInit__C(void) {
  static struct PyModuleDef module_def = {PyModuleDef_HEAD_INIT, "_C", nullptr, -1, nullptr};
  PyObject* module = PyModule_Create(&module_def);
#ifdef CNNOPS_WITH_CUDA
  const long with_cuda = 1;
#else
  const long with_cuda = 0;
#endif
  if (module != nullptr && PyModule_AddIntConstant(module, "with_cuda", with_cuda) < 0) {
    Py_DECREF(module);
    return nullptr;
  }
  return module;
}
}

namespace cnnops {
namespace binding {

// Geometry of a conv2d call with output (OH, OW), after the checks that keep the kernels'
// reads and writes inside the buffers: ranks, channel counts against groups, and every
// window inside the padded input (the last tap of the last output at most at H + pad - 1).
Conv2dShape conv_shape(const Tensor& input, const Tensor& weight, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                       std::array<int64_t, 2> out, const char* op) {
  check_rank(input, 4, "input", op);
  check_rank(weight, 4, "weight", op);
  check_like(weight, "weight", input, op);
  check_pair(stride, "stride", op);
  check_pair(padding, "padding", op);
  check_pair(dilation, "dilation", op);
  CNNOPS_INTERNAL_CHECK(groups >= 1 && weight.size(0) % groups == 0 &&
                        weight.size(1) * groups == input.size(1), op, "input ", input.sizes(),
                        " and weight ", weight.sizes(), " do not match groups=", groups);
  Conv2dShape s{};
  s.N = input.size(0), s.C_in = input.size(1), s.H = input.size(2), s.W = input.size(3);
  s.C_out = weight.size(0), s.KH = weight.size(2), s.KW = weight.size(3);
  s.stride_h = stride[0], s.stride_w = stride[1], s.pad_h = padding[0], s.pad_w = padding[1];
  s.dil_h = dilation[0], s.dil_w = dilation[1], s.groups = groups;
  s.OH = out[0], s.OW = out[1];
  CNNOPS_INTERNAL_CHECK(
      s.stride_h >= 1 && s.stride_w >= 1 && s.dil_h >= 1 && s.dil_w >= 1 && s.pad_h >= 0 &&
          s.pad_w >= 0 && s.KH >= 1 && s.KW >= 1 &&
          (s.OH == 0 || (s.OH - 1) * s.stride_h + (s.KH - 1) * s.dil_h < s.H + 2 * s.pad_h) &&
          (s.OW == 0 || (s.OW - 1) * s.stride_w + (s.KW - 1) * s.dil_w < s.W + 2 * s.pad_w),
      op, "output size (", s.OH, ", ", s.OW, ") does not fit input ", input.sizes(),
      ", weight ", weight.sizes(), ", stride ", stride, ", padding ", padding, ", dilation ",
      dilation);
  return s;
}

// Geometry of a pooling call with output (OH, OW). Windows may overhang the input on the right
// (ceil_mode; the kernels clip them), but each must start before the input ends
// ((OH - 1) * stride - pad < H, ATen's ceil_mode rule) and, for max pooling, cover at least one
// input element: its index is where the backward writes.
Pool2dShape pool_shape(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, std::array<int64_t, 2> out,
                       const char* op) {
  check_rank(input, 4, "input", op);
  check_pair(kernel_size, "kernel_size", op);
  check_pair(stride, "stride", op);
  check_pair(padding, "padding", op);
  check_pair(dilation, "dilation", op);
  Pool2dShape s{};
  s.planes = input.size(0) * input.size(1), s.H = input.size(2), s.W = input.size(3);
  s.kernel_h = kernel_size[0], s.kernel_w = kernel_size[1];
  s.stride_h = stride[0], s.stride_w = stride[1], s.pad_h = padding[0], s.pad_w = padding[1];
  s.dil_h = dilation[0], s.dil_w = dilation[1];
  s.OH = out[0], s.OW = out[1];
  CNNOPS_INTERNAL_CHECK(
      s.kernel_h >= 1 && s.kernel_w >= 1 && s.stride_h >= 1 && s.stride_w >= 1 &&
          s.dil_h >= 1 && s.dil_w >= 1 && s.pad_h >= 0 && s.pad_w >= 0 &&
          (s.OH - 1) * s.stride_h < s.H + s.pad_h && (s.OW - 1) * s.stride_w < s.W + s.pad_w,
      op, "output size (", s.OH, ", ", s.OW, ") does not fit input ", input.sizes(),
      ", kernel_size ", kernel_size, ", stride ", stride, ", padding ", padding);
  return s;
}

// Every max-pooling window covers an input element (cnnops._validate refuses dilated windows
// that fall wholly into the padding): otherwise its index would point outside the plane and
// max_pool2d_grad_input would write there. O(OH + OW).
void check_windows_cover_input(const Pool2dShape& s, const char* op) {
  for (int axis = 0; axis < 2; ++axis) {
    const bool h = axis == 0;
    for (int64_t o = 0; o < (h ? s.OH : s.OW); ++o) {
      int64_t lo, hi;
      valid_taps(o, h ? s.H : s.W, h ? s.kernel_h : s.kernel_w, h ? s.stride_h : s.stride_w,
                 h ? s.pad_h : s.pad_w, h ? s.dil_h : s.dil_w, &lo, &hi);
      CNNOPS_INTERNAL_CHECK(lo < hi, op, "pooling window ", o, " along ", h ? "H" : "W",
                            " covers no input element");
    }
  }
}

// grad_output of a forward op: the forward's output shape (N, C, OH, OW), like `input`.
std::array<int64_t, 2> grad_output_hw(const Tensor& grad, const Tensor& input, int64_t channels,
                                      const char* op) {
  check_rank(grad, 4, "grad_output", op);
  check_like(grad, "grad_output", input, op);
  CNNOPS_INTERNAL_CHECK(grad.size(0) == input.size(0) && grad.size(1) == channels, op,
                        "grad_output ", grad.sizes(), " does not match input ", input.sizes());
  return {grad.size(2), grad.size(3)};
}

// ---- conv2d -------------------------------------------------------------------------------

Tensor conv2d(const Tensor& input_, const Tensor& weight_, const std::optional<Tensor>& bias_,
              IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
              c10::SymIntArrayRef output_size, bool relu, int64_t algo) {
  static constexpr const char* op = "cnnops::conv2d";
  const Conv2dShape s = conv_shape(input_, weight_, stride, padding, dilation, groups,
                                   output_hw(output_size, op), op);
  CNNOPS_INTERNAL_CHECK(algo >= kConvAuto && algo <= kConvTiled, op, "algo must be 0 (auto), "
                        "1 (naive) or 2 (tiled), got ", algo);
  Tensor bias;
  if (bias_.has_value() && bias_->defined()) {
    check_like(*bias_, "bias", input_, op);
    CNNOPS_INTERNAL_CHECK(bias_->dim() == 1 && bias_->size(0) == s.C_out, op,
                          "bias must have shape (", s.C_out, "), got ", bias_->sizes());
    bias = bias_->contiguous();
  }
#ifdef CNNOPS_WITH_CUDA
  // A choice the user makes with CNNOPS_CONV_ALGO=tiled, not an argument error: RuntimeError.
  TORCH_CHECK(algo != kConvTiled || !input_.is_cuda() ||
              conv2d_tiled_fits(s, cuda_dtype(input_, op)), op, ": the tiled CUDA kernel's "
              "input patch does not fit in shared memory for kernel ", weight_.sizes().slice(2),
              " with stride ", stride, " and dilation ", dilation,
              "; use algo 0 (auto) or 1 (naive)");
#endif
  const Tensor input = input_.contiguous(), weight = weight_.contiguous();
  Tensor out = at::empty({s.N, s.C_out, s.OH, s.OW}, input.options());
  if (out.numel() == 0) return out;
  CNNOPS_RUN(input, op, {
    conv2d_forward_cpu(ptr<scalar_t>(input), ptr<scalar_t>(weight), ptr<scalar_t>(bias),
                       mut<scalar_t>(out), s, relu);
  }, conv2d_forward_cuda(dtype, vptr(input), vptr(weight), vptr(bias), vmut(out), s, relu, algo,
                         current_stream()));
  return out;
}

Tensor conv2d_grad_input(const Tensor& grad_output_, const Tensor& input_, const Tensor& weight_,
                         IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                         int64_t groups) {
  static constexpr const char* op = "cnnops::conv2d_grad_input";
  const Conv2dShape s =
      conv_shape(input_, weight_, stride, padding, dilation, groups,
                 grad_output_hw(grad_output_, input_, weight_.size(0), op), op);
  const Tensor grad_output = grad_output_.contiguous(), weight = weight_.contiguous();
  Tensor grad_input = at::empty({s.N, s.C_in, s.H, s.W}, input_.options());
  if (grad_input.numel() == 0) return grad_input;
  if (grad_output.numel() == 0) return grad_input.zero_();  // C_out = 0: nothing flows back
  CNNOPS_RUN(grad_output, op, {
    conv2d_grad_input_cpu(ptr<scalar_t>(grad_output), ptr<scalar_t>(weight),
                          mut<scalar_t>(grad_input), s);
  }, conv2d_grad_input_cuda(dtype, vptr(grad_output), vptr(weight), vmut(grad_input), s,
                            current_stream()));
  return grad_input;
}

Tensor conv2d_grad_weight(const Tensor& grad_output_, const Tensor& input_, const Tensor& weight_,
                          IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation,
                          int64_t groups) {
  static constexpr const char* op = "cnnops::conv2d_grad_weight";
  const Conv2dShape s =
      conv_shape(input_, weight_, stride, padding, dilation, groups,
                 grad_output_hw(grad_output_, input_, weight_.size(0), op), op);
  if (weight_.numel() == 0) return at::empty(weight_.sizes(), weight_.options());
  // sums over no outputs (an empty batch, or no output position): zero
  if (grad_output_.numel() == 0) return at::zeros(weight_.sizes(), weight_.options());
  const Tensor grad_output = grad_output_.contiguous(), input = input_.contiguous();
  Tensor grad_weight = at::empty(weight_.sizes(), weight_.options());
  CNNOPS_RUN(grad_output, op, {
    conv2d_grad_weight_cpu(ptr<scalar_t>(grad_output), ptr<scalar_t>(input),
                           mut<scalar_t>(grad_weight), s);
  }, conv2d_grad_weight_cuda(dtype, vptr(grad_output), vptr(input), vmut(grad_weight), s,
                             current_stream()));
  return grad_weight;
}

Tensor conv2d_grad_bias(const Tensor& grad_output_) {
  static constexpr const char* op = "cnnops::conv2d_grad_bias";
  check_rank(grad_output_, 4, "grad_output", op);
  Conv2dShape s{};
  s.N = grad_output_.size(0), s.C_out = grad_output_.size(1);
  s.OH = grad_output_.size(2), s.OW = grad_output_.size(3);
  if (grad_output_.numel() == 0) return at::zeros({s.C_out}, grad_output_.options());
  const Tensor grad_output = grad_output_.contiguous();
  Tensor grad_bias = at::empty({s.C_out}, grad_output.options());
  CNNOPS_RUN(grad_output, op, {
    conv2d_grad_bias_cpu(ptr<scalar_t>(grad_output), mut<scalar_t>(grad_bias), s);
  }, conv2d_grad_bias_cuda(dtype, vptr(grad_output), vmut(grad_bias), s, current_stream()));
  return grad_bias;
}

// ---- max_pool2d ---------------------------------------------------------------------------

// A CPU input that is dense channels-last and not NCHW-contiguous (the rule of the fakes in
// cnnops/backends/native.py): max and avg pooling read it in place and return channels-last
// (forward and grad_input).
bool reads_channels_last(const Tensor& input) {
  return input.device().is_cpu() && !input.is_contiguous() &&
         input.is_contiguous(at::MemoryFormat::ChannelsLast);
}

std::tuple<Tensor, Tensor> max_pool2d(const Tensor& input_, IntArrayRef kernel_size,
                                      IntArrayRef stride, IntArrayRef padding,
                                      IntArrayRef dilation, c10::SymIntArrayRef output_size) {
  static constexpr const char* op = "cnnops::max_pool2d";
  const Pool2dShape s = pool_shape(input_, kernel_size, stride, padding, dilation,
                                   output_hw(output_size, op), op);
  check_windows_cover_input(s, op);
  const int64_t N = input_.size(0), C = input_.size(1);
  if (reads_channels_last(input_)) {  // CPU kernel over NHWC; output and indices channels-last
    const auto options = input_.options().memory_format(at::MemoryFormat::ChannelsLast);
    Tensor out = at::empty({N, C, s.OH, s.OW}, options);
    Tensor indices = at::empty({N, C, s.OH, s.OW}, options.dtype(at::kLong));
    if (out.numel() == 0) return {out, indices};
    AT_DISPATCH_FLOATING_TYPES(input_.scalar_type(), op, [&] {
      max_pool2d_forward_nhwc_cpu(ptr<scalar_t>(input_), mut<scalar_t>(out),
                                  mut<int64_t>(indices), C, s);
    });
    return {out, indices};
  }
  const Tensor input = input_.contiguous();
  Tensor out = at::empty({N, C, s.OH, s.OW}, input.options());
  Tensor indices = at::empty({N, C, s.OH, s.OW}, input.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, indices};
  CNNOPS_RUN(input, op, {
    max_pool2d_forward_cpu(ptr<scalar_t>(input), mut<scalar_t>(out), mut<int64_t>(indices), s);
  }, max_pool2d_forward_cuda(dtype, vptr(input), vmut(out), mut<int64_t>(indices), s,
                             current_stream()));
  return {out, indices};
}

// The values of max_pool2d without its indices (inference: nothing will need the backward's
// scatter), so the CPU kernel neither computes nor writes them. CUDA runs max_pool2d and
// drops the indices.
Tensor max_pool2d_values(const Tensor& input_, IntArrayRef kernel_size, IntArrayRef stride,
                         IntArrayRef padding, IntArrayRef dilation,
                         c10::SymIntArrayRef output_size) {
  static constexpr const char* op = "cnnops::max_pool2d_values";
  if (input_.is_cuda())
    return std::get<0>(max_pool2d(input_, kernel_size, stride, padding, dilation, output_size));
  const Pool2dShape s = pool_shape(input_, kernel_size, stride, padding, dilation,
                                   output_hw(output_size, op), op);
  check_windows_cover_input(s, op);
  if (reads_channels_last(input_)) {
    const int64_t C = input_.size(1);
    Tensor out = at::empty({input_.size(0), C, s.OH, s.OW},
                           input_.options().memory_format(at::MemoryFormat::ChannelsLast));
    if (out.numel() == 0) return out;
    AT_DISPATCH_FLOATING_TYPES(input_.scalar_type(), op, [&] {
      max_pool2d_forward_nhwc_cpu(ptr<scalar_t>(input_), mut<scalar_t>(out),
                                  static_cast<int64_t*>(nullptr), C, s);
    });
    return out;
  }
  const Tensor input = input_.contiguous();
  Tensor out = at::empty({input.size(0), input.size(1), s.OH, s.OW}, input.options());
  if (out.numel() == 0) return out;
  CNNOPS_RUN(input, op, {
    max_pool2d_forward_cpu(ptr<scalar_t>(input), mut<scalar_t>(out),
                           static_cast<int64_t*>(nullptr), s);
  }, cudaSuccess);
  return out;
}

// `indices` must be max_pool2d's on this input (each in [0, H * W)): the kernels write
// grad_input at them unchecked, as ATen's max_pool2d_with_indices_backward does.
Tensor max_pool2d_grad_input(const Tensor& grad_output_, const Tensor& input,
                             const Tensor& indices_, IntArrayRef kernel_size, IntArrayRef stride,
                             IntArrayRef padding, IntArrayRef dilation) {
  static constexpr const char* op = "cnnops::max_pool2d_grad_input";
  check_rank(input, 4, "input", op);
  const Pool2dShape s = pool_shape(input, kernel_size, stride, padding, dilation,
                                   grad_output_hw(grad_output_, input, input.size(1), op), op);
  CNNOPS_INTERNAL_CHECK(indices_.scalar_type() == at::kLong &&
                        indices_.sizes() == grad_output_.sizes() &&
                        indices_.device() == input.device(), op, "indices must be the int64 "
                        "indices of max_pool2d on this input, got ", indices_.scalar_type(),
                        " ", indices_.sizes());
  if (reads_channels_last(input)) {  // grad_input channels-last, as the forward's output
    const auto cl = at::MemoryFormat::ChannelsLast;
    const Tensor grad_output = grad_output_.contiguous(cl), indices = indices_.contiguous(cl);
    Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(cl));
    if (grad_input.numel() == 0) return grad_input;
    AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), op, [&] {
      max_pool2d_grad_input_nhwc_cpu(ptr<scalar_t>(grad_output), ptr<int64_t>(indices),
                                     mut<scalar_t>(grad_input), input.size(1), s);
    });
    return grad_input;
  }
  const Tensor grad_output = grad_output_.contiguous(), indices = indices_.contiguous();
  Tensor grad_input = at::empty(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  CNNOPS_RUN(grad_output, op, {
    max_pool2d_grad_input_cpu(ptr<scalar_t>(grad_output), ptr<int64_t>(indices),
                              mut<scalar_t>(grad_input), s);
  }, max_pool2d_grad_input_cuda(dtype, vptr(grad_output), ptr<int64_t>(indices),
                                vmut(grad_input), s, current_stream()));
  return grad_input;
}

// ---- avg_pool2d ---------------------------------------------------------------------------

Tensor avg_pool2d(const Tensor& input_, IntArrayRef kernel_size, IntArrayRef stride,
                  IntArrayRef padding, bool count_include_pad,
                  std::optional<int64_t> divisor_override, c10::SymIntArrayRef output_size) {
  static constexpr const char* op = "cnnops::avg_pool2d";
  const Pool2dShape s = pool_shape(input_, kernel_size, stride, padding, {1, 1},
                                   output_hw(output_size, op), op);
  if (reads_channels_last(input_)) {  // CPU kernel over NHWC; output channels-last
    const int64_t C = input_.size(1);
    Tensor out = at::empty({input_.size(0), C, s.OH, s.OW},
                           input_.options().memory_format(at::MemoryFormat::ChannelsLast));
    if (out.numel() == 0) return out;
    AT_DISPATCH_FLOATING_TYPES(input_.scalar_type(), op, [&] {
      avg_pool2d_forward_nhwc_cpu(ptr<scalar_t>(input_), mut<scalar_t>(out), C, s,
                                  count_include_pad, divisor_override.value_or(0));
    });
    return out;
  }
  const Tensor input = input_.contiguous();
  Tensor out = at::empty({input.size(0), input.size(1), s.OH, s.OW}, input.options());
  if (out.numel() == 0) return out;
  CNNOPS_RUN(input, op, {
    avg_pool2d_forward_cpu(ptr<scalar_t>(input), mut<scalar_t>(out), s, count_include_pad,
                           divisor_override.value_or(0));
  }, avg_pool2d_forward_cuda(dtype, vptr(input), vmut(out), s, count_include_pad,
                             divisor_override.value_or(0), current_stream()));
  return out;
}

Tensor avg_pool2d_grad_input(const Tensor& grad_output_, const Tensor& input,
                             IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                             bool count_include_pad, std::optional<int64_t> divisor_override) {
  static constexpr const char* op = "cnnops::avg_pool2d_grad_input";
  check_rank(input, 4, "input", op);
  const Pool2dShape s = pool_shape(input, kernel_size, stride, padding, {1, 1},
                                   grad_output_hw(grad_output_, input, input.size(1), op), op);
  if (reads_channels_last(input)) {  // grad_input channels-last, as torch gives it
    const auto cl = at::MemoryFormat::ChannelsLast;
    const Tensor grad_output = grad_output_.contiguous(cl);
    Tensor grad_input = at::empty(input.sizes(), input.options().memory_format(cl));
    if (grad_input.numel() == 0) return grad_input;
    AT_DISPATCH_FLOATING_TYPES(grad_output.scalar_type(), op, [&] {
      avg_pool2d_grad_input_nhwc_cpu(ptr<scalar_t>(grad_output), mut<scalar_t>(grad_input),
                                     input.size(1), s, count_include_pad,
                                     divisor_override.value_or(0));
    });
    return grad_input;
  }
  const Tensor grad_output = grad_output_.contiguous();
  Tensor grad_input = at::empty(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  CNNOPS_RUN(grad_output, op, {
    avg_pool2d_grad_input_cpu(ptr<scalar_t>(grad_output), mut<scalar_t>(grad_input), s,
                              count_include_pad, divisor_override.value_or(0));
  }, avg_pool2d_grad_input_cuda(dtype, vptr(grad_output), vmut(grad_input), s,
                                count_include_pad, divisor_override.value_or(0),
                                current_stream()));
  return grad_input;
}

}  // namespace binding

// ---- registration: every native op, its schema and its CPU / CUDA implementation ------------
// Argument conventions: int[2] pairs are (H, W); `output_size` is the forward's output (H, W)
// from cnnops.shapes; divisor_override None for none. batch_norm is functional: it returns
// the new running statistics (empty (0,) tensors unless training with running stats) and
// cnnops/backends/native.py copies them into the caller's buffers.

TORCH_LIBRARY(cnnops, m) {
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, SymInt[2] output_size, bool relu=False, int algo=0) "
        "-> Tensor");
  m.def("conv2d_grad_input(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_grad_weight(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_grad_bias(Tensor grad_output) -> Tensor");
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, SymInt[2] output_size) -> (Tensor, Tensor)");
  m.def("max_pool2d_values(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, SymInt[2] output_size) -> Tensor");
  m.def("max_pool2d_grad_input(Tensor grad_output, Tensor input, Tensor indices, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation) -> Tensor");
  m.def("avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool count_include_pad, int? divisor_override, SymInt[2] output_size) -> Tensor");
  m.def("avg_pool2d_grad_input(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] stride, int[2] padding, bool count_include_pad, int? divisor_override) "
        "-> Tensor");
  m.def("batch_norm(Tensor input, Tensor? weight, Tensor? bias, Tensor? running_mean, "
        "Tensor? running_var, bool training, float momentum, float eps) "
        "-> (Tensor output, Tensor save_mean, Tensor save_invstd, Tensor new_running_mean, "
        "Tensor new_running_var)");
  m.def("batch_norm_grad(Tensor grad_output, Tensor input, Tensor? weight, Tensor save_mean, "
        "Tensor save_invstd, bool training, bool[3] output_mask) "
        "-> (Tensor grad_input, Tensor grad_weight, Tensor grad_bias)");
}

#define CNNOPS_IMPL_ALL(m)                                           \
  m.impl("conv2d", &binding::conv2d);                                \
  m.impl("conv2d_grad_input", &binding::conv2d_grad_input);          \
  m.impl("conv2d_grad_weight", &binding::conv2d_grad_weight);        \
  m.impl("conv2d_grad_bias", &binding::conv2d_grad_bias);            \
  m.impl("max_pool2d", &binding::max_pool2d);                        \
  m.impl("max_pool2d_values", &binding::max_pool2d_values);          \
  m.impl("max_pool2d_grad_input", &binding::max_pool2d_grad_input);  \
  m.impl("avg_pool2d", &binding::avg_pool2d);                        \
  m.impl("avg_pool2d_grad_input", &binding::avg_pool2d_grad_input);  \
  m.impl("batch_norm", &binding::batch_norm);                        \
  m.impl("batch_norm_grad", &binding::batch_norm_grad);

TORCH_LIBRARY_IMPL(cnnops, CPU, m) { CNNOPS_IMPL_ALL(m) }

#ifdef CNNOPS_WITH_CUDA
TORCH_LIBRARY_IMPL(cnnops, CUDA, m) { CNNOPS_IMPL_ALL(m) }
#endif

}  // namespace cnnops
