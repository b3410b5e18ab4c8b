"""The engine on shards other tools wrote: unconditional DCGAN trains from img2dataset-style
shards (jpg + txt + json, no cls, written by webdataset.ShardWriter, .webp and .jpeg among them);
a family that needs a field the shards lack fails within seconds, naming shard, key and fields."""
from __future__ import annotations

import io
import time

import pytest
import webdataset as wds
from PIL import Image as PILImage

from pipeline import config as C
from pipeline.data import DataError
from pipeline.data.datasets import shapestack
from pipeline.engine.context import train_local

EXT = {"jpg": "JPEG", "jpeg": "JPEG", "webp": "WEBP"}


def _shards(tmp_path, n=48):
    images = shapestack.generate(n, 16, seed=2)[0]
    (tmp_path / "i2d").mkdir()
    with wds.ShardWriter(str(tmp_path / "i2d" / "%06d.tar"), maxcount=16, verbose=0) as sink:
        for i in range(n):
            ext = ("jpg", "jpeg", "webp")[i % 3]
            buf = io.BytesIO()
            PILImage.fromarray(images[i]).save(buf, EXT[ext], quality=95)
            sink.write({"__key__": f"{i:09d}", ext: buf.getvalue(), "txt": f"caption {i}",
                        "json": {"key": f"{i:09d}", "status": "success", "width": 16}})
    return sorted(str(p) for p in (tmp_path / "i2d").glob("*.tar"))


def _cfg(num_classes: int):
    return C.load("smoke", [f"model.num_classes={num_classes}", "train.steps=6", "train.log_every=2",
                            "train.checkpoint_every=6", "data.loader_workers=1", "data.shuffle_buffer=8",
                            "data.bad_samples=skip"])


def test_unconditional_dcgan_trains_on_img2dataset_shards(tmp_path):
    urls = _shards(tmp_path)
    result, ctx = train_local(_cfg(0), {"urls": urls, "counts": None}, tmp_path / "run", quiet=True)
    assert result["step"] == 6 and [r["step"] for r in ctx.reports] == [2, 4, 6]
    assert all(r["skipped_samples"] == 0 for r in ctx.reports)   # .webp and .jpeg decoded, none skipped
    assert ctx.reports[-1]["images_seen"] == 6 * 8
    assert (tmp_path / "run" / "checkpoint_0000006" / "state.pt").is_file()


def test_family_needing_a_missing_field_fails_fast_naming_it(tmp_path):
    urls = _shards(tmp_path)
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        train_local(_cfg(10), {"urls": urls, "counts": None}, tmp_path / "run", quiet=True)
    assert time.monotonic() - t0 < 30
    msg = str(e.value)
    assert "\n" not in msg and "Traceback" not in msg                     # one line, not a worker's dump
    assert "shard " in msg and "i2d/00000" in msg and "sample key '0000000" in msg   # a shard and a key
    assert "members ['jpg', 'json', 'txt']" in msg and "cls (cls)" in msg        # found vs needed
