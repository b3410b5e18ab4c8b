"""Reference statistics of a dataset: feature mean/covariance (float64) and, for KID, precision/
recall and per-class FID, the features and labels themselves.

Computed once per (manifest sha256, extractor sha256, resolution) and cached at
$GANFORGE_HOME/refstats/<manifest_sha>-<extractor_sha>-<res>.npz, written atomically (temp file
+ rename), so concurrent ranks or runs never read half a file. `sha256` is a hash of the array
contents (not of the zip bytes, which carry timestamps): recomputing the same statistics gives the
same sha256, which is what the protocol records.
"""
from __future__ import annotations

import hashlib
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import torch

from pipeline.evaluation.metrics.features import Partial


@dataclass
class RefStats:
    mean: np.ndarray                 # float64 [D]
    sigma: np.ndarray                # float64 [D, D], unbiased
    n: int
    features: np.ndarray | None      # float32 [n, D] when kept
    labels: np.ndarray | None        # int64 [n] when kept (and the data has labels)
    source: str                      # where the images came from (manifest path or spec)
    extractor: str
    extractor_sha256: str
    resolution: int
    path: Path | None = None

    @property
    def sha256(self) -> str:
        h = hashlib.sha256()
        for k in ("mean", "sigma", "features", "labels"):
            a = getattr(self, k)
            if a is not None:
                a = np.ascontiguousarray(a)
                h.update(f"{k}:{a.dtype.str}:{a.shape}:".encode())
                h.update(a.tobytes())
        return h.hexdigest()


def from_partial(part: Partial, *, source: str, extractor, resolution: int) -> RefStats:
    return RefStats(mean=part.stats.mean, sigma=part.stats.cov, n=part.n, features=part.features,
                    labels=part.labels, source=source, extractor=extractor.name,
                    extractor_sha256=extractor.sha256, resolution=resolution)


def cache_path(manifest_sha: str, extractor_sha: str, resolution: int, limit: int | None = None) -> Path:
    """limit: statistics of only the first `limit` images get their own file."""
    from pipeline.config import ganforge_home
    tail = "" if limit is None else f"-first{limit}"
    return ganforge_home() / "refstats" / f"{manifest_sha}-{extractor_sha}-{resolution}{tail}.npz"


def save(ref: RefStats, path: str | Path) -> Path:
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    arrays = {k: getattr(ref, k) for k in ("mean", "sigma", "features", "labels") if getattr(ref, k) is not None}
    meta = {"n": ref.n, "source": ref.source, "extractor": ref.extractor,
            "extractor_sha256": ref.extractor_sha256, "resolution": ref.resolution, "sha256": ref.sha256}
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    with open(tmp, "wb") as f:
        np.savez(f, **arrays, **{f"meta_{k}": np.asarray(v) for k, v in meta.items()})
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)
    ref.path = path
    return path


def load(path: str | Path) -> RefStats:
    with np.load(path, allow_pickle=False) as z:
        get = lambda k: z[k] if k in z.files else None  # noqa: E731
        ref = RefStats(mean=z["mean"], sigma=z["sigma"], n=int(z["meta_n"]), features=get("features"),
                       labels=get("labels"), source=str(z["meta_source"]), extractor=str(z["meta_extractor"]),
                       extractor_sha256=str(z["meta_extractor_sha256"]),
                       resolution=int(z["meta_resolution"]), path=Path(path))
        stored = str(z["meta_sha256"])
    if ref.sha256 != stored:
        raise ValueError(f"reference statistics {path}: contents do not match their recorded sha256 "
                         f"({stored[:12]}...); the file is corrupt, delete it to recompute")
    return ref


def reference_stats(batches: Iterable, extractor, *, manifest_sha: str, resolution: int, source: str,
                    limit: int | None = None, keep: set[str] = frozenset({"features", "labels"}),
                    cache: bool = True) -> RefStats:
    """Cached statistics of the real images in `batches` ((uint8 or [-1, 1] images, labels) pairs,
    e.g. shard_batches(), holding the first `limit` images or all when None). `keep` names the
    per-sample arrays stored beside mean/cov."""
    from pipeline.evaluation.metrics.collect import real_partial

    path = cache_path(manifest_sha, extractor.sha256, resolution, limit)
    if cache and path.is_file():
        ref = load(path)
        if keep <= {k for k in ("features", "labels") if getattr(ref, k) is not None}:
            return ref
    ref = from_partial(real_partial(batches, extractor, keep=set(keep)), source=source,
                       extractor=extractor, resolution=resolution)
    if cache:
        save(ref, path)
    return ref


def shard_batches(urls: list[str], resolution: int, *, batch_size: int = 64, start: int = 0,
                  stop: int | None = None, counts: list[int] | None = None
                  ) -> Iterator[tuple[torch.Tensor, torch.Tensor]]:
    """Samples [start, stop) of the shards in order -> (uint8 [B, 3, R, R], labels [B]) batches.
    counts (samples per shard, from the manifest) lets whole shards before `start` be skipped
    unread. Undecodable samples are skipped (data.decode's "convert" policy)."""
    from pipeline.data import decode
    from pipeline.data.shards import read_samples

    index, images, labels = 0, [], []
    for i, url in enumerate(urls):
        if stop is not None and index >= stop:
            break
        if counts is not None and index + counts[i] <= start:
            index += counts[i]
            continue
        skip = max(0, start - index) if counts is not None else 0
        index += skip
        for key, members in read_samples(url, skip=skip):
            if stop is not None and index >= stop:
                break
            index += 1
            if index <= start:
                continue
            ext = next((e for e in ("png", "jpg", "jpeg", "webp") if e in members), None)
            if ext is None or "cls" not in members:
                continue
            img, _ = decode(members[ext], ext, resolution, "convert", f"{url}#{key}")
            if img is None:
                continue
            images.append(img)
            labels.append(int(members["cls"]))
            if len(images) == batch_size:
                yield torch.stack(images), torch.tensor(labels)
                images, labels = [], []
    if images:
        yield torch.stack(images), torch.tensor(labels)
