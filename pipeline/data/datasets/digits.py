"""scikit-learn's bundled 8x8 digits (1,797 real handwritten digits, no download), as RGB."""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = [str(d) for d in range(10)]


def samples(resolution: int, seed: int = 0) -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, HxWx3 uint8 image, digit) in a seeded order; keys name the original index."""
    from sklearn.datasets import load_digits

    digits = load_digits()
    grey = torch.from_numpy(digits.images * (255 / 16)).float()[:, None]  # values are 0..16
    # Bilinear with antialias keeps the strokes soft, as an upscaled photo would be.
    big = F.interpolate(grey, size=(resolution, resolution), mode="bilinear", antialias=True,
                        align_corners=False)
    images = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
    for i in np.random.default_rng(seed).permutation(len(images)):
        yield f"digit{i:04d}", np.ascontiguousarray(images[i]), int(digits.target[i])
