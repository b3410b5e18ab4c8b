"""Built-in datasets: ShapeStack and its oracle, digits, image folders, build_builtin."""
from __future__ import annotations

import io

import numpy as np
import pytest
import torch
from PIL import Image

from pipeline.data import DataError, RankStream, load_manifest, read_samples, resolve_shards
from pipeline.data.datasets import BUILTIN, animals, build_builtin, digits, folder, shapestack


def test_generate_is_deterministic_per_seed():
    a, ga = shapestack.generate(64, 32, seed=1)
    b, gb = shapestack.generate(64, 32, seed=1)
    c, _ = shapestack.generate(64, 32, seed=2)
    assert a.shape == (64, 32, 32, 3) and a.dtype == np.uint8 and ga.shape == (64, 3)
    assert np.array_equal(a, b) and np.array_equal(ga, gb) and not np.array_equal(a, c)
    items = list(shapestack.samples(64, 32, seed=1))  # the shard writer's view: same images
    assert np.array_equal(np.stack([img for _, img, _ in items]), a)
    assert [label for *_, label in items] == ga[:, 0].tolist()
    assert len({key for key, *_ in items}) == 64


def test_oracle_is_exact_on_10k_images_at_32px():
    images, glyphs = shapestack.generate(10_000, 32, seed=0)
    assert (shapestack.oracle(images) == glyphs).all()
    assert (np.bincount(shapestack.mode_index(glyphs), minlength=1000) == 10).all()  # balanced modes


@pytest.mark.parametrize("resolution", [16, 64, 128])
def test_oracle_is_exact_at_other_sizes(resolution):
    images, glyphs = shapestack.generate(1000 if resolution < 128 else 300, resolution, seed=resolution)
    assert (shapestack.oracle(images) == glyphs).all()


def test_oracle_accepts_generator_output_and_tolerates_noise():
    images, glyphs = shapestack.generate(1000, 32, seed=9)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1  # float CHW in [-1, 1]
    assert (shapestack.oracle(x) == glyphs).all()
    assert (shapestack.oracle(torch.from_numpy(images)) == glyphs).all()  # torch uint8 HWC
    assert (shapestack.oracle(images[3]) == glyphs[3]).all()              # one image
    noisy = (x + 0.3 * torch.randn(x.shape, generator=torch.Generator().manual_seed(0))).clamp(-1, 1)
    assert (shapestack.oracle(noisy) == glyphs).all(1).mean() > 0.99
    assert shapestack.mode_index(np.array([[1, 2, 3]])).tolist() == [123]
    with pytest.raises(ValueError, match="resolution"):
        shapestack.generate(1, 8, seed=0)


def test_digits():
    items = list(digits.samples(24, seed=0))
    assert len(items) == 1797 and len({k for k, *_ in items}) == 1797
    assert all(img.shape == (24, 24, 3) and img.dtype == np.uint8 for _, img, _ in items[:50])
    assert sorted({label for *_, label in items}) == list(range(10))
    assert [k for k, *_ in items] != [k for k, *_ in digits.samples(24, seed=1)]  # seeded order


def test_animals_are_the_packaged_silhouettes_and_a_tiny_set_is_a_prefix_of_a_large_one():
    images, labels = animals.load()
    assert images.shape == (10000, 28, 28) and np.bincount(labels).tolist() == [1000] * 10
    tiny, large = list(animals.samples(256, 32)), list(animals.samples(20_000, 32))
    assert len(large) == 10000 and [k for k, *_ in tiny] == [k for k, *_ in large[:256]]
    key, img, label = tiny[0]
    i = int(key.removeprefix("animal"))
    assert img.shape == (32, 32, 3) and img.dtype == np.uint8 and label == labels[i]
    assert (img[..., 0] == img[..., 1]).all() and img.max() > 200 and img[0, 0, 0] == 0  # white on black
    # the 28 px silhouette itself, resized: downsampled back it matches the packaged image
    back = Image.fromarray(img[..., 0]).resize((28, 28), Image.BILINEAR)
    assert np.abs(np.asarray(back, np.int16) - images[i]).mean() < 12


def _save(path, array, fmt):
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.fromarray(array).save(path, fmt)


def test_folder(tmp_path):
    images, _ = shapestack.generate(4, 32, seed=3)
    _save(tmp_path / "cats" / "a.png", images[0], "PNG")
    _save(tmp_path / "cats" / "sub" / "b.v2.jpg", images[1], "JPEG")
    _save(tmp_path / "dogs" / "c.bmp", images[2], "BMP")
    _save(tmp_path / "dogs" / "big.png", np.repeat(np.repeat(images[3], 2, 0), 2, 1), "PNG")
    (tmp_path / "dogs" / "notes.txt").write_text("not an image")
    assert folder.classes(tmp_path) == ["cats", "dogs"]

    items = list(folder.samples(tmp_path))
    assert [(k, label) for k, _, label in items] == [
        ("cats/a", 0), ("cats/sub/b_v2", 0), ("dogs/big", 1), ("dogs/c", 1)]
    assert items[0][1] == (tmp_path / "cats" / "a.png").read_bytes()  # stored as-is
    assert items[3][1].startswith(b"\x89PNG")                         # BMP re-encoded
    resized = dict((k, d) for k, d, _ in folder.samples(tmp_path, resolution=32))
    assert Image.open(io.BytesIO(resized["dogs/big"])).size == (32, 32)

    from pipeline.data import write_shards
    write_shards(items, tmp_path / "shards", resolution=32, classes=folder.classes(tmp_path),
                 source=str(tmp_path))
    urls, _ = resolve_shards(str(tmp_path / "shards"))
    batch = next(iter(RankStream(urls, rank=0, world_size=1, batch_size=4, resolution=32, loader_workers=0,
                                 seed=0, shuffle_buffer=0, bad_samples="strict")))
    assert batch.images.shape == (4, 3, 32, 32) and sorted(batch.labels.tolist()) == [0, 0, 1, 1]

    with pytest.raises(DataError, match="does not exist"):
        folder.classes(tmp_path / "nope")
    (tmp_path / "flat").mkdir()
    with pytest.raises(DataError, match="no class subfolders"):
        folder.classes(tmp_path / "flat")
    (tmp_path / "flat" / "empty_class").mkdir()
    with pytest.raises(DataError, match="holds no images"):
        list(folder.samples(tmp_path / "flat"))


def test_build_builtin(tmp_path):
    assert set(BUILTIN) == {"shapestack", "digits", "shapepairs", "shapeunpaired", "shapestyles",
                            "shapecaptions", "animals"}
    m = build_builtin("shapestack", tmp_path / "s", resolution=16, n=300, shard_size=128, seed=1)
    assert m["samples"] == 300 and [s["count"] for s in m["shards"]] == [128, 128, 44]
    assert m["classes"] == shapestack.CLASSES
    stamp = (tmp_path / "s" / "manifest.json").stat().st_mtime_ns
    assert build_builtin("shapestack", tmp_path / "s", resolution=16, n=300, shard_size=128,
                         seed=1)["sha256"] == m["sha256"]
    assert (tmp_path / "s" / "manifest.json").stat().st_mtime_ns == stamp  # reused, not rewritten
    first_key = next(read_samples(str(tmp_path / "s" / m["shards"][0]["name"])))[0]
    assert first_key == "00000000"

    d = build_builtin("digits", tmp_path / "d", resolution=16, n=10_000, shard_size=512)
    assert d["samples"] == 1797 and load_manifest(tmp_path / "d")["num_classes"] == 10
    with pytest.raises(DataError, match="unknown built-in"):
        build_builtin("mnist", tmp_path / "m", resolution=16, n=1, shard_size=1)


def test_animals_names_an_unreadable_package_file(monkeypatch, tmp_path):
    # A broken install (a truncated data file): a DataError naming the file and the fix, at once.
    folder = tmp_path / "data" / "Animal Shape"
    folder.mkdir(parents=True)
    (folder / "animal_data_version_3.gz").write_bytes(b"\x1f\x8b not really gzip")
    monkeypatch.setattr(animals.resources, "files", lambda package: tmp_path)
    with pytest.raises(DataError, match=r"animal_data_version_3\.gz.*force-reinstall"):
        animals.load()
