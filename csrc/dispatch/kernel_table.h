// The CPU kernels' entry points, one table per compiled variant (see common/variant.h).
// Kernels see the ops' params structs (pointers, sizes, strides in elements), checked before
// this by the bindings (csrc/bindings.cpp) with each op's check function.
#pragma once

#include <cstddef>

#include "attention/attention.h"
#include "conv2d/conv2d_cpu.h"
#include "conv2d/conv2d_winograd.h"
#include "softmax/softmax.h"

namespace mmfast {

struct KernelTable {
  const char* name;
  void (*softmax)(const SoftmaxParams& p);
  void (*conv2d)(const Conv2dParams& p, const Conv2dCpuPlan& plan);
  void (*attention)(const AttentionParams& p);
  void (*conv2d_winograd)(const Conv2dParams& p, const Conv2dWinogradPlan& plan);
};

// The bf16 kernels (precision="bf16": bf16 inputs, float32 accumulation), compiled once with
// -mavx512bf16 (conv2d/conv2d_cpu_bf16.h, attention/attention_cpu_bf16.h). Without them the ops
// run the portable fallback: inputs rounded to bf16, then the float32 kernels.
struct Bf16KernelTable {
  const char* name;
  void (*conv2d)(const Conv2dParams& p, const Conv2dCpuPlan& plan);
  void (*attention)(const AttentionParams& p, void* workspace);
};

}  // namespace mmfast
