// The device-independent part of attention: the invariants every kernel relies on, checked once
// for both devices (compiled for the baseline ISA into mmfast._C and into mmfast._C_cuda).
#include "attention/attention.h"

#include <cmath>
#include <stdexcept>
#include <string>

namespace mmfast {
namespace {

void require(bool ok, const std::string& what) {
  if (!ok) throw std::invalid_argument(what);
}

}  // namespace

void check_attention(const AttentionParams& p, Device device) {
  require(p.batch >= 0 && p.q_heads >= 0 && p.q_len >= 0 && p.kv_len >= 0,
          "q, k: sizes must be non-negative");
  require(p.kv_heads >= 1 && p.q_heads % p.kv_heads == 0,
          "k: its head count must divide q's (" + std::to_string(p.kv_heads) + " kv heads, " +
              std::to_string(p.q_heads) + " query heads; GQA/MQA)");
  require(p.head_dim >= 1 && p.head_dim <= kAttentionMaxHeadDim,
          "q: head dim " + std::to_string(p.head_dim) + " is outside [1, " +
              std::to_string(kAttentionMaxHeadDim) + "]");
  require(p.v_head_dim >= 1 && p.v_head_dim <= kAttentionMaxHeadDim,
          "v: head dim " + std::to_string(p.v_head_dim) + " is outside [1, " +
              std::to_string(kAttentionMaxHeadDim) + "]");
  require(std::isfinite(p.scale), "scale: must be finite");
  // Row + offset must not overflow; any |offset| past the lengths already means "every key" or
  // "no key", so the bound costs nothing.
  require(p.causal_offset >= -(int64_t{1} << 62) && p.causal_offset <= (int64_t{1} << 62),
          "causal_offset: out of range");
  require(std::isfinite(p.softcap) && p.softcap >= 0.0f, "softcap: must be finite and >= 0");
  // The kernels use 1 / softcap and softcap * log2(e): both must stay finite.
  require(
      p.softcap == 0.0f || (p.softcap >= kAttentionMinSoftcap && p.softcap <= kAttentionMaxSoftcap),
      "softcap: must be 0 (off) or in [" + std::to_string(kAttentionMinSoftcap) + ", " +
          std::to_string(kAttentionMaxSoftcap) + "]");
  require((p.mask == nullptr) == (p.mask_kind == MaskKind::none),
          "attn_mask: a mask needs a kind (boolean or additive) and a kind needs a mask");
  require(p.mask_kind == MaskKind::none || p.mask_kind == MaskKind::boolean ||
              p.mask_kind == MaskKind::additive,
          "attn_mask: unknown mask kind " + std::to_string(static_cast<int>(p.mask_kind)));
  if (device == Device::cpu) {
    require(p.dtype == DType::f32, "q: the CPU kernel takes float32");
  } else {
    // The CUDA grid is (query blocks, heads, batch).
    require(p.batch <= kCudaMaxGridYZ && p.q_heads <= kCudaMaxGridYZ,
            "q: batch " + std::to_string(p.batch) + " and heads " + std::to_string(p.q_heads) +
                " must each be at most " + std::to_string(kCudaMaxGridYZ) + " on CUDA");
  }
  if (p.batch > 0 && p.q_heads > 0 && p.q_len > 0)
    require(p.q && p.out && (p.kv_len == 0 || (p.k && p.v)), "q, k, v, out: null pointer");
}

}  // namespace mmfast
