"""StarGAN (Choi et al. 2018) networks: one U-Net G(x, c) for every target domain c, and one
PatchGAN D with two heads, real/fake per patch and a domain classifier over the whole image.

G sees c as k constant one-hot planes concatenated to the image (the paper's conditioning). The
paper's G is an encoder-ResNet-decoder; here it is the pix2pix U-Net (models/pix2pix.py), whose
skips keep the glyphs' layout at these small sizes.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.pix2pix import PatchGAN, UNet, _check_common


@dataclass(frozen=True, kw_only=True)
class StarGANConfig:
    resolution: int = 32          # px, a power of two in [16, 512]
    g_channels: int = 32          # U-Net width at full resolution
    d_channels: int = 32          # PatchGAN first-layer width
    d_layers: int = 3             # PatchGAN stride-2 layers
    domains: tuple[str, ...] = ("filled", "outline", "inverted")   # names of cls 0, 1, ... (>= 2)
    cls_weight: float = 1.0       # lambda_cls: domain classification of reals (D) and fakes (G)
    cycle_weight: float = 10.0    # lambda_rec: |G(G(x, c'), c) - x|_1
    gp_weight: float = 10.0       # lambda_gp: WGAN-GP on D's real/fake head (paper: 10)

    def __post_init__(self):
        _check_common(self)
        if len(self.domains) < 2 or len(set(self.domains)) != len(self.domains) or not all(self.domains):
            raise ValueError(f"domains: {self.domains!r} must be >= 2 distinct names (in cls order)")
        for k in ("cls_weight", "cycle_weight", "gp_weight"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}: must be >= 0")


class StarG(nn.Module):
    def __init__(self, cfg: StarGANConfig):
        super().__init__()
        self.k = len(cfg.domains)
        self.net = UNet(cfg.resolution, cfg.g_channels, in_ch=3 + self.k)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        planes = F.one_hot(c.long(), self.k).to(x.dtype)[:, :, None, None].expand(-1, -1, *x.shape[-2:])
        return self.net(torch.cat([x, planes], 1))


class StarD(PatchGAN):
    """D(x) -> (patch logits [N, 1, h, w], domain logits [N, k])."""

    def __init__(self, cfg: StarGANConfig):
        super().__init__(cfg.d_channels, cfg.d_layers)
        side = cfg.resolution // 2 ** cfg.d_layers
        self.cls = nn.Conv2d(self.width, len(cfg.domains), side, 1, 0)   # one logit per domain

    def forward(self, x: torch.Tensor):
        h = self.features(x)
        return self.head(h), self.cls(h).flatten(1)


def build(cfg: StarGANConfig) -> dict[str, nn.Module]:
    return {"G": StarG(cfg), "D": StarD(cfg)}
