// Bit-exact test of pack_blocked_weights against the scalar gather (an independent copy of
// conv2d_blocked.cpp's loop, korder built as there), on random specs, under every ISA.
//   g++ -O2 -fopenmp -I kernels/include -I kernels/cpu kernels/cpu/conv2d_blocked_pack.cpp
//       kernels/cpu/cpu_isa.cpp tests/cpp/test_pack.cpp -I tests/cpp -o /tmp/test_pack && /tmp/test_pack
#include <omp.h>

#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <random>
#include <string>
#include <vector>

#include "conv2d_blocked_pack.h"

using namespace cnnops;

// conv2d_blocked.cpp's loop (korder from the "offsets of the reduction steps" block).
static void scalar_pack(const PackSpec& p, float* dst) {
  std::vector<int64_t> korder;
  const int64_t cblocks = (p.C_in + 15) / 16;
  for (int64_t icb = 0; icb < (p.blocked_in ? cblocks : p.C_in); ++icb)
    for (int64_t tap = 0; tap < p.taps; ++tap) {
      const int64_t wt = p.w_tap ? p.w_tap[tap] : tap;
      if (!p.blocked_in) {
        korder.push_back(icb * p.w_in + wt);
        continue;
      }
      for (int64_t l = 0; l < 16 && icb * 16 + l < p.C_in; ++l)
        korder.push_back((icb * 16 + l) * p.w_in + wt);
    }
  if (static_cast<int64_t>(korder.size()) != p.K) std::abort();
  const int64_t lanes = p.lanes, blocks = (p.C_out + lanes - 1) / lanes;
  for (int64_t ob = 0; ob < blocks; ++ob)
    for (int64_t k = 0; k < p.K; ++k)
      for (int64_t l = 0; l < lanes; ++l) {
        const int64_t oc = ob * lanes + l;
        dst[(ob * p.K + k) * lanes + l] = oc < p.C_out ? p.weight[oc * p.w_out + korder[k]] : 0.0f;
      }
}

static std::mt19937_64 rng(12345);
static int64_t pick(std::initializer_list<int64_t> v) {
  return *(v.begin() + rng() % v.size());
}

struct Case {
  std::string what;
  PackSpec p;
  std::vector<int64_t> w_tap;
  int64_t numel;  // weight floats the spec may read
};

// The taps of grad_input's phase (r_h, r_w) for a KH x KW layer at stride / dilation, flipped
// (conv2d_blocked_grad_input.cpp's tap_at).
static std::vector<int64_t> phase_taps(int64_t KH, int64_t KW, int64_t sh, int64_t sw, int64_t dh,
                                       int64_t dw, int64_t rh, int64_t rw) {
  std::vector<int64_t> th, tw, out;
  for (int64_t k = 0; k < KH; ++k)
    if ((k * dh) % sh == rh) th.push_back(k);
  for (int64_t k = 0; k < KW; ++k)
    if ((k * dw) % sw == rw) tw.push_back(k);
  for (size_t a = 0; a < th.size(); ++a)
    for (size_t b = 0; b < tw.size(); ++b)
      out.push_back(th[th.size() - 1 - a] * KW + tw[tw.size() - 1 - b]);
  return out;
}

static int64_t lanes_pick(int64_t C_out) {
  switch (rng() % 4) {
    case 0: return 16;
    case 1: return 8;
    case 2: return C_out <= 8 ? C_out : (C_out + 1) / 2 <= 16 ? (C_out + 1) / 2 : 1 + rng() % 8;
    default: return 1 + rng() % 16;
  }
}

static Case random_case(int kind) {
  Case c;
  PackSpec& p = c.p;
  const int64_t chans[] = {1, 2, 3, 5, 6, 8, 15, 16, 17, 31, 32, 33, 47, 48, 64, 65};
  const int64_t kernels[][2] = {{1, 1}, {2, 2}, {3, 3}, {5, 5}, {7, 7}, {1, 3}, {3, 1}, {4, 4}, {2, 3}};
  if (kind == 0) {  // the layer's forward
    const auto* k = kernels[rng() % 9];
    p.C_out = chans[rng() % 16], p.C_in = chans[rng() % 16], p.taps = k[0] * k[1];
    p.w_in = p.taps, p.w_out = p.C_in * p.taps;
    c.numel = p.C_out * p.w_out;
    c.what = "forward";
  } else if (kind == 1) {  // grad_input's stride-phase sub-convolution
    const auto* k = kernels[rng() % 9];
    const int64_t KH = k[0], KW = k[1];
    const int64_t sh = pick({1, 1, 2, 3}), sw = rng() % 2 ? sh : pick({1, 2});
    const int64_t dh = pick({1, 1, 2}), dw = pick({1, 1, 2});
    std::vector<int64_t> taps;
    while (taps.empty()) taps = phase_taps(KH, KW, sh, sw, dh, dw, rng() % sh, rng() % sw);
    const int64_t Co_r = chans[rng() % 16], Ci_r = chans[rng() % 16];
    c.w_tap = taps;
    p.C_out = Ci_r, p.C_in = Co_r, p.taps = static_cast<int64_t>(taps.size());
    p.w_out = KH * KW, p.w_in = Ci_r * KH * KW;
    c.numel = Co_r * Ci_r * KH * KW;
    c.what = "grad_input";
  } else {  // any layout: random tap offsets (possibly beyond w_out, repeated), strides
    p.C_out = chans[rng() % 16], p.C_in = chans[rng() % 16], p.taps = 1 + rng() % 30;
    const int64_t span = 1 + rng() % 60;
    for (int64_t t = 0; t < p.taps; ++t) c.w_tap.push_back(rng() % span);
    p.w_out = 1 + rng() % 70, p.w_in = rng() % 3 ? 1 + rng() % 200 : 0;
    c.numel = (p.C_out - 1) * p.w_out + (p.C_in - 1) * p.w_in + span;
    c.what = "generic";
    if (rng() % 4 == 0) c.w_tap.clear(), c.numel = (p.C_out - 1) * p.w_out + (p.C_in - 1) * p.w_in + p.taps;
  }
  p.blocked_in = rng() % 2;
  p.lanes = static_cast<int>(lanes_pick(p.C_out));
  p.K = p.C_in * p.taps;
  return c;
}

int main(int argc, char** argv) {
  const int n = argc > 1 ? std::atoi(argv[1]) : 3000;
  const char* isas[] = {"avx512", "avx2", "baseline"};
  int64_t failures = 0, checked = 0;
  std::uniform_real_distribution<float> u(-1, 1);
  // the named shapes: ResNet-18's 512 -> 512 3x3 (9.4 MB: the staged and prefetching paths),
  // forward and grad_input (stride-1 phase), and LeNet's
  std::vector<Case> named;
  for (int lanes : {16, 8})
    for (int gi = 0; gi < 2; ++gi) {
      Case c;
      c.p.C_out = 512, c.p.C_in = 512, c.p.taps = 9, c.p.blocked_in = true, c.p.lanes = lanes, c.p.K = 512 * 9;
      if (gi) {
        for (int t = 8; t >= 0; --t) c.w_tap.push_back(t);
        c.p.w_out = 9, c.p.w_in = 512 * 9, c.what = "grad_input 512";
      } else {
        c.p.w_out = 512 * 9, c.p.w_in = 9, c.what = "forward 512";
      }
      c.numel = 512 * 512 * 9;
      named.push_back(c);
    }
  for (int lanes : {6, 16, 8}) {
    Case c;
    c.p.C_out = lanes == 6 ? 6 : 16, c.p.C_in = lanes == 6 ? 1 : 6, c.p.taps = 25, c.p.lanes = lanes;
    c.p.w_in = 25, c.p.w_out = c.p.C_in * 25, c.p.K = c.p.C_in * 25, c.numel = c.p.C_out * c.p.w_out;
    c.what = "lenet";
    named.push_back(c);
  }
  for (int i = 0; i < n + static_cast<int>(named.size()); ++i) {
    Case c = i < n ? random_case(i % 3) : named[i - n];
    PackSpec& p = c.p;
    p.w_tap = c.w_tap.empty() ? nullptr : c.w_tap.data();
    // the weights sit at the end of a page-sized guard of NaN-free floats; special values mixed
    // in (NaN payloads, -0, denormals, inf): the copy must keep every bit
    std::vector<float> w(c.numel);
    for (auto& x : w) x = u(rng);
    const uint32_t specials[] = {0x7FC00001u, 0xFFC12345u, 0x80000000u, 0x00000001u, 0x7F800000u, 0x7FA00000u};
    for (int s = 0; s < 6 && c.numel > 0; ++s) std::memcpy(&w[rng() % c.numel], &specials[s], 4);
    p.weight = w.data();
    const int64_t blocks = (p.C_out + p.lanes - 1) / p.lanes, out = blocks * p.K * p.lanes;
    std::vector<float> want(out + 16), got_buf(out + 64);
    scalar_pack(p, want.data());
    {  // the reference the header exports, against this file's loop
      std::vector<float> ref(out + 16);
      pack_blocked_weights_reference(p, ref.data());
      if (std::memcmp(ref.data(), want.data(), out * 4) != 0 && failures++ < 20) std::printf("FAIL reference\n");
    }
    for (const char* isa : isas) {
      setenv("CNNOPS_CPU_ISA", isa, 1);
      for (int par = 0; par < 2; ++par)
        for (int misalign = 0; misalign < 2; ++misalign) {
          float* got = reinterpret_cast<float*>((reinterpret_cast<uintptr_t>(got_buf.data()) + 63) & ~uintptr_t(63)) + misalign;
          std::memset(got_buf.data(), 0xAB, got_buf.size() * 4);
          pack_blocked_weights(p, got, par);
          ++checked;
          bool ok = std::memcmp(got, want.data(), out * 4) == 0;
          // nothing written past the end or before the start
          const unsigned char* b = reinterpret_cast<const unsigned char*>(got_buf.data());
          for (const unsigned char* q = b; q < reinterpret_cast<const unsigned char*>(got); ++q) ok &= *q == 0xAB;
          for (const unsigned char* q = reinterpret_cast<const unsigned char*>(got + out);
               q < b + got_buf.size() * 4; ++q)
            ok &= *q == 0xAB;
          if (!ok && failures++ < 20)
            std::printf("FAIL %s isa=%s par=%d mis=%d C_out=%ld C_in=%ld taps=%ld w_out=%ld w_in=%ld blocked=%d lanes=%d\n",
                        c.what.c_str(), isa, par, misalign, (long)p.C_out, (long)p.C_in, (long)p.taps,
                        (long)p.w_out, (long)p.w_in, (int)p.blocked_in, p.lanes);
        }
    }
  }
  std::printf("%ld checks, %ld failures (omp threads %d)\n", (long)checked, (long)failures, omp_get_max_threads());
  return failures ? 1 : 0;
}
