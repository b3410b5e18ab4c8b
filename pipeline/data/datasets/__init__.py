"""Built-in offline datasets, written as shards on first use."""
from __future__ import annotations

from itertools import islice
from pathlib import Path

from pipeline.data.datasets import animals, digits, shapecaptions, shapepairs, shapestack
from pipeline.data.shards import DataError, load_manifest, write_shards

# name -> (class or domain names, samples(n, resolution, seed) for write_shards)
BUILTIN = {
    "shapestack": (shapestack.CLASSES, shapestack.samples),
    "digits": (digits.CLASSES, lambda n, r, s: islice(digits.samples(r, s), n)),
    "animals": (animals.CLASSES, animals.samples),               # real silhouettes (ganforge[animals])
    "shapepairs": (shapestack.CLASSES, shapepairs.paired),       # pix2pix: source.png -> target.png
    "shapeunpaired": (list(shapepairs.UNPAIRED),                 # CycleGAN: cls = domain A or B
                      lambda n, r, s: shapepairs.styles(n, r, s, shapepairs.UNPAIRED)),
    "shapestyles": (shapepairs.CLASSES, shapepairs.styles),      # StarGAN: cls = one of 3 domains
    "shapecaptions": (shapestack.CLASSES, shapecaptions.samples),  # text-to-image: png + cls + txt
}


def build_builtin(name: str, out_dir: str | Path, *, resolution: int, n: int, shard_size: int,
                  seed: int = 0, fmt: str = "png") -> dict:
    """Write shards of a built-in dataset into out_dir and return the manifest. If out_dir already
    holds a complete build with the same parameters, return its manifest instead.
    digits has 1,797 images and animals 10,000: a larger n takes them all."""
    if name not in BUILTIN:
        raise DataError(f"unknown built-in dataset {name!r}; choose from {sorted(BUILTIN)}")
    source = f"builtin:{name}?n={n}&resolution={resolution}&seed={seed}&shard_size={shard_size}&format={fmt}"
    try:
        existing = load_manifest(out_dir)
        if existing["source"] == source:
            return existing
    except DataError:
        pass  # nothing (complete) there yet
    classes, samples = BUILTIN[name]
    return write_shards(samples(n, resolution, seed), out_dir, resolution=resolution, classes=classes, source=source,
                        fmt=fmt, shard_size=shard_size)
