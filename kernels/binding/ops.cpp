// The torch binding of the native kernels: op schemas, argument checks, output allocation,
// and the call into kernels.h (CPU templates, or CUDA launchers on PyTorch's current stream).
// The only file of kernels/ that includes torch headers. Fakes (meta functions) and autograd
// are registered in Python: cnnops/native/ops.py.
//
// Every op takes NCHW tensors of any strides and makes them contiguous first: channels-last
// input is copied to NCHW and the output is NCHW (cnnops.functional gives it PyTorch's layout).
#include <Python.h>

#include <ATen/ATen.h>
#include <ATen/Dispatch.h>
#include <torch/library.h>

#ifdef CNNOPS_WITH_CUDA
#include <c10/cuda/CUDAStream.h>
#include <c10/cuda/CUDAGuard.h>
#endif

#include "kernels.h"

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
namespace {

using at::IntArrayRef;
using at::Tensor;

void check_input(const Tensor& t, const char* name, const char* op) {
  TORCH_CHECK(t.dim() == 4, op, ": ", name, " must be 4-D (N, C, H, W), got shape ", t.sizes());
  TORCH_CHECK(t.is_floating_point(), op, ": ", name, " must be floating point, got ",
              t.scalar_type());
}

void check_same(const Tensor& t, const char* name, const Tensor& ref, const char* op) {
  TORCH_CHECK(t.device() == ref.device(), op, ": ", name, " is on ", t.device(),
              " but input is on ", ref.device());
  TORCH_CHECK_TYPE(t.scalar_type() == ref.scalar_type(), op, ": ", name, " has dtype ",
                   t.scalar_type(), " but input has ", ref.scalar_type());
}

void check_pair(IntArrayRef v, const char* name, int64_t minimum, const char* op) {
  TORCH_CHECK(v.size() == 2 && v[0] >= minimum && v[1] >= minimum, op, ": ", name,
              " must be two ints >= ", minimum, ", got ", v);
}

Conv2dShape conv_shape(const Tensor& input, const Tensor& weight, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, int64_t groups,
                       const char* op) {
  check_input(input, "input", op);
  check_input(weight, "weight", op);
  check_same(weight, "weight", input, op);
  check_pair(stride, "stride", 1, op);
  check_pair(padding, "padding", 0, op);
  check_pair(dilation, "dilation", 1, op);
  TORCH_CHECK(groups >= 1 && weight.size(0) % groups == 0 && weight.size(0) > 0, op,
              ": weight's ", weight.size(0), " output channels must be a positive multiple of "
              "groups=", groups);
  TORCH_CHECK(weight.size(1) * groups == input.size(1), op, ": input has ", input.size(1),
              " channels but weight ", weight.sizes(), " with groups=", groups, " expects ",
              weight.size(1) * groups);
  Conv2dShape s{};
  s.N = input.size(0), s.C_in = input.size(1), s.H = input.size(2), s.W = input.size(3);
  s.C_out = weight.size(0), s.KH = weight.size(2), s.KW = weight.size(3);
  s.stride_h = stride[0], s.stride_w = stride[1], s.pad_h = padding[0], s.pad_w = padding[1];
  s.dil_h = dilation[0], s.dil_w = dilation[1], s.groups = groups;
  s.OH = output_size(s.H, s.KH, s.stride_h, s.pad_h, s.dil_h, false);
  s.OW = output_size(s.W, s.KW, s.stride_w, s.pad_w, s.dil_w, false);
  TORCH_CHECK(s.OH > 0 && s.OW > 0, op, ": kernel ", weight.sizes().slice(2),
              " with dilation ", dilation, " does not fit the padded input ",
              input.sizes().slice(2), " + 2 * ", padding);
  return s;
}

Pool2dShape pool_shape(const Tensor& input, IntArrayRef kernel_size, IntArrayRef stride,
                       IntArrayRef padding, IntArrayRef dilation, bool ceil_mode,
                       const char* op) {
  check_input(input, "input", op);
  check_pair(kernel_size, "kernel_size", 1, op);
  check_pair(stride, "stride", 1, op);
  check_pair(padding, "padding", 0, op);
  check_pair(dilation, "dilation", 1, op);
  TORCH_CHECK(padding[0] <= kernel_size[0] / 2 && padding[1] <= kernel_size[1] / 2, op,
              ": padding ", padding, " must be at most half of kernel_size ", kernel_size);
  Pool2dShape s{};
  s.planes = input.size(0) * input.size(1), s.H = input.size(2), s.W = input.size(3);
  s.kernel_h = kernel_size[0], s.kernel_w = kernel_size[1];
  s.stride_h = stride[0], s.stride_w = stride[1], s.pad_h = padding[0], s.pad_w = padding[1];
  s.dil_h = dilation[0], s.dil_w = dilation[1];
  s.OH = output_size(s.H, s.kernel_h, s.stride_h, s.pad_h, s.dil_h, ceil_mode);
  s.OW = output_size(s.W, s.kernel_w, s.stride_w, s.pad_w, s.dil_w, ceil_mode);
  TORCH_CHECK(s.OH > 0 && s.OW > 0, op, ": window ", kernel_size, " with dilation ", dilation,
              " does not fit the padded input ", input.sizes().slice(2), " + 2 * ", padding);
  // A dilated window can fall entirely into the padding; refuse (as cnnops._validate does):
  // it has no element to take the maximum of, and its index would point outside the plane.
  for (int64_t o = 0; o < std::max(s.OH, s.OW); ++o) {
    int64_t lo, hi;
    for (int axis = 0; axis < 2; ++axis) {
      const bool h = axis == 0;
      if (o >= (h ? s.OH : s.OW)) continue;
      valid_taps(o, h ? s.H : s.W, h ? s.kernel_h : s.kernel_w, h ? s.stride_h : s.stride_w,
                 h ? s.pad_h : s.pad_w, h ? s.dil_h : s.dil_w, &lo, &hi);
      TORCH_CHECK(lo < hi, op, ": pooling window ", o, " along ", h ? "H" : "W",
                  " covers no input element (input ", input.sizes().slice(2), ", kernel_size ",
                  kernel_size, ", stride ", stride, ", padding ", padding, ", dilation ",
                  dilation, ")");
    }
  }
  return s;
}

void check_grad_output(const Tensor& grad, const Tensor& input, IntArrayRef expected,
                       const char* op) {
  check_same(grad, "grad_output", input, op);
  TORCH_CHECK(grad.sizes() == expected, op, ": grad_output has shape ", grad.sizes(),
              ", expected ", expected);
}

#ifdef CNNOPS_WITH_CUDA
DType cuda_dtype(const Tensor& t, const char* op) {
  switch (t.scalar_type()) {
    case at::kFloat: return DType::f32;
    case at::kDouble: return DType::f64;
    case at::kHalf: return DType::f16;
    case at::kBFloat16: return DType::bf16;
    default: TORCH_CHECK_TYPE(false, op, ": CUDA kernels take float32, float64, float16 and "
                              "bfloat16, got ", t.scalar_type());
  }
  return DType::f32;  // unreachable
}

void check_launch(cudaError_t err, const char* op) {
  TORCH_CHECK(err == cudaSuccess, op, ": CUDA kernel launch failed: ", cudaGetErrorString(err));
}

cudaStream_t current_stream() { return c10::cuda::getCurrentCUDAStream().stream(); }

const void* vptr(const Tensor& t) { return t.defined() ? t.const_data_ptr() : nullptr; }
#endif

// Runs `cpu(scalar_t)` on CPU tensors (float, double) or `cuda()` on CUDA tensors, the latter
// under a device guard.
#ifdef CNNOPS_WITH_CUDA
#define CNNOPS_RUN(tensor, op, CPU_BODY, CUDA_BODY)                        \
  if ((tensor).is_cuda()) {                                                \
    const c10::cuda::CUDAGuard device_guard((tensor).device());            \
    const DType dtype = cuda_dtype(tensor, op);                            \
    check_launch(CUDA_BODY, op);                                           \
  } else {                                                                 \
    AT_DISPATCH_FLOATING_TYPES((tensor).scalar_type(), op, [&] CPU_BODY); \
  }
#else
#define CNNOPS_RUN(tensor, op, CPU_BODY, CUDA_BODY)                                      \
  TORCH_CHECK((tensor).device().is_cpu(), op, ": cnnops was built without CUDA kernels, " \
              "got a tensor on ", (tensor).device());                                    \
  AT_DISPATCH_FLOATING_TYPES((tensor).scalar_type(), op, [&] CPU_BODY);
#endif

template <typename T>
const T* ptr(const Tensor& t) { return t.defined() ? t.const_data_ptr<T>() : nullptr; }
template <typename T>
T* mut(Tensor& t) { return t.mutable_data_ptr<T>(); }

// ---- conv2d -------------------------------------------------------------------------------

Tensor conv2d(const Tensor& input_, const Tensor& weight_, const std::optional<Tensor>& bias_,
              IntArrayRef stride, IntArrayRef padding, IntArrayRef dilation, int64_t groups,
              bool relu, int64_t algo) {
  static constexpr const char* op = "cnnops::conv2d";
  const Conv2dShape s = conv_shape(input_, weight_, stride, padding, dilation, groups, op);
  TORCH_CHECK(algo >= kConvAuto && algo <= kConvTiled, op, ": algo must be 0 (auto), "
              "1 (naive) or 2 (tiled), got ", algo);
  Tensor bias;
  if (bias_.has_value() && bias_->defined()) {
    check_same(*bias_, "bias", input_, op);
    TORCH_CHECK(bias_->dim() == 1 && bias_->size(0) == s.C_out, op, ": bias must have shape (",
                s.C_out, "), got ", bias_->sizes());
    bias = bias_->contiguous();
  }
#ifdef CNNOPS_WITH_CUDA
  TORCH_CHECK(algo != kConvTiled || !input_.is_cuda() ||
              conv2d_tiled_fits(s, cuda_dtype(input_, op)), op, ": the tiled CUDA kernel's "
              "input patch does not fit in shared memory for kernel ", weight_.sizes().slice(2),
              " with stride ", stride, " and dilation ", dilation, "; use algo 0 (auto) or 1 (naive)");
#endif
  const Tensor input = input_.contiguous(), weight = weight_.contiguous();
  Tensor out = at::empty({s.N, s.C_out, s.OH, s.OW}, input.options());
  if (out.numel() == 0) return out;
  CNNOPS_RUN(input, op, {
    conv2d_forward_cpu(ptr<scalar_t>(input), ptr<scalar_t>(weight), ptr<scalar_t>(bias),
                       mut<scalar_t>(out), s, relu);
  }, conv2d_forward_cuda(dtype, vptr(input), vptr(weight), vptr(bias), out.mutable_data_ptr(),
                         s, relu, algo, current_stream()));
  return out;
}

Tensor conv2d_grad_input(const Tensor& grad_output_, const Tensor& input_,
                             const Tensor& weight_, IntArrayRef stride, IntArrayRef padding,
                             IntArrayRef dilation, int64_t groups) {
  static constexpr const char* op = "cnnops::conv2d_grad_input";
  const Conv2dShape s = conv_shape(input_, weight_, stride, padding, dilation, groups, op);
  check_grad_output(grad_output_, input_, {s.N, s.C_out, s.OH, s.OW}, op);
  const Tensor grad_output = grad_output_.contiguous(), weight = weight_.contiguous();
  Tensor grad_input = at::empty({s.N, s.C_in, s.H, s.W}, input_.options());
  if (grad_input.numel() == 0) return grad_input;
  CNNOPS_RUN(grad_output, op, {
    conv2d_grad_input_cpu(ptr<scalar_t>(grad_output), ptr<scalar_t>(weight),
                              mut<scalar_t>(grad_input), s);
  }, conv2d_grad_input_cuda(dtype, vptr(grad_output), vptr(weight),
                                grad_input.mutable_data_ptr(), s, current_stream()));
  return grad_input;
}

Tensor conv2d_grad_weight(const Tensor& grad_output_, const Tensor& input_,
                              const Tensor& weight_, IntArrayRef stride, IntArrayRef padding,
                              IntArrayRef dilation, int64_t groups) {
  static constexpr const char* op = "cnnops::conv2d_grad_weight";
  const Conv2dShape s = conv_shape(input_, weight_, stride, padding, dilation, groups, op);
  check_grad_output(grad_output_, input_, {s.N, s.C_out, s.OH, s.OW}, op);
  const Tensor grad_output = grad_output_.contiguous(), input = input_.contiguous();
  if (s.N == 0) return at::zeros(weight_.sizes(), weight_.options());
  Tensor grad_weight = at::empty(weight_.sizes(), weight_.options());
  CNNOPS_RUN(grad_output, op, {
    conv2d_grad_weight_cpu(ptr<scalar_t>(grad_output), ptr<scalar_t>(input),
                               mut<scalar_t>(grad_weight), s);
  }, conv2d_grad_weight_cuda(dtype, vptr(grad_output), vptr(input),
                                 grad_weight.mutable_data_ptr(), s, current_stream()));
  return grad_weight;
}

Tensor conv2d_grad_bias(const Tensor& grad_output_) {
  static constexpr const char* op = "cnnops::conv2d_grad_bias";
  check_input(grad_output_, "grad_output", op);
  Conv2dShape s{};
  s.N = grad_output_.size(0), s.C_out = grad_output_.size(1);
  s.OH = grad_output_.size(2), s.OW = grad_output_.size(3);
  if (grad_output_.numel() == 0) return at::zeros({s.C_out}, grad_output_.options());
  const Tensor grad_output = grad_output_.contiguous();
  Tensor grad_bias = at::empty({s.C_out}, grad_output.options());
  CNNOPS_RUN(grad_output, op, {
    conv2d_grad_bias_cpu(ptr<scalar_t>(grad_output), mut<scalar_t>(grad_bias), s);
  }, conv2d_grad_bias_cuda(dtype, vptr(grad_output), grad_bias.mutable_data_ptr(), s,
                               current_stream()));
  return grad_bias;
}

// ---- max_pool2d ---------------------------------------------------------------------------

std::tuple<Tensor, Tensor> max_pool2d(const Tensor& input_, IntArrayRef kernel_size,
                                      IntArrayRef stride, IntArrayRef padding,
                                      IntArrayRef dilation, bool ceil_mode) {
  static constexpr const char* op = "cnnops::max_pool2d";
  const Pool2dShape s = pool_shape(input_, kernel_size, stride, padding, dilation, ceil_mode, op);
  const Tensor input = input_.contiguous();
  const int64_t N = input.size(0), C = input.size(1);
  Tensor out = at::empty({N, C, s.OH, s.OW}, input.options());
  Tensor indices = at::empty({N, C, s.OH, s.OW}, input.options().dtype(at::kLong));
  if (out.numel() == 0) return {out, indices};
  CNNOPS_RUN(input, op, {
    max_pool2d_forward_cpu(ptr<scalar_t>(input), mut<scalar_t>(out), mut<int64_t>(indices), s);
  }, max_pool2d_forward_cuda(dtype, vptr(input), out.mutable_data_ptr(),
                             indices.mutable_data_ptr<int64_t>(), s, current_stream()));
  return {out, indices};
}

Tensor max_pool2d_grad_input(const Tensor& grad_output_, const Tensor& input,
                           const Tensor& indices_, IntArrayRef kernel_size, IntArrayRef stride,
                           IntArrayRef padding, IntArrayRef dilation, bool ceil_mode) {
  static constexpr const char* op = "cnnops::max_pool2d_grad_input";
  const Pool2dShape s = pool_shape(input, kernel_size, stride, padding, dilation, ceil_mode, op);
  const std::vector<int64_t> out_size{input.size(0), input.size(1), s.OH, s.OW};
  check_grad_output(grad_output_, input, out_size, op);
  TORCH_CHECK(indices_.scalar_type() == at::kLong && indices_.sizes() == IntArrayRef(out_size) &&
              indices_.device() == input.device(), op, ": indices must be the int64 indices "
              "of max_pool2d on this input, got ", indices_.scalar_type(), " ", indices_.sizes());
  const Tensor grad_output = grad_output_.contiguous(), indices = indices_.contiguous();
  Tensor grad_input = at::empty(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  CNNOPS_RUN(grad_output, op, {
    max_pool2d_grad_input_cpu(ptr<scalar_t>(grad_output), indices.const_data_ptr<int64_t>(),
                            mut<scalar_t>(grad_input), s);
  }, max_pool2d_grad_input_cuda(dtype, vptr(grad_output), indices.const_data_ptr<int64_t>(),
                              grad_input.mutable_data_ptr(), s, current_stream()));
  return grad_input;
}

// ---- avg_pool2d ---------------------------------------------------------------------------

int64_t divisor_arg(const std::optional<int64_t>& divisor_override, const char* op) {
  TORCH_CHECK(!divisor_override.has_value() || *divisor_override != 0, op,
              ": divisor_override must not be zero");
  return divisor_override.value_or(0);
}

Tensor avg_pool2d(const Tensor& input_, IntArrayRef kernel_size, IntArrayRef stride,
                  IntArrayRef padding, bool ceil_mode, bool count_include_pad,
                  std::optional<int64_t> divisor_override) {
  static constexpr const char* op = "cnnops::avg_pool2d";
  const Pool2dShape s =
      pool_shape(input_, kernel_size, stride, padding, {1, 1}, ceil_mode, op);
  const int64_t divisor = divisor_arg(divisor_override, op);
  const Tensor input = input_.contiguous();
  Tensor out = at::empty({input.size(0), input.size(1), s.OH, s.OW}, input.options());
  if (out.numel() == 0) return out;
  CNNOPS_RUN(input, op, {
    avg_pool2d_forward_cpu(ptr<scalar_t>(input), mut<scalar_t>(out), s, count_include_pad,
                           divisor);
  }, avg_pool2d_forward_cuda(dtype, vptr(input), out.mutable_data_ptr(), s, count_include_pad,
                             divisor, current_stream()));
  return out;
}

Tensor avg_pool2d_grad_input(const Tensor& grad_output_, const Tensor& input,
                           IntArrayRef kernel_size, IntArrayRef stride, IntArrayRef padding,
                           bool ceil_mode, bool count_include_pad,
                           std::optional<int64_t> divisor_override) {
  static constexpr const char* op = "cnnops::avg_pool2d_grad_input";
  const Pool2dShape s =
      pool_shape(input, kernel_size, stride, padding, {1, 1}, ceil_mode, op);
  const int64_t divisor = divisor_arg(divisor_override, op);
  check_grad_output(grad_output_, input, {input.size(0), input.size(1), s.OH, s.OW}, op);
  const Tensor grad_output = grad_output_.contiguous();
  Tensor grad_input = at::empty(input.sizes(), input.options());
  if (grad_input.numel() == 0) return grad_input;
  CNNOPS_RUN(grad_output, op, {
    avg_pool2d_grad_input_cpu(ptr<scalar_t>(grad_output), mut<scalar_t>(grad_input), s,
                            count_include_pad, divisor);
  }, avg_pool2d_grad_input_cuda(dtype, vptr(grad_output), grad_input.mutable_data_ptr(), s,
                              count_include_pad, divisor, current_stream()));
  return grad_input;
}

}  // namespace

TORCH_LIBRARY(cnnops, m) {
  m.def("conv2d(Tensor input, Tensor weight, Tensor? bias, int[2] stride, int[2] padding, "
        "int[2] dilation, int groups, bool relu=False, int algo=0) -> Tensor");
  m.def("conv2d_grad_input(Tensor grad_output, Tensor input, Tensor weight, int[2] stride, "
        "int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_grad_weight(Tensor grad_output, Tensor input, Tensor weight, "
        "int[2] stride, int[2] padding, int[2] dilation, int groups) -> Tensor");
  m.def("conv2d_grad_bias(Tensor grad_output) -> Tensor");
  m.def("max_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "int[2] dilation, bool ceil_mode) -> (Tensor, Tensor)");
  m.def("max_pool2d_grad_input(Tensor grad_output, Tensor input, Tensor indices, "
        "int[2] kernel_size, int[2] stride, int[2] padding, int[2] dilation, bool ceil_mode) "
        "-> Tensor");
  m.def("avg_pool2d(Tensor input, int[2] kernel_size, int[2] stride, int[2] padding, "
        "bool ceil_mode, bool count_include_pad, int? divisor_override) -> Tensor");
  m.def("avg_pool2d_grad_input(Tensor grad_output, Tensor input, int[2] kernel_size, "
        "int[2] stride, int[2] padding, bool ceil_mode, bool count_include_pad, "
        "int? divisor_override) -> Tensor");
}

#define CNNOPS_IMPL_ALL(m)                                      \
  m.impl("conv2d", &conv2d);                                    \
  m.impl("conv2d_grad_input", &conv2d_grad_input);      \
  m.impl("conv2d_grad_weight", &conv2d_grad_weight);    \
  m.impl("conv2d_grad_bias", &conv2d_grad_bias);        \
  m.impl("max_pool2d", &max_pool2d);                            \
  m.impl("max_pool2d_grad_input", &max_pool2d_grad_input);          \
  m.impl("avg_pool2d", &avg_pool2d);                            \
  m.impl("avg_pool2d_grad_input", &avg_pool2d_grad_input);

TORCH_LIBRARY_IMPL(cnnops, CPU, m) { CNNOPS_IMPL_ALL(m) }

#ifdef CNNOPS_WITH_CUDA
TORCH_LIBRARY_IMPL(cnnops, CUDA, m) { CNNOPS_IMPL_ALL(m) }
#endif

}  // namespace cnnops
