"""LAPGAN (Denton et al. 2015): a Laplacian pyramid of generators, coarse to fine.

Stage 0 draws a `base` x `base` image from z. Stage k >= 1 works at base * 2^k: it sees the
image of the stage below, upsampled (l_k), and a plane of noise, and adds a residual h_k, so the
image at that scale is l_k + h_k. Each stage has its own discriminator, which judges an image at
its scale given l_k (stage 0's judges the coarse image alone).

All stages sit in one module per role (G: every generator, D: every discriminator), so DDP,
the EMA, checkpoints and the registry treat the pyramid as one network, and one forward trains
every stage. The pyramid is box-filter down and bilinear up, not the paper's Gaussian.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import dcgan_init, maybe_sn


@dataclass(frozen=True, kw_only=True)
class LAPGANConfig:
    resolution: int = 32          # px of the finest stage, a power of two in [16, 128]
    base: int = 8                 # px of stage 0, a power of two in [4, resolution / 2]
    z_dim: int = 100              # stage 0's latent
    noise_channels: int = 1       # noise planes each finer stage gets beside l_k
    g_channels: int = 64          # width of every stage's G
    d_channels: int = 64          # width of every stage's D at its full resolution
    spectral_norm: bool = False   # on every D layer
    num_classes: int = 0          # unconditional only (kept for the engine's shared checks)

    def __post_init__(self):
        r, b = self.resolution, self.base
        if r < 16 or r > 128 or r & (r - 1):
            raise ValueError(f"resolution: {r} must be a power of two in [16, 128]")
        if b < 4 or b & (b - 1) or b > r // 2:
            raise ValueError(f"base: {b} must be a power of two in [4, resolution / 2 = {r // 2}]")
        for k in ("z_dim", "noise_channels", "g_channels", "d_channels"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        if self.num_classes:
            raise ValueError("num_classes: LAPGAN is unconditional here (0)")

    @property
    def sizes(self) -> list[int]:
        """Resolution of each stage, coarse to fine: e.g. [8, 16, 32]."""
        return [self.base * 2 ** k for k in range(int(math.log2(self.resolution // self.base)) + 1)]


def down(x: torch.Tensor) -> torch.Tensor:
    return F.avg_pool2d(x, 2)


def up(x: torch.Tensor) -> torch.Tensor:
    return F.interpolate(x, scale_factor=2, mode="bilinear", align_corners=False)


def pyramid(x: torch.Tensor, sizes: list[int]) -> list[torch.Tensor]:
    """The real image at every stage's scale, coarse to fine."""
    out = [x]
    while out[0].shape[-1] > sizes[0]:
        out.insert(0, down(out[0]))
    return out


class _Coarse(nn.Module):
    """Stage 0: z -> base x base image (a small DCGAN generator)."""

    def __init__(self, z_dim: int, ch: int, base: int):
        super().__init__()
        self.fc = nn.Sequential(nn.Linear(z_dim, ch * 16), nn.BatchNorm1d(ch * 16), nn.ReLU(True))
        blocks, c = [], ch
        for _ in range(int(math.log2(base)) - 2):
            blocks += [nn.ConvTranspose2d(c, c // 2, 4, 2, 1, bias=False), nn.BatchNorm2d(c // 2), nn.ReLU(True)]
            c //= 2
        self.up = nn.Sequential(*blocks, nn.Conv2d(c, 3, 3, 1, 1), nn.Tanh())
        self.ch = ch

    def forward(self, z):
        return self.up(self.fc(z).view(-1, self.ch, 4, 4))


class _Residual(nn.Module):
    """Stage k >= 1: (l_k, noise) -> residual h_k at the same resolution."""

    def __init__(self, noise_channels: int, ch: int):
        super().__init__()
        self.net = nn.Sequential(
            nn.Conv2d(3 + noise_channels, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True),
            nn.Conv2d(ch, ch, 3, 1, 1, bias=False), nn.BatchNorm2d(ch), nn.ReLU(True),
            nn.Conv2d(ch, 3, 3, 1, 1))

    def forward(self, coarse, noise):
        return self.net(torch.cat([coarse, noise], 1))


class Generator(nn.Module):
    """G(z, noises) -> every stage's image, coarse to fine (the last is the sample);
    G.train_stages(coarse, noises) -> each finer stage's image built on given coarse images."""

    def __init__(self, cfg: LAPGANConfig):
        super().__init__()
        self.sizes, self.z_dim, self.num_classes = cfg.sizes, cfg.z_dim, 0
        self.noise_channels = cfg.noise_channels
        self.coarse = _Coarse(cfg.z_dim, max(cfg.g_channels * 2, 16), cfg.base)
        self.stages = nn.ModuleList(_Residual(cfg.noise_channels, cfg.g_channels) for _ in cfg.sizes[1:])
        dcgan_init(self)

    def noise_shape(self, k: int) -> tuple[int, int, int]:
        """The noise plane of finer stage k (1-based), as [C, R, R]."""
        return self.noise_channels, self.sizes[k], self.sizes[k]

    def forward(self, z, noises, coarse: list[torch.Tensor] | None = None):
        """Sampling (coarse None): each stage builds on the stage below. Training (coarse = the
        real pyramid's upsampled images l_1..l_K): each stage builds on the real coarse image,
        as LAPGAN trains its stages independently; stage 0 still draws from z."""
        out = [self.coarse(z)]
        for k, g in enumerate(self.stages, 1):
            lk = coarse[k - 1] if coarse is not None else up(out[-1])
            out.append((lk + g(lk, noises[k - 1])).clamp(-1, 1))
        return out


class Discriminator(nn.Module):
    """D(images, coarse) -> one logit per image per stage: stage 0 judges its image alone, stage
    k >= 1 judges (image_k, l_k) stacked on the channel axis."""

    def __init__(self, cfg: LAPGANConfig):
        super().__init__()
        self.stages = nn.ModuleList(_stage_d(cfg, r, 3 if k == 0 else 6) for k, r in enumerate(cfg.sizes))
        dcgan_init(self)

    def forward(self, images: list[torch.Tensor], coarse: list[torch.Tensor]) -> list[torch.Tensor]:
        out = [self.stages[0](images[0]).flatten()]
        for k, (x, lk) in enumerate(zip(images[1:], coarse), 1):
            out.append(self.stages[k](torch.cat([x, lk], 1)).flatten())
        return out


def _stage_d(cfg: LAPGANConfig, r: int, c_in: int) -> nn.Module:
    sn, ch = cfg.spectral_norm, cfg.d_channels
    layers, c = [], c_in
    while r > 4:
        layers += [maybe_sn(nn.Conv2d(c, ch, 4, 2, 1), sn), nn.LeakyReLU(0.2, True)]
        c, r = ch, r // 2
        ch = min(ch * 2, cfg.d_channels * 4)
    return nn.Sequential(*layers, nn.Flatten(), maybe_sn(nn.Linear(c * 16, 1), sn))
