"""Feature extractors for the metrics: a network that maps images in [-1, 1] to (features, logits).

Two kinds, told apart by name everywhere a score is recorded:
- "inception-v3-tf-2015-12-05": the standard FID InceptionV3 (pytorch-fid's weights). Its scores
  are comparable with published FIDs.
- "ganforge-small-shapestack": a small CNN the project trains on built-in shapestack
  (`ganforge fit-extractor`). Offline and fast; its scores compare only with each other.
- "ganforge-small-animals": the same network trained on built-in animals
  (`ganforge fit-extractor --data animals`), for FID on real silhouettes.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


class Extractor:
    """A frozen feature network plus the identity a score's protocol records."""

    def __init__(self, net: nn.Module, *, name: str, sha256: str, resize: str, standard: bool):
        self.net = net.eval().requires_grad_(False)
        self.name, self.sha256, self.resize, self.standard = name, sha256, resize, standard

    @property
    def device(self) -> torch.device:
        return next(self.net.parameters()).device

    def to(self, device) -> Extractor:
        self.net.to(device)
        return self

    @torch.no_grad()
    def both(self, images: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """float [N, 3, H, W] in [-1, 1], any size (resized inside) -> (features [N, D], logits [N, C])."""
        if images.dim() != 4 or images.shape[1] != 3:
            raise ValueError(f"extractor {self.name} expects [N, 3, H, W] images, got {tuple(images.shape)}")
        f, logits = self.net(images.to(self.device, torch.float32))
        return f.float(), logits.float()

    def features(self, images: torch.Tensor) -> torch.Tensor:
        return self.both(images)[0]

    def logits(self, images: torch.Tensor) -> torch.Tensor:
        return self.both(images)[1]

    def __repr__(self) -> str:
        return f"Extractor({self.name}, sha256={self.sha256[:12]}, resize={self.resize})"


def load_extractor(name_or_path: str, *, weights: str | None = None, device="cpu") -> Extractor:
    """By name ("inception-v3-tf-2015-12-05" or "inception", "ganforge-small-shapestack" or "small",
    "inception-random" for benchmarks) or by a weights file path. `weights`: for the Inception, a
    file, folder or URL (see extractors.inception.resolve_weights); for the small one, its file."""
    from pipeline.evaluation.extractors import inception, small

    key = name_or_path
    if key in (inception.NAME, "inception"):
        ex = inception.load(weights)
    elif key == "inception-random":
        ex = inception.load(random_weights=True)
    elif small.data_for(key):
        ex = small.load(weights, data=small.data_for(key))
    elif Path(key).is_file():
        ex = inception.load(key) if Path(key).name == inception.WEIGHTS_FILE else small.load(key)
    else:
        raise ValueError(f"unknown extractor {name_or_path!r}: use {inception.NAME}, {small.NAME}, {small.NAMES['animals']}, "
                         f"inception-random, or a weights file path")
    return ex.to(device)
