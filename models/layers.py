"""Blocks shared between families."""
from __future__ import annotations

import torch
import torch.nn as nn


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias come from a class embedding (cGAN, BigGAN)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) when enabled; one power iteration per call."""
    return nn.utils.parametrizations.spectral_norm(module) if enabled else module


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights as in Radford et al. 2015."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            w = getattr(m, "parametrizations", None)
            weight = w.weight.original if w is not None and hasattr(w, "weight") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)
