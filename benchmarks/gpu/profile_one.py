"""One warm-up and one profiled call of the CUDA attention (bf16, B4 H16 L4096 D128), for
`ncu -k regex:attention_mma --launch-skip 1 --launch-count 1` (benchmarks/gpu/check.sh with
NCU=1)."""

import torch

from mmfast.ops import attention

q, k, v = (torch.randn(4, 16, 4096, 128, device="cuda", dtype=torch.bfloat16) for _ in range(3))
for _ in range(2):
    attention(q, k, v)
torch.cuda.synchronize()
