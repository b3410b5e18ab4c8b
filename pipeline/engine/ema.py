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
