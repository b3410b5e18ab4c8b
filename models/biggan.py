"""BigGAN (Brock et al. 2019): residual G and D, spectral norm in both, self-attention, conditional
BN fed by a shared class embedding plus a per-block chunk of z (hierarchical latents), and a
projection discriminator (Miyato & Koyama 2018). Layer tables follow the paper's appendix B and
BigGAN-PyTorch's G_arch / D_arch.

The rest of BigGAN lives outside the networks: hinge loss (loss.kind), orthogonal regularization
(pipeline.engine.regularizers.orthogonal), D steps per G step and the EMA of G (optim.*), and the
truncation trick at sampling (pipeline.families.sampling.latents with cfg.truncation).
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models.layers import (LinearCondBatchNorm2d, SelfAttention, packed, packed_labels, sn_conv2d, sn_embedding,
                           sn_linear)

# Multiples of `ch`. G: width at 4x4, then after each 2x-upsampling block.
G_MULT = {32: (4, 4, 4, 4), 64: (16, 16, 8, 4, 2), 128: (16, 16, 8, 4, 2, 1),
          256: (16, 16, 8, 8, 4, 2, 1)}
# D: output width of each block (multiples of d_ch); the first blocks halve the resolution.
D_MULT = {32: (4, 4, 4, 4), 64: (1, 2, 4, 8, 16), 128: (1, 2, 4, 8, 16, 16),
          256: (1, 2, 4, 8, 8, 16, 16)}
D_DOWN = {32: 2, 64: 4, 128: 5, 256: 6}           # how many of those blocks downsample
ATTN_DEFAULT = {32: 0, 64: 32, 128: 64, 256: 64}  # the paper's / BigGAN-PyTorch's choice
# Default `ch`: the paper's 96 at 128/256 px, BigGAN-PyTorch's 64 at 64 px, and a CPU-sized 16 at
# 32 px for tests and smoke runs (BigGAN-PyTorch's CIFAR model used 64).
CH_DEFAULT = {32: 16, 64: 64, 128: 96, 256: 96}


@dataclass(frozen=True, kw_only=True)
class BigGANConfig:
    resolution: int = 128         # px: 32, 64, 128 or 256 (the paper's channel tables)
    ch: int | None = None         # G width unit: block widths are ch x G_MULT; None = CH_DEFAULT
    d_ch: int | None = None       # D width unit; None = G's
    # Latent size. BigGAN splits it into equal chunks, one for the input layer and one per G block
    # (so it must divide by the block count + 1: 120 at 32-128 px, 140 at 256 px); BigGAN-deep
    # feeds all of it to every block.
    z_dim: int = 120
    shared_dim: int = 128         # shared class embedding, fed with z to every conditional BN
    num_classes: int = 0          # 0 = unconditional: BN conditioned on z only, no projection in D
    # px at which G and D apply self-attention; 0 = none; None = 64 at 128/256 px, 32 at 64, none at 32.
    attn_resolution: int | None = None
    # Sampling only (sample grids, evaluation): redraw latent values with |z| above this (the
    # truncation trick). None = plain N(0, 1). Training always samples N(0, 1).
    truncation: float | None = None
    pack: int = 1                 # PacGAN: D judges `pack` samples at once (see DCGANConfig.pack)

    hierarchical: ClassVar[bool] = True           # BigGAN-deep overrides: whole z to every block
    d_mult: ClassVar[dict] = D_MULT               # D width per stage, for attention checks
    ch_default: ClassVar[dict] = CH_DEFAULT

    def __post_init__(self):
        r = self.resolution
        if r not in G_MULT:
            raise ValueError(f"resolution: {r} must be one of {sorted(G_MULT)}")
        for k in ("z_dim", "shared_dim", "pack"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        for k in ("ch", "d_ch"):
            if getattr(self, k) is not None and getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1 (or null for the default)")
        if self.num_classes < 0:
            raise ValueError("num_classes: must be >= 0")
        slots = len(G_MULT[r])
        if self.hierarchical and self.z_dim % slots:
            raise ValueError(f"z_dim: {self.z_dim} must split into {slots} equal chunks at {r} px "
                             f"(e.g. {20 * slots})")
        if self.truncation is not None and self.truncation <= 0:
            raise ValueError("truncation: must be > 0 (or null for none)")
        a = self.attn
        if a:
            if a & (a - 1) or not 8 <= a <= r // 2:
                raise ValueError(f"attn_resolution: {a} must be 0 or a power of two in [8, {r // 2}]")
            g_w = self.g_width * G_MULT[r][int(math.log2(a)) - 2]
            d_w = self.d_width * self.d_mult[r][int(math.log2(r // a)) - 1]
            if g_w % 8 or d_w % 8:
                raise ValueError(f"attn_resolution: widths at {a} px ({g_w} in G, {d_w} in D) "
                                 "must divide by 8")

    @property
    def g_width(self) -> int:
        return self.ch or self.ch_default[self.resolution]

    @property
    def d_width(self) -> int:
        return self.d_ch or self.g_width

    @property
    def attn(self) -> int:
        return ATTN_DEFAULT[self.resolution] if self.attn_resolution is None else self.attn_resolution


class GBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int):
        super().__init__()
        self.bn1, self.conv1 = LinearCondBatchNorm2d(cin, cond_dim), sn_conv2d(cin, cout)
        self.bn2, self.conv2 = LinearCondBatchNorm2d(cout, cond_dim), sn_conv2d(cout, cout)
        self.sc = sn_conv2d(cin, cout, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.interpolate(F.relu(self.bn1(x, c)), scale_factor=2.0)
        h = self.conv2(F.relu(self.bn2(self.conv1(h), c)))
        # A 1x1 conv commutes with nearest upsampling: run it at low resolution (4x fewer FLOPs).
        return h + F.interpolate(self.sc(x), scale_factor=2.0)


class DBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool, preact: bool):
        super().__init__()
        self.down, self.preact = down, preact
        self.conv1, self.conv2 = sn_conv2d(cin, cout), sn_conv2d(cout, cout)
        self.sc = sn_conv2d(cin, cout, 1) if cin != cout or down else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = F.relu(x) if self.preact else x        # no ReLU on the RGB input
        h = self.conv2(F.relu(self.conv1(h)))
        if self.down:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)   # pool before the 1x1: same result, cheaper
        return h + (self.sc(x) if self.sc is not None else x)


class ProjectionHead(nn.Module):
    """ReLU, global sum pooling, linear, plus <embed(y), h> when class-conditional."""

    def __init__(self, width: int, num_classes: int, pack: int = 1):
        super().__init__()
        self.pack = pack
        self.linear = sn_linear(width, 1)
        self.embed = sn_embedding(num_classes, width) if num_classes else None

    def forward(self, h: torch.Tensor, y: torch.Tensor | None) -> torch.Tensor:
        h = F.relu(h).sum((2, 3))
        out = self.linear(h).squeeze(1).float()
        if self.embed is not None:
            if y is None:
                raise ValueError("class-conditional discriminator needs labels y")
            out = out + (packed_labels(self.embed(y), self.pack) * h.float()).sum(1)
        return out


class Generator(nn.Module):
    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = cfg.z_dim, cfg.num_classes, cfg.resolution
        w = [cfg.g_width * m for m in G_MULT[cfg.resolution]]
        self.chunk = cfg.z_dim // len(w)
        self.shared = nn.Embedding(cfg.num_classes, cfg.shared_dim) if cfg.num_classes else None
        if self.shared is not None:
            nn.init.orthogonal_(self.shared.weight)
        cond = self.chunk + (cfg.shared_dim if cfg.num_classes else 0)
        self.linear = sn_linear(self.chunk, w[0] * 16)
        self.blocks = nn.ModuleList(GBlock(a, b, cond) for a, b in zip(w[:-1], w[1:]))
        # Block i outputs 8 * 2**i px; attention follows the block that reaches cfg.attn.
        self.attn_after = int(math.log2(cfg.attn)) - 3 if cfg.attn else -1
        self.attn = SelfAttention(w[self.attn_after + 1]) if cfg.attn else None
        self.out_bn = nn.BatchNorm2d(w[-1])
        self.out_conv = sn_conv2d(w[-1], 3)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        zs = z.split(self.chunk, 1)
        if self.shared is not None:
            if y is None:
                raise ValueError("class-conditional generator needs labels y")
            e = self.shared(y)
            conds = [torch.cat([e, zc], 1) for zc in zs[1:]]
        else:
            conds = zs[1:]
        h = self.linear(zs[0]).unflatten(1, (-1, 4, 4))
        for i, (block, c) in enumerate(zip(self.blocks, conds)):
            h = block(h, c)
            if i == self.attn_after:
                h = self.attn(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class Discriminator(nn.Module):
    def __init__(self, cfg: BigGANConfig):
        super().__init__()
        self.num_classes = cfg.num_classes
        w = [cfg.d_width * m for m in D_MULT[cfg.resolution]]
        n_down = D_DOWN[cfg.resolution]
        self.blocks = nn.ModuleList(DBlock(a, b, down=i < n_down, preact=i > 0)
                                    for i, (a, b) in enumerate(zip([3 * cfg.pack] + w[:-1], w)))
        # Block i < n_down outputs resolution / 2**(i+1) px.
        self.attn_after = int(math.log2(cfg.resolution // cfg.attn)) - 1 if cfg.attn else -1
        self.attn = SelfAttention(w[self.attn_after]) if cfg.attn else None
        self.head = ProjectionHead(w[-1], cfg.num_classes, cfg.pack)
        self.pack = cfg.pack

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = packed(x, self.pack)
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attn_after:
                h = self.attn(h)
        return self.head(h, y)


@register("biggan", BigGANConfig)
def build(cfg: BigGANConfig):
    return {"G": Generator(cfg), "D": Discriminator(cfg)}
