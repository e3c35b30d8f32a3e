// Fused scaled-dot-product attention (FlashAttention-style, online softmax) parameters.
#pragma once

#include <cstdint>

namespace mmfast {

// out[b, h, i, :] = sum_j softmax_j(s[b, h, i, j]) · v[b, h / group, j, :] where
//   s = scale · q[b, h, i, :] · k[b, h / group, j, :]       (group = hq / hkv: GQA / MQA)
//   s = softcap · tanh(s / softcap)                         (if softcap > 0)
//   s += mask_add[b, h, i, j]  /  s = -inf where !mask_keep[b, h, i, j]   (if given)
//   s = -inf where causal and j > i + causal_offset
// A row with every key masked gives out = 0 and lse = -inf (never NaN).
// All strides are in elements; the last dimension of q, k, v, out is contiguous. Mask strides
// may be 0 (broadcast) in any dimension, the last one included. Sizes are checked before this
// (mmfast/_attention.py, then csrc/bindings.cpp): b, hq, hkv, lq, lk >= 0 (lq or lk may be 0),
// 1 <= d, dv <= 256, hq % hkv == 0.
struct AttentionParams {
  const float* q = nullptr;  // (b, hq, lq, d)
  const float* k = nullptr;  // (b, hkv, lk, d)
  const float* v = nullptr;  // (b, hkv, lk, dv)
  float* out = nullptr;      // (b, hq, lq, dv)
  float* lse = nullptr;      // (b, hq, lq) natural-log-sum-exp of the final scores, or null
  int64_t b = 0, hq = 0, hkv = 0, lq = 0, lk = 0, d = 0, dv = 0;
  int64_t q_sb = 0, q_sh = 0, q_sl = 0;  // strides of q over (b, h, l)
  int64_t k_sb = 0, k_sh = 0, k_sl = 0;
  int64_t v_sb = 0, v_sh = 0, v_sl = 0;
  int64_t o_sb = 0, o_sh = 0, o_sl = 0;
  int64_t lse_sb = 0, lse_sh = 0;  // lse's l stride is 1

  // At most one of the two masks (both null: no mask).
  const float* mask_add = nullptr;                 // added to the scores
  const uint8_t* mask_keep = nullptr;              // 0 = masked out (bool storage)
  int64_t m_sb = 0, m_sh = 0, m_sq = 0, m_sk = 0;  // mask strides over (b, h, i, j)

  float scale = 1.0f;
  float softcap = 0.0f;  // <= 0: off
  bool causal = false;
  // Query i sees key j iff j <= i + causal_offset: 0 is PyTorch's top-left alignment,
  // lk - lq the bottom-right one (FlashAttention, KV-cache decoding).
  int64_t causal_offset = 0;
};

}  // namespace mmfast
