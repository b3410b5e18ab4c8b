"""DCGAN (Radford et al. 2015) and its class-conditional form (cGAN, Mirza & Osindero 2014).

Conditioning: G concatenates a learned class embedding to z; D uses the projection head of
Miyato & Koyama 2018, which conditions more reliably than concatenating one-hot maps.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from models import register
from models.layers import MinibatchStdDev, dcgan_init, maybe_sn, packed, packed_labels


@dataclass(frozen=True, kw_only=True)
class DCGANConfig:
    resolution: int = 32          # px, a power of two in [16, 128]
    z_dim: int = 128              # latent size
    g_channels: int = 64          # G width at full resolution; doubles per block towards 4x4
    d_channels: int = 64          # D width at full resolution; doubles per block towards 4x4
    num_classes: int = 0          # 0 = unconditional; >0 = class-conditional (cGAN)
    d_norm: Literal["batch", "none"] = "batch"   # "none" for gradient penalties (per-sample grads)
    spectral_norm: bool = False   # spectral normalization on every D layer
    # Coverage options for D (issue 17); both attack mode collapse by letting D see a batch's
    # diversity, which a per-sample D cannot.
    pack: int = 1                 # PacGAN (Lin et al. 2018): D judges `pack` samples at once, stacked
                                  #   on the channel axis (one logit per pack); the batch must divide
    mbstd_group: int = 0          # minibatch-stddev (ProGAN) group before D's head; 0 = off

    def __post_init__(self):
        r = self.resolution
        if r < 16 or r > 128 or r & (r - 1):
            raise ValueError(f"resolution: {r} must be a power of two in [16, 128]")
        for k in ("z_dim", "g_channels", "d_channels"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        if self.num_classes < 0:
            raise ValueError("num_classes: must be >= 0")
        if self.pack < 1:
            raise ValueError("pack: must be >= 1")
        if self.mbstd_group < 0:
            raise ValueError("mbstd_group: must be >= 0 (0 = off)")


def _n_blocks(resolution: int) -> int:
    return int(math.log2(resolution)) - 2      # 4x4 -> resolution in stride-2 steps


class Generator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = cfg.z_dim, cfg.num_classes, cfg.resolution
        n = _n_blocks(cfg.resolution)
        ch = [cfg.g_channels * 2 ** (n - 1 - i) for i in range(n)]   # e.g. 256,128,64 for 32 px
        emb = cfg.z_dim if cfg.num_classes else 0
        self.embed = nn.Embedding(cfg.num_classes, emb) if cfg.num_classes else None
        layers = [nn.ConvTranspose2d(cfg.z_dim + emb, ch[0], 4, 1, 0, bias=False),
                  nn.BatchNorm2d(ch[0]), nn.ReLU(True)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.ConvTranspose2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.ReLU(True)]
        layers += [nn.ConvTranspose2d(ch[-1], 3, 4, 2, 1), nn.Tanh()]
        self.net = nn.Sequential(*layers)
        dcgan_init(self)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if y is None:
                raise ValueError("class-conditional generator needs labels y")
            z = torch.cat([z, self.embed(y)], dim=1)
        return self.net(z[:, :, None, None])


class Discriminator(nn.Module):
    def __init__(self, cfg: DCGANConfig):
        super().__init__()
        self.num_classes = cfg.num_classes
        n = _n_blocks(cfg.resolution)
        ch = [cfg.d_channels * 2 ** i for i in range(n)]              # e.g. 64,128,256 for 32 px
        sn, self.pack = cfg.spectral_norm, cfg.pack
        layers = [maybe_sn(nn.Conv2d(3 * cfg.pack, ch[0], 4, 2, 1), sn), nn.LeakyReLU(0.2, True)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers.append(maybe_sn(nn.Conv2d(a, b, 4, 2, 1, bias=cfg.d_norm == "none"), sn))
            if cfg.d_norm == "batch":
                layers.append(nn.BatchNorm2d(b))
            layers.append(nn.LeakyReLU(0.2, True))
        if cfg.mbstd_group:
            layers.append(MinibatchStdDev(cfg.mbstd_group))
        self.features = nn.Sequential(*layers)          # -> [N / pack, ch[-1] (+1 for mbstd), 4, 4]
        width = (ch[-1] + (cfg.mbstd_group > 0)) * 16
        self.out = maybe_sn(nn.Linear(width, 1), sn)
        self.embed = maybe_sn(nn.Embedding(cfg.num_classes, width), sn) if cfg.num_classes else None
        dcgan_init(self)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.features(packed(x, self.pack)).flatten(1)
        logits = self.out(h).squeeze(1)
        if self.embed is not None:
            if y is None:
                raise ValueError("class-conditional discriminator needs labels y")
            logits = logits + (packed_labels(self.embed(y), self.pack) * h).sum(1)   # <embed(y), h>
        return logits


def base_config(cfg: DCGANConfig, **changes) -> DCGANConfig:
    """The DCGANConfig inside a family's config that extends it (ACGAN, InfoGAN), with changes."""
    import dataclasses
    return DCGANConfig(**{**{f.name: getattr(cfg, f.name) for f in dataclasses.fields(DCGANConfig)}, **changes})


class HeadedDiscriminator(nn.Module):
    """D's body with a second head on its features (ACGAN's classifier, InfoGAN's Q).
    D(x) -> the real/fake logit, so penalties apply unchanged; D(x, head=True) -> (logit, head
    output) from one forward, so DDP sees every parameter used in the same pass."""

    def __init__(self, cfg: DCGANConfig, out_dim: int, hidden: int = 0):
        super().__init__()
        if cfg.pack > 1:
            raise ValueError("model.pack: a headed D (ACGAN, InfoGAN) predicts per sample; use pack=1")
        self.body = Discriminator(base_config(cfg, num_classes=0))
        w, sn = self.body.out.in_features, cfg.spectral_norm
        self.head = (nn.Sequential(maybe_sn(nn.Linear(w, hidden), sn), nn.LeakyReLU(0.2), nn.Linear(hidden, out_dim))
                     if hidden else maybe_sn(nn.Linear(w, out_dim), sn))

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None, head: bool = False):
        h = self.body.features(x).flatten(1)
        logit = self.body.out(h).squeeze(1)
        return (logit, self.head(h)) if head else logit


@register("dcgan", DCGANConfig)
def build(cfg: DCGANConfig):
    return {"G": Generator(cfg), "D": Discriminator(cfg)}
