"""Augmentation (config `aug`): DiffAugment ops and the ADA pipeline are differentiable and keep
[-1, 1]; p = 0 is the identity; p's steering; p across a local resume; kind=none leaves a DCGAN
step bit-identical; config errors name the key. No Ray; 16 px, a few steps."""
from __future__ import annotations

import pytest
import torch

from pipeline import augment as A
from pipeline import config as C
from pipeline import families
from pipeline.engine.checkpoint import load
from pipeline.engine.context import checkpoints, train_local


# Tiny convolutions on one thread (conftest's one_torch_thread); data: conftest's tiny_shards16.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def _x():
    torch.manual_seed(0)
    return (torch.rand(8, 3, 16, 16) * 2 - 1).requires_grad_(True)


@pytest.mark.parametrize("op", [A.color, A.translation, A.cutout, A.DiffAugment("color,translation,cutout"),
                                A.ADA(0.6, 500, p=1.0), A.ADA(0.6, 500, p=0.5), A.ADA(0.6, 500, p=1.0, pipeline="bg")],
                         ids=["color", "translation", "cutout", "diffaugment", "ada_p1", "ada_p05", "ada_bg"])
def test_differentiable_and_in_range(op):
    x = _x()
    y = op(x)
    assert y.shape == x.shape and y.min() >= -1 and y.max() <= 1
    (g,) = torch.autograd.grad(y.sum(), x)
    assert torch.isfinite(g).all() and g.abs().sum() > 0
    assert not torch.equal(y.detach(), x.detach())


def test_ada_p0_is_identity():
    x = _x()
    assert A.ADA(0.6, 500, p=0.0)(x) is x
    assert torch.equal(A.ADA(0.6, 500, p=1e-12)(x), x)     # nothing drawn: every sample untouched


def test_ada_bg_pipeline_moves_pixels_but_never_changes_colours():
    # Geometric transforms only permute and resample pixels: a grey image stays grey, and an
    # image of one colour keeps that colour everywhere (bgc's luma flip would invert it).
    torch.manual_seed(0)
    flat = torch.full((64, 3, 16, 16), 0.8)
    assert torch.allclose(A.ADA(0.6, 500, p=1.0, pipeline="bg")(flat), flat)
    assert not torch.allclose(A.ADA(0.6, 500, p=1.0)(flat), flat)                     # bgc recolours
    grey = (torch.rand(8, 1, 16, 16) * 2 - 1).expand(-1, 3, -1, -1)
    y = A.ADA(0.6, 500, p=1.0, pipeline="bg")(grey)
    assert torch.equal(y[:, 0], y[:, 1]) and torch.equal(y[:, 1], y[:, 2]) and not torch.equal(y, grey)
    assert A.build(C.load("smoke", ["aug.kind=ada", "aug.ada_pipeline=bg"]).aug).color is False
    with pytest.raises(C.ConfigError, match="aug.ada_pipeline"):
        C.load("smoke", ["aug.ada_pipeline=bgcfn"])


def test_diffaugment_goes_over_reals_and_fakes(monkeypatch):
    cfg = C.load("smoke", ["aug.kind=diffaugment", "model.num_classes=0"])
    fam = families.of(cfg)
    nets = fam.build()
    seen = []
    aug = fam.augment
    monkeypatch.setattr(fam, "augment", lambda x: (seen.append(x.shape), aug(x))[1])
    batch = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}
    from pipeline.families.spec import Ctx
    ctx = Ctx(step=1, device=torch.device("cpu"))
    fam._loss_D(nets, batch, ctx)
    assert len(seen) == 2                                   # the reals and the fakes
    fam._loss_G(nets, batch, ctx)
    assert len(seen) == 3                                   # G's fakes too


def test_ada_p_steering():
    a = A.ADA(0.6, speed_kimg=1, p=0.0)
    a.update(0.9, 100)                                      # above target: up by 100 / 1000
    assert a.p == pytest.approx(0.1)
    a.update(0.8, 50)
    assert a.p == pytest.approx(0.15)
    a.update(0.1, 100)                                      # below: down by 100 / 1000
    assert a.p == pytest.approx(0.05)
    a.update(0.1, 100)                                      # clamped at 0
    assert a.p == 0.0
    a = A.ADA(0.6, speed_kimg=1, p=0.95, p_max=1.0)
    a.update(1.0, 200)
    assert a.p == 1.0                                       # clamped at p_max
    assert a.metrics() == {"aug_p": 1.0} and a.state() == {"aug_p": 1.0}


def _cfg(steps, **aug):
    return C.load("smoke", [f"train.steps={steps}", "train.log_every=2", "train.checkpoint_every=4",
                            "train.sample_every=0", "train.batch_size=4", "data.loader_workers=0",
                            "data.shuffle_buffer=0", "scaling.num_workers=1", "tracking.samples=4",
                            *(f"aug.{k}={v}" for k, v in aug.items())])


def test_ada_p_survives_a_resume(tiny_shards16, tmp_path):
    run = tmp_path / "run"
    kw = dict(kind="ada", ada_speed_kimg=0.05, ada_target=0.1, ada_p_init=0.5)   # +-0.16 a log
    _, c1 = train_local(_cfg(4, **kw), tiny_shards16, run, quiet=True)
    saved = load(checkpoints(run)[-1])["family"]["aug_p"]
    assert saved == c1.reports[-1]["aug_p"] and "ada_sign" in c1.reports[-1]
    assert 0 < saved < 1 and saved != 0.5
    fam = families.of(_cfg(8, **kw))
    fam.load_state({"aug_p": saved})
    assert fam.state() == {"aug_p": saved}
    _, c2 = train_local(_cfg(8, **kw), tiny_shards16, run, quiet=True)
    first = c2.reports[0]
    assert first["step"] == 6
    step = 8 / 50 * (1 if first["ada_sign"] > 0.1 else -1 if first["ada_sign"] < 0.1 else 0)
    assert first["aug_p"] == pytest.approx(min(max(saved + step, 0.0), 1.0))
    assert load(checkpoints(run)[-1])["family"]["aug_p"] == c2.reports[-1]["aug_p"]


def test_kind_none_is_bit_identical(tiny_shards16, tmp_path):
    _, a = train_local(_cfg(2), tiny_shards16, tmp_path / "a", quiet=True)
    _, b = train_local(_cfg(2, kind="none"), tiny_shards16, tmp_path / "b", quiet=True)
    _, d = train_local(_cfg(2, kind="diffaugment"), tiny_shards16, tmp_path / "d", quiet=True)
    pick = lambda r: {k: v for k, v in r.items() if k != "images_per_s"}  # noqa: E731
    assert pick(a.reports[-1]) == pick(b.reports[-1]) and "aug_p" not in a.reports[-1]
    assert pick(d.reports[-1])["loss_d"] != pick(a.reports[-1])["loss_d"]
    sa = load(checkpoints(tmp_path / "a")[-1])
    sb = load(checkpoints(tmp_path / "b")[-1])
    assert sa["family"] == sb["family"] == {}
    for k, v in sa["nets"]["D"].items():
        assert torch.equal(v, sb["nets"]["D"][k]), k


@pytest.mark.parametrize("override,key", [("aug.kind=adaptive", "aug.kind"), ("aug.ada_target=1.5", "aug.ada_target"),
                                          ("aug.policy=color,blur", "aug.policy"),
                                          ("aug.ada_speed_kimg=0", "aug.ada_speed_kimg"),
                                          ("aug.ada_p_init=0.9", "aug.ada_p_init")])
def test_config_errors_name_the_key(override, key):
    extra = ["aug.ada_p_max=0.5"] if key == "aug.ada_p_init" else []
    with pytest.raises(C.ConfigError, match=f"^{key}"):
        C.load("smoke", [override, *extra])


def test_aug_round_trips():
    cfg = C.load("smoke", ["aug.kind=ada", "aug.ada_target=0.7"])
    d = C.to_dict(cfg)
    assert d["aug"]["kind"] == "ada" and C.flatten(d)["aug.ada_target"] == 0.7
    assert C.from_dict(d) == cfg
