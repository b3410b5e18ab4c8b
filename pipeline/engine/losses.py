"""Adversarial losses: pure functions of discriminator logits, mean over the batch.

`real`, `fake` are raw D outputs (logits / critic values), shape [N] or per patch [N, ...]
(PatchGAN: each patch's loss, averaged per sample). Optional per-sample weights `w_real`,
`w_fake`, `w` ([N], e.g. a 0/1 mask of the samples that belong to a domain) give the weighted mean
instead (sum(w * loss) / max(sum(w), 1): an all-zero mask gives 0, not NaN).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

KINDS = ("minimax", "nonsaturating", "hinge", "wasserstein", "least_squares")


def mean(x: torch.Tensor, w: torch.Tensor | None = None) -> torch.Tensor:
    """Mean of x; with per-sample weights w [N], the weighted mean of x's per-sample means."""
    if w is None:
        return x.mean()
    return (x.reshape(len(x), -1).mean(1) * w).sum() / w.sum().clamp(min=1)


def d_loss(kind: str, real: torch.Tensor, fake: torch.Tensor, w_real=None, w_fake=None) -> torch.Tensor:
    if kind in ("minimax", "nonsaturating"):          # -log D(x) - log(1 - D(G(z)))
        return mean(F.softplus(-real), w_real) + mean(F.softplus(fake), w_fake)
    if kind == "hinge":                                # Lim & Ye 2017; Miyato et al. 2018
        return mean(F.relu(1 - real), w_real) + mean(F.relu(1 + fake), w_fake)
    if kind == "wasserstein":                          # Arjovsky et al. 2017 critic
        return mean(fake, w_fake) - mean(real, w_real)
    if kind == "least_squares":                        # LSGAN (Mao et al. 2017), a-b-c = 0-1-1
        return 0.5 * mean((real - 1) ** 2, w_real) + 0.5 * mean(fake ** 2, w_fake)
    raise ValueError(f"loss.kind: unknown {kind!r} (known: {', '.join(KINDS)})")


def g_loss(kind: str, fake: torch.Tensor, w=None) -> torch.Tensor:
    if kind == "minimax":                              # minimise log(1 - D(G(z))); saturates early
        return -mean(F.softplus(fake), w)
    if kind == "nonsaturating":                        # maximise log D(G(z)) instead
        return mean(F.softplus(-fake), w)
    if kind in ("hinge", "wasserstein"):
        return -mean(fake, w)
    if kind == "least_squares":
        return 0.5 * mean((fake - 1) ** 2, w)
    raise ValueError(f"loss.kind: unknown {kind!r} (known: {', '.join(KINDS)})")
