"""Captioned shapestack: every image (shapestack's, the same triples and pixels) with an exact
caption of its glyph triple, in one of several phrasings, e.g. "a ring in red over a cross in
green and a dot in blue" or "red ring, green cross, blue dot" (pipeline.data.captions). The caption says which glyph is in
which colour channel, so the shapestack oracle checks exactly whether a generated image shows what
its caption asks for (pipeline.evaluation.captions).

Members per sample: png (the image), cls (the red glyph, as shapestack), txt (the caption).
"""
from __future__ import annotations

from typing import Iterator

import numpy as np

from pipeline.data.captions import PHRASINGS, caption
from pipeline.data.datasets import shapestack


def samples(n: int, resolution: int, seed: int) -> Iterator[tuple[str, dict]]:
    """(key, {"": image, "cls": red glyph, "txt": caption}) for write_shards: shapestack's images
    with the same seed, each captioned in a phrasing drawn from the seed."""
    phrasing = np.random.default_rng([seed, 11]).integers(0, len(PHRASINGS), n)
    glyphs = shapestack._params(n, seed)["glyphs"]
    for i, (key, image, label) in enumerate(shapestack.samples(n, resolution, seed)):
        yield key, {"": image, "cls": label, "txt": caption(glyphs[i], int(phrasing[i]))}
