"""ShapeStack: procedural RGB images whose R, G and B channels each show one of 10 glyphs.

That gives 1000 modes (like stacked MNIST) with an exact oracle, so mode coverage of generated
images can be counted without a trained classifier; every block of 1000 images holds each mode
once. Glyphs are drawn from signed distance
functions with analytic anti-aliasing, with small jitter in position, scale, stroke and
brightness; the oracle is nearest template (normalised correlation) per channel on a coarse grid.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch
import torch.nn.functional as F

CLASSES = [f"glyph{i}" for i in range(10)]
NAMES = ["disk", "ring", "checker", "plus", "cross", "hbars", "vbars", "triangle", "L", "dot"]
_CHUNK = 256  # images rendered at once: about 250 MB of temporaries at 128 px
_GRID = 8      # oracle grid; 16 px images give 2x2 cells


def _sdf(g: int, u: np.ndarray, v: np.ndarray, w: np.ndarray) -> np.ndarray:
    """Signed distance (negative inside) of glyph g at local coords u, v; w = stroke width."""
    au, av = np.abs(u), np.abs(v)
    bar = lambda along, across, length: np.maximum(along - length, across - w / 2)  # noqa: E731
    if g == 0:  # disk
        return np.hypot(u, v) - 0.62
    if g == 1:  # ring
        return np.abs(np.hypot(u, v) - 0.55) - w / 2
    if g == 2:  # checker: two squares on the main diagonal (a plain square is too close to the disk)
        return np.minimum(np.maximum(np.abs(u + 0.3), np.abs(v + 0.3)),
                          np.maximum(np.abs(u - 0.3), np.abs(v - 0.3))) - 0.27
    if g == 3:  # plus
        return np.minimum(bar(au, av, 0.7), bar(av, au, 0.7))
    if g == 4:  # cross
        du, dv = np.abs(u + v) / np.sqrt(2), np.abs(u - v) / np.sqrt(2)
        return np.minimum(bar(du, dv, 0.75), bar(dv, du, 0.75))
    if g == 5:  # two horizontal bars
        return bar(au, np.abs(av - 0.35), 0.65)
    if g == 6:  # two vertical bars
        return bar(av, np.abs(au - 0.35), 0.65)
    if g == 7:  # triangle, apex up
        return np.maximum(v - 0.5, (au * 1.15 - (v + 0.65) * 0.65) / np.hypot(1.15, 0.65))
    if g == 8:  # L: left and bottom bars
        return np.minimum(bar(av, np.abs(u + 0.5), 0.65), bar(au, np.abs(v - 0.5), 0.65))
    return np.hypot(u, v) - 0.28  # small dot


def _params(n: int, seed: int) -> dict:
    rng = np.random.default_rng(seed)
    shape = (n, 3)
    # Each block of 1000 images holds every mode once (in random order): mode-coverage metrics on
    # real data then read a uniform distribution instead of i.i.d. sampling noise.
    modes = np.concatenate([rng.permutation(1000) for _ in range(-(-n // 1000))])[:n]
    glyphs = np.stack([modes // 100, modes // 10 % 10, modes % 10], axis=1)
    return {"glyphs": glyphs, "dx": rng.uniform(-0.06, 0.06, shape),
            "dy": rng.uniform(-0.06, 0.06, shape), "scale": rng.uniform(0.9, 1.05, shape),
            "stroke": rng.uniform(0.17, 0.23, shape), "fg": rng.uniform(200, 255, shape),
            "bg": rng.uniform(0, 40, shape)}


STYLES = ("filled", "outline", "inverted")


def _render(p: dict, resolution: int, style: str = "filled") -> np.ndarray:
    """Params of n images -> uint8 [n, R, R, 3]. style: filled glyphs (the dataset), their
    outlines (a stroke along the boundary), or filled with foreground and background swapped
    (the translation tasks' domains, pipeline.data.datasets.shapepairs)."""
    n = len(p["glyphs"])
    x = ((np.arange(resolution) + 0.5) / resolution * 2 - 1).astype(np.float32)
    flat = {k: np.asarray(a, np.float32).reshape(-1, 1, 1) for k, a in p.items()}  # [n*3, 1, 1]
    d = np.empty((n * 3, resolution, resolution), np.float32)
    for g in range(10):  # one glyph at a time: each pixel is evaluated for its own glyph only
        m = p["glyphs"].reshape(-1) == g
        s = flat["scale"][m]
        u, v = (x[None, None, :] - flat["dx"][m]) / s, (x[None, :, None] - flat["dy"][m]) / s
        d[m] = _sdf(g, u, v, flat["stroke"][m]) * s
    if style == "outline":   # a stroke of width 0.12 centred on the boundary
        d = np.abs(d) - 0.06
    # Coverage of a pixel by the shape, from the distance in pixel units: cheap anti-aliasing.
    alpha = np.clip(0.5 - d * (resolution / 2), 0, 1)
    fg, bg = (flat["bg"], flat["fg"]) if style == "inverted" else (flat["fg"], flat["bg"])
    img = bg + (fg - bg) * alpha
    return np.rint(img).astype(np.uint8).reshape(n, 3, resolution, resolution).transpose(0, 2, 3, 1)


def _check_resolution(resolution: int) -> None:
    if not 16 <= resolution <= 128:
        raise ValueError(f"shapestack resolution {resolution} not in [16, 128]")


def generate(n: int, resolution: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 images [n, R, R, 3], glyphs int [n, 3]); a pure function of (n, resolution, seed)."""
    _check_resolution(resolution)
    p = _params(n, seed)
    images = np.zeros((n, resolution, resolution, 3), np.uint8)
    for i in range(0, n, _CHUNK):
        images[i:i + _CHUNK] = _render({k: a[i:i + _CHUNK] for k, a in p.items()}, resolution)
    return images, p["glyphs"]


def samples(n: int, resolution: int, seed: int) -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, HxWx3 uint8 image, label = first glyph) for write_shards; same images as generate()."""
    _check_resolution(resolution)
    p = _params(n, seed)
    for i in range(0, n, _CHUNK):
        chunk = _render({k: a[i:i + _CHUNK] for k, a in p.items()}, resolution)
        for j, image in enumerate(chunk):
            yield f"{i + j:08d}", image, int(p["glyphs"][i + j, 0])


def mode_index(glyphs) -> np.ndarray:
    """[n, 3] glyphs -> mode id in [0, 1000)."""
    g = np.asarray(glyphs)
    return g[..., 0] * 100 + g[..., 1] * 10 + g[..., 2]


def _features(x: torch.Tensor) -> torch.Tensor:
    """float [n, 3, R, R] -> per channel zero-mean unit-norm grid [n, 3, G*G]; brightness-invariant."""
    f = F.adaptive_avg_pool2d(x, _GRID).flatten(2)
    f = f - f.mean(-1, keepdim=True)
    return f / f.norm(dim=-1, keepdim=True).clamp_min(1e-6)


_templates: dict[tuple[int, str], torch.Tensor] = {}


def _template(resolution: int, style: str = "filled") -> torch.Tensor:
    """[10, G*G] features of each glyph drawn without jitter at this resolution."""
    if (resolution, style) not in _templates:
        g = np.repeat(np.arange(10)[:, None], 3, 1)
        p = {"glyphs": g, "dx": np.zeros((10, 3)), "dy": np.zeros((10, 3)), "scale": np.full((10, 3), 0.975),
             "stroke": np.full((10, 3), 0.2), "fg": np.full((10, 3), 255.0), "bg": np.zeros((10, 3))}
        img = torch.from_numpy(_render(p, resolution, style)).permute(0, 3, 1, 2).float()
        _templates[resolution, style] = _features(img)[:, 0]
    return _templates[resolution, style]


def _as_float(images) -> torch.Tensor:
    x = torch.as_tensor(np.asarray(images) if isinstance(images, np.ndarray) else images).detach().cpu()
    if x.dtype == torch.uint8:
        x = (x[None] if x.dim() == 3 else x).permute(0, 3, 1, 2).float()
    else:
        x = (x[None] if x.dim() == 3 else x).float()
    if x.dim() != 4 or x.shape[1] != 3:
        raise ValueError(f"oracle expects uint8 [n, R, R, 3] or float [n, 3, R, R], got {tuple(x.shape)}")
    return x


def scores(images, style: str = "filled") -> torch.Tensor:
    """[n, 3, 10] normalised correlation of each channel with each glyph's template in `style`."""
    x = _as_float(images)
    return torch.einsum("ncg,kg->nck", _features(x), _template(x.shape[-1], style))


def oracle(images, style: str = "filled") -> np.ndarray:
    """Recover the three glyphs of each image -> int [n, 3].

    images: uint8 HWC ([n, R, R, 3] or one [R, R, 3]; numpy or torch) or float CHW in [-1, 1]
    ([n, 3, R, R] or one [3, R, R]), e.g. generator output. style: how they are drawn.
    """
    return scores(images, style).argmax(-1).numpy()
