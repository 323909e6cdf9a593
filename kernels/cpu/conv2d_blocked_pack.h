// The weight repack of the channel-blocked CPU convolution (conv2d_blocked.cpp): weights in
// any [oc][ic][tap] strided layout to the kernel's [C_out / lanes][K][lanes], by in-register
// transposes (kernels/cpu/conv2d_blocked_pack.cpp).
#pragma once

#include <cstdint>

namespace cnnops {

// What the repack reads. Weight (oc, ic, tap) is at weight + oc w_out + ic w_in + w_tap[tap]
// (w_tap null: tap itself). The packed reduction index k runs over
//   planar (blocked_in false): (ic, tap), k = ic taps + tap;
//   blocked_in: (ic / 16, tap, ic % 16), the last block of 16 channels possibly short
// (conv2d_blocked.cpp's "offsets of the reduction steps"). The layer's forward passes
// w_tap = null, w_in = taps, w_out = C_in taps; grad_input's sub-convolutions pass their
// flipped tap subset with w_out = the real layer's taps, w_in = the real layer's C_in taps.
struct PackSpec {
  const float* weight = nullptr;
  int64_t C_out = 0, C_in = 0, taps = 0;
  int64_t w_out = 0, w_in = 0;
  const int64_t* w_tap = nullptr;  // taps entries, each >= 0; null = identity
  bool blocked_in = false;
  int lanes = 0;   // output channels per packed block, 1..16
  int64_t K = 0;   // C_in * taps
};

// dst[(ob K + k) lanes + l] = weight (oc = ob lanes + l, k) for oc < C_out, 0 past C_out, for
// ob < ceil(C_out / lanes): bit for bit the scalar gather of pack_blocked_weights_reference.
// dst needs ceil(C_out / lanes) K lanes floats (64-byte aligned is fastest). The ISA is
// cpu_isa_active()'s. `parallel`: OpenMP over the output-channel blocks when the copy is
// large enough to pay for the team (kParallelWork floats).
void pack_blocked_weights(const PackSpec& p, float* dst, bool parallel);

// The same result by the scalar gather (for tests and benchmarks).
void pack_blocked_weights_reference(const PackSpec& p, float* dst);

}  // namespace cnnops
