"""The coverage options' mechanics (issue 17): PacGAN packing and minibatch-stddev in the direct
families' discriminators, and the config checks that guard them."""
import pytest
import torch

import models
from models.biggan import BigGANConfig
from models.biggan_deep import BigGANDeepConfig
from models.dcgan import DCGANConfig, Discriminator
from pipeline.config import ConfigError, from_dict


def _first_input(D, x, y=None):
    """What D's first layer receives, and D's output."""
    first = next(m for m in D.modules() if isinstance(m, torch.nn.Conv2d))
    seen = []
    h = first.register_forward_pre_hook(lambda m, a: seen.append(a[0]))
    out = D(x, y)
    h.remove()
    return seen[0], out


@pytest.mark.parametrize("make", [
    lambda p: Discriminator(DCGANConfig(resolution=16, d_channels=8, pack=p, d_norm="none")),
    lambda p: models.build(BigGANConfig(resolution=32, ch=4, pack=p))["D"],
    lambda p: models.build(BigGANDeepConfig(resolution=32, ch=4, pack=p))["D"],
], ids=["dcgan", "biggan", "biggan_deep"])
def test_packing_stacks_m_samples_on_the_channel_axis_and_judges_each_pack_once(make):
    # (d_norm none: batch norm would mix samples across packs in its statistics)
    torch.manual_seed(0)
    res = 16 if isinstance(make(1), Discriminator) else 32
    x = torch.randn(6, 3, res, res, requires_grad=True)
    seen, out = _first_input(make(3), x)
    assert seen.shape == (2, 9, res, res) and out.shape == (2,)
    assert torch.equal(seen[1, 3:6], x[4])            # pack 1 holds samples 3, 4, 5 in order
    # Each logit depends on its own pack's samples and on no other.
    g = torch.autograd.grad(out[0], x)[0].abs().sum((1, 2, 3))
    assert (g[:3] > 0).all() and (g[3:] == 0).all()
    assert _first_input(make(1), x)[0].shape == (6, 3, res, res)


def test_a_conditional_pack_projects_its_labels_summed():
    torch.manual_seed(0)
    D = Discriminator(DCGANConfig(resolution=16, d_channels=8, num_classes=10, pack=2, spectral_norm=True)).eval()
    x = torch.randn(4, 3, 16, 16)
    a = D(x, torch.tensor([1, 2, 3, 4]))
    assert torch.allclose(a, D(x, torch.tensor([2, 1, 3, 4])))   # a pack's labels as a set
    b = D(x, torch.tensor([1, 5, 3, 4]))
    assert not torch.isclose(a[0], b[0]) and torch.isclose(a[1], b[1])


def test_minibatch_stddev_adds_one_channel_holding_the_groups_std():
    torch.manual_seed(0)
    D = Discriminator(DCGANConfig(resolution=16, d_channels=8, mbstd_group=2))
    plain = Discriminator(DCGANConfig(resolution=16, d_channels=8))
    x = torch.randn(4, 3, 16, 16)
    h, body = D.features(x), D.features[:-1](x)
    assert h.shape[1] == plain.features(x).shape[1] + 1 == body.shape[1] + 1
    # Samples i and i + 2 form a group (group 2 of a batch of 4); the channel is their std,
    # averaged over features and pixels, the same at every pixel.
    want = (body.reshape(2, 2, *body.shape[1:]).var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))
    assert torch.allclose(h[:, -1, 0, 0], want.repeat(2)) and (h[:, -1] == h[:, -1, :1, :1]).all()
    same = D.features(x[:1].expand(4, -1, -1, -1))
    assert same[:, -1].abs().max() < 1e-3           # identical samples: no spread, so D can tell
    assert D.out.in_features == plain.out.in_features + 16


def _cfg(model, batch=32):
    return from_dict({"model": {"resolution": 16, "z_dim": 8, "g_channels": 8, "d_channels": 8, **model},
                      "data": {"resolution": 16}, "train": {"batch_size": batch}})


def test_pack_is_checked_against_the_batch_and_the_family():
    assert _cfg({"name": "dcgan", "pack": 4}).model.pack == 4
    with pytest.raises(ConfigError, match=r"train\.batch_size.*30 does not divide into packs of model\.pack=4"):
        _cfg({"name": "dcgan", "pack": 4}, batch=30)
    for name in ("acgan", "infogan"):
        with pytest.raises(ConfigError, match=r"model\.pack.*predicts per sample"):
            _cfg({"name": name, "pack": 2})
    with pytest.raises(ConfigError, match="pack"):
        _cfg({"name": "dcgan", "pack": 0})


def test_mode_seeking_pairs_samples_of_one_class_and_punishes_a_g_that_ignores_z():
    from pipeline.engine import regularizers
    from pipeline.engine.loop import build, run_phase
    from pipeline.families.spec import Ctx, Phase

    z = torch.randn(8, 4)
    same = torch.ones(8, 3, 4, 4)                      # G(z1) == G(z2): ignores z
    spread = torch.randn(8, 3, 4, 4)
    assert regularizers.mode_seeking(same, z) > 1e4 > regularizers.mode_seeking(spread, z)
    # The ratio is d_I / d_z per pair: doubling every image's spread halves the term.
    assert torch.isclose(regularizers.mode_seeking(2 * spread, z), regularizers.mode_seeking(spread, z) / 2, rtol=1e-3)

    cfg = from_dict({"model": {"name": "dcgan", "resolution": 16, "z_dim": 8, "g_channels": 8, "d_channels": 8,
                               "num_classes": 10, "d_norm": "none"},
                     "data": {"resolution": 16}, "loss": {"mode_seeking_weight": 1.0}})
    fam, nets, _, _ = build(cfg, torch.device("cpu"))
    seen = []
    nets["G"].register_forward_hook(lambda m, a, out: seen.append((a[0].clone(), a[1].clone(), out.detach())))
    batch = {"image": torch.zeros(6, 3, 16, 16), "cls": torch.tensor([1, 2, 3, 4, 5, 6])}
    opt = torch.optim.Adam(nets["G"].parameters(), lr=1e-3)
    stats = run_phase(fam, Phase("G", "G"), nets, {"G": opt}, batch, Ctx(step=1, device=torch.device("cpu")))
    z, y, fake = seen[0]
    assert torch.equal(y, torch.tensor([1, 2, 3, 1, 2, 3]))      # sample i and i + 3 share a class
    assert torch.isclose(stats["mode_seeking"], regularizers.mode_seeking(fake, z))


def test_mode_seeking_is_refused_where_the_g_loss_does_not_apply_it():
    with pytest.raises(ConfigError, match=r"loss\.mode_seeking_weight.*own G loss"):
        from_dict({"model": {"name": "acgan", "resolution": 16}, "data": {"resolution": 16},
                   "loss": {"mode_seeking_weight": 1.0}})
    with pytest.raises(ConfigError, match=r"loss\.mode_seeking_weight"):
        from_dict({"model": {"name": "stylegan2", "resolution": 16}, "data": {"resolution": 16},
                   "loss": {"mode_seeking_weight": 1.0}})


def test_the_quality_benchmark_keeps_the_end_of_an_lr_decay(monkeypatch):
    # bench/quality.py lets its wall clock end a run by overriding train.steps; where the lr
    # decays to 0 at train.steps that would stretch the decay over 10^8 steps, so that the
    # README's command for vaegan32_coverage ran it at a constant lr.
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    from clocked import budget_steps

    assert budget_steps("vaegan32_coverage", []) == []
    assert budget_steps("pacgan32", []) == ["train.steps=100000000"]
    assert budget_steps("pacgan32", ["optim.lr_decay_from=3000", "train.steps=9200"]) == []


def test_the_quality_benchmark_keeps_each_scored_checkpoint_for_ganforge_evaluate(monkeypatch, tmp_path):
    # Its runs train in a temporary folder; --keep copies what each mark scored, so a mark can be
    # scored again (more samples, other seeds) after the run.
    from pathlib import Path
    monkeypatch.syspath_prepend(str(Path(__file__).resolve().parents[1] / "bench"))
    import quality

    from jobs.eval_cli import load_generator

    rows = quality.run("smoke+train.steps=4", [], [60.0], 200, "cpu", tmp_path / "work", tmp_path, tmp_path / "keep")
    assert [r["step"] for r in rows] == [4]                 # train.steps ends it before the 60-minute mark
    kept = sorted((tmp_path / "keep" / "smoke_train.steps=4").iterdir())
    assert [p.name for p in kept] == ["checkpoint_0000004"]
    assert load_generator(str(kept[0])).step == 4
