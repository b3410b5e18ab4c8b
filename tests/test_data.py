"""Shards and the rank stream, on real shards written into tmp_path."""
from __future__ import annotations

import functools
import hashlib
import http.server
import io
import json
import logging
import pickle
import threading

import numpy as np
import pytest
import torch
from PIL import Image
from webdataset.writer import TarWriter

from pipeline.data import (Batch, DataError, RankStream, decode, epoch_assignment, load_manifest,
                           read_samples, resolve_shards, shard_keys, to_float, write_shards)
from pipeline.data.datasets import shapestack

UNEVEN = [5, 9, 3, 12, 7, 4, 11]  # 51 samples in 7 shards; rank 0 of 2 gets 26, rank 1 gets 25


def _png(array: np.ndarray) -> bytes:
    out = io.BytesIO()
    Image.fromarray(array).save(out, "PNG")
    return out.getvalue()


def _write_uneven(root, counts=UNEVEN, resolution=16):
    """One shard per count; label = global sample index, so labels identify samples."""
    images, _ = shapestack.generate(sum(counts), resolution, seed=0)
    urls, start = [], 0
    for i, n in enumerate(counts):
        m = write_shards(((f"s{j:04d}", images[j], j) for j in range(start, start + n)), root / f"part{i}",
                         resolution=resolution, classes=[str(j) for j in range(sum(counts))],
                         source="test", shard_size=n)
        urls.append(str(root / f"part{i}" / m["shards"][0]["name"]))
        start += n
    return urls, images


def _stream(urls, **kw):
    args = dict(rank=0, world_size=1, batch_size=4, resolution=16, loader_workers=0, seed=0,
                shuffle_buffer=0)
    return RankStream(urls, **{**args, **kw})


def _take(stream, n):
    with stream:
        return [next(stream) for _ in range(n)]


# --- writing and resolving -------------------------------------------------------------------

def test_write_read_roundtrip_and_manifest(tmp_path):
    images, glyphs = shapestack.generate(10, 16, seed=1)
    m = write_shards(((f"k{i}", images[i], int(glyphs[i, 0])) for i in range(10)), tmp_path,
                     resolution=16, classes=shapestack.CLASSES, source="unit", shard_size=4)
    assert m == {k: v for k, v in load_manifest(tmp_path).items() if k != "path"}
    assert (m["samples"], m["num_classes"], m["resolution"]) == (10, 10, 16)
    assert (m["format"], m["source"], m["classes"]) == ("png", "unit", shapestack.CLASSES)
    assert [s["count"] for s in m["shards"]] == [4, 4, 2]
    for s in m["shards"]:
        assert s["sha256"] == hashlib.sha256((tmp_path / s["name"]).read_bytes()).hexdigest()
    assert m["sha256"] == hashlib.sha256(json.dumps(m["shards"], sort_keys=True).encode()).hexdigest()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["manifest.json", "shard-000000.tar",
                                                          "shard-000001.tar", "shard-000002.tar"]

    urls, manifest = resolve_shards(str(tmp_path))
    assert manifest["sha256"] == m["sha256"] and urls == [str(tmp_path / s["name"]) for s in m["shards"]]
    got = [(k, mem) for u in urls for k, mem in read_samples(u)]
    assert [k for k, _ in got] == [f"k{i}" for i in range(10)]
    for i, (key, mem) in enumerate(got):  # PNG is lossless: exact pixels back
        img, converted = decode(mem["png"], "png", 16, "strict", key)
        assert not converted and int(mem["cls"]) == glyphs[i, 0]
        assert torch.equal(img, torch.from_numpy(images[i]).permute(2, 0, 1))

    # Same input, same bytes: the manifest sha256 fingerprints the dataset. Fewer samples -> the
    # stale third shard is removed.
    def write(n, out):
        return write_shards(((f"k{i}", images[i], 0) for i in range(n)), tmp_path / out, resolution=16,
                            classes=["a"], source="unit", shard_size=4)
    assert write(10, "b")["sha256"] == write(10, "c")["sha256"]
    write(6, "b")
    assert sorted(p.name for p in (tmp_path / "b").iterdir()) == ["manifest.json", "shard-000000.tar",
                                                                  "shard-000001.tar"]


def test_write_jpeg_and_encoded_bytes(tmp_path):
    images, glyphs = shapestack.generate(3, 32, seed=2)
    items = [("a", images[0], 0), ("b", _png(images[1]), 1), ("c", images[2], 2)]
    m = write_shards(items, tmp_path, resolution=32, classes=["x", "y", "z"], source="t", fmt="jpg")
    (key_a, a), (key_b, b), _ = list(read_samples(resolve_shards(str(tmp_path))[0][0]))
    assert set(a) == {"jpg", "cls"} and set(b) == {"png", "cls"}  # encoded bytes keep their type
    img, _ = decode(a["jpg"], "jpg", 32, "strict", key_a)
    assert (shapestack.oracle(img.permute(1, 2, 0)) == glyphs[0]).all()  # lossy, but still the same glyphs
    assert m["format"] == "jpg"


@pytest.mark.parametrize("bad, match", [
    ([("a.b", np.zeros((4, 4, 3), np.uint8), 0)], "without '.'"),
    ([("a", np.zeros((4, 4), np.uint8), 0)], "HxWx3 uint8"),
    ([("a", b"GIF89a", 0)], "neither PNG nor JPEG"),
    ([("a", np.zeros((4, 4, 3), np.uint8), 5)], "label 5"),
    ([("a", np.zeros((4, 4, 3), np.uint8), 0)] * 2, "twice"),
    ([], "no samples"),
])
def test_write_rejects_bad_samples(tmp_path, bad, match):
    with pytest.raises(DataError, match=match):
        write_shards(bad, tmp_path, resolution=4, classes=["a", "b"], source="t")


def test_resolve_specs(tmp_path, monkeypatch):
    urls, _ = _write_uneven(tmp_path, counts=[2, 3, 4])
    for i, u in enumerate(urls):  # flat names for a brace pattern
        (tmp_path / f"flat-{i:06d}.tar").write_bytes(open(u, "rb").read())
    brace, manifest = resolve_shards(f"{tmp_path}/flat-{{000000..000002}}.tar")
    assert manifest is None and brace == [str(tmp_path / f"flat-{i:06d}.tar") for i in range(3)]

    monkeypatch.chdir(tmp_path)  # relative paths come back absolute
    assert resolve_shards("flat-000001.tar")[0] == [str(tmp_path / "flat-000001.tar")]
    assert resolve_shards("part0/manifest.json")[0] == [urls[0]]

    file_url = f"file://{tmp_path}/flat-000002.tar"
    pipe_url = f"pipe:cat {tmp_path}/flat-000001.tar"
    joined, manifest = resolve_shards(f"{file_url}::{pipe_url}::{tmp_path / 'part0'}")
    assert joined == [file_url, pipe_url, urls[0]] and manifest is None
    assert shard_keys(file_url) == shard_keys(urls[2]) and shard_keys(pipe_url) == shard_keys(urls[1])
    # The whole stream over file:// and pipe: urls sees every sample.
    batches = _take(_stream([file_url, pipe_url], batch_size=7), 1)
    assert sorted(batches[0].labels.tolist()) == list(range(2, 9))

    with pytest.raises(DataError, match="matched no shards"):
        resolve_shards(" :: ")
    with pytest.raises(DataError, match="missing-000003.tar"):
        resolve_shards(f"{tmp_path}/flat-000000.tar::{tmp_path}/missing-000003.tar")
    with pytest.raises(DataError, match="nothing-here does not exist"):
        resolve_shards(str(tmp_path / "nothing-here"))
    (tmp_path / "empty").mkdir()
    with pytest.raises(DataError, match="no manifest"):
        resolve_shards(str(tmp_path / "empty"))


def test_http_url_reads_like_a_local_path(tmp_path):
    urls, _ = _write_uneven(tmp_path, counts=[6])
    handler = functools.partial(http.server.SimpleHTTPRequestHandler, directory=str(tmp_path))
    handler.log_message = lambda *a: None
    with http.server.ThreadingHTTPServer(("127.0.0.1", 0), handler) as server:
        threading.Thread(target=server.serve_forever, daemon=True).start()
        base = f"http://127.0.0.1:{server.server_address[1]}"
        http_urls, _ = resolve_shards(f"{base}/part0/{{shard-000000,shard-000000}}.tar")
        assert shard_keys(http_urls[0]) == shard_keys(urls[0])
        batch = _take(_stream(http_urls, batch_size=12), 1)[0]
        assert sorted(batch.labels.tolist()) == sorted(list(range(6)) * 2)
        with pytest.raises(DataError, match="missing.tar"):
            shard_keys(f"{base}/missing.tar")
        server.shutdown()


# --- splitting across ranks and loader workers -----------------------------------------------

def test_ranks_and_workers_read_disjoint_shards_covering_the_data(tmp_path):
    urls, _ = _write_uneven(tmp_path)
    for epoch in (0, 1):
        plan = epoch_assignment(urls, world_size=2, loader_workers=2, seed=5, epoch=epoch)
        assert sorted(plan) == [(0, 0), (0, 1), (1, 0), (1, 1)] and all(plan.values())
        keys = [k for shards in plan.values() for u in shards for k in shard_keys(u)]
        assert sorted(keys) == [f"s{j:04d}" for j in range(sum(UNEVEN))]  # each key exactly once

    # The real streams follow the plan: with batch_size 1 the DataLoader alternates workers, so
    # even batches are worker 0's samples and odd ones worker 1's, in shard order for epoch 0.
    plan = epoch_assignment(urls, world_size=2, loader_workers=2, seed=5)
    seen = {}
    for rank in (0, 1):
        labels = [b.labels.item() for b in _take(_stream(urls, rank=rank, world_size=2, loader_workers=2,
                                                         seed=5, batch_size=1), 60)]
        for w in (0, 1):
            expected = [int(k[1:]) for u in plan[rank, w] for k in shard_keys(u)]
            assert labels[w::2][:len(expected)] == expected
        seen[rank] = set(labels)
    assert seen[0].isdisjoint(seen[1]) and seen[0] | seen[1] == set(range(sum(UNEVEN)))


def test_uneven_ranks_yield_the_same_number_of_batches(tmp_path):
    urls, _ = _write_uneven(tmp_path)
    # 26 vs 25 samples per rank, batch 4: an epoch-bounded loader would give 7 vs 7 (or 6) and hang
    # DDP; ours gives any number of full batches on both ranks.
    for rank in (0, 1):
        batches = _take(_stream(urls, rank=rank, world_size=2, loader_workers=2, shuffle_buffer=8), 40)
        assert all(b.images.shape == (4, 3, 16, 16) and b.images.dtype == torch.uint8 for b in batches)
        assert all(b.labels.dtype == torch.int64 for b in batches)
    with pytest.raises(DataError, match="7 shards cannot feed 8 ranks"):
        _stream(urls, rank=7, world_size=8)


# --- exact resume ----------------------------------------------------------------------------

@pytest.mark.parametrize("loader_workers, with_counts", [(0, True), (2, True), (2, False)])
def test_resume_continues_exactly(tmp_path, loader_workers, with_counts):
    urls, _ = _write_uneven(tmp_path)
    kw = dict(rank=1, world_size=2, batch_size=5, loader_workers=loader_workers, seed=3, shuffle_buffer=16,
              counts=UNEVEN if with_counts else None)
    ref = _take(_stream(urls, **kw), 24)  # 120 samples from a 25-sample rank: epochs 0..4
    for k in (7, 15):  # odd k: the next batch comes from worker 1
        position = pickle.loads(pickle.dumps(ref[k - 1].position))
        if k == 15:  # well past an epoch end
            assert min(w["epoch"] for w in position["workers"]) >= 1
        got = _take(_stream(urls, position=position, **kw), 24 - k)
        for a, b in zip(got, ref[k:]):
            assert torch.equal(a.labels, b.labels) and torch.equal(a.images, b.images)


def test_resume_with_other_worker_count_restarts_the_epoch(tmp_path, caplog):
    urls, _ = _write_uneven(tmp_path)
    kw = dict(batch_size=4, seed=1, shuffle_buffer=8)
    position = _take(_stream(urls, loader_workers=2, **kw), 3)[-1].position
    assert position["workers"][0]["epoch"] == 0
    with caplog.at_level(logging.WARNING, logger="pipeline.data"):
        resumed = _take(_stream(urls, loader_workers=1, position=position, **kw), 5)
    assert "restarting at the start of epoch 0" in caplog.text
    fresh = _take(_stream(urls, loader_workers=1, **kw), 5)
    assert all(torch.equal(a.images, b.images) for a, b in zip(resumed, fresh))

    # Later epochs: without a shuffle buffer, epoch e of one worker starts after e * 51 samples;
    # batches of 3 divide 51, so the restarted stream equals the fresh one from batch e * 17.
    kw = dict(batch_size=3, seed=1, shuffle_buffer=0)
    position = _take(_stream(urls, loader_workers=2, **kw), 40)[-1].position
    epoch = min(w["epoch"] for w in position["workers"])
    assert epoch >= 1
    resumed = _take(_stream(urls, loader_workers=1, position=position, **kw), 4)
    fresh = _take(_stream(urls, loader_workers=1, **kw), epoch * 17 + 4)[epoch * 17:]
    assert all(torch.equal(a.labels, b.labels) for a, b in zip(resumed, fresh))


# --- bad inputs ------------------------------------------------------------------------------

def _bad_shard(tmp_path, kind):
    """A shard good0, bad, good1 where `bad` is one kind of broken sample."""
    images, _ = shapestack.generate(3, 16, seed=4)
    bad = {"key": "bad", "png": _png(images[1]), "cls": b"1"}
    if kind == "truncated":
        bad["png"] = bad["png"][:len(bad["png"]) // 2]
    elif kind == "no_label":
        del bad["cls"]
    elif kind == "text_label":
        bad["cls"] = b"cat"
    elif kind == "grey":
        bad["png"] = _png(images[1][:, :, 0])
    elif kind == "rgba":
        bad["png"] = _png(np.dstack([images[1], np.full((16, 16), 255, np.uint8)]))
    url = str(tmp_path / f"{kind}.tar")
    with TarWriter(url, encoder=False, mtime=0) as w:
        w.write({"__key__": "good0", "png": _png(images[0]), "cls": b"0"})
        w.write({"__key__": bad.pop("key"), **bad})
        w.write({"__key__": "good1", "png": _png(images[2]), "cls": b"2"})
    return url, images


@pytest.mark.parametrize("kind", ["truncated", "no_label", "text_label", "grey", "rgba"])
def test_bad_sample_policies(tmp_path, kind):
    url, images = _bad_shard(tmp_path, kind)
    convertible = kind in ("grey", "rgba")

    batch = _take(_stream([url], batch_size=2, bad_samples="skip"), 1)[0]
    assert (batch.n_skipped, batch.n_converted, batch.bad_keys) == (1, 0, [f"{url}#bad"])
    assert batch.labels.tolist() == [0, 2]

    batch = _take(_stream([url], batch_size=3 if convertible else 2, bad_samples="convert"), 1)[0]
    if convertible:
        assert (batch.n_skipped, batch.n_converted, batch.bad_keys) == (0, 1, [])
        assert batch.labels.tolist() == [0, 1, 2]
        expected = images[1].copy()
        if kind == "grey":
            expected[:] = images[1][:, :, :1]
        assert torch.equal(batch.images[1], torch.from_numpy(expected).permute(2, 0, 1))
    else:
        assert (batch.n_skipped, batch.n_converted, batch.bad_keys) == (1, 0, [f"{url}#bad"])

    with pytest.raises(DataError) as err:
        _take(_stream([url], batch_size=2, bad_samples="strict"), 1)
    assert f"{url}#bad" in str(err.value)


def test_strict_error_crosses_the_worker_process(tmp_path):
    url, _ = _bad_shard(tmp_path, "truncated")
    with pytest.raises(DataError, match=f"{url}#bad"):
        _take(_stream([url], batch_size=2, bad_samples="strict", loader_workers=1), 1)


def test_missing_shard_and_empty_list(tmp_path):
    urls, _ = _write_uneven(tmp_path, counts=[3])
    gone = str(tmp_path / "gone-000001.tar")
    with pytest.raises(DataError, match="gone-000001.tar"):
        _take(_stream([gone, urls[0]], batch_size=2, loader_workers=2), 4)
    with pytest.raises(DataError, match="no shards"):
        _stream([])
    with pytest.raises(DataError, match="bad_samples"):
        _stream(urls, bad_samples="ignore")


def test_resize_and_to_float(tmp_path):
    urls, images = _write_uneven(tmp_path, counts=[4], resolution=24)
    batch = _take(_stream(urls, resolution=16, batch_size=4), 1)[0]
    assert isinstance(batch, Batch) and batch.images.shape == (4, 3, 16, 16)
    x = to_float(batch.images)
    assert x.dtype == torch.float32 and -1 <= x.min() and x.max() <= 1
    assert to_float(torch.tensor([0, 255], dtype=torch.uint8)).tolist() == [-1.0, 1.0]
