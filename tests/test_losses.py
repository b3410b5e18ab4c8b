import math

import pytest
import torch

from pipeline.engine import losses, regularizers


def test_loss_values_at_known_logits():
    real, fake = torch.tensor([2.0]), torch.tensor([-1.0])
    sp = lambda v: math.log1p(math.exp(v))
    assert losses.d_loss("nonsaturating", real, fake).item() == pytest.approx(sp(-2) + sp(-1))
    assert losses.d_loss("hinge", real, fake).item() == pytest.approx(0.0)      # both margins met
    assert losses.d_loss("hinge", torch.tensor([0.5]), torch.tensor([0.5])).item() == pytest.approx(2.0)
    assert losses.d_loss("wasserstein", real, fake).item() == pytest.approx(-3.0)
    assert losses.g_loss("nonsaturating", fake).item() == pytest.approx(sp(1))
    assert losses.g_loss("minimax", fake).item() == pytest.approx(-sp(-1))
    assert losses.g_loss("hinge", fake).item() == pytest.approx(1.0)


def test_minimax_saturates_where_nonsaturating_does_not():
    fake = torch.tensor([-8.0], requires_grad=True)     # D confidently rejects the fake
    g_mm, = torch.autograd.grad(losses.g_loss("minimax", fake), fake)
    g_ns, = torch.autograd.grad(losses.g_loss("nonsaturating", fake), fake)
    assert abs(g_mm.item()) < 1e-3 < abs(g_ns.item())


def test_unknown_kind():
    with pytest.raises(ValueError, match="loss.kind"):
        losses.d_loss("nope", torch.zeros(1), torch.zeros(1))


class Linear(torch.nn.Module):
    def __init__(self, w):
        super().__init__()
        self.w = w

    def forward(self, x, y=None):
        return (x.flatten(1) * self.w).sum(1)


def test_gradient_penalty_of_linear_critic():
    x = torch.randn(4, 3, 2, 2)
    w = torch.randn(12)
    gp = regularizers.gradient_penalty(Linear(w), x, torch.randn_like(x))
    assert gp.item() == pytest.approx((w.norm().item() - 1) ** 2, rel=1e-5)
    unit = regularizers.gradient_penalty(Linear(w / w.norm()), x, torch.randn_like(x))
    assert unit.item() == pytest.approx(0.0, abs=1e-10)


def test_r1_of_linear_critic():
    w = torch.randn(12)
    r1 = regularizers.r1_penalty(Linear(w), torch.randn(4, 3, 2, 2))
    assert r1.item() == pytest.approx(0.5 * w.pow(2).sum().item(), rel=1e-5)


def test_least_squares_equals_its_formula_on_fixed_logits():
    # LSGAN (Mao et al. 2017), 0-1-1 coding: D: 1/2 E[(D(x)-1)^2] + 1/2 E[D(G(z))^2]; G: 1/2 E[(D(G(z))-1)^2]
    real, fake = torch.tensor([2.0, 0.5, -1.0]), torch.tensor([-1.0, 0.25, 3.0])
    d = 0.5 * sum((r - 1) ** 2 for r in real.tolist()) / 3 + 0.5 * sum(f ** 2 for f in fake.tolist()) / 3
    g = 0.5 * sum((f - 1) ** 2 for f in fake.tolist()) / 3
    assert losses.d_loss("least_squares", real, fake).item() == pytest.approx(d)
    assert losses.g_loss("least_squares", fake).item() == pytest.approx(g)
    assert losses.d_loss("least_squares", torch.ones(4), torch.zeros(4)).item() == 0.0   # D's optimum
