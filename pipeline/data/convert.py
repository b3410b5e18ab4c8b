"""Image folder -> WebDataset shards: seeded order, several processes, bad files skipped and listed.

    convert_folder("photos/", "data/photos64", resolution=64, seed=0, workers=4)

- Order: every file of the folder (pipeline/data/datasets/folder.py: class folders or a flat,
  unlabelled folder) is placed by one seeded permutation of the sorted file list, so each shard
  holds the classes in about their overall proportions (a class-sorted folder otherwise gives
  one-class shards, and ranks that never see some classes).
- Processes: decode + resize + encode run in `workers` processes; results come back in the
  permutation's order and one writer writes them, so the shards' bytes (and the manifest sha256)
  depend on the folder, the seed and the options only, never on `workers`.
- Bad files (truncated, corrupt, empty, not an image, an unsupported format) are skipped: counted
  in the manifest ("rejected"), the first few named on the terminal, all of them in rejected.txt
  beside manifest.json, one `relative/path<TAB>reason` line each, sorted by path. `strict=True`
  raises a DataError naming the first one instead.
- Atomic: everything is written into a hidden temporary folder beside `out`, which replaces `out`
  only once complete; on any failure (strict, Ctrl-C, a full disk) it is removed and `out` is as it
  was. An existing `out` is replaced only if it holds nothing but an earlier conversion's files.
"""
from __future__ import annotations

import hashlib
import json
import multiprocessing as mp
import os
import random
import shutil
import sys
import tarfile
from pathlib import Path

from pipeline.data.datasets import folder
from pipeline.data.shards import MANIFEST, MTIME, DataError

REJECTED = "rejected.txt"
SHOW_REJECTED = 5  # rejected files named on the terminal; rejected.txt holds all of them
_PREFIX = "shard"


def default_workers() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


def order(n: int, seed: int) -> list[int]:
    """The seeded permutation of range(n) samples are written in (stable across Python versions:
    random.Random's shuffle with an integer seed is)."""
    idx = list(range(n))
    random.Random(seed).shuffle(idx)
    return idx


def _work(task: tuple[tuple[tuple[str, str], ...], int | None, str, str, int | None]
          ) -> tuple[bool, bytes | str]:
    """In a worker: (True, the sample's tar members) for one sample's files ((member prefix, path):
    ("", img) for a plain image, ("source", a), ("target", b) for a pair), or (False, reason) if one
    cannot be used. The members are built here, not in the writer: tarfile's headers cost about a
    sixth of a small image's conversion, and the single writer would bound the rate."""
    parts, resolution, fmt, key, label = task
    members = {} if label is None else {"cls": str(label).encode("ascii")}
    sizes = {}
    for prefix, path in parts:
        try:
            ext, data = folder.encode(path, resolution, fmt)
        except DataError as e:
            why = str(e).removeprefix(f"{path}: ")
            return False, why if len(parts) == 1 else f"{prefix} {path}: {why}"
        members[f"{prefix}.{ext}" if prefix else ext] = data
        if len(parts) > 1:
            sizes[prefix] = _size_of(path)
    if len(set(sizes.values())) > 1:   # a pair must be aligned pixel for pixel before resizing
        return False, " and ".join(f"{k} {w}x{h}" for k, (w, h) in sizes.items()) + \
            f" differ in size ({parts[-1][1]})"
    return True, b"".join(_member(f"{key}.{k}", members[k]) for k in sorted(members))


def _size_of(path: str) -> tuple[int, int]:
    """(width, height) after EXIF rotation, from the header (the file decoded fine already)."""
    from PIL import Image

    with Image.open(path) as im:
        w, h = im.size
        return (h, w) if im.getexif().get(0x0112, 1) in (5, 6, 7, 8) else (w, h)


def _member(name: str, data: bytes) -> bytes:
    """One tar member exactly as webdataset's TarWriter(encoder=False, mtime=MTIME) writes it
    (tarfile's default pax format, mode 0o444, user and group "bigdata"), padded to 512 bytes."""
    ti = tarfile.TarInfo(name)
    ti.size, ti.mtime, ti.mode, ti.uname, ti.gname = len(data), MTIME, 0o444, "bigdata", "bigdata"
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape") + data + bytes(-len(data) % 512)


class _Shard:
    """A tar file written from ready member bytes, hashed on the way; closed as tarfile closes a
    stream: two zero blocks, then zeros up to a whole record (tarfile.RECORDSIZE)."""

    def __init__(self, path: Path):
        self.f, self.size, self.sha = open(path, "wb"), 0, hashlib.sha256()

    def write(self, blob: bytes) -> None:
        self.f.write(blob)
        self.sha.update(blob)
        self.size += len(blob)

    def close(self) -> str:
        if self.f.closed:
            return self.sha.hexdigest()
        end = 2 * tarfile.BLOCKSIZE
        self.write(bytes(end + (-(self.size + end) % tarfile.RECORDSIZE)))
        self.f.close()
        return self.sha.hexdigest()


def _ours(name: str) -> bool:
    return (name in (MANIFEST, REJECTED) or (name.startswith(f"{_PREFIX}-") and name.endswith(".tar"))
            or (name.startswith(f".{MANIFEST}.") and name.endswith(".tmp")))


def _check_out(out: Path, root: Path) -> None:
    if out.resolve() == root.resolve() or root.resolve() in out.resolve().parents:
        raise DataError(f"--out {out} is inside the image folder {root}: choose a folder outside it")
    if out.exists():
        if not out.is_dir():
            raise DataError(f"--out {out} exists and is not a folder")
        other = sorted(p.name for p in out.iterdir() if not _ours(p.name))
        if other:
            raise DataError(f"--out {out} holds files that are not shards of an earlier conversion "
                            f"({', '.join(other[:3])}{', ...' if len(other) > 3 else ''}): "
                            f"choose a new or empty folder")


def convert_folder(root: str | Path, out: str | Path, *, resolution: int, seed: int = 0,
                   fmt: str = "png", shard_size: int = 1000, workers: int | None = None,
                   strict: bool = False, unlabelled: bool = False, progress: bool | None = None,
                   log=None) -> dict:
    """Write the images of `root` as shards into `out` (see the module doc) and return the manifest.
    progress: a tqdm bar on stderr; None -> only when stderr is a terminal. log: where the summary
    of rejected files goes (a callable taking a line; default print to stderr)."""
    log = log or (lambda line: print(line, file=sys.stderr))
    root, out = Path(root), Path(out)
    _check_options(fmt, shard_size, resolution)
    workers = default_workers() if workers is None else int(workers)
    scan = folder.scan(root, unlabelled=unlabelled)
    _check_out(out, root)

    perm = order(len(scan.files), seed)
    tasks = [((("", str(root / scan.files[i])),), resolution, fmt, scan.keys[i],
              scan.labels[i] if scan.labelled else None) for i in perm]
    return _convert(tasks, perm, scan, out, strict=strict, shard_size=shard_size, resolution=resolution,
                    fmt=fmt, seed=seed, workers=workers, progress=progress, log=log)


def convert_pairs(source: str | Path, target: str | Path, out: str | Path, *, resolution: int,
                  seed: int = 0, fmt: str = "png", shard_size: int = 1000, workers: int | None = None,
                  strict: bool = False, progress: bool | None = None, log=None) -> dict:
    """Paired shards (pix2pix): each sample holds `source.EXT` and `target.EXT`, the two files
    with the same relative path up to the extension in `source` and `target` (a/001.png pairs with
    a/001.jpg). A file without its partner is not dropped silently: it is listed in rejected.txt
    ("no partner in TARGET") and counted, or with `strict` raises naming it. Otherwise as
    convert_folder (seeded order, processes, bad files skipped and listed, atomic)."""
    log = log or (lambda line: print(line, file=sys.stderr))
    source, target, out = Path(source), Path(target), Path(out)
    _check_options(fmt, shard_size, resolution)
    workers = default_workers() if workers is None else int(workers)
    scans = [folder.scan(r, unlabelled=True) for r in (source, target)]
    for r in (source, target):
        _check_out(out, r)
    stems = [{str(Path(f).with_suffix("")): f for f in sc.files} for sc in scans]
    unmatched = [(f"{sc.root.name}/{f}", f"no partner in {other.root}") for sc, other, mine, theirs in
                 ((scans[0], scans[1], stems[0], stems[1]), (scans[1], scans[0], stems[1], stems[0]))
                 for stem, f in mine.items() if stem not in theirs]
    if unmatched and strict:
        raise DataError(f"{unmatched[0][0]}: {unmatched[0][1]} (--strict stops at the first "
                        f"unpaired file; without it, such files are listed in {REJECTED})")
    both = sorted(set(stems[0]) & set(stems[1]))
    if not both:
        raise DataError(f"no file in {source} has a partner with the same name in {target} "
                        f"(pairs match by relative path without the extension)")
    pairs = folder.Scan(root=source, files=[stems[0][k] for k in both], labels=None, classes=[],
                        ignored=scans[0].ignored + scans[1].ignored, keys=folder.keys(both))
    perm = order(len(both), seed)
    tasks = [((("source", str(source / stems[0][both[i]])), ("target", str(target / stems[1][both[i]]))),
              resolution, fmt, pairs.keys[i], None) for i in perm]
    return _convert(tasks, perm, pairs, out, strict=strict, shard_size=shard_size, resolution=resolution,
                    fmt=fmt, seed=seed, workers=workers, progress=progress, log=log,
                    unmatched=unmatched, source_name=f"pairs:{source}|{target}")


def _check_options(fmt: str, shard_size: int, resolution: int) -> None:
    if fmt not in ("png", "jpg"):
        raise DataError(f"format {fmt!r}: use 'png' or 'jpg'")
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    if resolution < 1:
        raise DataError(f"resolution must be >= 1, got {resolution}")


def _convert(tasks, perm, scan, out: Path, *, strict, shard_size, resolution, fmt, seed, workers,
             progress, log, unmatched=(), source_name=None) -> dict:
    from tqdm import tqdm

    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")

    created = [p for p in [out.parent, *out.parent.parents] if not p.exists()]
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.tmp-{os.getpid()}"
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir()
    pool = None
    try:
        if workers > 1 and len(tasks) > 1:
            # fork: the workers need no imports of their own (spawn would import torch in each);
            # nothing in this process runs threads of ours before the pool exists.
            ctx = mp.get_context("fork" if "fork" in mp.get_all_start_methods() else None)
            pool = ctx.Pool(min(workers, len(tasks)))
            results = pool.imap(_work, tasks, chunksize=max(1, min(32, len(tasks) // (workers * 8))))
        else:
            results = map(_work, tasks)
        bar = tqdm(results, total=len(tasks), unit="img", desc=f"shards {out.name}", disable=
                   (not sys.stderr.isatty()) if progress is None else not progress, dynamic_ncols=True)
        try:
            manifest = _write(bar, perm, scan, tmp, strict=strict, shard_size=shard_size,
                              resolution=resolution, fmt=fmt, seed=seed, unmatched=list(unmatched),
                              source_name=source_name)
        finally:
            bar.close()
        if pool is not None:
            pool.close()
            pool.join()
            pool = None
        _replace(tmp, out)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        for p in created:  # parents this call made, if still empty
            try:
                p.rmdir()
            except OSError:
                break
        raise
    finally:
        if pool is not None:
            pool.terminate()
            pool.join()

    rejected = manifest["rejected"]
    if rejected:
        lines = (out / REJECTED).read_text().splitlines()
        what = "files" if not source_name else "files or pairs"
        log(f"rejected {rejected} of {len(scan.files) + len(unmatched)} {what} (all listed in {out / REJECTED}):")
        for line in lines[:SHOW_REJECTED]:
            path, _, why = line.partition("\t")
            log(f"  {path}: {why}")
        if rejected > SHOW_REJECTED:
            log(f"  ... and {rejected - SHOW_REJECTED} more")
    return manifest


def _write(results, perm, scan, tmp: Path, *, strict, shard_size, resolution, fmt, seed,
           unmatched: list, source_name: str | None) -> dict:
    shards, rejected, writer, counts = [], unmatched, None, [0] * len(scan.classes)
    n = 0
    try:
        for i, (ok, blob) in zip(perm, results):
            rel = scan.files[i]
            if not ok:
                if strict:
                    raise DataError(f"cannot use image {scan.root / rel}: {blob} (--strict stops at "
                                    f"the first unusable file; without it, such files are skipped "
                                    f"and listed in {REJECTED})")
                rejected.append((rel, blob))
                if hasattr(results, "set_postfix_str"):
                    results.set_postfix_str(f"rejected {len(rejected)}", refresh=False)
                continue
            if n % shard_size == 0:
                if writer is not None:
                    shards[-1]["sha256"] = writer.close()
                name = f"{_PREFIX}-{len(shards):06d}.tar"
                shards.append({"name": name, "count": 0})
                writer = _Shard(tmp / name)
            writer.write(blob)
            if scan.labelled:
                counts[scan.labels[i]] += 1
            shards[-1]["count"] += 1
            n += 1
    finally:
        if writer is not None:
            shards[-1]["sha256"] = writer.close()
    if not n:
        raise DataError(f"none of the {len(scan.files)} images in {scan.root} could be used "
                        f"(first: {rejected[0][0]}: {rejected[0][1]})")
    if rejected:
        (tmp / REJECTED).write_text("".join(f"{p}\t{why}\n" for p, why in sorted(rejected)))
    manifest = {
        "samples": n, "classes": list(scan.classes), "num_classes": len(scan.classes),
        "resolution": resolution, "format": fmt, "source": source_name or str(scan.root), "shards": shards,
        "sha256": hashlib.sha256(json.dumps(shards, sort_keys=True).encode()).hexdigest(),
        "order": "shuffled", "seed": seed, "files": len(scan.files), "rejected": len(rejected),
        "ignored": scan.ignored,
    }
    if scan.labelled:
        manifest["class_counts"] = counts
    (tmp / MANIFEST).write_text(json.dumps(manifest, indent=1))
    return manifest


def _replace(tmp: Path, out: Path) -> None:
    """tmp -> out. An earlier conversion in out (checked by _check_out) is moved aside first and
    deleted after: out is at every moment absent, the old conversion, or the new one."""
    if not out.exists():
        os.rename(tmp, out)
        return
    old = out.parent / f".{out.name}.old-{os.getpid()}"
    shutil.rmtree(old, ignore_errors=True)
    os.rename(out, old)
    try:
        os.rename(tmp, out)
    except BaseException:
        os.rename(old, out)
        raise
    shutil.rmtree(old, ignore_errors=True)
