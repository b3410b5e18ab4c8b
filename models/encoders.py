"""Networks of the GANs with an encoder: BiGAN/ALI and VAE-GAN.

- `Encoder`: a DCGAN-style convolutional body (stride-2 convs to 4x4) and a linear head to z, or
  to (mu, log-variance) for a stochastic encoder (ALI, VAE-GAN).
- `JointDiscriminator` (BiGAN/ALI): D(x, z) judges an image and a latent together, so G's
  (G(z), z) and E's (x, E(x)) pairs can only fool it by inverting each other. The image body
  is DCGAN's D; z goes through an MLP; both meet in a joint MLP, with dropout as in ALI.
- `FeatureDiscriminator` (VAE-GAN): DCGAN's D that also returns its last feature maps, the
  space where VAE-GAN measures reconstruction (Larsen et al. 2016), from the same forward.

The encoder families reuse DCGAN's G. Configs are the families' own (pipeline/families/encoders.py).
"""
from __future__ import annotations

import torch
import torch.nn as nn

from models.dcgan import DCGANConfig, Discriminator, _n_blocks
from models.layers import dcgan_init, maybe_sn


class Encoder(nn.Module):
    """x [N, 3, R, R] in [-1, 1] -> z [N, z_dim], or (mu, logvar) when `stochastic`."""

    def __init__(self, resolution: int, z_dim: int, channels: int, stochastic: bool):
        super().__init__()
        n = _n_blocks(resolution)
        ch = [channels * 2 ** i for i in range(n)]
        layers = [nn.Conv2d(3, ch[0], 4, 2, 1), nn.LeakyReLU(0.2, True)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers += [nn.Conv2d(a, b, 4, 2, 1, bias=False), nn.BatchNorm2d(b), nn.LeakyReLU(0.2, True)]
        self.body = nn.Sequential(*layers)
        self.stochastic, self.z_dim = stochastic, z_dim
        self.out = nn.Linear(ch[-1] * 16, z_dim * (2 if stochastic else 1))
        dcgan_init(self)

    def forward(self, x: torch.Tensor):
        h = self.out(self.body(x).flatten(1))
        if not self.stochastic:
            return h
        mu, logvar = h.chunk(2, 1)
        return mu, logvar.clamp(-10, 10)     # exp(+-10): no overflow in the KL or the sample


class JointDiscriminator(nn.Module):
    """D(x, z) -> logit [N]."""

    def __init__(self, cfg: DCGANConfig, hidden: int, dropout: float):
        super().__init__()
        n = _n_blocks(cfg.resolution)
        ch = [cfg.d_channels * 2 ** i for i in range(n)]
        sn = cfg.spectral_norm
        layers = [maybe_sn(nn.Conv2d(3, ch[0], 4, 2, 1), sn), nn.LeakyReLU(0.2, True), nn.Dropout(dropout)]
        for a, b in zip(ch[:-1], ch[1:]):
            layers.append(maybe_sn(nn.Conv2d(a, b, 4, 2, 1, bias=cfg.d_norm == "none"), sn))
            if cfg.d_norm == "batch":
                layers.append(nn.BatchNorm2d(b))
            layers += [nn.LeakyReLU(0.2, True), nn.Dropout(dropout)]
        self.x_body = nn.Sequential(*layers)
        self.z_body = nn.Sequential(maybe_sn(nn.Linear(cfg.z_dim, hidden), sn), nn.LeakyReLU(0.2, True),
                                    nn.Dropout(dropout))
        self.joint = nn.Sequential(maybe_sn(nn.Linear(ch[-1] * 16 + hidden, hidden), sn),
                                   nn.LeakyReLU(0.2, True), nn.Dropout(dropout), maybe_sn(nn.Linear(hidden, 1), sn))
        dcgan_init(self)

    def forward(self, x: torch.Tensor, z: torch.Tensor) -> torch.Tensor:
        h = torch.cat([self.x_body(x).flatten(1), self.z_body(z)], 1)
        return self.joint(h).squeeze(1)


class FeatureDiscriminator(Discriminator):
    """D(x) -> logit; D(x, features=True) -> (logit, D's last feature maps [N, C, 4, 4]), and
    with `classes` > 0 a class head on those features: D(x, features=True) -> (logit, features,
    class logits [N, classes]) from the same forward (VAE-GAN's `balance_classes`)."""

    def __init__(self, cfg: DCGANConfig, classes: int = 0):
        super().__init__(cfg)
        self.head = nn.Linear(self.out.in_features, classes) if classes else None

    def forward(self, x: torch.Tensor, y=None, features: bool = False):
        f = self.features(x)
        h = f.flatten(1)
        logit = self.out(h).squeeze(1)
        if not features:
            return logit
        return (logit, f) if self.head is None else (logit, f, self.head(h))
