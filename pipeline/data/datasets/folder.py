"""An image folder -> the list of files to convert and one file's encoded sample.

Two layouts (hidden files and folders, names starting with '.', are ignored everywhere):
- class folders: DIR/<class>/.../img.png, the class is the first-level folder, images may sit at
  any depth below it; classes are the first-level folders holding at least one image, sorted;
- flat, unlabelled: images directly in DIR and no class folder holding images.
A mix (class folders holding images *and* images directly in DIR) is refused with a DataError that
names a loose image: silently dropping the loose images or inventing a class for them would both
surprise. `unlabelled=True` (`ganforge shards --unlabelled`) takes every image at any depth,
without classes, whatever the layout.

Files whose extension is not an image's are ignored (counted, not listed); files with an image
extension that cannot be decoded are what the converter rejects (pipeline/data/convert.py).

Everything here is plain PIL and the standard library: the converter's worker processes import
nothing heavier.
"""
from __future__ import annotations

import io
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterator

from pipeline.data.shards import DataError

_PIL_FORMAT = {"png": "PNG", "jpg": "JPEG"}  # shard format -> PIL format written and passed through
_EXT = {"PNG": "png", "JPEG": "jpg"}  # PIL format -> member extension (what the reader decodes)
_IMAGE = {".png", ".jpg", ".jpeg", ".bmp", ".gif", ".tif", ".tiff", ".webp", ".ppm", ".pgm", ".pbm",
          ".pnm", ".tga", ".ico", ".jp2", ".avif"}
# Extensions of images PIL cannot decode: taken as candidates so that they are rejected and listed
# (a user should see that their .heic photos were not converted), not silently ignored.
_UNSUPPORTED = {".heic", ".heif", ".svg", ".jxl", ".raw", ".cr2", ".nef", ".arw", ".dng", ".psd"}
CANDIDATES = _IMAGE | _UNSUPPORTED


@dataclass
class Scan:
    root: Path
    files: list[str]                  # paths relative to root, POSIX, sorted
    labels: list[int] | None          # class index per file; None for an unlabelled folder
    classes: list[str]                # [] for an unlabelled folder
    ignored: int = 0                  # non-image files skipped
    keys: list[str] = field(default_factory=list)  # one webdataset key per file, unique

    @property
    def labelled(self) -> bool:
        return self.labels is not None


def _walk(top: Path) -> tuple[list[str], int]:
    """(candidate image paths relative to top, sorted; number of non-image files), hidden entries
    skipped, symlinked folders not followed (a link loop cannot hang the scan)."""
    found, ignored = [], 0
    for dirpath, dirnames, filenames in os.walk(top):
        dirnames[:] = sorted(d for d in dirnames if not d.startswith("."))
        rel = Path(dirpath).relative_to(top)
        for name in filenames:
            if name.startswith("."):
                continue
            if Path(name).suffix.lower() in CANDIDATES:
                found.append((rel / name).as_posix())
            else:
                ignored += 1
    return sorted(found), ignored


def scan(root: str | Path, *, unlabelled: bool = False) -> Scan:
    """The files to convert and their labels (see the module doc for the layouts)."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    files, ignored = _walk(root)
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(sorted(_IMAGE))})")
    if unlabelled:
        s = Scan(root, files, None, [], ignored)
    else:
        loose = [f for f in files if "/" not in f]
        classes = sorted({f.split("/", 1)[0] for f in files if "/" in f})
        if loose and classes:
            raise DataError(
                f"image folder {root} mixes {len(classes)} class folders with {len(loose)} images "
                f"directly in it (first: {loose[0]}): move those images into a class folder, or "
                f"pass --unlabelled to write every image without a class")
        if classes:
            index = {c: i for i, c in enumerate(classes)}
            s = Scan(root, files, [index[f.split("/", 1)[0]] for f in files], classes, ignored)
        else:
            s = Scan(root, files, None, [], ignored)
    s.keys = keys(files)
    return s


def keys(files: list[str]) -> list[str]:
    """A webdataset key per relative path: the path without its extension, '.' -> '_' (webdataset
    splits member names at the first dot after the last '/'). `a/x.png` next to `a/x.jpg` would
    share a key: the later one (in sorted order) gets its extension appended, `a/x_jpg`."""
    out, seen = [], set()
    for f in files:
        p = Path(f)
        key = p.with_suffix("").as_posix().replace(".", "_")
        if key in seen:
            key = f"{key}_{p.suffix[1:].lower()}"
        n = 2
        base = key
        while key in seen:
            key, n = f"{base}_{n}", n + 1
        seen.add(key)
        out.append(key)
    return out


def classes(root: str | Path) -> list[str]:
    """Sorted names of the (non-hidden) first-level subfolders; DataError if there are none."""
    root = Path(root)
    if not root.is_dir():
        raise DataError(f"image folder {root} does not exist")
    names = sorted(p.name for p in root.iterdir() if p.is_dir() and not p.name.startswith("."))
    if not names:
        raise DataError(f"image folder {root} has no class subfolders")
    return names


def samples(root: str | Path, resolution: int | None = None) -> Iterator[tuple[str, bytes, int]]:
    """(key, PNG/JPEG bytes, class index) of a class-folder tree, class by class in sorted path
    order, for write_shards; PNG/JPEG files are kept in their format (as-is when already at the
    resolution). Stops at the first unusable file. `ganforge shards` does not use this: it writes
    through pipeline.data.convert (seeded order, bad files skipped, several processes)."""
    root = Path(root)
    names = classes(root)
    files = [(label, f"{name}/{rel}") for label, name in enumerate(names) for rel in _walk(root / name)[0]]
    if not files:
        raise DataError(f"image folder {root} holds no images ({', '.join(sorted(_IMAGE))})")
    for key, (label, rel) in zip(keys([rel for _, rel in files]), files):
        yield key, encode(root / rel, resolution, None)[1], label


def encode(path: str | Path, resolution: int | None, fmt: str | None = "png") -> tuple[str, bytes]:
    """-> (member extension, bytes) of one image file, fully decoded first so that truncated and
    corrupt files fail here and not at training time. A file already in `fmt` at the resolution
    (and without an EXIF rotation) is stored byte for byte; any other is EXIF-rotated, resized and
    center-cropped to resolution x resolution (bicubic) and encoded as `fmt` (PNG keeps an alpha
    channel, everything else becomes RGB). fmt=None keeps PNG and JPEG files in their own format
    (other formats become PNG). Raises DataError naming the file and the reason."""
    from PIL import Image, ImageFile, ImageOps

    path = Path(path)
    if fmt is not None and fmt not in _PIL_FORMAT:
        raise DataError(f"format {fmt!r}: use 'png' or 'jpg'")
    try:
        data = path.read_bytes()
    except OSError as e:
        raise DataError(f"{path}: cannot read: {e.strerror or e}") from e
    if not data:
        raise DataError(f"{path}: empty file")
    # A library that set this globally would let truncated images through as grey padding.
    truncated_ok, ImageFile.LOAD_TRUNCATED_IMAGES = ImageFile.LOAD_TRUNCATED_IMAGES, False
    try:
        with Image.open(io.BytesIO(data)) as im:
            im.load()  # decodes every pixel: truncated or corrupt data raises here
            rotated = im.getexif().get(0x0112, 1) not in (1, None)
            fmt = fmt or _EXT.get(im.format, "png")
            if (im.format == _PIL_FORMAT[fmt] and not rotated
                    and (resolution is None or im.size == (resolution, resolution))):
                return _EXT[im.format], data
            out = ImageOps.exif_transpose(im) if rotated else im
            alpha = fmt == "png" and ("A" in out.getbands() or "transparency" in out.info)
            out = out.convert("RGBA" if alpha else "RGB")  # before resizing: P and 1 would resize NEAREST
            if resolution is not None and out.size != (resolution, resolution):
                out = ImageOps.fit(out, (resolution, resolution), Image.Resampling.BICUBIC)
            buf = io.BytesIO()
            if fmt == "jpg":
                out.save(buf, "JPEG", quality=95)
            else:
                out.save(buf, "PNG")
            return fmt, buf.getvalue()
    except DataError:
        raise
    except Exception as e:  # noqa: BLE001 - PIL raises OSError, SyntaxError, ValueError, struct.error, ...
        raise DataError(f"{path}: {_reason(e)}") from e
    finally:
        ImageFile.LOAD_TRUNCATED_IMAGES = truncated_ok


def _reason(e: Exception) -> str:
    msg = str(e).strip() or type(e).__name__
    if "cannot identify image file" in msg:
        return "not an image PIL can decode (unsupported format or not an image)"
    return msg.splitlines()[0][:200]


def read_images(path: str | Path, resolution: int) -> tuple[list[str], object, list[tuple[str, str]]]:
    """An image file, or every image under a folder (hidden entries skipped), decoded and fitted
    to resolution x resolution exactly as shards are written (`encode`) -> (relative names, uint8
    [n, 3, R, R], [(name, reason)] of the files that could not be used). For `ganforge translate`."""
    import torch
    from torchvision.io import ImageReadMode, decode_image

    path = Path(path)
    if path.is_file():
        root, files = path.parent, [path.name]
    elif path.is_dir():
        root, (files, _) = path, _walk(path)
    else:
        raise DataError(f"{path}: no such file or folder")
    names, images, bad = [], [], []
    for rel in files:
        try:
            _, data = encode(root / rel, resolution, "png")
        except DataError as e:
            bad.append((rel, str(e).removeprefix(f"{root / rel}: ")))
            continue
        names.append(rel)
        images.append(decode_image(torch.frombuffer(bytearray(data), dtype=torch.uint8), ImageReadMode.RGB))
    if not images:
        first = f" (first: {bad[0][0]}: {bad[0][1]})" if bad else ""
        raise DataError(f"{path}: no usable image{first}")
    return names, torch.stack(images), bad
