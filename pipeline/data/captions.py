"""The captions of the built-in captioned shapestack (pipeline.data.datasets.shapecaptions): the
exact description of a glyph triple, in several phrasings, e.g. "a ring in red over a cross in
green and a dot in blue" or "red ring, green cross, blue dot". Which glyph is in which colour
channel is all a caption says, so the shapestack oracle checks a generated image against it.

Kept apart from the dataset (numpy only): a text generator's default prompts come from here when
it loads with torch alone.
"""
from __future__ import annotations

import numpy as np

# One word per glyph, in shapestack's glyph order (its NAMES are code names: hbars, vbars, L).
WORDS = ("disk", "ring", "checker", "plus", "cross", "stripes", "columns", "triangle", "corner", "dot")
COLOURS = ("red", "green", "blue")           # channel order
PHRASINGS = (
    "a {0} in red over a {1} in green and a {2} in blue",
    "red {0}, green {1}, blue {2}",
    "a blue {2}, a green {1} and a red {0}",
    "{1} in green with {0} in red and {2} in blue",
)


def caption(glyphs, phrasing: int) -> str:
    """The caption of one glyph triple [3] in phrasing `phrasing` (modulo the number of phrasings)."""
    g = [WORDS[int(k)] for k in glyphs]
    return PHRASINGS[phrasing % len(PHRASINGS)].format(*g)


def eval_captions(n: int, seed: int) -> tuple[list[str], np.ndarray]:
    """n captions that ask for every triple equally (each block of 1000 holds all 1000, in a
    seeded order) in rotating phrasings -> (captions, their triples int [n, 3])."""
    modes = np.concatenate([np.random.default_rng([seed, b]).permutation(1000)
                            for b in range(-(-n // 1000))])[:n]
    glyphs = np.stack([modes // 100, modes // 10 % 10, modes % 10], 1)
    return [caption(g, i) for i, g in enumerate(glyphs)], glyphs


def default_caption(i: int) -> str:
    """What sample i of a text generator shows when no prompt is given: the triple of mode
    i % 1000, in phrasing i % 4; so n = 1000 samples ask for every mode once."""
    m = i % 1000
    return caption((m // 100, m // 10 % 10, m % 10), i)
