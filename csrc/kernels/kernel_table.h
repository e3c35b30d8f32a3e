// The CPU kernels' entry points, one table per compiled variant (see common/variant.h).
// Kernels see plain params structs (pointers, sizes, strides in elements); arguments are
// checked before this (mmfast/ops.py, then csrc/bindings.cpp).
#pragma once

#include "kernels/attention.h"
#include "kernels/conv2d.h"
#include "kernels/softmax.h"

namespace mmfast {

struct KernelTable {
  const char* name;
  void (*softmax)(const SoftmaxParams& p);
  void (*conv2d)(const Conv2dParams& p);
  void (*attention)(const AttentionParams& p);
};

}  // namespace mmfast
