"""Where does the CUDA attention differ from a float64 reference? Prints the relative error by
blocks of 8 query rows x 8 output columns for a few small cases (a layout bug shows as a
pattern). Run by benchmarks/gpu/check.sh."""

from __future__ import annotations

import math

import torch

from mmfast.ops import attention


def ref(q, k, v, causal):
    q, k, v = (t.double().cpu() for t in (q, k, v))
    s = q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1])
    if causal:
        L = s.shape[-1]
        s = s.masked_fill(torch.ones(L, L, dtype=torch.bool).triu(1), -math.inf)
    return torch.softmax(s, -1) @ v


for dtype in (torch.float16, torch.bfloat16, torch.float32):
    for D, L, causal in ((64, 64, False), (32, 16, False), (128, 200, True)):
        torch.manual_seed(0)
        q, k, v = (torch.randn(1, 1, L, D, dtype=dtype, device="cuda") for _ in range(3))
        out = attention(q, k, v, is_causal=causal).double().cpu()
        r = ref(q, k, v, causal)
        err = (out - r)[0, 0].abs()
        rel = float((out - r).norm() / r.norm())
        print(f"{dtype!s:15} D={D:3} L={L:3} causal={causal!s:5} rel err {rel:.2e}")
        if rel > 2e-2:
            blocks = err[: L // 8 * 8, : D // 8 * 8].reshape(L // 8, 8, D // 8, 8).amax((1, 3))
            print("  max |err| per 8x8 block (rows = query blocks, cols = dim blocks):")
            for row in blocks[:8]:
                print("  " + " ".join(f"{x:5.2f}" for x in row[:16].tolist()))
            print("  out[0, :8]", [round(x, 3) for x in out[0, 0, 0, :8].tolist()])
            print("  ref[0, :8]", [round(x, 3) for x in r[0, 0, 0, :8].tolist()])
