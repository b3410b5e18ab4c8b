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


def _work(task: tuple[str, int | None, str, str, int | None]) -> tuple[bool, bytes | str]:
    """In a worker: (True, the sample's tar members) for one file, or (False, reason) for a file
    that cannot be used. The members are built here, not in the writer: tarfile's headers cost
    about a sixth of a small image's conversion, and the single writer would bound the rate."""
    path, resolution, fmt, key, label = task
    try:
        ext, data = folder.encode(path, resolution, fmt)
    except DataError as e:
        return False, str(e).removeprefix(f"{path}: ")
    members = {ext: data} if label is None else {"cls": str(label).encode("ascii"), ext: data}
    return True, b"".join(_member(f"{key}.{k}", members[k]) for k in sorted(members))


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
    from tqdm import tqdm

    log = log or (lambda line: print(line, file=sys.stderr))
    root, out = Path(root), Path(out)
    if fmt not in ("png", "jpg"):
        raise DataError(f"format {fmt!r}: use 'png' or 'jpg'")
    if shard_size < 1:
        raise DataError(f"shard_size must be >= 1, got {shard_size}")
    if resolution < 1:
        raise DataError(f"resolution must be >= 1, got {resolution}")
    workers = default_workers() if workers is None else int(workers)
    if workers < 1:
        raise DataError(f"workers must be >= 1, got {workers}")
    scan = folder.scan(root, unlabelled=unlabelled)
    _check_out(out, root)

    perm = order(len(scan.files), seed)
    tasks = [(str(root / scan.files[i]), resolution, fmt, scan.keys[i],
              scan.labels[i] if scan.labelled else None) for i in perm]

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
                              resolution=resolution, fmt=fmt, seed=seed)
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
        log(f"rejected {rejected} of {len(scan.files)} files (all listed in {out / REJECTED}):")
        for line in lines[:SHOW_REJECTED]:
            path, _, why = line.partition("\t")
            log(f"  {path}: {why}")
        if rejected > SHOW_REJECTED:
            log(f"  ... and {rejected - SHOW_REJECTED} more")
    return manifest


def _write(results, perm, scan, tmp: Path, *, strict, shard_size, resolution, fmt, seed) -> dict:
    shards, rejected, writer, counts = [], [], None, [0] * len(scan.classes)
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
        "resolution": resolution, "format": fmt, "source": str(scan.root), "shards": shards,
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
