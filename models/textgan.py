"""GAN-INT-CLS (Reed et al. 2016): text-to-image with a sentence embedding as the condition.

G(z, e): DCGAN's generator fed z beside a compression of the sentence embedding e (a linear
layer and a leaky ReLU, as the paper's); D(x, e): DCGAN's discriminator with a projection head on
the compressed embedding (Miyato & Koyama 2018) where the paper concatenates it at 4x4:
projection conditions more reliably, as in our cGAN. The embedding e comes from a text encoder
(pipeline.text): the word encoder below, trained with the GAN, or frozen MiniLM features.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn as nn

from models import dcgan
from models.layers import dcgan_init, maybe_sn


@dataclass(frozen=True, kw_only=True)
class TextConditionConfig:
    """How a text-conditioned family reads and encodes captions (GAN-INT-CLS; StackGAN with
    condition: text)."""
    text_encoder: Literal["trained", "minilm"] = "trained"   # pipeline.text
    caption_member: str = "txt"   # the sample member holding the caption, or "json:KEY" inside .json
    buckets: int = 4096           # trained encoder: hashed word ids
    max_words: int = 24           # trained encoder: words read per caption
    word_dim: int = 64            # trained encoder: word embedding width
    sent_dim: int = 128           # trained encoder: sentence embedding width (MiniLM's is 384)

    def check_text(self):
        for k in ("buckets", "max_words", "word_dim", "sent_dim"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        if not self.caption_member or self.caption_member == "json:":
            raise ValueError("caption_member: a member name (txt) or json:KEY")

    @property
    def sentence_dim(self) -> int:
        """Width of the sentence embedding the networks are conditioned on."""
        return self.sent_dim if self.text_encoder == "trained" else 384


@dataclass(frozen=True, kw_only=True)
class TextGANConfig(TextConditionConfig, dcgan.DCGANConfig):
    proj_dim: int = 128           # the compressed embedding G and D each make of the sentence one
    matching_aware: bool = True   # CLS: D also learns that real images with the wrong text are fake
    interpolate: float = 1.0      # INT: weight of G's loss on embeddings halfway between two captions

    def __post_init__(self):
        super().__post_init__()
        self.check_text()
        if self.num_classes:
            raise ValueError("num_classes: the caption is GAN-INT-CLS's condition; use 0")
        if self.pack != 1:
            raise ValueError("pack: D judges each image with its own caption; use 1")
        if self.proj_dim < 1:
            raise ValueError("proj_dim: must be >= 1")
        if self.interpolate < 0:
            raise ValueError("interpolate: must be >= 0")


class WordEncoder(nn.Module):
    """Word ids [n, L] (0 = padding) -> sentence embeddings [n, sent_dim].

    Two width-3 convolutions over the word embeddings see a glyph word with its colour word ("ring
    in red", "red ring"); a masked max over positions keeps each such pair whatever the phrasing's
    order. An empty caption (no words) gives the embedding of an all-zero pool. `seen` marks the
    ids training read (rank 0's, as DDP broadcasts buffers): pipeline.text.unknown_words."""

    def __init__(self, buckets: int, word_dim: int, out_dim: int):
        super().__init__()
        self.embed = nn.Embedding(buckets + 1, word_dim, padding_idx=0)
        self.convs = nn.Sequential(nn.Conv1d(word_dim, out_dim, 3, padding=1), nn.LeakyReLU(0.2),
                                   nn.Conv1d(out_dim, out_dim, 3, padding=1), nn.LeakyReLU(0.2))
        self.out = nn.Linear(out_dim, out_dim)
        self.register_buffer("seen", torch.zeros(buckets + 1, dtype=torch.bool))

    def forward(self, ids: torch.Tensor) -> torch.Tensor:
        if self.training:
            with torch.no_grad():
                self.seen[ids.flatten()] = True
                self.seen[0] = False
        mask = (ids > 0).unsqueeze(1)                                  # [n, 1, L]
        h = self.convs(self.embed(ids).transpose(1, 2))                # [n, out, L]
        h = h.masked_fill(~mask, float("-inf")).amax(-1)
        h = torch.where(mask.any(-1), h, torch.zeros_like(h))          # no words: zeros, not -inf
        return self.out(h)


def _compress(in_dim: int, out_dim: int, sn: bool = False) -> nn.Module:
    return nn.Sequential(maybe_sn(nn.Linear(in_dim, out_dim), sn), nn.LeakyReLU(0.2))


class Generator(nn.Module):
    def __init__(self, cfg: TextGANConfig):
        super().__init__()
        self.z_dim = cfg.z_dim
        self.text = _compress(cfg.sentence_dim, cfg.proj_dim)
        # The compression keeps PyTorch's default init: DCGAN's N(0, 0.02) would shrink the caption
        # to ~1% of z's scale, and G would start out ignoring it.
        self.body = dcgan.Generator(dcgan.base_config(cfg, z_dim=cfg.z_dim + cfg.proj_dim, num_classes=0))

    def forward(self, z: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        return self.body(torch.cat([z, self.text(e)], 1))


class TextProjectionD(nn.Module):
    """D(x, e) on a DCGAN body: its unconditional logit + <proj(e), features(x)>, where proj
    compresses the sentence embedding e to `hidden` and maps it to the body's feature width (the
    projection discriminator, as our cGAN's on a class). Also StackGAN's per-stage text D."""

    def __init__(self, body: dcgan.Discriminator, sentence_dim: int, hidden: int, sn: bool):
        super().__init__()
        self.body = body
        self.text = nn.Sequential(_compress(sentence_dim, hidden, sn), maybe_sn(nn.Linear(hidden, body.out.in_features), sn))
        dcgan_init(self.text)      # D's projection starts near zero: D first judges realism alone

    def forward(self, x: torch.Tensor, e: torch.Tensor) -> torch.Tensor:
        h = self.body.features(x).flatten(1)
        return self.body.out(h).squeeze(1) + (self.text(e) * h).sum(1)     # <proj(e), h>


class Discriminator(TextProjectionD):
    def __init__(self, cfg: TextGANConfig):
        super().__init__(dcgan.Discriminator(dcgan.base_config(cfg, num_classes=0)), cfg.sentence_dim,
                         cfg.proj_dim, cfg.spectral_norm)
