"""The one seeded input sampler, and images from a family's generate.

Sample i's inputs are a pure function of (seed, i): noise is drawn per fixed block of BLOCK
indices from a generator seeded with (seed, block[, input]), classes and categorical codes are
i % k unless fixed. Networks run on chunks aligned to multiples of CHUNK in the global index.
So training grids, in-loop and offline evaluation (1 rank or N, each its slice), `ganforge
sample` from a folder or a registry URI, the pyfunc model and the pt2 export see the same images
for the same seed.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

from pipeline.families.spec import (Caption, Categorical, ClassLabel, Domain, Input, Latent, SourceImage,
                                    Truncation, Uniform)

BLOCK = 256
CHUNK = 64


def _block_rng(seed: int, block: int, stream: int) -> np.random.Generator:
    # Stream 0 (the first input, usually z) keeps the (seed, block) seeding evaluation always used.
    return np.random.default_rng([seed, block] if stream == 0 else [seed, block, stream])


def _noise(start: int, stop: int, dim: int, seed: int, stream: int, draw, truncation=None):
    out = []
    for b in range(start // BLOCK, (stop - 1) // BLOCK + 1 if stop > start else start // BLOCK):
        rng = _block_rng(seed, b, stream)
        z = draw(rng, (BLOCK, dim))
        if truncation is not None:
            while (bad := np.abs(z) > truncation).any():
                z[bad] = draw(rng, (int(bad.sum()),))
        lo, hi = max(start, b * BLOCK) - b * BLOCK, min(stop, (b + 1) * BLOCK) - b * BLOCK
        out.append(z[lo:hi])
    return torch.from_numpy(np.concatenate(out) if out else np.zeros((0, dim))).float()


def check_fixed(specs: dict[str, Input], fixed: dict | None) -> dict:
    """Validate user-fixed inputs ({"cls": 3, "cat0": 2, "cont0": 0.5}); errors name the input."""
    out = {}
    for name, value in (fixed or {}).items():
        if value is None:
            continue
        if name not in specs:
            known = ", ".join(n for n, s in specs.items() if not isinstance(s, (Latent, Truncation))) or "none"
            raise ValueError(f"{name}: not an input of this generator (fixable inputs: {known})")
        s = specs[name]
        if isinstance(s, (ClassLabel, Categorical)):
            k = s.num_classes if isinstance(s, ClassLabel) else s.k
            if float(value) != int(value) or not 0 <= int(value) < k:
                raise ValueError(f"{name}: {value} not an integer in [0, {k - 1}] for this generator")
            out[name] = int(value)
        elif isinstance(s, Uniform):
            if not -1 <= float(value) <= 1:
                raise ValueError(f"{name}: {value} not in [-1, 1]")
            out[name] = float(value)
        elif isinstance(s, Truncation):
            raise ValueError(f"{name}: set it with truncation (--truncation), not as a fixed input")
        elif isinstance(s, Domain):
            out[name] = domain_index(s, value, name)
        elif isinstance(s, SourceImage):
            raise ValueError(f"{name}: images to translate are given as images (--input), not fixed")
        elif isinstance(s, Caption):
            from pipeline import text
            out[name] = (text.check_caption(value, name) if not isinstance(value, (list, tuple))
                         else [text.check_caption(v, name) for v in value])
        else:
            raise ValueError(f"{name}: noise cannot be fixed (use --seed)")
    return out


def domain_index(s: Domain, value, name: str = "domain") -> int:
    """A target domain given by name or index -> its index; errors list the domains."""
    names = ", ".join(f"{i} {n}" for i, n in enumerate(s.names))
    if isinstance(value, str) and not value.strip().isdigit():
        if value not in s.names:
            raise ValueError(f"{name}: {value!r} is not a domain of this translator (domains: {names})")
        return s.names.index(value)
    if float(value) != int(float(value)) or not 0 <= int(float(value)) < len(s.names):
        raise ValueError(f"{name}: {value} is not a domain index of this translator (domains: {names})")
    return int(float(value))


def inputs(specs: dict[str, Input], start: int, stop: int, *, seed: int = 0,
           truncation: float | None = None, fixed: dict | None = None,
           images: torch.Tensor | None = None) -> dict[str, torch.Tensor]:
    """Inputs of samples [start, stop) on the CPU: float [n, dim] noise/codes, int64 [n] indices.

    truncation: with a Truncation input, psi for the family's own latent space (>= 0, 1 = none);
    else the |z| bound of a truncated normal (> 0).
    images: a translation family's SourceImage, float [n, 3, R, R] in [-1, 1] (required there)."""
    psi = any(isinstance(s, Truncation) for s in specs.values())
    if truncation is not None and psi and not truncation >= 0:
        raise ValueError(f"truncation: {truncation} must be >= 0 (psi; 1 or None for no truncation)")
    if truncation is not None and not psi and not truncation > 0:
        raise ValueError(f"truncation: {truncation} must be > 0 (or None for no truncation)")
    fixed = check_fixed(specs, fixed)
    n, out = stop - start, {}
    for stream, (name, s) in enumerate(specs.items()):
        if isinstance(s, Latent):
            out[name] = _noise(start, stop, s.dim, seed, stream, lambda r, sh: r.standard_normal(sh),
                               None if psi else truncation)
        elif isinstance(s, (ClassLabel, Categorical)):
            k = s.num_classes if isinstance(s, ClassLabel) else s.k
            out[name] = (torch.full((n,), fixed[name], dtype=torch.long) if name in fixed
                         else torch.arange(start, stop) % k)
        elif isinstance(s, Uniform):
            out[name] = (torch.full((n, s.dim), fixed[name]) if name in fixed else
                         _noise(start, stop, s.dim, seed, stream, lambda r, sh: r.uniform(-1, 1, sh)))
        elif isinstance(s, Truncation):
            out[name] = torch.full((n,), 1.0 if truncation is None else float(truncation))
        elif isinstance(s, Domain):
            k = len(s.names)
            out[name] = (torch.full((n,), fixed.get(name, s.default), dtype=torch.long)
                         if name in fixed or s.default is not None else torch.arange(start, stop) % k)
        elif isinstance(s, Caption):
            out[name] = _captions(s, name, fixed.get(name), start, stop)
        elif isinstance(s, SourceImage):
            if images is None:
                raise ValueError(f"{name}: this generator translates images; give the images to "
                                 f"translate (ganforge translate --input, or the pyfunc model's images)")
            if images.dim() != 4 or images.shape[0] != n or images.shape[1] != 3:
                raise ValueError(f"{name}: expected {n} images as [n, 3, H, W], got {tuple(images.shape)}")
            out[name] = images.float().cpu()
        else:
            raise TypeError(f"{name}: unknown input {s!r}")
    return out


def _captions(s: Caption, name: str, given, start: int, stop: int) -> torch.Tensor:
    """The caption tensor of samples [start, stop): one prompt for all, a list of one per sample
    (exactly stop - start), or the built-in captions."""
    from pipeline import text
    from pipeline.data.captions import default_caption

    n = stop - start
    if given is None:
        given = [default_caption(i) for i in range(start, stop)]
    elif isinstance(given, str):
        given = [given] * n
    elif len(given) != n:
        raise ValueError(f"{name}: {len(given)} captions given for {n} samples; give one prompt for "
                         f"all, or exactly one per sample")
    return text.features(s, list(given))


def probe(specs: dict[str, Input], n: int = 2) -> dict[str, torch.Tensor]:
    """Inputs of n samples for shape probes (the resolution, the pt2 export): grey source images."""
    src = [s for s in specs.values() if isinstance(s, SourceImage)]
    images = torch.zeros(n, 3, src[0].resolution, src[0].resolution) if src else None
    return inputs(specs, 0, n, images=images)


def draw(specs: dict[str, Input], n: int, device) -> dict[str, torch.Tensor]:
    """Training-time inputs from the global torch RNG (checkpointed with the rank's RNG state)."""
    out = {}
    for name, s in specs.items():
        if isinstance(s, Latent):
            out[name] = torch.randn(n, s.dim, device=device)
        elif isinstance(s, ClassLabel):
            out[name] = torch.randint(0, s.num_classes, (n,), device=device)
        elif isinstance(s, Categorical):
            out[name] = torch.randint(0, s.k, (n,), device=device)
        elif isinstance(s, Uniform):
            out[name] = torch.rand(n, s.dim, device=device) * 2 - 1
        elif isinstance(s, Truncation):
            out[name] = torch.ones(n, device=device)
        elif isinstance(s, Domain):
            out[name] = torch.randint(0, len(s.names), (n,), device=device)
        # SourceImage, Caption: families train on their batches' images and captions, nothing to draw
    return out


def to_uint8(x: torch.Tensor) -> torch.Tensor:
    """[-1, 1] floats -> uint8 in [0, 255]."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round().to(torch.uint8)


@torch.no_grad()
def images(family, nets, start: int, stop: int, *, seed: int = 0, truncation: float | None = None,
           fixed: dict | None = None, device=None, given: dict | None = None) -> torch.Tensor:
    """float [-1, 1] images of samples [start, stop) from `family.generate(nets, ...)`, generated
    in CHUNK-aligned chunks on the nets' device (eval mode, restored after). `given`: the inputs
    of [start, stop) when the caller already drew them (they are the same for the same seed)."""
    if stop <= start:
        raise ValueError(f"n: {stop - start} must be >= 1")
    if fixed and not given:
        family.check_fixed(nets, fixed)
    given = given or inputs(family.inputs(), start, stop, seed=seed, truncation=truncation, fixed=fixed)
    modules = list(nets.values())
    device = device or next(modules[0].parameters()).device
    modes = [m.training for m in modules]
    for m in modules:
        m.eval()
    try:
        out, lo = [], start
        while lo < stop:
            hi = min(stop, (lo // CHUNK + 1) * CHUNK)
            x = {k: v[lo - start:hi - start].to(device) for k, v in given.items()}
            out.append(family.generate(nets, x).float())
            lo = hi
    finally:
        for m, t in zip(modules, modes):
            m.train(t)
    return torch.cat(out)


def sample(family, nets, n: int, seed: int = 0, truncation: float | None = None,
           fixed: dict | None = None) -> torch.Tensor:
    """n images as uint8 N x 3 x H x W on the CPU; same arguments -> same bytes."""
    if n < 1:
        raise ValueError(f"n: {n} must be >= 1")
    return to_uint8(images(family, nets, 0, n, seed=seed, truncation=truncation, fixed=fixed)).cpu()


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
