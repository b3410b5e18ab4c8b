"""StackGAN (Zhang et al. 2017; trained end to end as StackGAN++, 2018): a sketch, then a refinement.

Stage I draws a low-resolution image (half the final size) from z and the condition; stage II
reads that image and the condition again and draws the final image. The condition goes through
conditioning augmentation (CA): its embedding gives a Gaussian (mu, sigma) and G sees
c = mu + sigma * eps, with KL(N(mu, sigma) || N(0, I)) in G's loss, which smooths the condition
manifold. The condition is a class label's learned embedding (`condition: class`) or, as in the
papers, a caption's sentence embedding (`condition: text`, from pipeline.text's encoders). Each
stage has its own D, with a projection head on the condition. G and D are one module each (every
stage), as in LAPGAN.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import dcgan
from models.layers import dcgan_init
from models.textgan import TextConditionConfig, TextProjectionD


@dataclass(frozen=True, kw_only=True)
class StackGANConfig(TextConditionConfig):
    resolution: int = 32          # final px, a power of two in [32, 128]; stage I draws half
    z_dim: int = 64
    condition: Literal["class", "text"] = "class"   # text: a caption, through text_encoder (below)
    num_classes: int = 10         # condition class: the classes (>= 1); condition text: 0
    embed_dim: int = 64           # the class's embedding before CA; with text, D's compression of it
    c_dim: int = 16               # CA's sampled condition
    g_channels: int = 32          # stage I G width (DCGAN), and stage II's
    d_channels: int = 32
    spectral_norm: bool = False   # on every D layer
    kl_weight: float = 1.0        # CA's KL term in G's loss (the papers use 1 or 2)

    def __post_init__(self):
        r = self.resolution
        if r < 32 or r > 128 or r & (r - 1):
            raise ValueError(f"resolution: {r} must be a power of two in [32, 128]")
        if self.condition == "class" and self.num_classes < 1:
            raise ValueError("num_classes: StackGAN needs a condition here (>= 1 class, or condition: text)")
        if self.condition == "text":
            if self.num_classes:
                raise ValueError(f"num_classes: {self.num_classes}, but the caption is the condition "
                                 "(condition: text); use 0")
            self.check_text()
        for k in ("z_dim", "embed_dim", "c_dim", "g_channels", "d_channels"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        if self.kl_weight < 0:
            raise ValueError("kl_weight: must be >= 0")

    def stage_config(self, resolution: int, z_dim: int = 0) -> dcgan.DCGANConfig:
        return dcgan.DCGANConfig(resolution=resolution, z_dim=z_dim or self.z_dim, g_channels=self.g_channels,
                                 d_channels=self.d_channels, d_norm="none",
                                 num_classes=self.num_classes if self.condition == "class" else 0,
                                 spectral_norm=self.spectral_norm)


class _Refiner(nn.Module):
    """Stage II: (stage I image, c) -> the image at twice its size."""

    def __init__(self, c_dim: int, ch: int):
        super().__init__()
        self.down = nn.Sequential(nn.Conv2d(3, ch, 3, 1, 1), nn.ReLU(True),
                                  nn.Conv2d(ch, ch * 2, 4, 2, 1, bias=False), nn.BatchNorm2d(ch * 2), nn.ReLU(True))
        self.joint = nn.Sequential(nn.Conv2d(ch * 2 + c_dim, ch * 2, 3, 1, 1, bias=False),
                                   nn.BatchNorm2d(ch * 2), nn.ReLU(True))
        self.res = nn.ModuleList(nn.Sequential(nn.Conv2d(ch * 2, ch * 2, 3, 1, 1, bias=False), nn.BatchNorm2d(ch * 2),
                                               nn.ReLU(True), nn.Conv2d(ch * 2, ch * 2, 3, 1, 1, bias=False),
                                               nn.BatchNorm2d(ch * 2)) for _ in range(2))
        self.up = nn.Sequential(nn.Upsample(scale_factor=2), nn.Conv2d(ch * 2, ch, 3, 1, 1, bias=False),
                                nn.BatchNorm2d(ch), nn.ReLU(True), nn.Upsample(scale_factor=2),
                                nn.Conv2d(ch, 3, 3, 1, 1), nn.Tanh())

    def forward(self, x, c):
        h = self.down(x)
        h = self.joint(torch.cat([h, c[:, :, None, None].expand(-1, -1, *h.shape[-2:])], 1))
        for block in self.res:
            h = F.relu(h + block(h))
        return self.up(h)


class Generator(nn.Module):
    """G(z, eps, y) -> ([stage I image, stage II image], CA's KL per sample); y is the class, or
    the caption's sentence embedding."""

    def __init__(self, cfg: StackGANConfig):
        super().__init__()
        self.z_dim, self.num_classes, self.c_dim = cfg.z_dim, cfg.num_classes, cfg.c_dim
        text = cfg.condition == "text"
        self.embed = nn.Identity() if text else nn.Embedding(cfg.num_classes, cfg.embed_dim)
        self.ca = nn.Linear(cfg.sentence_dim if text else cfg.embed_dim, cfg.c_dim * 2)
        s1 = cfg.stage_config(cfg.resolution // 2, cfg.z_dim + cfg.c_dim)
        self.stage1 = dcgan.Generator(dcgan.base_config(s1, num_classes=0))
        self.stage2 = _Refiner(cfg.c_dim, cfg.g_channels)
        dcgan_init(self.stage2)

    def forward(self, z, eps, y):
        mu, logvar = F.leaky_relu(self.ca(self.embed(y)), 0.2).chunk(2, 1)
        c = mu + eps * (0.5 * logvar).exp()
        kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).sum(1)
        low = self.stage1(torch.cat([z, c], 1))
        return [low, self.stage2(low, c)], kl


class Discriminator(nn.Module):
    """D([stage I image, stage II image], y) -> a logit per image per stage (projection on y: the
    class's embedding, or a compression of the sentence embedding per stage)."""

    def __init__(self, cfg: StackGANConfig):
        super().__init__()
        stages = [dcgan.Discriminator(cfg.stage_config(r)) for r in (cfg.resolution // 2, cfg.resolution)]
        if cfg.condition == "text":
            stages = [TextProjectionD(d, cfg.sentence_dim, cfg.embed_dim, cfg.spectral_norm) for d in stages]
        self.stages = nn.ModuleList(stages)

    def forward(self, images, y):
        return [d(x, y) for d, x in zip(self.stages, images)]
