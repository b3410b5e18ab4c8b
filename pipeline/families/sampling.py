"""Seeded sampling from a generator, BigGAN truncation, and PNG grids.

Latents and labels are drawn on the CPU from a private torch.Generator, then moved: the same
seed gives the same images on every machine and device, and the global RNG is left alone.
"""
from __future__ import annotations

from pathlib import Path

import torch
import torch.nn as nn


def latents(n: int, z_dim: int, seed: int, truncation: float | None = None) -> torch.Tensor:
    """n x z_dim standard normal latents; with `truncation`, entries with |z| > truncation are
    redrawn until none remain (the truncation trick of Brock et al. 2019, BigGAN)."""
    if truncation is not None and not truncation > 0:
        raise ValueError(f"truncation: {truncation} must be > 0 (or None for no truncation)")
    g = torch.Generator().manual_seed(int(seed))
    z = torch.randn(n, z_dim, generator=g)
    if truncation is not None:
        while (bad := z.abs() > truncation).any():
            z[bad] = torch.randn(int(bad.sum()), generator=g)
    return z


def labels(n: int, num_classes: int, cls: int | None) -> torch.Tensor | None:
    """Labels for a conditional G: all `cls`, or 0..C-1 cycled. None for unconditional G."""
    if not num_classes:
        if cls is not None:
            raise ValueError(f"class: {cls} given but the generator is unconditional (drop --class)")
        return None
    if cls is None:
        return torch.arange(n) % num_classes
    if not 0 <= cls < num_classes:
        raise ValueError(f"class: {cls} not in [0, {num_classes - 1}] for this generator")
    return torch.full((n,), int(cls), dtype=torch.long)


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 in [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def sample(G: nn.Module, n: int, seed: int, cls: int | None = None,
           truncation: float | None = None, batch: int = 256) -> torch.Tensor:
    """n images from G as uint8 N x 3 x H x W on the CPU; same arguments -> same images."""
    if n < 1:
        raise ValueError(f"n: {n} must be >= 1")
    z = latents(n, G.z_dim, seed, truncation)
    y = labels(n, getattr(G, "num_classes", 0), cls)
    device = next(G.parameters()).device
    was_training = G.training
    G.eval()
    try:
        out = []
        for i in range(0, n, batch):   # bounded memory for large n
            yb = None if y is None else y[i:i + batch].to(device)
            out.append(to_uint8(G(z[i:i + batch].to(device), yb)).cpu())
    finally:
        G.train(was_training)
    return torch.cat(out)


def write_grid(images: torch.Tensor, out: str | Path, individual: bool = False,
               nrow: int | None = None) -> list[Path]:
    """uint8 N x 3 x H x W -> a PNG grid at `out` and, with `individual`, one PNG per image in
    a folder named after the grid (grid.png -> grid/0000.png). Returns the files written."""
    import torchvision.io as tio
    from torchvision.utils import make_grid

    out = Path(out)
    out.parent.mkdir(parents=True, exist_ok=True)
    nrow = nrow or max(1, int(len(images) ** 0.5))
    tio.write_png(make_grid(images, nrow=nrow, padding=1), str(out))
    written = [out]
    if individual:
        folder = out.with_suffix("")
        folder.mkdir(exist_ok=True)
        for i, img in enumerate(images):
            p = folder / f"{i:04d}.png"
            tio.write_png(img.contiguous(), str(p))
            written.append(p)
    return written
