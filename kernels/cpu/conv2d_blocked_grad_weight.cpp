// conv2d grad_weight on the channel-blocked scheme, float32 (issue 14). Not written yet: every
// shape goes to the row kernel of conv2d.cpp.
#include "conv2d_blocked.h"

namespace cnnops {

bool conv2d_grad_weight_blocked_f32(const float*, const float*, float*, const Conv2dShape&) {
  return false;
}

}  // namespace cnnops
