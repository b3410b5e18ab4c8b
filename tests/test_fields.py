"""Declared sample fields, on shards other tools write (webdataset.ShardWriter, img2dataset's layout)."""
from __future__ import annotations

import io
import time

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image as PILImage

from pipeline.data import DataError, RankStream, read_samples
from pipeline.data.datasets import shapestack
from pipeline.data.fields import DEFAULT_FIELDS, FieldError, Image, Label, Text, describe

R = 16


def _encode(array: np.ndarray, fmt: str, **kw) -> bytes:
    if fmt == "JPEG":  # no chroma subsampling: 16 px glyphs would smear
        kw = {"quality": 95, "subsampling": 0, **kw}
    out = io.BytesIO()
    PILImage.fromarray(array).save(out, fmt, **kw)
    return out.getvalue()


def _images(n, seed=0, resolution=R):
    return shapestack.generate(n, resolution, seed=seed)[0]


def _write(tmp_path, samples, name="data", maxcount=100000):
    """Shards written by webdataset's own ShardWriter (fractional mtimes, its encoders)."""
    (tmp_path / name).mkdir(exist_ok=True)
    pattern = str(tmp_path / name / "shard-%06d.tar")
    with wds.ShardWriter(pattern, maxcount=maxcount, verbose=0) as sink:
        for s in samples:
            sink.write(s)
    return sorted(str(p) for p in (tmp_path / name).glob("shard-*.tar"))


def _img2dataset(tmp_path, n=12, name="i2d", maxcount=100000):
    """img2dataset's layout: NNNNNNNNN.jpg + .txt + .json per sample, no .cls."""
    images = _images(n)
    urls = _write(tmp_path, ({"__key__": f"{i:09d}", "jpg": _encode(images[i], "JPEG", quality=95),
                              "txt": f"caption {i}", "json": {"key": f"{i:09d}", "status": "success",
                                                             "caption": f"caption {i}", "width": R}}
                             for i in range(n)), name=name, maxcount=maxcount)
    return urls, images


def _stream(urls, **kw):
    args = dict(rank=0, world_size=1, batch_size=4, resolution=R, loader_workers=0, seed=0,
                shuffle_buffer=0)
    return RankStream(urls, **{**args, **kw})


def _take(stream, n):
    with stream:
        return [next(stream) for _ in range(n)]


def _close(a: torch.Tensor, b: np.ndarray, tol: float) -> bool:
    return (a.to(torch.float32) - torch.from_numpy(b).permute(2, 0, 1).float()).abs().mean() < tol


# --- unlabelled data -------------------------------------------------------------------------

def test_unlabelled_img2dataset_shards_with_image_and_text_fields(tmp_path):
    urls, images = _img2dataset(tmp_path)
    assert sorted(next(read_samples(urls[0]))[1]) == ["jpg", "json", "txt"]

    batch = _take(_stream(urls, fields={"image": Image()}), 1)[0]
    assert list(batch.fields) == ["image"] and batch.labels is None and batch.n_skipped == 0
    assert batch.images is batch.fields["image"] and batch.images.shape == (4, 3, R, R)
    assert all(_close(batch.images[i], images[i], 6) for i in range(4))

    fields = {"image": Image(), "caption": Text(), "from_json": Text(members=("json:caption",))}
    batches = _take(_stream(urls, fields=fields, batch_size=5), 3)  # 15 of 12: into epoch 1
    texts = [t for b in batches for t in b.fields["caption"]]
    assert texts == [f"caption {i}" for i in list(range(12)) + [0, 1, 2]]
    assert [t for b in batches for t in b.fields["from_json"]] == texts
    batch = _take(_stream(urls, fields=fields, batch_size=5, loader_workers=1), 1)[0]  # across IPC
    assert batch.fields["caption"] == texts[:5] and batch.images.shape == (5, 3, R, R)


@pytest.mark.parametrize("loader_workers", [0, 1, 2])
def test_default_fields_on_unlabelled_shards_raise_promptly(tmp_path, loader_workers):
    urls, _ = _img2dataset(tmp_path, n=40, maxcount=20)  # two shards, no .cls anywhere
    t0 = time.monotonic()
    with pytest.raises(DataError) as err:
        _take(_stream(urls, loader_workers=loader_workers, shuffle_buffer=16), 1)
    assert time.monotonic() - t0 < 5
    msg = str(err.value)
    assert "no usable sample in a whole pass" in msg
    assert any(f"shard {u}, sample key '0000000" in msg for u in urls)  # a shard url and a key
    assert "members ['jpg', 'json', 'txt']" in msg
    assert describe(DEFAULT_FIELDS) in msg and "missing required field 'cls'" in msg


def test_some_unlabelled_shards_do_not_stop_the_stream(tmp_path):
    # One labelled shard, one without labels: with two workers, one of them reads only the
    # unlabelled shard in some epochs. That is not a dead stream: batches keep coming.
    images = _images(8)
    good = _write(tmp_path, ({"__key__": f"g{i}", "jpg": _encode(images[i], "JPEG"), "cls": i}
                             for i in range(8)), name="good")
    urls = good + _img2dataset(tmp_path, n=8)[0]
    for workers in (1, 2):
        batches = _take(_stream(urls, loader_workers=workers, shuffle_buffer=4), 12)
        assert all(set(b.labels.tolist()) <= set(range(8)) for b in batches)
        assert sum(b.n_skipped for b in batches) >= 8


def test_bad_keys_are_capped(tmp_path):
    images = _images(2)
    jpg = [_encode(im, "JPEG") for im in images]
    urls = _write(tmp_path, [{"__key__": "first", "jpg": jpg[0], "cls": 3}]
                  + [{"__key__": f"u{i:03d}", "jpg": jpg[1]} for i in range(300)]
                  + [{"__key__": "last", "jpg": jpg[1], "cls": 4}])
    batch = _take(_stream(urls, batch_size=2), 1)[0]
    assert batch.labels.tolist() == [3, 4] and batch.n_skipped == 300
    assert batch.bad_keys == [f"{urls[0]}#u{i:03d}" for i in range(5)]


# --- formats ---------------------------------------------------------------------------------

def _smooth() -> np.ndarray:
    """A colour gradient: lossy WebP always subsamples chroma, which smears 16 px glyphs."""
    g = np.full((R, R, 3), 128, np.uint8)
    g[..., 0], g[..., 1] = np.linspace(0, 255, R)[None], np.linspace(0, 255, R)[:, None]
    return g


def test_jpeg_png_and_webp_members_decode(tmp_path):
    images = _images(4, seed=3)
    images[2] = _smooth()
    samples = [
        {"__key__": "a", "jpeg": _encode(images[0], "JPEG", quality=95), "cls": 0},
        {"__key__": "b", "webp": _encode(images[1], "WEBP", lossless=True), "cls": 1},
        {"__key__": "c", "webp": _encode(images[2], "WEBP", quality=90), "cls": 2},
        {"__key__": "d", "png": _encode(images[3], "PNG"), "cls": 3},
    ]
    urls = _write(tmp_path, samples)
    batch = _take(_stream(urls, bad_samples="strict"), 1)[0]
    assert batch.labels.tolist() == [0, 1, 2, 3] and batch.n_skipped == 0 and batch.n_converted == 0
    assert _close(batch.images[0], images[0], 6)
    assert torch.equal(batch.images[1], torch.from_numpy(images[1]).permute(2, 0, 1))  # lossless
    assert _close(batch.images[2], images[2], 4)
    assert torch.equal(batch.images[3], torch.from_numpy(images[3]).permute(2, 0, 1))


def test_webp_with_alpha_converts(tmp_path):
    images = _images(1)
    rgba = np.dstack([images[0], np.full((R, R), 200, np.uint8)])
    urls = _write(tmp_path, [{"__key__": "a", "webp": _encode(rgba, "WEBP", lossless=True, exact=True),
                              "cls": 0}])
    batch = _take(_stream(urls, batch_size=1), 1)[0]
    assert batch.n_converted == 1
    assert torch.equal(batch.images[0], torch.from_numpy(images[0]).permute(2, 0, 1))


# --- several fields --------------------------------------------------------------------------

def test_paired_image_fields(tmp_path):
    src, dst = _images(6, seed=5), _images(6, seed=6)
    urls = _write(tmp_path, ({"__key__": f"{i:06d}", "jpg": _encode(src[i], "PNG"),  # PNG bytes in .jpg
                              "target.jpg": _encode(dst[i], "JPEG", quality=95)} for i in range(6)))
    assert sorted(next(read_samples(urls[0]))[1]) == ["jpg", "target.jpg"]
    fields = {"image": Image(members=("jpg",)), "target": Image(members=("target.jpg",))}
    batch = _take(_stream(urls, fields=fields, batch_size=6, bad_samples="strict"), 1)[0]
    assert list(batch.fields) == ["image", "target"] and batch.images is batch.fields["image"]
    assert batch.fields["target"].shape == (6, 3, R, R) and batch.fields["target"].dtype == torch.uint8
    for i in range(6):
        assert torch.equal(batch.fields["image"][i], torch.from_numpy(src[i]).permute(2, 0, 1))
        assert _close(batch.fields["target"][i], dst[i], 6)

    # A pair missing its target is a bad sample; under strict the error names it and the field.
    urls = _write(tmp_path, [{"__key__": "x", "jpg": _encode(src[0], "JPEG")}], name="half")
    with pytest.raises(DataError, match=r"#x: missing required field 'target' \(target.jpg\)"):
        _take(_stream(urls, fields=fields, batch_size=1, bad_samples="strict"), 1)


def test_json_label_and_optional_missing_label(tmp_path):
    images = _images(6)
    meta = [{"label": 4}, {"label": "7"}, {}, {"label": 2}, {"other": 1}, {"label": 9}]
    urls = _write(tmp_path, ({"__key__": f"k{i}", "jpg": _encode(images[i], "JPEG"), "json": meta[i]}
                             for i in range(6)))
    fields = {"image": Image(), "cls": Label(members=("json:label",), optional=True)}
    batch = _take(_stream(urls, fields=fields, batch_size=6), 1)[0]
    assert batch.labels.dtype == torch.int64 and batch.labels.tolist() == [4, 7, -1, 2, -1, 9]

    required = {"image": Image(), "cls": Label(members=("json:label",))}
    batch = _take(_stream(urls, fields=required, batch_size=4), 1)[0]
    assert batch.labels.tolist() == [4, 7, 2, 9] and batch.n_skipped == 2
    assert batch.bad_keys == [f"{urls[0]}#k2", f"{urls[0]}#k4"]
    with pytest.raises(DataError, match=r"#k2: missing required field 'cls' \(json:label\)"):
        _take(_stream(urls, fields=required, batch_size=4, bad_samples="strict"), 1)


def test_optional_text_and_cls_fallback(tmp_path):
    images = _images(3)
    urls = _write(tmp_path, [
        {"__key__": "a", "png": _encode(images[0], "PNG"), "cls": 1, "txt": "one"},
        {"__key__": "b", "png": _encode(images[1], "PNG"), "cls": 2},
        {"__key__": "c", "png": _encode(images[2], "PNG"), "cls2": 5, "txt": "three"},
    ])
    fields = {"image": Image(), "cls": Label(members=("cls", "cls2")), "txt": Text(optional=True)}
    batch = _take(_stream(urls, fields=fields, batch_size=3, bad_samples="strict"), 1)[0]
    assert batch.labels.tolist() == [1, 2, 5] and batch.fields["txt"] == ["one", "", "three"]


def test_field_declarations_are_checked(tmp_path):
    urls, _ = _img2dataset(tmp_path, n=2)
    for bad, match in [({}, "non-empty dict"), ({"image": "jpg"}, "not an Image"),
                       ({"image": Image(members="jpg")}, "tuple of member names"),
                       ({"image": Image(members=("json:url",))}, "inside .json"),
                       ({"cls": Label(members=("json:",))}, "needs a key")]:
        with pytest.raises(FieldError, match=match):
            _stream(urls, fields=bad)
    assert issubclass(FieldError, DataError)
    # Members match read_samples' lower-cased names.
    batch = _take(_stream(urls, fields={"image": Image(members=("JPG",))}, batch_size=2), 1)[0]
    assert batch.images.shape == (2, 3, R, R)


def test_unparseable_json_is_a_bad_sample(tmp_path):
    images = _images(2)
    urls = _write(tmp_path, [{"__key__": "a", "jpg": _encode(images[0], "JPEG"), "json": b"{not json"},
                             {"__key__": "b", "jpg": _encode(images[1], "JPEG"), "json": b'{"label": 1}'}])
    fields = {"image": Image(), "cls": Label(members=("json:label",), optional=True)}
    batch = _take(_stream(urls, fields=fields, batch_size=1), 1)[0]
    assert batch.labels.tolist() == [1] and batch.bad_keys == [f"{urls[0]}#a"]
    with pytest.raises(DataError, match="#a: field 'cls': .json is not valid JSON"):
        _take(_stream(urls, fields=fields, batch_size=1, bad_samples="strict"), 1)
