// CUDA fused attention (FlashAttention-2 style forward), same semantics as the CPU kernel
// (csrc/kernels/attention.h): scores s = scale * q.k, then softcap * tanh(s / softcap) when
// softcap > 0, then the mask (added, or -inf where a bool mask is false, or where the causal
// rule excludes: key j is visible to query i only if j <= i + causal_offset). Rows with no
// visible key give zeros and lse = -inf.
//
// q (B, Hq, Lq, D), k (B, Hkv, Lk, D), v (B, Hkv, Lk, Dv), o (B, Hq, Lq, Dv): device buffers
// of one dtype with the last dimension contiguous and the other strides (in elements) given;
// query head h reads kv head h / (Hq / Hkv). lse (B, Hq, Lq) float32, dense, or null.
// mask: null, or bool (1 byte) / float32 values addressed with 4 strides in elements (0 where
// broadcast) over (B, Hq, Lq, Lk).
#pragma once

#include <cuda_runtime.h>

#include <cstdint>

#include "cuda/dtype.h"

namespace mmfast::cuda {

enum class MaskKind : int { none = 0, boolean = 1, additive = 2 };

struct AttentionArgs {
  const void* q = nullptr;
  const void* k = nullptr;
  const void* v = nullptr;
  void* o = nullptr;
  float* lse = nullptr;
  const void* mask = nullptr;
  MaskKind mask_kind = MaskKind::none;
  int64_t q_stride[3] = {0, 0, 0};  // batch, head, row
  int64_t k_stride[3] = {0, 0, 0};
  int64_t v_stride[3] = {0, 0, 0};
  int64_t o_stride[3] = {0, 0, 0};
  int64_t mask_stride[4] = {0, 0, 0, 0};
  int B = 0, Hq = 0, Hkv = 0, Lq = 0, Lk = 0, D = 0, Dv = 0;
  bool causal = false;
  int64_t causal_offset = 0;
  float scale = 1.0f;
  float softcap = 0.0f;
  DType dtype = DType::f32;
};

// Enqueues the attention on `stream`. Throws std::runtime_error on a CUDA error.
void attention(const AttentionArgs& a, cudaStream_t stream);

}  // namespace mmfast::cuda
