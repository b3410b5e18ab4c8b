"""Discriminator regularizers. Each returns a scalar to be multiplied by its config weight.

They run in fp32 outside autocast: double backward through bf16 is too noisy for penalties.
"""
from __future__ import annotations

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
