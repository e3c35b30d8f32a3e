// CUDA fused attention (FlashAttention-2 style forward) over the shared AttentionParams
// (attention/attention.h), with the CPU kernel's semantics. q, k, v, out are device buffers of
// params.dtype (f32: an exact SIMT kernel; f16/bf16: tensor cores, float32 accumulation); lse and
// an additive mask are float32, a boolean mask is 1-byte bool.
#pragma once

#include <cuda_runtime.h>

#include "attention/attention.h"

namespace mmfast::cuda {

// Checks `params` (check_attention with Device::cuda: std::invalid_argument naming the argument)
// and enqueues the attention on `stream`. Throws std::runtime_error on a CUDA error.
void attention(const AttentionParams& params, cudaStream_t stream);

}  // namespace mmfast::cuda
