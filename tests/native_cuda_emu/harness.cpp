// Runs the CUDA launchers of kernels/*.cu under cuda_emu.h (CPU emulation) and compares them
// with the C++ kernels of kernels/*_cpu.cpp run in double on the same (rounded) values; the
// C++ kernels are themselves tested against PyTorch. Every dtype, both conv2d algorithms,
// every backward. Prints each failure with its first mismatches; exit status 1 on any.
#include <cuda_bf16.h>
#include <cuda_fp16.h>

#include <cmath>
#include <cstdio>
#include <random>
#include <string>
#include <type_traits>
#include <vector>

#include "kernels.h"

using namespace cnnops;

namespace {

int failures = 0, checks = 0;
std::mt19937_64 rng(1234);

template <typename T>
T from_double(double v) {
  if constexpr (std::is_same_v<T, __half>) return __float2half(static_cast<float>(v));
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __float2bfloat16(static_cast<float>(v));
  else return static_cast<T>(v);
}

template <typename T>
double to_double(T v) {
  if constexpr (std::is_same_v<T, __half>) return __half2float(v);
  else if constexpr (std::is_same_v<T, __nv_bfloat16>) return __bfloat162float(v);
  else return static_cast<double>(v);
}

template <typename T> constexpr DType dtype_of() {
  if constexpr (std::is_same_v<T, float>) return DType::f32;
  else if constexpr (std::is_same_v<T, double>) return DType::f64;
  else if constexpr (std::is_same_v<T, __half>) return DType::f16;
  else return DType::bf16;
}

// Relative to the largest expected magnitude.
template <typename T> constexpr double tolerance() {
  if constexpr (std::is_same_v<T, double>) return 1e-10;
  else if constexpr (std::is_same_v<T, float>) return 1e-5;
  else if constexpr (std::is_same_v<T, __half>) return 2e-3;
  else return 1.6e-2;
}

template <typename T> const char* name_of() {
  if constexpr (std::is_same_v<T, float>) return "float32";
  else if constexpr (std::is_same_v<T, double>) return "float64";
  else if constexpr (std::is_same_v<T, __half>) return "float16";
  else return "bfloat16";
}

// Values in T and the same values in double.
template <typename T>
struct Data {
  std::vector<T> t;
  std::vector<double> d;
  explicit Data(size_t n) {
    std::normal_distribution<double> normal;
    for (size_t i = 0; i < n; ++i) {
      t.push_back(from_double<T>(normal(rng)));
      d.push_back(to_double(t.back()));
    }
  }
  void set(size_t i, double v) { t[i] = from_double<T>(v), d[i] = to_double(t[i]); }
};

template <typename T>
void check(const std::string& what, const std::vector<T>& got, const std::vector<double>& want,
           double tol) {
  ++checks;
  double scale = 1;
  for (double w : want) if (std::isfinite(w)) scale = std::max(scale, std::fabs(w));
  int shown = 0;
  for (size_t i = 0; i < want.size(); ++i) {
    const double g = to_double(got[i]), w = want[i];
    const bool same = (std::isnan(g) && std::isnan(w)) || g == w || std::fabs(g - w) <= tol * scale;
    if (!same) {
      if (shown == 0) ++failures, std::printf("FAIL %s\n", what.c_str());
      if (shown++ < 5) std::printf("  [%zu] got %.9g, want %.9g\n", i, g, w);
    }
  }
}

void check_indices(const std::string& what, const std::vector<int64_t>& got,
                   const std::vector<int64_t>& want) {
  ++checks;
  for (size_t i = 0; i < want.size(); ++i)
    if (got[i] != want[i]) {
      ++failures;
      std::printf("FAIL %s\n  [%zu] index %lld, want %lld\n", what.c_str(), i,
                  static_cast<long long>(got[i]), static_cast<long long>(want[i]));
      return;
    }
}

void expect_ok(cudaError_t err, const std::string& what) {
  if (err != cudaSuccess) ++failures, std::printf("FAIL %s: launcher returned %d\n", what.c_str(), err);
}

Conv2dShape conv(int64_t N, int64_t C_in, int64_t H, int64_t W, int64_t C_out, int64_t KH,
                 int64_t KW, int64_t sh, int64_t sw, int64_t ph, int64_t pw, int64_t dh,
                 int64_t dw, int64_t groups) {
  Conv2dShape s{N, C_in, H, W, C_out, KH, KW, 0, 0, sh, sw, ph, pw, dh, dw, groups};
  s.OH = output_size(H, KH, sh, ph, dh, false);
  s.OW = output_size(W, KW, sw, pw, dw, false);
  return s;
}

template <typename T>
void test_conv(const std::string& name, const Conv2dShape& s, bool bias, bool relu) {
  const std::string tag = name + " " + name_of<T>();
  const DType dt = dtype_of<T>();
  const int64_t cin_g = s.C_in / s.groups;
  Data<T> x(s.N * s.C_in * s.H * s.W), w(s.C_out * cin_g * s.KH * s.KW), b(s.C_out);
  const size_t out_size = s.N * s.C_out * s.OH * s.OW;
  std::vector<double> want(out_size);
  conv2d_forward_cpu<double>(x.d.data(), w.d.data(), bias ? b.d.data() : nullptr, want.data(), s,
                             relu);
  for (int64_t algo : {kConvNaive, kConvTiled, kConvAuto}) {
    if (algo == kConvTiled && !conv2d_tiled_fits(s, dt)) continue;
    std::vector<T> out(out_size);
    expect_ok(conv2d_forward_cuda(dt, x.t.data(), w.t.data(), bias ? b.t.data() : nullptr,
                                  out.data(), s, relu, algo, nullptr), tag);
    check(tag + " forward algo " + std::to_string(algo), out, want, tolerance<T>());
  }
  Data<T> g(out_size);
  std::vector<double> want_gi(x.d.size()), want_gw(w.d.size()), want_gb(s.C_out);
  conv2d_grad_input_cpu<double>(g.d.data(), w.d.data(), want_gi.data(), s);
  conv2d_grad_weight_cpu<double>(g.d.data(), x.d.data(), want_gw.data(), s);
  conv2d_grad_bias_cpu<double>(g.d.data(), want_gb.data(), s);
  std::vector<T> gi(want_gi.size()), gw(want_gw.size()), gb(s.C_out);
  expect_ok(conv2d_grad_input_cuda(dt, g.t.data(), w.t.data(), gi.data(), s, nullptr), tag);
  expect_ok(conv2d_grad_weight_cuda(dt, g.t.data(), x.t.data(), gw.data(), s, nullptr), tag);
  expect_ok(conv2d_grad_bias_cuda(dt, g.t.data(), gb.data(), s, nullptr), tag);
  check(tag + " grad_input", gi, want_gi, tolerance<T>());
  check(tag + " grad_weight", gw, want_gw, tolerance<T>());
  check(tag + " grad_bias", gb, want_gb, tolerance<T>());
}

Pool2dShape pool(int64_t planes, int64_t H, int64_t W, int64_t kh, int64_t kw, int64_t sh,
                 int64_t sw, int64_t ph, int64_t pw, int64_t dh, int64_t dw, bool ceil_mode) {
  Pool2dShape s{planes, H, W, 0, 0, kh, kw, sh, sw, ph, pw, dh, dw};
  s.OH = output_size(H, kh, sh, ph, dh, ceil_mode);
  s.OW = output_size(W, kw, sw, pw, dw, ceil_mode);
  return s;
}

template <typename T>
void test_max_pool(const std::string& name, const Pool2dShape& s, bool nans) {
  const std::string tag = name + " " + name_of<T>();
  const DType dt = dtype_of<T>();
  Data<T> x(s.planes * s.H * s.W);
  if (nans) {
    x.set(1 * s.W + 1, NAN), x.set(1 * s.W + 2, NAN), x.set(s.H * s.W + 3, NAN);
    x.set(2 * s.H * s.W + 2 * s.W, -INFINITY);
  }
  const size_t out_size = s.planes * s.OH * s.OW;
  std::vector<double> want(out_size);
  std::vector<int64_t> want_idx(out_size), idx(out_size);
  max_pool2d_forward_cpu<double>(x.d.data(), want.data(), want_idx.data(), s);
  std::vector<T> out(out_size);
  expect_ok(max_pool2d_forward_cuda(dt, x.t.data(), out.data(), idx.data(), s, nullptr), tag);
  check(tag + " forward", out, want, 0.0);
  check_indices(tag + " indices", idx, want_idx);
  Data<T> g(out_size);
  std::vector<double> want_gi(x.d.size());
  std::vector<T> gi(x.d.size());
  max_pool2d_grad_input_cpu<double>(g.d.data(), want_idx.data(), want_gi.data(), s);
  expect_ok(max_pool2d_grad_input_cuda(dt, g.t.data(), idx.data(), gi.data(), s, nullptr), tag);
  check(tag + " grad_input", gi, want_gi, tolerance<T>());
}

template <typename T>
void test_avg_pool(const std::string& name, const Pool2dShape& s) {
  const DType dt = dtype_of<T>();
  Data<T> x(s.planes * s.H * s.W);
  const size_t out_size = s.planes * s.OH * s.OW;
  Data<T> g(out_size);
  for (bool count_include_pad : {true, false})
    for (int64_t divisor : {0, 3, -2}) {
      const std::string tag = name + " " + name_of<T>() + " cip " +
                              std::to_string(count_include_pad) + " div " + std::to_string(divisor);
      std::vector<double> want(out_size), want_gi(x.d.size());
      avg_pool2d_forward_cpu<double>(x.d.data(), want.data(), s, count_include_pad, divisor);
      avg_pool2d_grad_input_cpu<double>(g.d.data(), want_gi.data(), s, count_include_pad, divisor);
      std::vector<T> out(out_size), gi(x.d.size());
      expect_ok(avg_pool2d_forward_cuda(dt, x.t.data(), out.data(), s, count_include_pad, divisor,
                                        nullptr), tag);
      expect_ok(avg_pool2d_grad_input_cuda(dt, g.t.data(), gi.data(), s, count_include_pad,
                                         divisor, nullptr), tag);
      check(tag + " forward", out, want, tolerance<T>());
      check(tag + " grad_input", gi, want_gi, tolerance<T>());
    }
}

template <typename T>
void test_all() {
  test_conv<T>("conv basic relu", conv(2, 3, 7, 9, 5, 3, 3, 1, 1, 1, 1, 1, 1, 1), true, true);
  test_conv<T>("conv groups stride dilation", conv(1, 4, 9, 8, 6, 3, 2, 2, 1, 1, 0, 1, 2, 2), true,
               false);
  test_conv<T>("conv depthwise stride>kernel", conv(2, 3, 6, 17, 3, 2, 2, 3, 3, 0, 0, 1, 1, 3),
               false, false);
  test_conv<T>("conv two tiles, channel tail", conv(1, 2, 20, 19, 9, 3, 3, 1, 1, 1, 1, 1, 1, 1),
               true, false);
  test_conv<T>("conv kernel = input", conv(1, 1, 5, 5, 1, 5, 5, 1, 1, 2, 2, 1, 1, 1), true, false);
  test_conv<T>("conv patch too big for tiled", conv(1, 1, 120, 118, 1, 3, 3, 1, 1, 0, 0, 50, 50, 1),
               false, false);

  for (bool ceil_mode : {false, true}) {
    const std::string c = ceil_mode ? " ceil" : "";
    test_max_pool<T>("max k3 s2 p1" + c, pool(6, 9, 8, 3, 3, 2, 2, 1, 1, 1, 1, ceil_mode), true);
    test_max_pool<T>("max rect" + c, pool(4, 10, 7, 3, 2, 2, 3, 1, 1, 1, 1, ceil_mode), false);
    test_max_pool<T>("max dilated" + c, pool(2, 13, 12, 3, 3, 1, 1, 1, 1, 2, 3, ceil_mode), false);
    test_max_pool<T>("max stride>kernel" + c, pool(3, 11, 13, 2, 2, 3, 3, 0, 0, 1, 1, ceil_mode),
                     false);
    test_avg_pool<T>("avg k3 s2 p1" + c, pool(6, 10, 9, 3, 3, 2, 2, 1, 1, 1, 1, ceil_mode));
    test_avg_pool<T>("avg rect" + c, pool(4, 9, 11, 3, 2, 2, 3, 1, 1, 1, 1, ceil_mode));
    test_avg_pool<T>("avg k5 s3 p2" + c, pool(2, 12, 8, 5, 5, 3, 3, 2, 2, 1, 1, ceil_mode));
  }
}

}  // namespace

int main() {
  test_all<double>();
  test_all<float>();
  test_all<__half>();
  test_all<__nv_bfloat16>();
  std::printf("%d checks, %d failures\n", checks, failures);
  return failures ? 1 : 0;
}
