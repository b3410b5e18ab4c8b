"""Phases of the direct GAN family on fixed batches: each lowers its own loss and moves only its
own network; EMA; orthogonal regularization; lazy R1 as its own phase."""
import copy

import pytest
import torch

from pipeline.config import from_dict
from pipeline.engine import ema
from pipeline.engine.loop import build, run_phase
from pipeline.families.spec import Ctx, Phase

CPU = torch.device("cpu")


def _setup(num_classes=10, **loss):
    cfg = from_dict({"model": {"name": "dcgan", "resolution": 16, "z_dim": 8, "g_channels": 8,
                               "d_channels": 8, "num_classes": num_classes, "d_norm": "none"},
                     "data": {"resolution": 16}, "loss": loss})
    fam, nets, emas, _ = build(cfg, CPU)
    return fam, nets, emas


def _run(fam, nets, name, opt, batch):
    return run_phase(fam, Phase(name, name), nets, {name: opt}, batch, Ctx(step=1, device=CPU))


@pytest.mark.parametrize("kind, gp, r1", [("hinge", 0, 0), ("wasserstein", 10, 0), ("nonsaturating", 0, 1),
                                          ("least_squares", 0, 0)])
def test_d_step_lowers_d_loss_on_fixed_batch(kind, gp, r1):
    torch.manual_seed(0)
    fam, nets, _ = _setup(kind=kind, gp_weight=gp, r1_gamma=r1)
    opt = torch.optim.Adam(nets["D"].parameters(), lr=1e-3)
    batch = {"image": torch.rand(16, 3, 16, 16) * 2 - 1, "cls": torch.randint(0, 10, (16,))}
    first = _run(fam, nets, "D", opt, batch)
    for _ in range(15):
        last = _run(fam, nets, "D", opt, batch)
    assert last["loss_d"] < first["loss_d"]
    assert last["d_real"] > last["d_fake"]
    assert ("gp" in last) == (gp > 0) and ("r1" in last) == (r1 > 0)


def test_g_step_moves_only_g_and_fools_d_more():
    torch.manual_seed(0)
    fam, nets, _ = _setup(0, kind="nonsaturating")
    opt_g = torch.optim.Adam(nets["G"].parameters(), lr=1e-3)
    d_before = copy.deepcopy(nets["D"].state_dict())
    batch = {"image": torch.zeros(16, 3, 16, 16)}
    first = _run(fam, nets, "G", opt_g, batch)
    for _ in range(10):
        last = _run(fam, nets, "G", opt_g, batch)
    assert last["loss_g"] < first["loss_g"]
    assert all(torch.equal(v, nets["D"].state_dict()[k]) for k, v in d_before.items())


def test_a_phase_computes_no_gradients_for_networks_its_optimizer_does_not_step():
    # G's gradients reach it through D as before; D's own are not computed (they were thrown away
    # at D's next zero_grad), and the frozen network's flags are restored, also when a loss raises.
    torch.manual_seed(0)
    fam, nets, _ = _setup(0, kind="nonsaturating")
    ref = copy.deepcopy(nets)
    batch = {"image": torch.rand(8, 3, 16, 16) * 2 - 1}
    torch.manual_seed(1)
    _run(fam, nets, "G", torch.optim.SGD(nets["G"].parameters(), lr=0.0), batch)
    torch.manual_seed(1)
    loss, _ = fam.loss(Phase("G", "G"), ref, batch, Ctx(step=1, device=CPU))
    loss.backward()
    assert all(p.grad is not None for p in ref["D"].parameters())      # D is on G's path
    assert all(p.grad is None and p.requires_grad for p in nets["D"].parameters())
    for p, q in zip(nets["G"].parameters(), ref["G"].parameters(), strict=True):
        torch.testing.assert_close(p.grad, q.grad)
    with pytest.raises(RuntimeError):   # D's step freezes G; 5 channels fail in D's first conv
        _run(fam, nets, "D", torch.optim.SGD(nets["D"].parameters(), lr=0.0), {"image": torch.zeros(8, 5, 16, 16)})
    assert all(p.requires_grad for p in nets["G"].parameters())


def test_ema_step():
    _, nets, _ = _setup()
    G = nets["G"]
    avg = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    ema.update(avg, G, 0.75)
    p_ema, p_g = next(avg.parameters()), next(G.parameters())
    assert torch.allclose(p_ema, 0.75 * (p_g - 1) + 0.25 * p_g)
    ema.update(avg, G, 0.0)
    assert torch.equal(next(avg.parameters()), p_g)


def test_ema_rampup_follows_stylegan2_ada():
    # stylegan2-ada: ema_nimg = min(ema_kimg * 1000, cur_nimg * ema_rampup); beta = 0.5 ** (batch / ema_nimg)
    assert ema.decay_at(0.999, 0, 0.05, step=100, images_seen=3200, step_images=32) == pytest.approx(0.5 ** (32 / 160))
    assert ema.decay_at(0.999, 0, 0.05, step=10**6, images_seen=10**8, step_images=32) == 0.999   # capped
    assert ema.decay_at(0.999, 5, 0.05, step=5, images_seen=10**8, step_images=32) == 0.0        # not started
    assert ema.decay_at(0.999, 0, None, step=1, images_seen=32, step_images=32) == 0.999          # off


def test_ema_with_rampup_follows_g_closer_early_in_a_run(smoke_shards, tmp_path):
    from pipeline import config as C
    from pipeline.data import resolve_shards
    from pipeline.engine import checkpoint
    from pipeline.engine.context import checkpoints, train_local

    urls, _ = resolve_shards(str(smoke_shards))
    over = ["train.steps=4", "train.checkpoint_every=4", "train.sample_every=0", "scaling.num_workers=1",
            "optim.ema_decay=0.99"]

    def gap(*more):
        out = tmp_path / f"r{len(more)}"
        train_local(C.load("smoke", [*over, *more]), {"urls": urls, "counts": None}, out, quiet=True)
        state = checkpoint.load(checkpoints(out)[-1])
        return sum(float((state["nets"]["G"][k].float() - v.float()).abs().sum())
                   for k, v in state["ema"]["G"].items() if v.is_floating_point())

    # After 4 steps of 8 images, a 0.99 EMA still sits near G's start; ramped up (half-life
    # <= 0.05 x images seen, i.e. under 2 images) it has followed G.
    assert gap("optim.ema_rampup=0.05") < 0.1 * gap()


def test_g_step_applies_orthogonal_regularization():
    torch.manual_seed(0)
    fam, nets, _ = _setup(0, kind="hinge", ortho_weight=1.0)
    out = _run(fam, nets, "G", torch.optim.SGD(nets["G"].parameters(), lr=0.0), {"image": torch.zeros(4, 3, 16, 16)})
    assert out["ortho"] > 0


def test_lazy_r1_is_its_own_phase_with_corrected_optimizer():
    fam, nets, _ = _setup(kind="hinge", r1_gamma=2.0, r1_every=4)
    phases = {p.name: p for p in fam.phases()}
    assert phases["Dreg"].every == 4 and phases["Dreg"].lazy and not phases["Dreg"].new_batch
    assert [s for s in range(1, 13) if phases["Dreg"].due(s)] == [4, 8, 12]
    opts = fam.optimizers(nets, CPU)
    c = 4 / 5      # StyleGAN2: lr * c, beta ** c for an optimizer that also runs a lazy phase
    assert opts["D"].param_groups[0]["lr"] == pytest.approx(fam.cfg.optim.d_lr * c)
    assert opts["D"].param_groups[0]["betas"][1] == pytest.approx(0.999 ** c)
    assert opts["G"].param_groups[0]["lr"] == pytest.approx(fam.cfg.optim.g_lr)
    batch = {"image": torch.rand(8, 3, 16, 16) * 2 - 1, "cls": torch.randint(0, 10, (8,))}
    d_stats = run_phase(fam, phases["D"], nets, opts, batch, Ctx(step=4, device=CPU))
    reg = run_phase(fam, phases["Dreg"], nets, opts, batch, Ctx(step=4, device=CPU))
    assert "r1" not in d_stats and reg["r1"] > 0       # R1 moved out of the D phase


def test_a_resumed_local_run_continues_exactly_as_an_unbroken_one(smoke_shards, tmp_path):
    # 8 steps straight vs 4 steps, stop, rerun to 8: the same losses at steps 6 and 8 and the same
    # weights at the end, to the bit (same noise, same batches, same optimizer state).
    from pipeline import config as C
    from pipeline.data import resolve_shards
    from pipeline.engine import checkpoint
    from pipeline.engine.context import checkpoints, train_local

    urls, _ = resolve_shards(str(smoke_shards))
    over = ["train.log_every=2", "train.checkpoint_every=4", "train.sample_every=0", "scaling.num_workers=1"]
    straight = tmp_path / "straight"
    _, a = train_local(C.load("smoke", over), {"urls": urls, "counts": None}, straight, quiet=True)
    train_local(C.load("smoke", [*over, "train.steps=4"]), {"urls": urls, "counts": None}, tmp_path / "b", quiet=True)
    _, b = train_local(C.load("smoke", over), {"urls": urls, "counts": None}, tmp_path / "b", quiet=True)
    later = lambda reports: {r["step"]: (r["loss_d"], r["loss_g"]) for r in reports if r["step"] > 4}  # noqa: E731
    assert later(b.reports) == later(a.reports) and sorted(later(a.reports)) == [6, 8]
    end_a, end_b = (checkpoint.load(checkpoints(d)[-1])["nets"] for d in (straight, tmp_path / "b"))
    for net in end_a:
        for k, v in end_a[net].items():
            assert torch.equal(v, end_b[net][k]), (net, k)


def test_lr_decay_is_linear_to_near_zero_and_checked_against_train_steps():
    from pipeline.config import ConfigError, OptimConfig

    o = OptimConfig(lr_decay_from=6)
    assert [o.lr_scale(s, 10) for s in range(1, 11)] == pytest.approx([1] * 6 + [0.8, 0.6, 0.4, 0.2])
    assert OptimConfig().lr_scale(10, 10) == 1.0          # None: constant
    with pytest.raises(ConfigError, match=r"optim\.lr_decay_from.*train\.steps 10"):
        from_dict({"model": {"name": "dcgan"}, "optim": {"lr_decay_from": 10}, "train": {"steps": 10}})


def test_lr_scale_scales_one_step_and_leaves_the_optimizer_groups_as_they_were():
    # A step at lr_scale 0.5 moves D exactly as Adam at half the lr; the group's lr is unchanged
    # after it, so ProGAN's stage lr and the checkpointed optimizer are untouched by the decay.
    fam, nets, _ = _setup()
    twin = copy.deepcopy(nets)
    opt = fam.optimizers(nets, CPU)["D"]
    half = torch.optim.Adam(twin["D"].parameters(), lr=fam.cfg.optim.d_lr / 2, betas=fam.cfg.optim.betas)
    batch = {"image": torch.rand(8, 3, 16, 16) * 2 - 1, "cls": torch.randint(0, 10, (8,))}
    torch.manual_seed(0)
    run_phase(fam, Phase("D", "D"), nets, {"D": opt}, batch, Ctx(step=1, device=CPU, lr_scale=0.5))
    torch.manual_seed(0)
    run_phase(fam, Phase("D", "D"), twin, {"D": half}, batch, Ctx(step=1, device=CPU))
    for a, b in zip(nets["D"].parameters(), twin["D"].parameters()):
        torch.testing.assert_close(a, b)
    assert opt.param_groups[0]["lr"] == fam.cfg.optim.d_lr


def test_a_run_with_lr_decay_resumes_exactly_and_reports_the_scale(smoke_shards, tmp_path):
    # 8 steps with the lr decaying from step 2, straight; and the same run "crashed" after its
    # step-4 checkpoint (the step-8 one removed) and rerun: the same weights at the end, to the bit.
    import shutil

    from pipeline import config as C
    from pipeline.data import resolve_shards
    from pipeline.engine import checkpoint
    from pipeline.engine.context import checkpoints, train_local

    urls, _ = resolve_shards(str(smoke_shards))
    cfg = C.load("smoke", ["train.steps=8", "optim.lr_decay_from=2", "train.log_every=2",
                           "train.checkpoint_every=4", "train.sample_every=0", "scaling.num_workers=1"])
    straight, crashed = tmp_path / "straight", tmp_path / "crashed"
    _, a = train_local(cfg, {"urls": urls, "counts": None}, straight, quiet=True)
    assert {r["step"]: r["lr_scale"] for r in a.reports} == pytest.approx({2: 1.0, 4: 5 / 7, 6: 3 / 7, 8: 1 / 7})
    shutil.copytree(straight, crashed)
    shutil.rmtree(checkpoints(crashed)[-1])
    train_local(cfg, {"urls": urls, "counts": None}, crashed, quiet=True)
    end_a, end_b = (checkpoint.load(checkpoints(d)[-1])["nets"] for d in (straight, crashed))
    for net in end_a:
        for k, v in end_a[net].items():
            assert torch.equal(v, end_b[net][k]), (net, k)
