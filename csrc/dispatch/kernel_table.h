// The CPU kernels' entry points, one table per compiled variant (see common/variant.h).
// Kernels see the ops' params structs (pointers, sizes, strides in elements), checked before
// this by the bindings (csrc/bindings.cpp) with each op's check function.
#pragma once

#include "attention/attention.h"
#include "conv2d/conv2d_cpu.h"
#include "softmax/softmax.h"

namespace mmfast {

struct KernelTable {
  const char* name;
  void (*softmax)(const SoftmaxParams& p);
  void (*conv2d)(const Conv2dParams& p, const Conv2dCpuPlan& plan);
  void (*attention)(const AttentionParams& p);
};

}  // namespace mmfast
