"""A small ResNet-style CNN image encoder: image -> region features and a pooled vector."""

from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import nn

__all__ = ["ConvEncoder", "EncoderConfig"]


@dataclass
class EncoderConfig:
    image_size: int = 64
    widths: tuple[int, ...] = (32, 64, 128)  # one residual stage per width, each stride 2
    blocks: int = 1  # residual blocks per stage


class BasicBlock(nn.Module):
    """conv3x3-BN-ReLU-conv3x3-BN + shortcut (1x1 conv when the shape changes), ReLU."""

    def __init__(self, cin: int, cout: int, stride: int) -> None:
        super().__init__()
        self.conv1 = nn.Conv2d(cin, cout, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(cout)
        self.conv2 = nn.Conv2d(cout, cout, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(cout)
        self.short: nn.Module = nn.Identity()
        if stride != 1 or cin != cout:
            self.short = nn.Sequential(
                nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout)
            )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = torch.relu(self.bn1(self.conv1(x)))
        y = self.bn2(self.conv2(y))
        return torch.relu(y + self.short(x))


class ConvEncoder(nn.Module):
    """(B, 3, S, S) -> regions (B, N, C) with N = (S / 2^stages)^2, pooled (B, C).

    Regions carry a learned positional embedding, so that attention over them knows where each
    region is (left/right/above/below are part of the captions and questions).
    """

    def __init__(self, cfg: EncoderConfig) -> None:
        super().__init__()
        self.cfg = cfg
        w0 = cfg.widths[0]
        self.stem = nn.Sequential(
            nn.Conv2d(3, w0, 3, 1, 1, bias=False), nn.BatchNorm2d(w0), nn.ReLU(inplace=True)
        )
        layers: list[nn.Module] = []
        cin = w0
        for w in cfg.widths:
            for b in range(cfg.blocks):
                layers.append(BasicBlock(cin, w, 2 if b == 0 else 1))
                cin = w
        self.stages = nn.Sequential(*layers)
        self.grid = cfg.image_size // (2 ** len(cfg.widths))
        self.dim = cin
        self.num_regions = self.grid * self.grid
        self.pos = nn.Parameter(torch.zeros(1, self.num_regions, cin))
        nn.init.normal_(self.pos, std=0.02)

    def forward(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        x = self.stages(self.stem(images))  # (B, C, g, g)
        regions = x.flatten(2).transpose(1, 2) + self.pos  # (B, N, C)
        pooled = x.mean(dim=(2, 3))  # (B, C)
        return regions, pooled
