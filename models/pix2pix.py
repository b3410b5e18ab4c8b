"""Image-to-image networks: the U-Net generator and PatchGAN discriminator of pix2pix (Isola et
al. 2017), which CycleGAN and StarGAN here reuse (models/stargan.py adds the domain inputs/heads).

U-Net: stride-2 4x4 convs down to 2x2, transposed convs back up, each up block concatenating the
down block of the same size (the skips carry the input's layout to the output, which is what
makes translation keep content). PatchGAN: a few stride-2 convs and two stride-1 ones that end in
one logit per overlapping patch (70x70 at 256 px with 3 layers), so D judges local texture and the
L1 / cycle terms keep the global layout.

Instance norm throughout (CycleGAN's and StarGAN's choice; pix2pix's batch norm at batch size 1
is instance norm): no running statistics, so train and eval agree and the output of one image
does not depend on the others in its batch.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn


def _check_common(cfg) -> None:
    r = cfg.resolution
    if r < 16 or r > 512 or r & (r - 1):
        raise ValueError(f"resolution: {r} must be a power of two in [16, 512]")
    for k in ("g_channels", "d_channels"):
        if getattr(cfg, k) < 1:
            raise ValueError(f"{k}: must be >= 1")
    if not 1 <= cfg.d_layers <= int(math.log2(r)) - 2:
        raise ValueError(f"d_layers: {cfg.d_layers} must be in [1, {int(math.log2(r)) - 2}] at {r} px")


@dataclass(frozen=True, kw_only=True)
class Pix2PixConfig:
    resolution: int = 32          # px, a power of two in [16, 512]
    g_channels: int = 32          # U-Net width at full resolution; doubles per level, capped at 8x
    d_channels: int = 32          # PatchGAN width of its first layer
    d_layers: int = 3             # PatchGAN stride-2 layers (3 = the paper's 70x70 patches at 256 px)
    l1_weight: float = 100.0      # weight of |G(x) - y|_1 beside the adversarial loss (paper: 100)
    source: str = "source"        # member prefix of the input image (source.png, source.jpg, ...)
    target: str = "target"        # member prefix of the image G should produce

    def __post_init__(self):
        _check_common(self)
        if self.l1_weight < 0:
            raise ValueError("l1_weight: must be >= 0")
        for k in ("source", "target"):
            v = getattr(self, k)
            if not v or "." in v:
                raise ValueError(f"{k}: {v!r} must be a member prefix without dots, e.g. 'source'")
        if self.source == self.target:
            raise ValueError(f"target: {self.target!r} is also the source")


def _down(a: int, b: int, norm: bool = True) -> nn.Sequential:
    layers = [nn.Conv2d(a, b, 4, 2, 1, bias=not norm)]
    if norm:
        layers.append(nn.InstanceNorm2d(b, affine=True))
    return nn.Sequential(*layers, nn.LeakyReLU(0.2, True))


def _up(a: int, b: int) -> nn.Sequential:
    return nn.Sequential(nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False),
                         nn.InstanceNorm2d(b, affine=True), nn.ReLU(True))


class UNet(nn.Module):
    """x [N, in_ch, R, R] in [-1, 1] -> [N, 3, R, R] in [-1, 1]; levels down to 2x2."""

    def __init__(self, resolution: int, channels: int, in_ch: int = 3):
        super().__init__()
        n = int(math.log2(resolution)) - 1                       # 32 px: 32->16->8->4->2
        ch = [channels * min(2 ** i, 8) for i in range(n)]
        self.downs = nn.ModuleList([_down(in_ch, ch[0], norm=False)] +
                                   [_down(ch[i - 1], ch[i]) for i in range(1, n)])
        # up i takes the previous up's output and the skip of the same size (none at the bottom)
        self.ups = nn.ModuleList([_up(ch[n - 1], ch[n - 2])] +
                                 [_up(2 * ch[i], ch[i - 1]) for i in range(n - 2, 0, -1)])
        self.out = nn.Sequential(nn.ConvTranspose2d(2 * ch[0], 3, 4, 2, 1), nn.Tanh())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        skips = []
        for d in self.downs:
            x = d(x)
            skips.append(x)
        skips.pop()
        for u in self.ups:
            x = torch.cat([u(x), skips.pop()], 1)
        return self.out(x)


class PatchGAN(nn.Module):
    """x [N, in_ch, R, R] -> patch logits [N, 1, h, w]; `features(x)` gives the body's output
    (StarGAN's classifier head reads it)."""

    def __init__(self, channels: int, layers: int, in_ch: int = 3):
        super().__init__()
        ch = [channels * min(2 ** i, 8) for i in range(layers + 1)]
        body = [_down(in_ch, ch[0], norm=False)] + [_down(ch[i - 1], ch[i]) for i in range(1, layers)]
        body += [nn.Conv2d(ch[layers - 1], ch[layers], 3, 1, 1, bias=False),
                 nn.InstanceNorm2d(ch[layers], affine=True), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*body)
        self.width = ch[layers]
        self.head = nn.Conv2d(ch[layers], 1, 3, 1, 1)

    def features(self, x: torch.Tensor) -> torch.Tensor:
        return self.body(x)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.head(self.body(x))


class Pix2PixD(PatchGAN):
    """The conditional PatchGAN: D(source, image) sees the pair, channel-concatenated."""

    def __init__(self, cfg: Pix2PixConfig):
        super().__init__(cfg.d_channels, cfg.d_layers, in_ch=6)

    def forward(self, source: torch.Tensor, image: torch.Tensor) -> torch.Tensor:
        return super().forward(torch.cat([source, image], 1))


def build(cfg: Pix2PixConfig) -> dict[str, nn.Module]:
    return {"G": UNet(cfg.resolution, cfg.g_channels), "D": Pix2PixD(cfg)}


@dataclass(frozen=True, kw_only=True)
class CycleGANConfig:
    resolution: int = 32          # px, a power of two in [16, 512]
    g_channels: int = 32          # each U-Net's width at full resolution
    d_channels: int = 32          # each PatchGAN's first-layer width
    d_layers: int = 3             # PatchGAN stride-2 layers
    domains: tuple[str, str] = ("A", "B")   # names of cls 0 (A) and cls 1 (B); other cls are not read
    cycle_weight: float = 10.0    # lambda: |G_ba(G_ab(a)) - a|_1 + |G_ab(G_ba(b)) - b|_1 (paper: 10)
    identity_weight: float = 0.5  # identity term |G_ab(b) - b|_1 + ..., times cycle_weight (paper: 0.5)
    pool_size: int = 50           # fakes each D's history pool holds (paper: 50); 0 = no pool

    def __post_init__(self):
        _check_common(self)
        if len(self.domains) != 2 or len(set(self.domains)) != 2 or not all(self.domains):
            raise ValueError(f"domains: {self.domains!r} must be two distinct names (cls 0, cls 1)")
        for k in ("cycle_weight", "identity_weight"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}: must be >= 0")
        if self.pool_size < 0:
            raise ValueError("pool_size: must be >= 0")


def build_cyclegan(cfg: CycleGANConfig) -> dict[str, nn.Module]:
    g = lambda: UNet(cfg.resolution, cfg.g_channels)             # noqa: E731
    d = lambda: PatchGAN(cfg.d_channels, cfg.d_layers)           # noqa: E731
    return {"G_ab": g(), "G_ba": g(), "D_a": d(), "D_b": d()}
