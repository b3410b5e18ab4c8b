"""Image-to-image translation: the built-in tasks and their oracle, paired shards from folders and
from other tools, the translators' inputs, CycleGAN's history pools across a resume, and short
local runs whose translations the oracle scores above chance. (The 2-worker Ray Train run,
resume, registry, CLI and pyfunc round trip of each translator is in test_families.py.)"""
from __future__ import annotations

import io
import json
import subprocess
import sys
import tarfile

import numpy as np
import pytest
import torch
import webdataset as wds
from PIL import Image

from pipeline import config as C
from pipeline.data import RankStream, resolve_shards
from pipeline.data.convert import convert_pairs
from pipeline.data.datasets import shapepairs
from pipeline.data.shards import DataError
from pipeline.engine.context import train_local
from pipeline.evaluation import translation as T
from pipeline.families import generator as GM
from pipeline.families import sampling
from pipeline.families.spec import Domain, SourceImage

pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_oracle_reads_every_style_and_tells_the_styles_apart():
    for style in shapepairs.STYLES:
        images, glyphs = shapepairs.generate(300, 16, 4, style)
        s = shapepairs.translation_scores(torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1,
                                          glyphs, style)
        assert s["content_acc"] == 1.0 and s["domain_acc"] >= 0.99, (style, s)
    # the same triples in another style are the wrong domain, and a blank image keeps no glyphs
    images, glyphs = shapepairs.generate(100, 16, 4, "outline")
    s = shapepairs.translation_scores(images, glyphs, "filled")
    assert s["domain_acc"] <= 0.01
    blank = shapepairs.translation_scores(np.zeros_like(images), glyphs, "filled")
    assert blank["content_acc"] == 0.0


def test_builtin_layouts_stream_as_the_families_read_them(family_shards):
    pix = C.load("pix2pix32", ["model.resolution=16", "data.resolution=16"])
    from pipeline import families

    urls, _ = resolve_shards(str(family_shards["shapepairs"]))
    b = next(iter(RankStream(urls, rank=0, world_size=1, batch_size=8, resolution=16, loader_workers=0, seed=0,
                             fields=families.of(pix).fields)))
    src, tgt = b.fields["source"], b.fields["target"]
    assert src.shape == tgt.shape == (8, 3, 16, 16) and src.dtype == torch.uint8
    # the pair shows the same triple: outline in, filled out
    assert (shapepairs.content(src.permute(0, 2, 3, 1).numpy(), "outline") ==
            shapepairs.content(tgt.permute(0, 2, 3, 1).numpy(), "filled")).all()
    urls, m = resolve_shards(str(family_shards["shapestyles"]))
    assert m["classes"] == list(shapepairs.STYLES)
    b = next(iter(RankStream(urls, rank=0, world_size=1, batch_size=32, resolution=16, loader_workers=0, seed=0)))
    img, cls = b.fields["image"], b.fields["cls"]
    assert set(cls.tolist()) == {0, 1, 2}
    assert (shapepairs.domain(img.permute(0, 2, 3, 1).numpy()) == cls.numpy()).all()


def _img(path, size=(20, 20), seed=0):
    rng = np.random.default_rng(seed)
    Image.fromarray(rng.integers(0, 255, (size[1], size[0], 3), dtype=np.uint8)).save(path)


def test_pairs_from_folders_report_what_they_cannot_pair(tmp_path):
    src, tgt = tmp_path / "photos", tmp_path / "labels"
    (src / "a").mkdir(parents=True)
    (tgt / "a").mkdir(parents=True)
    for i in range(5):
        _img(src / "a" / f"{i}.png", seed=i)
    for i in (0, 1, 2, 4):
        _img(tgt / "a" / f"{i}.jpg", seed=10 + i)       # 3 has no partner; partners match up to the extension
    _img(tgt / "extra.png")                              # no partner the other way
    (tgt / "a" / "1.jpg").write_bytes(b"not an image")  # undecodable
    _img(tgt / "a" / "2.jpg", size=(24, 20))             # a different size
    m = convert_pairs(src, tgt, tmp_path / "out", resolution=16, workers=2)
    assert m["samples"] == 2 and m["rejected"] == 4
    rejected = dict(line.split("\t") for line in (tmp_path / "out" / "rejected.txt").read_text().splitlines())
    assert rejected["photos/a/3.png"] == f"no partner in {tgt}"
    assert rejected["labels/extra.png"] == f"no partner in {src}"
    assert "target" in rejected["a/1.png"] and "1.jpg" in rejected["a/1.png"]
    assert "source 20x20 and target 24x20 differ in size" in rejected["a/2.png"]
    keys = {}
    for url in resolve_shards(str(tmp_path / "out"))[0]:
        with tarfile.open(url) as tf:
            for name in tf.getnames():
                key, _, member = name.partition(".")
                keys.setdefault(key, set()).add(member)
    assert keys == {"a/0": {"source.png", "target.png"}, "a/4": {"source.png", "target.png"}}
    # --strict: the first problem stops it, naming the file, and nothing is left behind
    with pytest.raises(DataError, match=r"3\.png: no partner"):
        convert_pairs(src, tgt, tmp_path / "strict", resolution=16, strict=True)
    assert not (tmp_path / "strict").exists()
    (tmp_path / "other").mkdir()
    _img(tmp_path / "other" / "zzz.png")
    with pytest.raises(DataError, match="no file in .* has a partner with the same name"):
        convert_pairs(src, tmp_path / "other", tmp_path / "none", resolution=16)
    assert not (tmp_path / "none").exists()


def test_cli_writes_pairs(tmp_path):
    for d in ("s", "t"):
        (tmp_path / d).mkdir()
        for i in range(3):
            _img(tmp_path / d / f"{i}.png", seed=i)
    r = subprocess.run([sys.executable, "-m", "jobs.cli", "shards", "--pairs", str(tmp_path / "s"),
                        str(tmp_path / "t"), "--out", str(tmp_path / "o"), "--resolution", "16"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0, r.stderr
    assert "wrote 3 samples" in r.stdout and "pairs" in r.stdout


def test_pix2pix_trains_on_another_tools_pair_layout(tmp_path):
    """Pairs written by webdataset's ShardWriter as input.jpg + output.jpg + json, no cls:
    model.source / model.target name the members."""
    src, glyphs = shapepairs.generate(32, 16, 2, "outline")
    tgt, _ = shapepairs.generate(32, 16, 2, "filled")

    def jpg(a):
        buf = io.BytesIO()
        Image.fromarray(a).save(buf, "JPEG", quality=95)
        return buf.getvalue()

    with wds.ShardWriter(str(tmp_path / "p-%03d.tar"), maxcount=16) as w:
        for i in range(32):
            w.write({"__key__": f"k{i:03d}", "input.jpg": jpg(src[i]), "output.jpg": jpg(tgt[i]),
                     "json": json.dumps({"glyphs": glyphs[i].tolist()}).encode()})
    cfg = C.load("pix2pix32", ["model.resolution=16", "data.resolution=16", "model.g_channels=8",
                               "model.d_channels=8", "model.d_layers=1", "model.source=input",
                               "model.target=output", "train.steps=2", "train.batch_size=4",
                               "train.checkpoint_every=2", "train.log_every=1", "scaling.num_workers=1",
                               "data.loader_workers=0", "train.sample_every=0"])
    urls, _ = resolve_shards(str(tmp_path / "p-{000..001}.tar"))
    _, ctx = train_local(cfg, {"urls": urls, "counts": None}, str(tmp_path / "run"), quiet=True)
    assert [r["step"] for r in ctx.reports] == [1, 2] and all(np.isfinite(r["l1"]) for r in ctx.reports)
    # the grid shows input | output | target side by side: 3 columns per sample
    grid = Image.open(tmp_path / "run" / "samples" / "step_0000002.png")
    assert grid.size[0] > grid.size[1]


def test_translator_inputs_and_errors():
    dom = Domain(("filled", "outline", "inverted"))
    specs = {"image": SourceImage(16), "domain": dom}
    x = torch.zeros(5, 3, 16, 16)
    got = sampling.inputs(specs, 0, 5, images=x)
    assert got["domain"].tolist() == [0, 1, 2, 0, 1]             # unfixed: i % k
    assert sampling.inputs(specs, 0, 5, images=x, fixed={"domain": "inverted"})["domain"].tolist() == [2] * 5
    assert sampling.inputs(specs, 0, 5, images=x, fixed={"domain": 1})["domain"].tolist() == [1] * 5
    with pytest.raises(ValueError, match=r"'sepia' is not a domain .*0 filled, 1 outline, 2 inverted"):
        sampling.inputs(specs, 0, 5, images=x, fixed={"domain": "sepia"})
    with pytest.raises(ValueError, match="5 is not a domain index"):
        sampling.inputs(specs, 0, 5, images=x, fixed={"domain": 5})
    with pytest.raises(ValueError, match="image: this generator translates images"):
        sampling.inputs(specs, 0, 5)
    with pytest.raises(ValueError, match=r"expected 5 images as \[n, 3, H, W\]"):
        sampling.inputs(specs, 0, 5, images=torch.zeros(4, 3, 16, 16))
    assert sampling.inputs({"image": SourceImage(16), "to": Domain(("A", "B"), default=1)}, 0, 3,
                           images=x[:3])["to"].tolist() == [1, 1, 1]


def test_translator_config_problems_name_the_key():
    with pytest.raises(C.ConfigError, match=r"aug\.kind: 'diffaugment': augmentation is not applied"):
        C.load("pix2pix32", ["aug.kind=diffaugment"])
    with pytest.raises(C.ConfigError, match=r"eval\.every: translators are not evaluated in the loop"):
        C.load("cyclegan32", ["eval.every=100"])
    with pytest.raises(C.ConfigError, match=r"model\.domains"):
        C.load("cyclegan32", ["model.domains=[a,b,c]"])
    with pytest.raises(C.ConfigError, match=r"model\.target"):
        C.load("pix2pix32", ["model.target=source"])


def _local(preset, steps, tmp_path, *extra):
    cfg = C.load(preset, ["model.resolution=16", "data.resolution=16", "train.log_every=5",
                          f"train.steps={steps}", f"train.checkpoint_every={steps}", "train.sample_every=0",
                          "scaling.num_workers=1", "data.loader_workers=0", *extra])
    from jobs.train import builtin_shards

    urls, m = resolve_shards(str(builtin_shards(cfg)))
    run = tmp_path / preset
    _, ctx = train_local(cfg, {"urls": urls, "counts": [s["count"] for s in m["shards"]]}, str(run), quiet=True)
    return cfg, run, ctx


def test_cyclegan_pools_survive_a_resume(tmp_path, ganforge_home):
    extra = ["model.g_channels=8", "model.d_channels=8", "model.pool_size=5", "train.batch_size=4",
             "data.builtin_samples=64", "data.builtin_shard_size=32"]
    cfg, run, _ = _local("cyclegan32", 4, tmp_path, *extra)
    state = torch.load(run / "checkpoint_0000004" / "state.pt", weights_only=True)
    pa, pb = state["family"]["pool_a"], state["family"]["pool_b"]
    assert len(pa) == len(pb) == 5 and pa.shape[1:] == (3, 16, 16)       # full after 16 images
    from pipeline import families

    fam = families.of(cfg)
    fam.load_state(state["family"])
    assert torch.equal(fam.state()["pool_a"], pa) and torch.equal(fam.state()["pool_b"], pb)
    # a run resumed from that checkpoint starts from those pools: resuming to step 6 equals an
    # unbroken 6-step run (pools, RNG and data position all restored)
    _, run6, _ = _local("cyclegan32", 6, tmp_path / "unbroken", *extra)
    import shutil
    shutil.copytree(run / "checkpoint_0000004", tmp_path / "resumed" / "cyclegan32" / "checkpoint_0000004")
    _, runr, ctx = _local("cyclegan32", 6, tmp_path / "resumed", *extra)
    assert [r["step"] for r in ctx.reports] == [5, 6]
    a = torch.load(run6 / "checkpoint_0000006" / "state.pt", weights_only=True)
    b = torch.load(runr / "checkpoint_0000006" / "state.pt", weights_only=True)
    for k in ("pool_a", "pool_b"):
        assert torch.equal(a["family"][k], b["family"][k]), k
    for k in a["nets"]["G_ab"]:
        assert torch.equal(a["nets"]["G_ab"][k], b["nets"]["G_ab"][k]), k


# Short runs the suite can afford (16 px, one thread); the bench trains longer.
SHORT = {
    "pix2pix32": (100, ["model.g_channels=16", "model.d_channels=16"], "glyph_acc", 0.2),
    "cyclegan32": (150, ["model.g_channels=16", "model.d_channels=16"], "glyph_acc", 0.14),
    "stargan32": (60, ["model.g_channels=16", "model.d_channels=16", "optim.d_steps_per_g=2"], "domain_acc", 0.5),
}


@pytest.mark.parametrize("preset", sorted(SHORT))
def test_short_run_beats_chance_by_the_oracle(preset, tmp_path, ganforge_home):
    steps, extra, key, floor = SHORT[preset]
    _, run, _ = _local(preset, steps, tmp_path, "data.builtin_samples=1024", *extra)
    gen = GM.load(run / f"checkpoint_{steps:07d}")
    scores = T.builtin_oracle(gen, n=300)
    print(preset, scores)
    # chance: glyph_acc 0.1 (one of 10 glyphs per channel), domain_acc 1/3
    assert scores[key] > floor, scores


def test_fid_against_the_target_domain_and_paired_scores():
    from pipeline.evaluation.extractors import small

    ex = small.load()
    filled = torch.from_numpy(shapepairs.generate(200, 16, 1, "filled")[0]).permute(0, 3, 1, 2)
    other = torch.from_numpy(shapepairs.generate(200, 16, 2, "filled")[0]).permute(0, 3, 1, 2)
    outline = torch.from_numpy(shapepairs.generate(200, 16, 1, "outline")[0]).permute(0, 3, 1, 2)
    same, protocol = T.fid_against(filled, other, ex)
    wrong, _ = T.fid_against(outline, other, ex)
    assert 0 <= same < wrong and protocol["extractor"] == ex.name and protocol["n_translated"] == 200
    assert T.fid_against(filled, filled, ex)[0] == pytest.approx(0, abs=1e-6)
    exact = T.paired_scores(filled, filled)
    assert exact["l1"] == 0 and exact["ssim"] == pytest.approx(1, abs=1e-4)
    off = T.paired_scores(outline, filled)
    assert off["l1"] > 0.05 and off["ssim"] < 0.9 and np.isfinite(off["psnr"]) and off["psnr"] < exact["psnr"]
