"""A folder of images with one subfolder per class -> samples for write_shards."""
from __future__ import annotations

import io
from pathlib import Path
from typing import Iterator

from pipeline.data.shards import DataError

_PASS_THROUGH = {".png": "PNG", ".jpg": "JPEG", ".jpeg": "JPEG"}  # the formats the reader decodes
_IMAGE = set(_PASS_THROUGH) | {".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm"}


def classes(root: str | Path) -> list[str]:
    """Sorted names of the class subfolders."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"image folder {root} has no class subfolders")
    return names


def samples(root: str | Path, resolution: int | None = None) -> Iterator[tuple[str, bytes, int]]:
    """(key from the relative path, PNG/JPEG bytes, class index). PNG/JPEG files are stored as-is,
    other formats re-encoded as PNG. With a resolution, images of another size are resized and
    center-cropped to it first (smaller shards; the reader would do it on every read otherwise)."""
    root = Path(root)
    found = 0
    for label, name in enumerate(classes(root)):
        for path in sorted((root / name).rglob("*")):
            if path.suffix.lower() not in _IMAGE or not path.is_file():
                continue
            found += 1
            # webdataset splits member names at the first dot, so the key must not contain one.
            key = path.relative_to(root).with_suffix("").as_posix().replace(".", "_")
            yield key, _encoded(path, resolution), label
    if not found:
        raise DataError(f"image folder {root} holds no images ({', '.join(sorted(_IMAGE))})")


def _encoded(path: Path, resolution: int | None) -> bytes:
    from PIL import Image, ImageOps

    data = path.read_bytes()
    fmt = _PASS_THROUGH.get(path.suffix.lower())
    try:
        with Image.open(io.BytesIO(data)) as im:  # reads the header only until pixels are needed
            if fmt and (resolution is None or im.size == (resolution, resolution)):
                return data
            if resolution is not None:
                im = ImageOps.fit(im, (resolution, resolution), Image.Resampling.BICUBIC)
            out = io.BytesIO()
            if fmt == "JPEG":
                im.convert("RGB").save(out, "JPEG", quality=95)
            else:
                im.convert("RGBA" if "A" in im.getbands() else "RGB").save(out, "PNG")
    except OSError as e:
        raise DataError(f"cannot read image {path}: {e}") from e
    return out.getvalue()
