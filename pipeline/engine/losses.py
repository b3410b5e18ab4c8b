"""Adversarial losses: pure functions of discriminator logits, mean over the batch.

`real`, `fake` are raw D outputs (logits / critic values), shape [N].
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("minimax", "nonsaturating", "hinge", "wasserstein", "least_squares")


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor) -> torch.Tensor:
    if kind in ("minimax", "nonsaturating"):          # -log D(x) - log(1 - D(G(z)))
        return F.softplus(-real).mean() + F.softplus(fake).mean()
    if kind == "hinge":                                # Lim & Ye 2017; Miyato et al. 2018
        return F.relu(1 - real).mean() + F.relu(1 + fake).mean()
    if kind == "wasserstein":                          # Arjovsky et al. 2017 critic
        return fake.mean() - real.mean()
    if kind == "least_squares":                        # LSGAN (Mao et al. 2017), a-b-c = 0-1-1
        return 0.5 * ((real - 1) ** 2).mean() + 0.5 * (fake ** 2).mean()
    raise ValueError(f"loss.kind: unknown {kind!r} (known: {', '.join(KINDS)})")


def g_loss(kind: str, fake: torch.Tensor) -> torch.Tensor:
    if kind == "minimax":                              # minimise log(1 - D(G(z))); saturates early
        return -F.softplus(fake).mean()
    if kind == "nonsaturating":                        # maximise log D(G(z)) instead
        return F.softplus(-fake).mean()
    if kind in ("hinge", "wasserstein"):
        return -fake.mean()
    if kind == "least_squares":
        return 0.5 * ((fake - 1) ** 2).mean()
    raise ValueError(f"loss.kind: unknown {kind!r} (known: {', '.join(KINDS)})")
