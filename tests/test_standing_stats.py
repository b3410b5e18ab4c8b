"""BigGAN's standing statistics for the EMA generator (optim.ema_bn_samples): the recomputed
BatchNorm statistics are the averaged G's own, the pass leaves modes and momenta as they were,
the loop checkpoints them, and translation families are refused."""
import copy

import pytest
import torch

from pipeline import config as C
from pipeline.config import from_dict
from pipeline.engine import ema
from pipeline.engine.loop import build
from pipeline.families import sampling

CPU = torch.device("cpu")


def _family():
    cfg = from_dict({"model": {"name": "dcgan", "resolution": 16, "z_dim": 8, "g_channels": 8,
                               "d_channels": 8, "num_classes": 0}, "data": {"resolution": 16}})
    return build(cfg, CPU)


def _bns(net):
    return [m for m in net.modules() if isinstance(m, torch.nn.BatchNorm2d)]


def test_eval_mode_then_matches_the_averaged_g_on_its_own_batch_statistics():
    torch.manual_seed(0)
    fam, _, emas, _ = _family()
    G = emas["G"]
    with torch.no_grad():       # weights the copied (initial) statistics do not describe
        for p in G.parameters():
            p.mul_(1.7)
    x = sampling.inputs(fam.inputs(), 0, 512, seed=3)   # the inputs the pass draws with seed 3
    with torch.no_grad():
        want = copy.deepcopy(G).train()(x["z"])          # normalised by this batch's own statistics
        before = G(x["z"])
    ema.standing_stats(fam, {"G": G}, ("G",), 512, seed=3, batch=512)
    with torch.no_grad():
        after = G(x["z"])
    assert (after - want).abs().max() < 0.02 < (before - want).abs().max()
    assert not G.training and all(not m.training and m.momentum == 0.1 for m in _bns(G))


def test_pass_restores_modes_and_leaves_networks_it_does_not_average():
    fam, nets, _, _ = _family()
    live = nets["G"].train()
    kept = {k: v.clone() for k, v in live.state_dict().items()}
    ema.standing_stats(fam, {"G": live}, (), 64)          # G not averaged: nothing to recompute
    assert all(torch.equal(v, live.state_dict()[k]) for k, v in kept.items()) and live.training
    ema.standing_stats(fam, {"G": live}, ("G",), 64, batch=16)
    assert live.training and all(m.training and m.momentum == 0.1 for m in _bns(live))
    assert all(int(m.num_batches_tracked) == 4 for m in _bns(live))   # 64 samples in 4 batches


def test_loop_checkpoints_the_recomputed_statistics(smoke_shards, tmp_path):
    from pipeline.data import resolve_shards
    from pipeline.engine import checkpoint
    from pipeline.engine.context import checkpoints, train_local

    urls, _ = resolve_shards(str(smoke_shards))
    cfg = C.load("smoke", ["train.steps=4", "train.checkpoint_every=4", "train.sample_every=0",
                           "scaling.num_workers=1", "optim.ema_bn_samples=96"])
    train_local(cfg, {"urls": urls, "counts": None}, tmp_path, quiet=True)
    state = checkpoint.load(checkpoints(tmp_path)[-1])
    live, avg = state["nets"]["G"], state["ema"]["G"]
    means = [k for k in avg if k.endswith("running_mean")]
    assert means and all(int(avg[k.replace("running_mean", "num_batches_tracked")]) == 1 for k in means)
    assert not any(torch.equal(avg[k], live[k]) for k in means)   # not the copied live statistics
    fam, _, emas, _ = build(cfg, CPU)                               # and the same as a pass here
    emas["G"].load_state_dict(avg)
    ema.standing_stats(fam, {"G": emas["G"]}, ("G",), 96, seed=cfg.train.seed)
    assert all(torch.allclose(emas["G"].state_dict()[k], avg[k], atol=1e-6) for k in means)


def test_translation_family_and_negative_count_are_refused():
    with pytest.raises(C.ConfigError, match=r"optim\.ema_bn_samples"):
        C.load("smoke", ["optim.ema_bn_samples=-1"])
    with pytest.raises(ValueError, match=r"optim\.ema_bn_samples: pix2pix translates images"):
        C.load("pix2pix32", ["optim.ema_bn_samples=64"])   # config_problems: at load, before any build
