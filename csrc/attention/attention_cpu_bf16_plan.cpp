// The bf16 attention's workspace size: baseline code (the kernel is attention_cpu_bf16.cpp).
#include "attention/attention_cpu_bf16.h"
#include "common/checked.h"

namespace mmfast {

size_t attention_bf16_workspace_bytes(const AttentionParams& p) {
  constexpr const char* kTooLarge = "k, v: too large for the bf16 attention's workspace";
  const int64_t heads = mul_or_throw(p.batch, p.kv_heads, kTooLarge);
  const int64_t dp = (p.head_dim + 1) / 2 * 2;  // K rows padded to whole pairs
  // K: heads x Lk x Dp bf16; V: heads x ceil(Lk / 2) x Dv words; each part 64-byte rounded.
  const int64_t k_bytes = mul_or_throw(mul_or_throw(heads, p.kv_len, kTooLarge), dp * 2, kTooLarge);
  const int64_t v_bytes =
      mul_or_throw(mul_or_throw(heads, (p.kv_len + 1) / 2, kTooLarge), p.v_head_dim * 4, kTooLarge);
  return static_cast<size_t>((k_bytes + 63) / 64 * 64 + (v_bytes + 63) / 64 * 64);
}

}  // namespace mmfast
