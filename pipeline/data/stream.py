"""The training data stream: shards split by rank x loader worker, decoded and batched in workers.

Each Ray Train rank builds one RankStream. Its stream is infinite (epochs repeat, batches straddle
epoch ends), so every rank yields batches for as long as the loop asks: with a fixed number of
steps, uneven shard sizes cannot make one rank stop early and hang DDP.

Exact resume rests on three facts: a worker's sample order is a pure function of
(seed, rank, worker, epoch) and the shard contents; each batch reports how many samples its worker
has consumed; and DataLoader hands out batches round-robin over workers in a fixed order.
"""
from __future__ import annotations

import itertools
import logging
import warnings
from dataclasses import dataclass
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import decode_jpeg, decode_png
from torchvision.transforms.v2 import functional as TF

from pipeline.data.shards import (DataError, count_samples, load_manifest, read_samples,  # noqa: F401
                             resolve_shards, shard_keys, write_shards)

log = logging.getLogger(__name__)
# torchvision 0.29 warns on every decode call that decoding moves to TorchCodec (not installed
# here); the decoders still work and are the fastest we have.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

POLICIES = ("convert", "skip", "strict")
_DRAW_CHUNK = 4096  # shuffle-buffer slots are drawn in blocks of this size, live and on replay


@dataclass
class Batch:
    images: torch.Tensor  # uint8 [B, 3, R, R]; to_float() in the consumer (4x fewer bytes over IPC)
    labels: torch.Tensor  # int64 [B]
    position: dict        # picklable resume state of this rank's stream after this batch
    n_skipped: int        # bad samples skipped while producing this batch
    n_converted: int      # grey/RGBA samples converted to RGB while producing this batch
    bad_keys: list[str]   # up to 5 "shard_url#key" of skipped samples


def to_float(images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 [0, 255] -> float32 [-1, 1]."""
    return images_uint8.to(torch.float32).div_(127.5).sub_(1.0)


def _fix(img: torch.Tensor, resolution: int, policy: str, where: str) -> tuple[torch.Tensor | None, bool]:
    """Decoded image -> (uint8 [3, R, R] or None if skipped, converted?), applying the policy."""
    converted = img.shape[0] != 3 or img.dtype != torch.uint8
    if converted:
        if policy == "strict":
            raise DataError(f"{where}: image has {img.shape[0]} channels ({img.dtype}), not RGB uint8")
        if policy == "skip":
            return None, False
        if img.dtype != torch.uint8:  # 16-bit PNG
            img = (img.to(torch.int32) >> 8).to(torch.uint8)
        img = img[:1].expand(3, -1, -1) if img.shape[0] < 3 else img[:3]  # grey(+alpha) / RGBA
    if img.shape[1] != resolution or img.shape[2] != resolution:
        img = TF.center_crop(TF.resize(img, resolution, antialias=True), resolution)
    return img, converted


def decode_many(items: list[tuple[bytes, str, str]], resolution: int,
                policy: str) -> list[tuple[torch.Tensor | None, bool]]:
    """[(encoded bytes, ext, "url#key")] -> [(uint8 [3, R, R] or None if skipped, converted?)].
    Raises DataError naming url#key under the strict policy."""
    bufs = [torch.frombuffer(bytearray(data), dtype=torch.uint8) for data, _, _ in items]  # writable
    jpegs = [i for i, (_, ext, _) in enumerate(items) if ext != "png"]
    decoded = [None] * len(items)
    if jpegs:
        try:
            # One call for all JPEGs: torchvision's per-call Python wrapper costs about as much
            # as a sixth of a 64 px decode.
            for i, img in zip(jpegs, decode_jpeg([bufs[i] for i in jpegs])):
                decoded[i] = img
        except RuntimeError:
            pass  # a corrupt one among them: the loop below decodes them one by one
    out = []
    for buf, img, (_, ext, where) in zip(bufs, decoded, items):
        if img is None:
            try:
                img = decode_png(buf) if ext == "png" else decode_jpeg(buf)
            except RuntimeError as e:
                if policy == "strict":
                    raise DataError(f"{where}: undecodable {ext} image: {e}") from e
                out.append((None, False))
                continue
        out.append(_fix(img, resolution, policy, where))
    return out


def decode(data: bytes, ext: str, resolution: int, policy: str,
           where: str) -> tuple[torch.Tensor | None, bool]:
    """One encoded image -> (uint8 [3, R, R] or None if skipped, converted?)."""
    return decode_many([(data, ext, where)], resolution, policy)[0]


def epoch_shards(rank_urls: list[str], seed: int, rank: int, epoch: int) -> list[str]:
    """The rank's shards in the order of one epoch; worker w of nw reads [w::nw] of it."""
    order = np.random.default_rng([seed, rank, epoch]).permutation(len(rank_urls))
    return [rank_urls[i] for i in order]


def num_workers(n_rank_shards: int, loader_workers: int) -> int:
    """Logical workers per rank: never more than shards, so none is empty; 0 workers = 1 in-process."""
    return max(1, min(loader_workers, n_rank_shards))


def epoch_assignment(urls: list[str], world_size: int, loader_workers: int, seed: int,
                     epoch: int = 0) -> dict[tuple[int, int], list[str]]:
    """Which shards each (rank, worker) reads in one epoch."""
    out = {}
    for rank in range(world_size):
        rank_urls = urls[rank::world_size]
        nw = num_workers(len(rank_urls), loader_workers)
        order = epoch_shards(rank_urls, seed, rank, epoch)
        out.update({(rank, w): order[w::nw] for w in range(nw)})
    return out


def _draws(seed: int, rank: int, worker: int, base_epoch: int, size: int) -> Iterator[list[int]]:
    """Blocks of shuffle-buffer slot draws; identical on the live path and on resume replay."""
    rng = np.random.default_rng([seed, rank, worker, base_epoch, 1])
    while True:
        yield rng.integers(0, size, _DRAW_CHUNK).tolist()


class _WorkerStream:
    """One logical worker: raw samples of its shards, epoch after epoch, through a shuffle buffer."""

    def __init__(self, rank_urls, counts, *, seed, rank, worker, nw, shuffle_buffer):
        self.rank_urls, self.counts = rank_urls, counts
        self.seed, self.rank, self.worker, self.nw = seed, rank, worker, nw
        self.size = shuffle_buffer

    def raw(self, base_epoch: int, skip: int) -> Iterator[tuple[int, str, str, dict]]:
        """(epoch, url, key, members) forever from the start of base_epoch, minus `skip` samples."""
        for epoch in itertools.count(base_epoch):
            shards = epoch_shards(self.rank_urls, self.seed, self.rank, epoch)[self.worker::self.nw]
            n_epoch = 0
            for url in shards:
                n = self.counts.get(url) if self.counts else None
                if skip and n is None:
                    n = count_samples(url)
                if n is not None and skip >= n:  # fast-forward over whole shards
                    skip -= n
                    n_epoch += n
                    continue
                for key, members in read_samples(url, skip=skip):
                    n_epoch += 1
                    yield epoch, url, key, members
                n_epoch += skip
                skip = 0
            if n_epoch == 0:
                raise DataError(f"rank {self.rank} worker {self.worker}: shards {shards} hold no samples")

    def samples(self, base_epoch: int, consumed: int) -> Iterator[tuple[int, str, str, dict]]:
        """Shuffled samples, continuing after `consumed` samples were already handed out."""
        if self.size == 0:
            yield from self.raw(base_epoch, consumed)
            return
        draws = _draws(self.seed, self.rank, self.worker, base_epoch, self.size)
        block, i = [], 0
        if consumed == 0:
            buf, raw = [], self.raw(base_epoch, 0)
        else:
            # Replay the buffer on sample indices: slot s was last filled by raw sample
            # size + t for the last draw t that hit s. Re-read just those, without decoding.
            blocks = [next(draws) for _ in range((consumed + _DRAW_CHUNK - 1) // _DRAW_CHUNK)]
            hits = np.concatenate(blocks)[:consumed]
            last = np.full(self.size, -1)
            np.maximum.at(last, hits, np.arange(consumed))
            filled_by = np.where(last >= 0, last + self.size, np.arange(self.size))
            slot_of = {int(j): s for s, j in enumerate(filled_by)}
            start, read_to = min(slot_of), self.size + consumed
            buf, raw = [None] * self.size, self.raw(base_epoch, start)
            for j, item in zip(range(start, read_to), raw):
                if j in slot_of:
                    buf[slot_of[j]] = item
            block, i = blocks[-1], consumed % _DRAW_CHUNK or _DRAW_CHUNK
        for item in raw:
            if len(buf) < self.size:
                buf.append(item)
                continue
            if i == len(block):
                block, i = next(draws), 0
            slot = block[i]
            i += 1
            out, buf[slot] = buf[slot], item
            yield out


class _ShardDataset(IterableDataset):
    """Runs inside each DataLoader worker; physical worker p plays logical worker (p + first) % nw."""

    def __init__(self, rank_urls, counts, *, rank, nw, seed, shuffle_buffer, batch_size, resolution,
                 policy, starts, first):
        self.rank_urls, self.counts, self.rank, self.nw, self.seed = rank_urls, counts, rank, nw, seed
        self.shuffle_buffer, self.batch_size, self.resolution, self.policy = (
            shuffle_buffer, batch_size, resolution, policy)
        self.starts, self.first = starts, first

    def __iter__(self):
        info = get_worker_info()
        w = ((info.id if info else 0) + self.first) % self.nw
        base_epoch, consumed = self.starts[w]
        stream = _WorkerStream(self.rank_urls, self.counts, seed=self.seed, rank=self.rank, worker=w,
                               nw=self.nw, shuffle_buffer=self.shuffle_buffer)
        samples = stream.samples(base_epoch, consumed)
        while True:
            # Take exactly as many samples as the batch still lacks and decode them together; the
            # batch therefore ends on the same sample as a one-by-one loop would (exact resume).
            images, labels, skipped, converted, bad = [], [], 0, 0, []
            while len(images) < self.batch_size:
                todo, todo_labels = [], []
                for _ in range(self.batch_size - len(images)):
                    epoch, url, key, members = next(samples)
                    consumed += 1
                    item = self._parse(url, key, members)
                    if item is None:
                        skipped += 1
                        bad.append(f"{url}#{key}")
                    else:
                        todo.append(item[:3])
                        todo_labels.append(item[3])
                for (img, conv), label, (_, _, where) in zip(
                        decode_many(todo, self.resolution, self.policy), todo_labels, todo):
                    if img is None:
                        skipped += 1
                        bad.append(where)
                    else:
                        images.append(img)
                        labels.append(label)
                        converted += conv
            state = {"worker": w, "base_epoch": base_epoch, "consumed": consumed, "epoch": epoch}
            yield torch.stack(images), torch.tensor(labels), state, skipped, converted, bad[:5]

    def _parse(self, url, key, members):
        """-> (bytes, ext, "url#key", label), or None for a sample without label or image."""
        where = f"{url}#{key}"
        ext = next((e for e in ("jpg", "jpeg", "png") if e in members), None)
        try:
            label = int(members["cls"])
        except (KeyError, ValueError):
            if self.policy == "strict":
                raise DataError(f"{where}: missing or non-integer .cls label "
                                f"({members.get('cls')!r:.40})") from None
            return None
        if ext is None:
            if self.policy == "strict":
                raise DataError(f"{where}: no .jpg/.jpeg/.png image (members: {sorted(members)})")
            return None
        return members[ext], ext, where, label


class RankStream:
    """Infinite, resumable stream of Batch for one rank. Shards: urls[rank::world_size].

    counts: optional samples per url (aligned with urls, e.g. [s["count"] for s in
    manifest["shards"]]); it lets resume skip whole shards without opening them.
    position: a Batch.position from an earlier stream, to continue exactly after that batch.
    """

    def __init__(self, urls, *, rank, world_size, batch_size, resolution, loader_workers, seed,
                 shuffle_buffer=256, bad_samples="convert", position=None, counts=None):
        if bad_samples not in POLICIES:
            raise DataError(f"bad_samples={bad_samples!r}: use one of {POLICIES}")
        if not urls:
            raise DataError("no shards given")
        rank_urls = list(urls)[rank::world_size]
        if not rank_urls:
            raise DataError(f"{len(urls)} shards cannot feed {world_size} ranks; write at least "
                            f"{world_size} shards (lower shard_size) or train on fewer ranks")
        if counts is not None and len(counts) != len(urls):
            raise DataError(f"{len(counts)} shard counts for {len(urls)} shards")
        counts = dict(zip(urls, counts)) if counts is not None else None
        nw = num_workers(len(rank_urls), loader_workers)
        self._meta = {"rank": rank, "world_size": world_size, "num_workers": nw, "seed": seed,
                      "shuffle_buffer": shuffle_buffer, "n_shards": len(urls)}
        self._workers = [{"base_epoch": 0, "consumed": 0, "epoch": 0} for _ in range(nw)]
        self._next = 0
        if position is not None:
            saved = {k: position.get(k) for k in self._meta}
            if saved == self._meta:
                self._workers, self._next = [dict(w) for w in position["workers"]], position["next"]
            else:
                epoch = min(w["epoch"] for w in position["workers"])
                log.warning("data position was saved with %s, now %s: restarting at the start of "
                            "epoch %d", saved, self._meta, epoch)
                self._workers = [{"base_epoch": epoch, "consumed": 0, "epoch": epoch} for _ in range(nw)]
        starts = [(w["base_epoch"], w["consumed"]) for w in self._workers]
        dataset = _ShardDataset(rank_urls, counts, rank=rank, nw=nw, seed=seed,
                                shuffle_buffer=shuffle_buffer, batch_size=batch_size,
                                resolution=resolution, policy=bad_samples, starts=starts, first=self._next)
        loader = DataLoader(dataset, batch_size=None, num_workers=nw if loader_workers > 0 else 0)
        self._it = iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            raise RuntimeError("RankStream is closed")
        try:
            images, labels, state, skipped, converted, bad = next(self._it)
        except BaseException:
            self.close()  # a data error ends the stream; don't leave its workers running
            raise
        w = state.pop("worker")
        self._workers[w] = state
        self._next = (w + 1) % self._meta["num_workers"]
        position = {**self._meta, "next": self._next, "workers": [dict(s) for s in self._workers]}
        return Batch(images, labels, position, skipped, converted, list(bad))

    def close(self):
        it, self._it = self._it, None
        # Shut workers down now rather than when the iterator is garbage: a traceback can keep it
        # alive until a GC pass, and a shutdown run from the GC waits 5 s per worker.
        # _shutdown_workers is the hook DataLoader's own __del__ calls.
        if hasattr(it, "_shutdown_workers"):
            it._shutdown_workers()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()
