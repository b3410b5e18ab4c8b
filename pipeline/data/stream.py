"""The training data stream: shards split by rank x loader worker, decoded and batched in workers.

Each Ray Train rank builds one RankStream. Its stream is infinite (epochs repeat, batches straddle
epoch ends), so every rank yields batches for as long as the loop asks: with a fixed number of
steps, uneven shard sizes cannot make one rank stop early and hang DDP.

Exact resume rests on three facts: a worker's sample order is a pure function of
(seed, rank, worker, epoch) and the shard contents; each batch reports how many samples its worker
has consumed; and DataLoader hands out batches round-robin over workers in a fixed order.

What a sample must hold is declared as fields (pipeline/data/fields.py): by default an image and a
`.cls` label. A sample lacking a required field is a bad sample (the bad_samples policy applies);
a pass over the rank's shards that yields no usable sample at all raises DataError rather than
looping over the shards forever.
"""
from __future__ import annotations

import dataclasses
import itertools
import logging
import warnings
from dataclasses import dataclass, field
from typing import Iterator

import numpy as np
import torch
from torch.utils.data import DataLoader, IterableDataset, get_worker_info
from torchvision.io import decode_image, decode_jpeg, decode_png, decode_webp
from torchvision.transforms.v2 import functional as TF

import pipeline.data.netio as netio
from pipeline.data.fields import (DEFAULT_FIELDS, Field, Image, Label, Text, describe,  # noqa: F401
                                  member, validate)
from pipeline.data.shards import (DataError, count_samples, load_manifest, read_samples,  # noqa: F401
                                  resolve_shards, shard_keys, write_shards)

log = logging.getLogger(__name__)
# torchvision 0.29 warns on every decode call that decoding moves to TorchCodec (not installed
# here); the decoders still work and are the fastest we have.
warnings.filterwarnings("ignore", message="The image decoding and encoding capabilities of TorchVision")

POLICIES = ("convert", "skip", "strict")
_DRAW_CHUNK = 4096  # shuffle-buffer slots are drawn in blocks of this size, live and on replay
_MAX_BAD_KEYS = 5   # "url#key" of skipped samples a batch carries
_INT64 = (-(1 << 63), (1 << 63) - 1)


@dataclass
class Batch:
    # One entry per declared field, in declaration order: Image -> uint8 [B, 3, R, R] (to_float()
    # in the consumer: 4x fewer bytes over IPC; all zeros where optional and missing), Label ->
    # int64 [B] (-1 where optional and missing), Text -> list of B str ("" where optional and missing).
    fields: dict[str, torch.Tensor | list[str]]
    position: dict        # picklable resume state of this rank's stream after this batch
    n_skipped: int        # bad samples skipped while producing this batch
    n_converted: int      # samples with a grey/RGBA/16-bit image converted to RGB in this batch
    bad_keys: list[str]   # up to 5 "shard_url#key" of skipped samples
    n_retries: int = 0            # network retries of remote shards while producing this batch
    n_skipped_shards: int = 0     # remote shards given up on (rest skipped) after their retries
    bad_shards: list[str] = field(default_factory=list)  # why, one line per shard given up on

    @property
    def images(self) -> torch.Tensor | None:
        """The first Image field (uint8 [B, 3, R, R]), None if no Image field was declared."""
        return next((v for v in self.fields.values() if isinstance(v, torch.Tensor) and v.ndim == 4), None)

    @property
    def labels(self) -> torch.Tensor | None:
        """The "cls" field (int64 [B] with the default fields), None if not declared."""
        return self.fields.get("cls")


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


_EXT_KINDS = {"jpg": "jpeg", "jpeg": "jpeg", "png": "png", "webp": "webp"}
_DECODERS = {"jpeg": decode_jpeg, "png": decode_png, "webp": decode_webp, "other": decode_image}


def image_kind(data: bytes, ext: str) -> str:
    """"jpeg", "png", "webp" from the bytes' signature, else from the member name's last
    extension ("target.jpg" -> jpeg), else "other" (torchvision's decode_image guesses)."""
    head = data[:12]
    if head[:2] == b"\xff\xd8":
        return "jpeg"
    if head[:8] == b"\x89PNG\r\n\x1a\n":
        return "png"
    if head[:4] == b"RIFF" and head[8:12] == b"WEBP":
        return "webp"
    return _EXT_KINDS.get(ext.rsplit(".", 1)[-1], "other")


def decode_many(items: list[tuple[bytes, str, str]], resolution: int,
                policy: str) -> list[tuple[torch.Tensor | None, bool]]:
    """[(encoded bytes, ext or member name, "url#key")] -> [(uint8 [3, R, R] or None if skipped,
    converted?)]. JPEG, PNG, WebP (and whatever else torchvision decodes), told apart by their
    bytes. Raises DataError naming url#key under the strict policy."""
    bufs = [torch.frombuffer(bytearray(data), dtype=torch.uint8) if data else None  # writable
            for data, _, _ in items]
    kinds = [image_kind(data, ext) for data, ext, _ in items]
    jpegs = [i for i, k in enumerate(kinds) if k == "jpeg" and bufs[i] is not None]
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
    for buf, img, kind, (_, ext, where) in zip(bufs, decoded, kinds, items):
        if img is None:
            try:
                if buf is None:
                    raise RuntimeError("empty member")
                img = _DECODERS[kind](buf)
                if img.ndim == 4:  # an animated image (GIF via decode_image): its first frame
                    img = img[0]
            except (RuntimeError, ValueError) as e:
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


def _watch_window(shuffle_buffer: int) -> int:
    """Epochs of per-epoch bookkeeping kept: with tiny shards a shuffle buffer mixes samples of
    many epochs, and an epoch is judged only once all its samples left the buffer."""
    return 64 + 4 * shuffle_buffer


class _PassWatch:
    """Notices an epoch of one worker whose samples all came out unusable.

    raw() records each epoch's sample count when it ends; the batch loop reports every sample it
    got from the shuffle buffer as usable or not. An epoch is dead once as many unusable samples
    of it came out as it holds (a resumed, part-read first epoch never qualifies). Bookkeeping
    for epochs older than the window is dropped, which can only delay a verdict, never fake one.
    """

    def __init__(self, sizes: dict[int, int], window: int):
        self.sizes, self.window = sizes, window
        self.bad: dict[int, int] = {}
        self.settled: set[int] = set()  # epochs with a usable sample (or already reported)
        self.newest = self.floor = None

    def _advance(self, epoch: int) -> None:
        if self.newest is None:
            self.floor = epoch
        self.newest = epoch
        while self.floor < epoch - self.window:
            self.bad.pop(self.floor, None)
            self.settled.discard(self.floor)
            self.floor += 1

    def usable(self, epoch: int) -> None:
        if self.newest is None or epoch > self.newest:
            self._advance(epoch)
        self.settled.add(epoch)

    def unusable(self, epoch: int) -> int | None:
        """Count one unusable sample of `epoch`; -> an epoch that just turned out dead, or None."""
        if self.newest is None or epoch > self.newest:
            self._advance(epoch)
        if epoch < self.floor:
            return None
        self.bad[epoch] = self.bad.get(epoch, 0) + 1
        # Without a shuffle buffer an epoch's size is known only once the next epoch started.
        for e in (epoch - 1, epoch):
            if e not in self.settled and e in self.sizes and self.bad.get(e) == self.sizes[e]:
                self.settled.add(e)
                return e
        return None


def _draws(seed: int, rank: int, worker: int, base_epoch: int, size: int) -> Iterator[list[int]]:
    """Blocks of shuffle-buffer slot draws; identical on the live path and on resume replay."""
    rng = np.random.default_rng([seed, rank, worker, base_epoch, 1])
    while True:
        yield rng.integers(0, size, _DRAW_CHUNK).tolist()


class _WorkerStream:
    """One logical worker: raw samples of its shards, epoch after epoch, through a shuffle buffer."""

    def __init__(self, rank_urls, counts, *, seed, rank, worker, nw, shuffle_buffer,
                 policy="convert", budget=None):
        self.rank_urls, self.counts = rank_urls, counts
        self.policy, self.budget = policy, budget
        self.tally = netio.Tally()          # retries and skipped shards, read per batch
        self.shard_errors: list[str] = []   # one line per shard given up on, taken per batch
        self.seed, self.rank, self.worker, self.nw = seed, rank, worker, nw
        self.size = shuffle_buffer
        # epoch -> samples raw() read in it, recorded once its last shard is done (recent ones only)
        self.sizes: dict[int, int] = {}
        self.window = _watch_window(shuffle_buffer)

    def raw(self, base_epoch: int, skip: int) -> Iterator[tuple[int, str, str, dict]]:
        """(epoch, url, key, members) forever from the start of base_epoch, minus `skip` samples."""
        for epoch in itertools.count(base_epoch):
            shards = epoch_shards(self.rank_urls, self.seed, self.rank, epoch)[self.worker::self.nw]
            n_epoch, given_up = 0, 0
            for url in shards:
                read = 0
                try:
                    n = self.counts.get(url) if self.counts else None
                    if skip and n is None:
                        n = count_samples(url, self.budget, self.tally)
                    if n is not None and skip >= n:  # fast-forward over whole shards
                        skip -= n
                        n_epoch += n
                        continue
                    for key, members in read_samples(url, skip=skip, budget=self.budget, tally=self.tally):
                        n_epoch += 1
                        read += 1
                        yield epoch, url, key, members
                    n_epoch += skip
                except netio.ShardUnreadable as e:
                    # Retries exhausted: like a bad sample, strict fails and the others go on
                    # without the rest of this shard (counted and named, see RankStream).
                    if self.policy == "strict":
                        raise
                    self.tally.skipped_shards += 1
                    given_up += 1
                    self.shard_errors.append(f"{e}; skipped the rest of it ({read} samples read)")
                skip = 0
            self.sizes[epoch] = n_epoch
            self.sizes.pop(epoch - self.window, None)
            if n_epoch == 0:
                why = f" ({given_up} unreadable, see the warnings)" if given_up else ""
                raise DataError(f"rank {self.rank} worker {self.worker}: shards {shards} hold no samples{why}")

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
                 policy, starts, first, fields, budget=None):
        self.rank_urls, self.counts, self.rank, self.nw, self.seed = rank_urls, counts, rank, nw, seed
        self.shuffle_buffer, self.batch_size, self.resolution, self.policy = (
            shuffle_buffer, batch_size, resolution, policy)
        self.starts, self.first = starts, first
        self.fields, self.budget = fields, budget
        # (slot, name, kind, members, optional, reads .json?) per field, in declaration order
        self._plan = [(i, name, type(f), f.members, f.optional, any(m.startswith("json:") for m in f.members))
                      for i, (name, f) in enumerate(fields.items())]

    def __iter__(self):
        info = get_worker_info()
        w = ((info.id if info else 0) + self.first) % self.nw
        base_epoch, consumed = self.starts[w]
        stream = _WorkerStream(self.rank_urls, self.counts, seed=self.seed, rank=self.rank, worker=w,
                               nw=self.nw, shuffle_buffer=self.shuffle_buffer, policy=self.policy,
                               budget=self.budget)
        watch = _PassWatch(stream.sizes, stream.window)
        seen = netio.Tally()
        dead: set[str] = set()   # shards known to hold no usable sample
        self._blank = torch.zeros(3, self.resolution, self.resolution, dtype=torch.uint8)
        samples = stream.samples(base_epoch, consumed)
        names = [name for _, name, *_ in self._plan]
        while True:
            # Take exactly as many samples as the batch still lacks and decode them together; the
            # batch therefore ends on the same sample as a one-by-one loop would (exact resume).
            columns = [[] for _ in names]
            n, skipped, converted, bad = 0, 0, 0, []

            def reject(ep, url, key, members, why):
                """Count a sample that cannot be used; raise once a whole pass found none usable."""
                nonlocal skipped
                skipped += 1
                if len(bad) < _MAX_BAD_KEYS:
                    bad.append(f"{url}#{key}")
                dead_epoch = watch.unusable(ep)
                if dead_epoch is not None:
                    self._dead_pass(stream, dead_epoch, dead, (url, key, members, why))
            while n < self.batch_size:
                todo, items = [], []
                for _ in range(self.batch_size - n):
                    epoch, url, key, members = next(samples)
                    consumed += 1
                    parsed = self._parse(url, key, members)
                    if not isinstance(parsed, str):
                        values, images = parsed
                        todo.append((epoch, url, key, members, values, images))
                        items.extend(item for _, item in images)
                        continue
                    reject(epoch, url, key, members, parsed)
                decoded = iter(decode_many(items, self.resolution, self.policy) if items else ())
                for ep, u, k, m, values, images in todo:  # not `epoch`: state reports the last read
                    ok, conv = True, False
                    for slot, (_, ext, _) in images:
                        img, c = next(decoded)
                        if img is None:
                            ok, why = False, f"field {names[slot]!r}: its {ext} image is undecodable " \
                                             f"or not RGB under bad_samples={self.policy!r}"
                        else:
                            values[slot] = img
                            conv = conv or c
                    if ok:
                        for column, value in zip(columns, values):
                            column.append(value)
                        n += 1
                        converted += conv
                        watch.usable(ep)
                        continue
                    reject(ep, u, k, m, why)
            state = {"worker": w, "base_epoch": base_epoch, "consumed": consumed, "epoch": epoch}
            # Network counts since the last batch (the tally itself stays: open readers add to it).
            net = (stream.tally.retries - seen.retries, stream.tally.skipped_shards - seen.skipped_shards,
                   stream.shard_errors)
            seen, stream.shard_errors = dataclasses.replace(stream.tally), []
            out = {}
            for (_, name, kind, *_), column in zip(self._plan, columns):
                out[name] = (torch.stack(column) if kind is Image else
                             torch.tensor(column, dtype=torch.int64) if kind is Label else column)
            yield out, state, skipped, converted, bad, net

    def _parse(self, url, key, members):
        """-> ([value per field, None for images still to decode], [(slot, (bytes, member,
        "url#key"))] images to decode), or a str saying why the sample is unusable (under the
        strict policy a DataError naming url#key instead)."""
        values, images, cache = [], [], {}
        for slot, name, kind, names, optional, reads_json in self._plan:
            raw = found = None
            if reads_json:
                try:
                    for m in names:
                        raw = member(members, m, cache)
                        if raw is not None:
                            found = m
                            break
                except ValueError as e:
                    return self._bad(url, key, members, f"field {name!r}: {e}")
            else:
                for m in names:
                    raw = members.get(m)
                    if raw is not None:
                        found = m
                        break
            if raw is None:
                if not optional:
                    return self._bad(url, key, members,
                                     f"missing required field {name!r} ({'|'.join(names)})")
                values.append(self._blank if kind is Image else -1 if kind is Label else "")
            elif kind is Image:
                values.append(None)
                images.append((slot, (raw, found, f"{url}#{key}")))
            elif kind is Label:
                label = _as_int(raw)
                if label is None:
                    return self._bad(url, key, members,
                                     f"field {name!r}: {found} is not an integer label ({raw!r:.40})")
                values.append(label)
            else:
                if isinstance(raw, bytes):
                    try:
                        raw = raw.decode("utf-8")
                    except UnicodeDecodeError:
                        return self._bad(url, key, members, f"field {name!r}: {found} is not utf-8 text")
                elif not isinstance(raw, str):
                    return self._bad(url, key, members,
                                     f"field {name!r}: {found} is not text ({raw!r:.40})")
                values.append(raw)
        return values, images

    def _bad(self, url, key, members, why):
        if self.policy == "strict":
            raise DataError(f"{url}#{key}: {why}; members: {sorted(members)}; "
                            f"fields: {describe(self.fields)}")
        return why

    def _usable(self, url, key, members) -> str | None:
        """None if this sample would go into a batch, else why not (decodes its images)."""
        parsed = self._parse(url, key, members)
        if isinstance(parsed, str):
            return parsed
        _, images = parsed
        results = decode_many([item for _, item in images], self.resolution, self.policy) if images else []
        for (slot, (_, ext, _)), (img, _) in zip(images, results):
            if img is None:
                return (f"field {self._plan[slot][1]!r}: its {ext} image is undecodable or not RGB "
                        f"under bad_samples={self.policy!r}")
        return None

    def _dead_pass(self, stream, epoch, dead, example):
        """A whole epoch of this worker gave no usable sample. Other workers may read better
        shards, so check the rank's other shards for one usable sample (once per shard); if none
        has one, no batch can ever be made: raise instead of looping over the shards forever."""
        dead.update(epoch_shards(self.rank_urls, self.seed, self.rank, epoch)[stream.worker::stream.nw])
        for url in self.rank_urls:
            if url in dead:
                continue
            try:
                for key, members in read_samples(url, budget=self.budget):
                    why = self._usable(url, key, members)
                    if why is None:
                        return
                    if example is None:
                        example = (url, key, members, why)
            except netio.ShardUnreadable:
                pass  # unreadable now: no usable sample from it either
            dead.add(url)
        url, key, members, why = example
        shards = ", ".join(self.rank_urls[:3]) + (f", ... ({len(self.rank_urls)} in all)"
                                                   if len(self.rank_urls) > 3 else "")
        raise DataError(
            f"rank {self.rank}: no usable sample in a whole pass over its shards ({shards}) with "
            f"bad_samples={self.policy!r}. E.g. shard {url}, sample key {key!r}: members "
            f"{sorted(members)}, but the fields need {describe(self.fields)} ({why}). Declare fields "
            f"the shards hold (e.g. fields={{'image': Image()}} for images without labels).")


def _as_int(value) -> int | None:
    """An int64 label from b"3", "3", 3 or 3.0; None for anything else (bool included)."""
    if isinstance(value, bool):
        return None
    if isinstance(value, float):
        value = int(value) if value.is_integer() else None
    elif isinstance(value, (bytes, str)):
        try:
            value = int(value)
        except ValueError:
            return None
    elif not isinstance(value, int):
        return None
    return value if value is not None and _INT64[0] <= value <= _INT64[1] else None


class RankStream:
    """Infinite, resumable stream of Batch for one rank. Shards: urls[rank::world_size].

    counts: optional samples per url (aligned with urls, e.g. [s["count"] for s in
    manifest["shards"]]); it lets resume skip whole shards without opening them.
    position: a Batch.position from an earlier stream, to continue exactly after that batch.
    fields: what to read from each sample, {name: Image() | Label() | Text()} (pipeline/data/
    fields.py); None -> DEFAULT_FIELDS, an image and a required `.cls` label. Batch.fields holds
    one entry per field. A sample lacking a required field is a bad sample (bad_samples policy);
    if a whole pass over the rank's shards finds no usable sample, the stream raises DataError.
    budget: netio.Budget for remote shards (None = its defaults). A remote shard still failing
    after its retries is skipped for the rest of that pass (Batch.n_skipped_shards, a warning
    naming it) or, under bad_samples="strict", raises DataError naming shard, cause and attempts.
    A skipped shard makes that pass shorter, so a later resume of it is no longer exact.
    """

    def __init__(self, urls, *, rank, world_size, batch_size, resolution, loader_workers, seed,
                 shuffle_buffer=256, bad_samples="convert", position=None, counts=None, fields=None,
                 budget=None):
        if bad_samples not in POLICIES:
            raise DataError(f"bad_samples={bad_samples!r}: use one of {POLICIES}")
        fields = validate(fields)  # FieldError, a DataError, on a declaration that cannot work
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
                                resolution=resolution, policy=bad_samples, starts=starts, first=self._next,
                                fields=fields, budget=budget)
        loader = DataLoader(dataset, batch_size=None, num_workers=nw if loader_workers > 0 else 0)
        self._it = iter(loader)

    def __iter__(self):
        return self

    def __next__(self) -> Batch:
        if self._it is None:
            raise RuntimeError("RankStream is closed")
        try:
            fields, state, skipped, converted, bad, (retries, given_up, why) = next(self._it)
        except DataError as e:
            self.close()  # a data error ends the stream; don't leave its workers running
            # From a loader process DataLoader prepends "Caught DataError in DataLoader worker
            # process N." and the worker's traceback: keep the one line that names the problem.
            msg = str(e)
            if msg.startswith("Caught "):
                msg = msg.rstrip().splitlines()[-1].split(f"{type(e).__name__}: ", 1)[-1]
            raise type(e)(msg) from None
        except BaseException:
            self.close()
            raise
        w = state.pop("worker")
        self._workers[w] = state
        self._next = (w + 1) % self._meta["num_workers"]
        position = {**self._meta, "next": self._next, "workers": [dict(s) for s in self._workers]}
        for line in why:
            log.warning("rank %d: %s", self._meta["rank"], line)
        return Batch(fields, position, skipped, converted, list(bad), retries, given_up, list(why))

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
