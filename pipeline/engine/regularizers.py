"""Discriminator regularizers. Each returns a scalar to be multiplied by its config weight.

They run in fp32 outside autocast: double backward through bf16 is too noisy for penalties.
"""
from __future__ import annotations

import contextlib

import torch


def _input_grad(D, x: torch.Tensor, y) -> tuple[torch.Tensor, torch.Tensor]:
    x = x.detach().requires_grad_(True)
    out = D(x, y)
    (grad,) = torch.autograd.grad(out.sum(), x, create_graph=True)
    return grad.flatten(1), out


def gradient_penalty(D, real: torch.Tensor, fake: torch.Tensor, y=None) -> torch.Tensor:
    """WGAN-GP (Gulrajani et al. 2017): E[(||grad D(x_hat)|| - 1)^2] on real/fake interpolates."""
    eps = torch.rand(real.shape[0], 1, 1, 1, device=real.device, dtype=real.dtype)
    x_hat = eps * real.detach() + (1 - eps) * fake.detach()
    grad, _ = _input_grad(D, x_hat, y)
    return ((grad.norm(2, dim=1) - 1) ** 2).mean()


def r1_penalty(D, real: torch.Tensor, y=None) -> torch.Tensor:
    """R1 (Mescheder et al. 2018): 0.5 * E[||grad D(x)||^2] on real data."""
    grad, _ = _input_grad(D, real, y)
    return 0.5 * grad.pow(2).sum(1).mean()


def drift(real_logits: torch.Tensor) -> torch.Tensor:
    """ProGAN drift term: keeps the critic's output near zero."""
    return real_logits.float().pow(2).mean()


def mode_seeking(fake: torch.Tensor, z: torch.Tensor, eps: float = 1e-5) -> torch.Tensor:
    """MSGAN's mode-seeking term (Mao et al. 2019, eq. 3), to be minimised: 1 / (d_I / d_z + eps)
    with d_I = E|G(z1) - G(z2)| and d_z = E|z1 - z2| over pairs (sample i with sample i + n/2, which
    share their condition). A G that ignores z for a condition makes d_I, and so the ratio, small."""
    h = fake.shape[0] // 2
    d_img = (fake[:h] - fake[h:2 * h]).float().abs().flatten(1).mean(1)
    d_z = (z[:h] - z[h:2 * h]).float().abs().flatten(1).mean(1)
    return 1.0 / ((d_img / d_z).mean() + eps)


def orthogonal(model: torch.nn.Module) -> torch.Tensor:
    """BigGAN's orthogonal regularization (Brock et al. 2019, eq. 3, without beta): the sum over
    weight matrices W in PyTorch's [out, in*k*k] layout of ||W W^T * (1 - I)||_F^2, on the raw
    weights under spectral norm as BigGAN-PyTorch does. Embeddings and 1-D params are skipped.

    Uses ||W W^T||_F = ||W^T W||_F and diag(W W^T) = squared row norms, so each term costs the
    smaller Gram matrix: a [24576, 20] input layer needs a 20x20 product, not 24576x24576 (tall
    matrices pay with a difference of two sums, exact to fp32 rounding). Runs in fp32 outside
    autocast. BigGAN-PyTorch adds 2*beta*((W W^T) * (1 - I)) W to the gradient, which
    is this term's gradient at weight beta / 2.
    """
    skip = {id(p) for m in model.modules() if isinstance(m, torch.nn.Embedding) for p in m.parameters()}
    params = [p for p in model.parameters() if p.ndim >= 2 and p.requires_grad and id(p) not in skip]
    if not params:
        return torch.zeros(())
    terms = []
    dev = params[0].device.type
    with torch.autocast(dev, enabled=False) if dev in ("cuda", "cpu") else contextlib.nullcontext():
        for p in params:
            w = p.flatten(1).float()
            if w.shape[0] <= w.shape[1]:          # the off-diagonal is twice the strict upper triangle
                terms.append(2 * (w @ w.T).triu(1).square().sum())
            else:
                terms.append((w.T @ w).square().sum() - w.square().sum(1).square().sum())
    return torch.stack(terms).sum()
