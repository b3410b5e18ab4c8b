"""Built-in image-to-image translation tasks on shapestack glyph triples, with exact oracles.

Every image shows one glyph triple (one glyph per channel, as in shapestack) drawn in one of
three styles, the domains: 0 filled (shapestack itself), 1 outline, 2 inverted (foreground and
background swapped). The oracle recovers the triple given the style (content) and the style
itself (domain), so a translated image can be checked exactly: did it keep the source's glyphs,
did it reach the target domain.

The built-in sets (the members each sample holds):
  shapepairs     paired: source.png (outline) + target.png (filled, the same triple)    pix2pix
  shapeunpaired  png in outline or filled style + cls (0 outline, 1 filled)             CycleGAN
  shapestyles    png in any of the three styles + cls (its index in STYLES)             StarGAN
Unpaired data is one set with a domain field (cls): each image's triple is independent, so no
image has a partner in the other domain.
"""
from __future__ import annotations

from typing import Iterator

import numpy as np
import torch

from pipeline.data.datasets import shapestack
from pipeline.data.datasets.shapestack import STYLES, _CHUNK, _check_resolution, _params, _render

CLASSES = list(STYLES)           # domain names, index = domain id
SOURCE, TARGET = "outline", "filled"   # the paired task's direction
UNPAIRED = (SOURCE, TARGET)            # shapeunpaired's two domains, in cls order


def _chunks(n: int, resolution: int, seed: int, style: str):
    p = _params(n, seed)
    for i in range(0, n, _CHUNK):
        yield i, _render({k: a[i:i + _CHUNK] for k, a in p.items()}, resolution, style), p["glyphs"][i:i + _CHUNK]


def paired(n: int, resolution: int, seed: int) -> Iterator[tuple[str, dict]]:
    """(key, {"source": outline HxWx3, "target": filled HxWx3, "cls": first glyph}) for
    write_shards (members source.png, target.png, cls)."""
    _check_resolution(resolution)
    for (i, src, g), (_, tgt, _) in zip(_chunks(n, resolution, seed, SOURCE),
                                        _chunks(n, resolution, seed, TARGET)):
        for j in range(len(src)):
            yield f"{i + j:08d}", {"source": src[j], "target": tgt[j], "cls": int(g[j, 0])}


def styles(n: int, resolution: int, seed: int, domains: tuple[str, ...] = STYLES
           ) -> Iterator[tuple[str, np.ndarray, int]]:
    """(key, the triple drawn in a random one of `domains`, that domain's index in `domains`):
    shapestack's own layout, with cls = domain (what `ganforge shards` writes from one folder per
    domain)."""
    _check_resolution(resolution)
    dom = np.random.default_rng([seed, 7]).integers(0, len(domains), n)
    p = _params(n, seed)
    for i in range(0, n, _CHUNK):
        part = {k: a[i:i + _CHUNK] for k, a in p.items()}
        drawn = [_render(part, resolution, s) for s in domains]
        for j in range(len(part["glyphs"])):
            d = int(dom[i + j])
            yield f"{i + j:08d}", drawn[d][j], d


def generate(n: int, resolution: int, seed: int, style: str) -> tuple[np.ndarray, np.ndarray]:
    """-> (uint8 [n, R, R, 3] in `style`, glyphs [n, 3]); the same triples as shapestack.generate."""
    _check_resolution(resolution)
    out, glyphs = np.zeros((n, resolution, resolution, 3), np.uint8), _params(n, seed)["glyphs"]
    for i, imgs, _ in _chunks(n, resolution, seed, style):
        out[i:i + len(imgs)] = imgs
    return out, glyphs


def content(images, style: str) -> np.ndarray:
    """The glyph triples of images drawn in `style` -> int [n, 3]."""
    return shapestack.oracle(images, style)


def domain(images) -> np.ndarray:
    """The style of each image -> domain index [n]: the style whose best-matching templates fit
    best, averaged over the three channels."""
    fit = torch.stack([shapestack.scores(images, s).amax(-1).mean(-1) for s in STYLES], -1)
    return fit.argmax(-1).numpy()


def translation_scores(outputs, want_glyphs, target_style: str) -> dict[str, float]:
    """Oracle scores of translated images: content_acc (all three glyphs kept; chance 0.001),
    glyph_acc (per channel; chance 0.1) and domain_acc (drawn in the target style; chance 1/3)."""
    got = content(outputs, target_style)
    want = np.asarray(want_glyphs)
    return {"content_acc": float((got == want).all(1).mean()), "glyph_acc": float((got == want).mean()),
            "domain_acc": float((domain(outputs) == STYLES.index(target_style)).mean())}
