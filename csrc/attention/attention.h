// Fused scaled-dot-product attention: the one parameter struct shared by the CPU kernel
// (attention_cpu.cpp), the CUDA launcher (attention_cuda.cu) and both bindings, its limits, and
// the check every caller runs before a kernel reads the struct.
#pragma once

#include <cstdint>

#include "common/device.h"

namespace mmfast {

// Head dims (D and Dv) up to this are supported on every device: the CUDA kernels' largest
// head-dim bucket, and the CPU kernel's per-task workspace bound (<= 157 KiB).
constexpr int64_t kAttentionMaxHeadDim = 256;

// A softcap (s -> softcap * tanh(s / softcap)) is 0 (off) or in this range: 1 / softcap and
// softcap * log2(e) must be finite float32 numbers (a denormal softcap turned zero scores into
// NaN). The smallest normal float32, and half the largest.
constexpr float kAttentionMinSoftcap = 1.17549435e-38f;
constexpr float kAttentionMaxSoftcap = 1.70141173e38f;

enum class MaskKind : int {
  none = 0,
  boolean = 1,   // uint8 (bool storage): 0 = masked out
  additive = 2,  // float32, added to the scores (-inf excludes)
};

// out[b, h, i, :] = sum_j softmax_j(s[b, h, i, j]) · v[b, h / group, j, :] where
//   s = scale · q[b, h, i, :] · k[b, h / group, j, :]       (group = q_heads / kv_heads: GQA, MQA)
//   s = softcap · tanh(s / softcap)                         (if softcap > 0)
//   s += mask[b, h, i, j]  /  s = -inf where !mask[b, h, i, j]   (additive / boolean mask)
//   s = -inf where causal and j > i + causal_offset
// A row with every key masked gives out = 0 and lse = -inf (never NaN).
//
// Element strides of a (batch, head, row, dim) tensor over its first three dimensions; the last
// one (dim) is contiguous.
struct RowStrides {
  int64_t batch = 0, head = 0, row = 0;
};

// Element strides of the mask over (batch, head, query, key); 0 where it broadcasts (any of
// them, the last one included).
struct MaskStrides {
  int64_t batch = 0, head = 0, query = 0, key = 0;
};

struct AttentionParams {
  const void* q = nullptr;     // (batch, q_heads, q_len, head_dim)
  const void* k = nullptr;     // (batch, kv_heads, kv_len, head_dim)
  const void* v = nullptr;     // (batch, kv_heads, kv_len, v_head_dim)
  void* out = nullptr;         // (batch, q_heads, q_len, v_head_dim)
  float* lse = nullptr;        // (batch, q_heads, q_len) dense, float32: ln-sum-exp of the scores
  const void* mask = nullptr;  // (batch, q_heads, q_len, kv_len) of mask_kind, or null
  MaskKind mask_kind = MaskKind::none;
  DType dtype = DType::f32;  // of q, k, v, out (the CPU kernel takes f32 only)

  int64_t batch = 0, q_heads = 0, kv_heads = 0, q_len = 0, kv_len = 0;
  int64_t head_dim = 0, v_head_dim = 0;

  RowStrides q_stride, k_stride, v_stride, out_stride;
  MaskStrides mask_stride;

  float scale = 1.0f;
  float softcap = 0.0f;  // <= 0: off
  bool causal = false;
  // Query i sees key j iff j <= i + causal_offset: 0 is PyTorch's top-left alignment,
  // kv_len - q_len the bottom-right one (FlashAttention, KV-cache decoding).
  int64_t causal_offset = 0;
};

// Throws std::invalid_argument (ValueError in Python) naming the argument when the struct breaks
// an invariant the kernels rely on: sizes, head counts, head-dim limits, a mask without a kind,
// finite scale and softcap, and on CUDA the grid limits. Arrays' dtypes and extents are the
// bindings' business; this checks what every device shares.
void check_attention(const AttentionParams& p, Device device);

}  // namespace mmfast
