"""`ganforge shards --from-folder` on real image trees written into tmp_path: seeded order across
classes, nested and flat folders, bad files skipped and listed, --strict, atomic output, the same
bytes for any --workers, and ranks whose first batches mix classes."""
from __future__ import annotations

import hashlib
import io
import json

import numpy as np
import pytest
from PIL import Image as PILImage
from webdataset.writer import TarWriter

from jobs.cli import main
from pipeline.data import DataError, RankStream, read_samples, resolve_shards
from pipeline.data.convert import REJECTED, convert_folder
from pipeline.data.fields import Image
from pipeline.data.shards import MTIME

CLASSES = [f"animal{i}" for i in range(10)]
PER_CLASS = 40


def _image(rng, size=20) -> PILImage.Image:
    # A smooth random picture (a 4x4 colour grid upsampled) plus a little noise: compresses like a photo.
    small = rng.integers(0, 256, (4, 4, 3), dtype=np.uint8)
    big = np.asarray(PILImage.fromarray(small).resize((size, size), PILImage.Resampling.BILINEAR), np.int16)
    return PILImage.fromarray(np.clip(big + rng.integers(-8, 9, big.shape), 0, 255).astype(np.uint8))


def _tree(root, *, per_class=PER_CLASS, bad=True):
    """10 class folders, a third of each class one or two folders deeper (the class is the first
    level), PNG and JPEG mixed; with bad=True a truncated PNG and a text file named .png."""
    rng = np.random.default_rng(0)
    for c, name in enumerate(CLASSES):
        for i in range(per_class):
            sub = ["", "sub/", "sub/deeper/"][i % 3]
            path = root / name / f"{sub}img{i:03d}.{'jpg' if i % 4 == 0 else 'png'}"
            path.parent.mkdir(parents=True, exist_ok=True)
            _image(rng).save(path)
    bad_files = []
    if bad:
        whole = (root / CLASSES[3] / "img003.png").read_bytes()
        (root / CLASSES[3] / "truncated.png").write_bytes(whole[: len(whole) // 2])
        (root / CLASSES[7] / "sub" / "notes.png").write_text("this is not an image\n")
        bad_files = [f"{CLASSES[3]}/truncated.png", f"{CLASSES[7]}/sub/notes.png"]
    return bad_files


def _samples(out):
    urls, manifest = resolve_shards(str(out))
    return urls, manifest, [[m for _, m in read_samples(u)] for u in urls]


def test_ten_class_tree_with_two_bad_files_converts_reports_and_mixes_classes(tmp_path, capsys):
    bad = _tree(tmp_path / "tree")
    out = tmp_path / "out"
    assert main(["shards", "--from-folder", str(tmp_path / "tree"), "--out", str(out), "--resolution",
                 "16", "--shard-size", "100", "--workers", "2", "--seed", "3"]) == 0
    err = capsys.readouterr()
    urls, manifest, shards = _samples(out)

    assert manifest["rejected"] == 2 and manifest["files"] == 10 * PER_CLASS + 2
    assert manifest["samples"] == 10 * PER_CLASS and manifest["classes"] == CLASSES
    assert manifest["num_classes"] == 10 and manifest["class_counts"] == [PER_CLASS] * 10
    assert manifest["seed"] == 3 and manifest["order"] == "shuffled"
    lines = (out / REJECTED).read_text().splitlines()
    assert [line.split("\t")[0] for line in lines] == sorted(bad)
    assert all(line.split("\t")[1] for line in lines)  # each with its reason
    assert "truncated" in dict(line.split("\t") for line in lines)[bad[0]]
    for path in bad:  # the first few rejected files are named on the terminal
        assert path in err.err
    assert "rejected 2 of 402 files" in err.err and "2 files rejected" in err.out

    assert len(shards) == 4
    for url, samples in zip(urls, shards):
        labels = [int(m["cls"]) for m in samples]
        assert set(labels) == set(range(10)), f"{url} holds classes {sorted(set(labels))}"
        assert max(np.bincount(labels)) <= 25  # about 10 of each in a shard of 100, never one class
        for m in samples:
            ext = next(k for k in m if k != "cls")
            assert PILImage.open(io.BytesIO(m[ext])).size == (16, 16)
    # Nested files kept their class: every key starts with its class folder.
    keys = [k for u in urls for k, _ in read_samples(u, data=False)]
    assert any(k.count("/") == 3 for k in keys)  # animalN/sub/deeper/imgNNN
    assert sorted(k.split("/")[0] for k in keys) == sorted(CLASSES * PER_CLASS)


def test_strict_stops_at_the_first_bad_file_naming_it_and_leaves_no_output(tmp_path, capsys):
    bad = _tree(tmp_path / "tree", per_class=8)
    out = tmp_path / "results" / "out"  # its parent does not exist either
    assert main(["shards", "--from-folder", str(tmp_path / "tree"), "--out", str(out), "--resolution",
                 "16", "--workers", "2", "--strict"]) == 1
    err = capsys.readouterr().err
    assert "--strict" in err and any(str(tmp_path / "tree" / b) in err for b in bad), err
    assert sorted(p.name for p in tmp_path.iterdir()) == ["tree"]  # no out, no temp folder, no parent


def test_flat_unlabelled_folder_gives_shards_without_cls_that_an_image_field_reads(tmp_path):
    rng = np.random.default_rng(1)
    flat = tmp_path / "flat"
    flat.mkdir()
    for i in range(24):
        _image(rng, size=24).save(flat / f"photo.{i:02d}.jpg")  # a dot in the name: keys must not keep it
    (flat / "README.txt").write_text("not an image: ignored, not rejected")
    m = convert_folder(flat, tmp_path / "out", resolution=16, shard_size=10, workers=1)
    assert (m["num_classes"], m["classes"], m["samples"], m["rejected"], m["ignored"]) == (0, [], 24, 0, 1)
    assert "class_counts" not in m and not (tmp_path / "out" / REJECTED).exists()
    urls, _, shards = _samples(tmp_path / "out")
    assert [len(s) for s in shards] == [10, 10, 4]
    assert all(sorted(s) == ["png"] for shard in shards for s in shard)

    stream = RankStream(urls, rank=0, world_size=1, batch_size=8, resolution=16, loader_workers=0,
                        seed=0, fields={"image": Image()}, bad_samples="strict")
    try:
        batch = next(stream)
        assert tuple(batch.images.shape) == (8, 3, 16, 16) and batch.labels is None
    finally:
        stream.close()


def test_same_seed_gives_the_same_bytes_with_one_or_two_workers(tmp_path):
    _tree(tmp_path / "tree", per_class=12)

    def convert(name, workers, seed=0):
        m = convert_folder(tmp_path / "tree", tmp_path / name, resolution=16, shard_size=25,
                           workers=workers, seed=seed)
        files = {p.name: hashlib.sha256(p.read_bytes()).hexdigest() for p in sorted((tmp_path / name).iterdir())
                 if p.name != "manifest.json"}
        return m, files

    m1, files1 = convert("w1", 1)
    m2, files2 = convert("w2", 2)
    assert m1["sha256"] == m2["sha256"] and files1 == files2 and m1["shards"] == m2["shards"]
    assert m1["rejected"] == 2 and REJECTED in files1
    m3, _ = convert("seed1", 2, seed=1)
    assert m3["sha256"] != m1["sha256"] and m3["samples"] == m1["samples"]

    # The converter builds tar members itself: they are byte for byte what webdataset writes.
    url = str(tmp_path / "w1" / m1["shards"][0]["name"])
    with TarWriter(str(tmp_path / "wds.tar"), encoder=False, mtime=MTIME) as w:
        for key, members in read_samples(url):
            w.write({"__key__": key, **members})
    assert (tmp_path / "wds.tar").read_bytes() == (tmp_path / "w1" / m1["shards"][0]["name"]).read_bytes()


def test_each_of_two_ranks_first_batch_holds_several_classes(tmp_path):
    """What a 2-worker Ray Train run reads: rank r gets shards urls[r::2] (RankStream is what each
    Ray Train worker builds). Shards of one class each (what class-sorted writing gave), with a
    shuffle buffer smaller than a shard (1,000-image shards, 256-sample buffer in the issue), gave
    one class per batch; the sizes here are that, scaled down."""
    _tree(tmp_path / "tree", bad=False)
    convert_folder(tmp_path / "tree", tmp_path / "out", resolution=16, shard_size=PER_CLASS, workers=2)
    urls, manifest = resolve_shards(str(tmp_path / "out"))
    counts = [s["count"] for s in manifest["shards"]]
    for rank in (0, 1):
        stream = RankStream(urls, rank=rank, world_size=2, batch_size=16, resolution=16,
                            loader_workers=0, seed=0, counts=counts, bad_samples="strict",
                            shuffle_buffer=16)
        try:
            labels = next(stream).labels.tolist()
        finally:
            stream.close()
        assert len(set(labels)) >= 3, f"rank {rank}'s first batch holds classes {sorted(set(labels))}"


def test_zero_byte_unsupported_and_misnamed_files(tmp_path):
    root = tmp_path / "tree"
    _tree(root, per_class=2, bad=False)
    (root / CLASSES[0] / "empty.png").write_bytes(b"")
    (root / CLASSES[1] / "phone.heic").write_bytes(b"\x00\x00\x00\x18ftypheic" + bytes(64))
    jpeg_named_png = root / CLASSES[2] / "really_a_jpeg.png"
    _image(np.random.default_rng(2), size=16).save(jpeg_named_png, "JPEG")  # usable: converted, kept
    (root / CLASSES[2] / ".hidden.png").write_text("hidden files are not looked at")
    m = convert_folder(root, tmp_path / "out", resolution=16, workers=1)
    assert (m["samples"], m["rejected"]) == (21, 2)
    rejected = dict(line.split("\t") for line in (tmp_path / "out" / REJECTED).read_text().splitlines())
    assert sorted(rejected) == [f"{CLASSES[0]}/empty.png", f"{CLASSES[1]}/phone.heic"]
    assert rejected[f"{CLASSES[0]}/empty.png"] == "empty file"


def test_a_mix_of_loose_images_and_class_folders_is_refused_unless_unlabelled(tmp_path):
    root = tmp_path / "tree"
    _tree(root, per_class=2, bad=False)
    _image(np.random.default_rng(3)).save(root / "loose.png")
    with pytest.raises(DataError, match="loose.png.*--unlabelled"):
        convert_folder(root, tmp_path / "out", resolution=16, workers=1)
    assert not (tmp_path / "out").exists()
    m = convert_folder(root, tmp_path / "out", resolution=16, workers=1, unlabelled=True)
    assert (m["samples"], m["num_classes"], m["classes"]) == (21, 0, [])


def test_rerun_replaces_an_earlier_conversion_but_never_foreign_files(tmp_path):
    root = tmp_path / "tree"
    _tree(root, per_class=6, bad=False)
    out = tmp_path / "out"
    first = convert_folder(root, out, resolution=16, shard_size=10, workers=1)
    assert len(first["shards"]) == 6
    second = convert_folder(root, out, resolution=16, shard_size=30, workers=1)  # fewer shards
    assert sorted(p.name for p in out.iterdir()) == ["manifest.json", "shard-000000.tar", "shard-000001.tar"]
    assert json.loads((out / "manifest.json").read_text())["sha256"] == second["sha256"]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out", "tree"]  # no temp or old folder left

    (out / "notes.md").write_text("mine")
    with pytest.raises(DataError, match="notes.md"):
        convert_folder(root, out, resolution=16, workers=1)
    assert (out / "notes.md").read_text() == "mine" and (out / "manifest.json").exists()
    with pytest.raises(DataError, match="inside the image folder"):
        convert_folder(root, root / "shards", resolution=16, workers=1)
