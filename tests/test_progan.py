"""ProGAN: the phase schedule, growing through resolutions with fade-in while training with the
pipeline's WGAN-GP phase functions, and resuming in the middle of a fade-in."""
import copy
import dataclasses

import pytest
import torch

import models
from models.layers import MinibatchStdDev, pixel_norm
from models.progan import progan_reals, progan_schedule
from pipeline import families
from pipeline.engine import ema
from phases import d_step, g_step
from pipeline.config import ConfigError, from_dict, load, to_dict


def _cfg(**kw):
    kw = {"resolution": 32, "z_dim": 16, "channel_max": 8, "phase_images": (8, 16, 16, 16),
          "phase_batch": (4, 4, 4, 4), "phase_lr": (1e-3, 1e-3, 2e-3, 2e-3), **kw}
    return models.config_class("progan")(**kw)


def test_schedule_fades_in_over_the_first_half_of_each_phase():
    cfg = _cfg()
    assert progan_schedule(cfg, 0) == (0, 1.0, 4, 1e-3)          # 4x4 has nothing to fade in
    assert progan_schedule(cfg, 8)[:2] == (1, 0.0)               # 8 px starts fully faded out
    assert progan_schedule(cfg, 12)[:2] == (1, 0.5)
    assert progan_schedule(cfg, 16)[:2] == (1, 1.0)              # second half: stable
    assert progan_schedule(cfg, 24)[:2] == (2, 0.0)
    s = progan_schedule(cfg, 10 ** 9)                            # stays at the last level
    assert s[:2] == (3, 1.0) and s.resolution == 32 and s.lr == 2e-3
    paper = models.config_class("progan")(resolution=256)
    assert progan_schedule(paper, 800_000 + 400_000)[:4] == (1, 0.5, None, None)


def test_grows_through_resolutions_with_fade_in_while_training():
    torch.manual_seed(0)
    cfg = _cfg(num_classes=3)
    n = models.build(cfg)
    G, D = n["G"], n["D"]
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    fam = families.of(from_dict({"model": {"name": "progan", **dataclasses.asdict(cfg)},
                                 "data": {"resolution": cfg.resolution},
                                 "loss": {"kind": "wasserstein", "gp_weight": 10.0, "drift_weight": 1e-3}}))
    nets = {"G": G, "D": D}
    opt_g = torch.optim.Adam(G.parameters(), 1e-3, betas=(0.0, 0.99))
    opt_d = torch.optim.Adam(D.parameters(), 1e-3, betas=(0.0, 0.99))
    data = torch.rand(4, 3, 32, 32) * 2 - 1
    seen, trace = 0, []
    while seen < sum(cfg.phase_images):
        level, alpha, batch, lr = progan_schedule(cfg, seen)
        for net in (G, D, G_ema):
            net.set_stage(level, alpha)
        for opt in (opt_g, opt_d):
            for group in opt.param_groups:
                group["lr"] = lr
        real, y = progan_reals(data[:batch], level, alpha), torch.randint(0, 3, (batch,))
        stats = d_step(fam, nets, opt_d, real, y)
        stats.update(g_step(fam, nets, opt_g, batch, y))
        ema.update(G_ema, G, 0.9)
        assert all(torch.isfinite(v) for v in stats.values())
        fake = G_ema(torch.randn(2, G.z_dim), y[:2])
        assert fake.shape[-1] == real.shape[-1] == 4 * 2 ** level
        trace.append((level, alpha))
        seen += batch
    assert sorted({lv for lv, _ in trace}) == [0, 1, 2, 3]          # 4 resolutions
    for lv in (1, 2, 3):
        alphas = [a for level, a in trace if level == lv]
        assert alphas[0] == 0.0 and alphas[-1] == 1.0 and alphas == sorted(alphas)
        assert any(0 < a < 1 for a in alphas)
    assert not any(p.requires_grad for p in G_ema.parameters())    # the EMA copy stays frozen


def test_stage_selects_trained_layers():
    G = models.build(_cfg())["G"]
    assert G.set_stage(2, 0.25) is True
    active = {i for i, r in enumerate(G.rgb) if r.weight.requires_grad}
    assert active == {1, 2}                                       # new and previous toRGB
    assert [b.conv1.weight.requires_grad for b in G.grow[1:]] == [True, True, False]
    assert G.set_stage(2, 0.5) is False                           # same layers, new alpha
    G.set_stage(2, 1.0)
    assert {i for i, r in enumerate(G.rgb) if r.weight.requires_grad} == {2}


def test_resume_mid_fade_in_restores_stage_and_outputs():
    torch.manual_seed(0)
    cfg = _cfg()
    n = models.build(cfg)
    level, alpha, *_ = progan_schedule(cfg, 8 + 16 + 3)          # level 2, alpha 3/8
    assert level == 2 and 0 < alpha < 1
    for net in n.values():
        net.set_stage(level, alpha)
    state = {k: copy.deepcopy(v.state_dict()) for k, v in n.items()}
    fresh = models.build(cfg)                                      # built at the final stage
    for k, net in fresh.items():
        net.load_state_dict(state[k])
        assert net._level == level and net._fading and float(net.alpha) == pytest.approx(alpha)
        assert net.current_resolution == 16
    z = torch.randn(4, cfg.z_dim)
    assert torch.equal(fresh["G"](z), n["G"](z))
    x = n["G"](z).detach()
    assert torch.equal(fresh["D"](x), n["D"](x))
    assert {i for i, r in enumerate(fresh["G"].rgb) if r.weight.requires_grad} == {1, 2}


def test_reals_follow_the_stage():
    x = torch.rand(2, 3, 32, 32)
    assert progan_reals(x, 3, 1.0) is x
    low = progan_reals(x, 1, 1.0)
    assert low.shape[-1] == 8 and torch.allclose(low.mean(), x.mean(), atol=1e-6)
    faded = progan_reals(x, 2, 0.0)                               # alpha 0: the 8 px image, upsampled
    up = torch.nn.functional.interpolate(progan_reals(x, 1, 1.0), scale_factor=2.0)
    assert torch.allclose(faded, up)
    D = models.build(_cfg())["D"]
    with pytest.raises(ValueError, match="32 px"):
        D(low)


def test_progan_layers():
    h = pixel_norm(torch.randn(2, 8, 4, 4) * 5)
    assert torch.allclose(h.square().mean(1), torch.ones(2, 4, 4), atol=1e-4)
    out = MinibatchStdDev(4)(torch.randn(6, 5, 4, 4))            # 6 does not divide by 4: groups of 2
    assert out.shape == (6, 6, 4, 4)
    G = models.build(_cfg())["G"]
    w = G.grow[1].conv1
    assert w.weight.std().item() == pytest.approx(1.0, abs=0.1)   # N(0, 1), scaled at runtime
    assert w.scale == pytest.approx(2 ** 0.5 / (w.weight[0].numel()) ** 0.5)


def test_presets_and_config_errors():
    for preset in ("progan256", "progan32"):
        cfg = load(preset)
        assert from_dict(to_dict(cfg)) == cfg
    assert load("progan256").model.width(256) == 64
    with pytest.raises(ConfigError, match="model.phase_images"):
        from_dict({"model": {"name": "progan", "resolution": 32, "phase_images": [1, 2]},
                   "data": {"resolution": 32}})
    with pytest.raises(ConfigError, match="model.resolution"):
        from_dict({"model": {"name": "progan", "resolution": 48}, "data": {"resolution": 48}})
