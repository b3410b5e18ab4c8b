"""Animal-Shape (animal-shape-mnist on PyPI, MIT): 10,000 real 28x28 animal silhouettes, 10 classes
of 1,000, as RGB. The images ship inside the wheel (no download); `pip install 'ganforge[animals]'`.

Real drawings with fine detail (legs, ears, tails) that a small G cannot reproduce image for image,
where ShapeStack's images are a procedure of three glyphs it can: a tiny set of these is where D
overfits and augmentation (issue 16) has something to do.
"""
from __future__ import annotations

import gzip
import pickle
from importlib import resources
from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

from pipeline.data.shards import DataError

CLASSES = ["bear", "bird", "cat", "cow", "dog", "elephant", "giraffe", "horse", "sheep", "zebra"]
_FILES = ("animal_data_version_3.gz", "animal_label_version_3.gz")


def load() -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 [10000, 28, 28] silhouettes, int64 [10000] labels in CLASSES' order)."""
    try:
        root = resources.files("animal_shape_mnist") / "data" / "Animal Shape"
    except ModuleNotFoundError:
        raise DataError("data.builtin 'animals' needs the animal-shape-mnist package: "
                        "pip install 'ganforge[animals]'") from None
    arrays = []
    for name in _FILES:
        # The package's own format: numpy arrays pickled and gzipped (its loader does the same,
        # behind a tensorflow import we do not want).
        try:
            with resources.as_file(root / name) as path, gzip.open(path, "rb") as f:
                arrays.append(np.asarray(pickle.load(f)))
        except Exception as e:      # missing, truncated or not a pickle: name the file
            raise DataError(f"animal-shape-mnist: cannot read {root / name} ({type(e).__name__}: "
                            f"{str(e)[:120]}); reinstall: pip install --force-reinstall "
                            f"animal-shape-mnist==0.39") from None
    images, labels = arrays
    if images.shape != (10000, 28, 28) or labels.shape != (10000,):
        raise DataError(f"animal-shape-mnist: expected 10000 28x28 images and labels, got "
                        f"{images.shape} and {labels.shape}; pin animal-shape-mnist==0.39")
    return images.astype(np.uint8), labels.astype(np.int64)


def samples(n: int, resolution: int, seed: int = 0) -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, HxWx3 uint8 image, class) for the first n of a seeded order (all 10,000 at most);
    keys name the original index, so a tiny set is a prefix of a larger one."""
    images, labels = load()
    order = np.random.default_rng(seed).permutation(len(images))[:n]   # resize only those taken
    grey = torch.from_numpy(images[order]).float()[:, None]
    big = F.interpolate(grey, size=(resolution, resolution), mode="bilinear", antialias=True, align_corners=False)
    rgb = big.round().clamp(0, 255).to(torch.uint8).expand(-1, 3, -1, -1).permute(0, 2, 3, 1).numpy()
    for j, i in enumerate(order):
        yield f"animal{i:05d}", np.ascontiguousarray(rgb[j]), int(labels[i])
