"""Exponential moving averages of networks (BigGAN/ProGAN/StyleGAN sample from G's EMA)."""
from __future__ import annotations

import torch


@torch.no_grad()
def update(avg: torch.nn.Module, net: torch.nn.Module, decay: float) -> None:
    """avg <- decay * avg + (1 - decay) * net; buffers (BN statistics, SN vectors) are copied."""
    src = getattr(net, "module", net)
    a_params, n_params = list(avg.parameters()), list(src.parameters())
    if decay == 0:
        torch._foreach_copy_(a_params, n_params)
    else:
        torch._foreach_lerp_(a_params, n_params, 1.0 - decay)
    for ab, nb in zip(avg.buffers(), src.buffers()):
        ab.copy_(nb)


def decay_at(decay: float, start: int, rampup: float | None, step: int, images_seen: int,
             step_images: int) -> float:
    """The EMA decay for this G step: 0 (copy G) until `start` steps have passed; with `rampup`,
    StyleGAN2-ADA's ramp-up: a half-life of at most rampup x images_seen images, i.e.
    0.5 ** (step_images / (rampup * images_seen)), never above `decay`."""
    if step <= start:
        return 0.0
    if not rampup:
        return decay
    return min(decay, 0.5 ** (step_images / max(rampup * images_seen, 1e-8)))
