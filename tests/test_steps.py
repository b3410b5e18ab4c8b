import copy

import pytest
import torch

import models
from pipeline.engine import steps
from pipeline.config import LossConfig


def _nets(num_classes=10):
    cfg = models.config_class("dcgan")(resolution=16, z_dim=8, g_channels=8, d_channels=8,
                                       num_classes=num_classes, d_norm="none")
    return models.build(cfg)


@pytest.mark.parametrize("kind, gp, r1", [("hinge", 0, 0), ("wasserstein", 10, 0), ("nonsaturating", 0, 1)])
def test_d_step_lowers_d_loss_on_fixed_batch(kind, gp, r1):
    torch.manual_seed(0)
    n = _nets()
    G, D = n["G"], n["D"]
    ph = steps.Phase(loss=LossConfig(kind=kind, gp_weight=gp, r1_gamma=r1), z_dim=G.z_dim, conditional=True)
    opt = torch.optim.Adam(D.parameters(), lr=1e-3)
    real = torch.rand(16, 3, 16, 16) * 2 - 1
    y = torch.randint(0, 10, (16,))
    first = steps.d_step(G, D, opt, real, y, ph)
    for _ in range(15):
        last = steps.d_step(G, D, opt, real, y, ph)
    assert last["loss_d"] < first["loss_d"]
    assert last["d_real"] > last["d_fake"]
    assert ("gp" in last) == (gp > 0) and ("r1" in last) == (r1 > 0)


def test_g_step_moves_only_g_and_fools_d_more():
    torch.manual_seed(0)
    n = _nets(0)
    G, D = n["G"], n["D"]
    ph = steps.Phase(loss=LossConfig(kind="nonsaturating"), z_dim=G.z_dim, conditional=False)
    opt_g = torch.optim.Adam(G.parameters(), lr=1e-3)
    d_before = copy.deepcopy(D.state_dict())
    first = steps.g_step(G, D, opt_g, 16, None, ph, "cpu")
    for _ in range(10):
        last = steps.g_step(G, D, opt_g, 16, None, ph, "cpu")
    assert last["loss_g"] < first["loss_g"]
    assert all(torch.equal(v, D.state_dict()[k]) for k, v in d_before.items())


def test_ema_step():
    G = _nets()["G"]
    ema = copy.deepcopy(G)
    with torch.no_grad():
        for p in G.parameters():
            p.add_(1.0)
    steps.ema_step(ema, G, 0.75)
    p_ema, p_g = next(ema.parameters()), next(G.parameters())
    assert torch.allclose(p_ema, 0.75 * (p_g - 1) + 0.25 * p_g)
    steps.ema_step(ema, G, 0.0)
    assert torch.equal(next(ema.parameters()), p_g)


def test_g_step_applies_orthogonal_regularization():
    torch.manual_seed(0)
    G, D = _nets(0)["G"], _nets(0)["D"]
    ph = steps.Phase(loss=LossConfig(kind="hinge", ortho_weight=1.0), z_dim=G.z_dim, conditional=False)
    out = steps.g_step(G, D, torch.optim.SGD(G.parameters(), lr=0.0), 4, None, ph, "cpu")
    assert out["ortho"] > 0
