"""`ganforge sample --code` fixes one latent code; the CLI, the Generator and the pyfunc columns
agree; unknown codes and out-of-range values get a message naming them. A format-1 checkpoint
(before families) resumes through the engine."""
from __future__ import annotations

import torch
from torchvision.io import decode_png

from jobs.cli import main
from pipeline import config as C
from pipeline import families
from pipeline.engine import checkpoint
from pipeline.engine.context import train_local
from pipeline.families import generator as GM


def _infogan_folder(tmp_path):
    cfg = C.load("infogan32", ["model.g_channels=8", "model.d_channels=8"])
    fam = families.of(cfg)
    gen = GM.Generator(fam, {"G": fam.build()["G"]}, cfg)
    GM.write_folder(gen, cfg, tmp_path / "gen", step=1)
    return tmp_path / "gen", gen


def test_sample_code_flag_fixes_one_code(tmp_path, capsys):
    folder, gen = _infogan_folder(tmp_path)
    assert main(["sample", str(folder), "--n", "4", "--seed", "2", "--code", "cat0=3", "--code", "cont0=0.5",
                 "--out", str(tmp_path / "g.png"), "--individual"]) == 0
    want = gen.sample(4, seed=2, fixed={"cat0": 3, "cont0": 0.5})
    got = torch.stack([decode_png(torchvision_read(tmp_path / "g" / f"{i:04d}.png")) for i in range(4)])
    assert torch.equal(got, want)
    assert not torch.equal(want, gen.sample(4, seed=2, fixed={"cat0": 4, "cont0": 0.5}))   # the code matters


def torchvision_read(p):
    from torchvision.io import read_file
    return read_file(str(p))


def test_bad_codes_are_named(tmp_path, capsys):
    folder, _ = _infogan_folder(tmp_path)
    for code, msg in (["cat7=1", "cat7: not an input of this generator"], ["cat0=10", "cat0: 10 not an integer in [0, 9]"],
                      ["cont0=3", "cont0: 3 not in [-1, 1]"], ["cat0", "expected NAME=VALUE"]):
        assert main(["sample", str(folder), "--code", code, "--out", str(tmp_path / "x.png")]) == 1
        assert msg in capsys.readouterr().err
    assert not (tmp_path / "x.png").exists()


def test_format_1_checkpoint_resumes_through_the_engine(tmp_path, smoke_shards):
    from pipeline.data import resolve_shards

    cfg = C.load("smoke", ["train.steps=2", "train.checkpoint_every=2", "data.loader_workers=0", "scaling.num_workers=1"])
    urls, _ = resolve_shards(str(smoke_shards))
    train_local(cfg, {"urls": urls, "counts": None}, tmp_path / "a", quiet=True)
    new = checkpoint.load(tmp_path / "a" / "checkpoint_0000002")
    old = {k: v for k, v in new.items() if k not in ("format", "nets", "ema", "optim", "family")}
    old.update(G=new["nets"]["G"], D=new["nets"]["D"], G_ema=new["ema"]["G"], opt_g=new["optim"]["G"],
               opt_d=new["optim"]["D"])               # the layout ganforge wrote before families
    checkpoint.save(old, tmp_path / "old")
    cfg4 = C.load("smoke", ["train.steps=4", "train.checkpoint_every=2", "data.loader_workers=0", "scaling.num_workers=1"])
    _, ctx = train_local(cfg4, {"urls": urls, "counts": None}, tmp_path / "b", resume_from=str(tmp_path / "old"),
                         quiet=True)
    assert [r["step"] for r in ctx.reports] == [4]          # resumed after step 2
    resumed = checkpoint.load(tmp_path / "b" / "checkpoint_0000004")
    assert resumed["format"] == checkpoint.FORMAT and set(resumed["nets"]) == {"G", "D"}
    try:
        checkpoint.unpack({"format": 7, "x": 1}, "ckpt/")
    except checkpoint.CheckpointError as e:
        assert "format 7" in str(e) and "ckpt/" in str(e)
    else:
        raise AssertionError("an unknown format must be refused")


def test_evaluate_scores_the_images_sample_writes(tmp_path):
    from pipeline.data.datasets.shapestack import oracle
    from pipeline.evaluation.metrics import collect
    from pipeline.evaluation.metrics.protocol import EvalConfig

    cfg = C.load("quickstart")
    fam = families.of(cfg)
    torch.manual_seed(0)
    gen = GM.Generator(fam, {"G": fam.build()["G"]}, cfg)
    for batch in (64, 16):                       # evaluate's batch size does not change the images
        _, part = collect.evaluate(gen, ["coverage"], cfg=EvalConfig(n_fake=100, batch_size=batch, seed=5,
                                                                     truncation=0.9), oracle=oracle)
        images = gen.sample(100, seed=5, truncation=0.9)
        assert (part.glyphs == oracle(images.float() / 127.5 - 1)).all()
        assert (part.labels == torch.arange(100) % 10).all()
