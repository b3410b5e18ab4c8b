"""StyleGAN2: networks at 32 px, the modulated convolution, the lazy phases through the local
engine, pl_mean across a resume, truncation in w space, config errors. No Ray; tiny configs."""
from __future__ import annotations

import dataclasses

import pytest
import torch
import torch.nn.functional as F

from models.stylegan2 import StyleGAN2Config, build, modulated_conv2d
from pipeline import config as C
from pipeline import families
from pipeline.engine import loop
from pipeline.engine.checkpoint import load
from pipeline.engine.context import checkpoints, train_local
from pipeline.families import sampling

TINY = {"resolution": 16, "z_dim": 16, "w_dim": 16, "mapping_layers": 2, "channel_base": 128,
        "channel_max": 8}


def _cfg(steps=16, model=None, **loss):
    return C.from_dict({
        "model": {"name": "stylegan2", **TINY, **(model or {})},
        "loss": {"kind": "nonsaturating", **loss}, "optim": {"ema_decay": 0.9},
        "data": {"resolution": (model or {}).get("resolution", 16), "loader_workers": 0, "shuffle_buffer": 0},
        "train": {"steps": steps, "batch_size": 4, "log_every": 4, "checkpoint_every": 4,
                  "sample_every": 0, "seed": 1},
        "tracking": {"samples": 4}, "scaling": {"num_workers": 1}})


# Tiny convolutions on one thread (conftest's one_torch_thread); data: conftest's tiny_shards16.
pytestmark = pytest.mark.usefixtures("one_torch_thread")


def test_forward_backward_at_32px():
    torch.manual_seed(0)
    cfg = StyleGAN2Config(**{**TINY, "resolution": 32, "num_classes": 3})
    nets = build(cfg)
    G, D = nets["G"], nets["D"]
    z, y = torch.randn(4, 16), torch.tensor([0, 1, 2, 0])
    img, ws = G(z, y, z2=torch.randn(4, 16), cutoff=3, return_ws=True)
    assert img.shape == (4, 3, 32, 32) and ws.shape == (4, cfg.num_ws, 16) and cfg.num_ws == 8
    assert torch.equal(ws[:, 0], ws[:, 2]) and not torch.equal(ws[:, 2], ws[:, 3])   # mixed at 3
    out = D(img, y)
    assert out.shape == (4,)
    out.sum().backward()
    for name, p in list(G.named_parameters()) + list(D.named_parameters()):
        if p.requires_grad:
            assert p.grad is not None and torch.isfinite(p.grad).all(), name
    mod = G.layers[3].conv                                    # a modulated conv and its affine
    assert mod.weight.grad.abs().sum() > 0 and mod.affine.weight.grad.abs().sum() > 0
    with pytest.raises(ValueError, match="needs labels"):
        G(z)


def test_modulated_conv_is_per_sample_conv_and_demodulation_normalises():
    torch.manual_seed(0)
    x, weight, styles = torch.randn(3, 8, 64, 64), torch.randn(5, 8, 3, 3), torch.rand(3, 8) + 0.1
    got = modulated_conv2d(x, weight, styles, demodulate=True, padding=1)
    for i in range(3):                                        # the grouped conv = a conv per sample
        w = weight * styles[i][None, :, None, None]
        w = w / w.square().sum((1, 2, 3), keepdim=True).sqrt()     # each output kernel: unit L2 norm
        assert torch.allclose(got[i:i + 1], F.conv2d(x[i:i + 1], w, padding=1), atol=1e-4)
    # Demodulated: the style's scale cancels, and unit-variance inputs give unit-variance outputs.
    assert torch.allclose(modulated_conv2d(x, weight, styles * 10, padding=1), got, atol=1e-4)
    assert got[:, :, 1:-1, 1:-1].std((0, 2, 3)).sub(1).abs().max() < 0.1
    plain = modulated_conv2d(x, weight, styles * 10, demodulate=False, padding=1)
    assert plain.std() > 5 * got.std()


def test_lazy_phases_run_at_their_intervals(tiny_shards16, tmp_path, monkeypatch):
    fam_cls = families.get("stylegan2")
    calls, loss = [], fam_cls.loss
    monkeypatch.setattr(fam_cls, "loss", lambda self, ph, nets, b, ctx: (
        calls.append((ctx.step, ph.name)), loss(self, ph, nets, b, ctx))[1])
    cfg = _cfg(16, {"pl_every": 4}, r1_gamma=1.0, r1_every=8)
    _, ctx = train_local(cfg, tiny_shards16, tmp_path / "run", quiet=True)
    by = lambda name: [s for s, n in calls if n == name]                     # noqa: E731
    assert by("Dmain") == by("Gmain") == list(range(1, 17))
    assert by("Dreg") == [8, 16] and by("Greg") == [4, 8, 12, 16]
    assert [n for s, n in calls if s == 16] == ["Dmain", "Dreg", "Gmain", "Greg"]
    assert {"r1", "pl_penalty", "pl_mean", "loss_g", "loss_d"} <= set(ctx.reports[-1])
    # The lazy phases' optimizers get StyleGAN2's correction c = N / (N + 1).
    _, _, _, opts = loop.build(cfg, torch.device("cpu"))
    g, d = opts["G"].param_groups[0], opts["D"].param_groups[0]
    assert g["lr"] == pytest.approx(2e-4 * 4 / 5) and d["lr"] == pytest.approx(2e-4 * 8 / 9)
    assert g["betas"] == pytest.approx((0.5 ** 0.8, 0.999 ** 0.8)) and d["betas"][1] == pytest.approx(0.999 ** (8 / 9))


def test_pl_mean_is_state_and_survives_a_resume(tiny_shards16, tmp_path, monkeypatch):
    cfg, run = _cfg(8, {"pl_every": 2}), tmp_path / "run"
    train_local(_cfg(4, {"pl_every": 2}), tiny_shards16, run, quiet=True)
    first = load(checkpoints(run)[-1])["family"]["pl_mean"]
    assert first.dtype == torch.float32 and first > 0
    fam = families.of(cfg)
    fam.load_state({"pl_mean": first})
    assert torch.equal(fam.state()["pl_mean"], first)
    fam_cls, greg, seen = families.get("stylegan2"), families.get("stylegan2")._loss_Greg, []
    monkeypatch.setattr(fam_cls, "_loss_Greg", lambda self, *a: (seen.append(self.pl_mean.clone()),
                                                                 greg(self, *a))[1])
    train_local(cfg, tiny_shards16, run, quiet=True)                # resumes at step 4, Greg at 6 and 8
    assert len(seen) == 2 and torch.equal(seen[0], first)    # the first Greg continues it exactly
    last = load(checkpoints(run)[-1])["family"]["pl_mean"]
    assert last.item() != first.item()


def test_truncation_acts_in_w_space():
    torch.manual_seed(0)
    cfg = _cfg(model={"num_classes": 2})
    fam = families.of(cfg)
    G = fam.build()["G"]
    G.mapping.w_avg.copy_(torch.randn(16))
    nets = {"G": G}
    assert list(fam.inputs()) == ["z", "cls", "psi"]
    avg = sampling.images(fam, nets, 0, 6, seed=3, truncation=0.0)
    centre = G.synthesis(G.mapping.w_avg.expand(1, G.num_ws, -1), noise="const").clamp(-1, 1)
    assert torch.allclose(avg, centre.expand(6, -1, -1, -1), atol=1e-5)       # every latent -> w_avg
    plain = sampling.images(fam, nets, 0, 6, seed=3)
    assert torch.equal(sampling.images(fam, nets, 0, 6, seed=3, truncation=1.0), plain)
    assert not torch.allclose(plain[0], plain[1])
    half = sampling.images(fam, nets, 0, 6, seed=3, truncation=0.5)
    assert (half - avg).abs().mean() < (plain - avg).abs().mean()
    # z is not redrawn: psi is an input of its own, not a truncated normal.
    x = sampling.inputs(fam.inputs(), 0, 4, seed=3, truncation=0.5)
    assert torch.equal(x["z"], sampling.inputs(fam.inputs(), 0, 4, seed=3)["z"])
    assert torch.equal(x["psi"], torch.full((4,), 0.5))
    with pytest.raises(ValueError, match="psi: set it with truncation"):
        sampling.inputs(fam.inputs(), 0, 4, fixed={"psi": 0.5})
    with pytest.raises(ValueError, match="truncation: -1"):
        sampling.inputs(fam.inputs(), 0, 4, truncation=-1)


def test_w_avg_follows_the_fakes_of_d_steps_only():
    torch.manual_seed(0)
    fam = families.of(_cfg())
    nets = fam.build()
    from pipeline.families.spec import Ctx, Phase
    batch, ctx = {"image": torch.rand(4, 3, 16, 16) * 2 - 1}, Ctx(step=1, device=torch.device("cpu"))
    w_avg = nets["G"].mapping.w_avg
    fam.loss(Phase("Gmain", "G"), nets, batch, ctx)
    assert not w_avg.any()
    fam.loss(Phase("Dmain", "D"), nets, batch, ctx)
    assert w_avg.abs().sum() > 0


@pytest.mark.parametrize("override, key", [
    ({"resolution": 48}, "model.resolution: 48 must be a power of two in [16, 1024]"),
    ({"mixing_prob": 1.5}, "model.mixing_prob: 1.5 not in [0, 1]"),
    ({"pl_every": 0}, "model.pl_every: must be >= 1"),
    ({"channel_base": 8}, "model.channel_base: 8 gives no channels at 16 px"),
    ({"w_dimm": 3}, "model.w_dimm: unknown key"),
])
def test_config_errors_name_the_key(override, key):
    d = C.to_dict(_cfg())
    d["model"].update(override)
    with pytest.raises(C.ConfigError) as e:
        C.from_dict(d)
    assert str(e.value).startswith(key)


def test_presets_load():
    for name in ("stylegan2_32", "stylegan2_256"):
        cfg = C.load(name)
        assert families.name_of(cfg.model) == "stylegan2"
        assert dataclasses.asdict(cfg.model)["resolution"] == cfg.data.resolution
    big = C.load("stylegan2_256")
    assert big.scaling.use_gpu and big.model.num_ws == 14 and big.loss.r1_every == 16
