"""Exponential moving averages of networks (BigGAN/ProGAN/StyleGAN sample from G's EMA)."""
from __future__ import annotations

import torch
import torch.nn as nn

from pipeline.families import sampling


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


@torch.no_grad()
def standing_stats(family, nets: dict, averaged, n: int, seed: int = 0, batch: int = 256) -> None:
    """BigGAN's standing statistics (Brock et al. 2019): reset the BatchNorm running statistics
    of the averaged networks among the sample networks `nets` (the names in `averaged`) and
    recompute them from n samples of their own.

    update() copies BN buffers from the live networks, so an EMA generator normalises its
    activations with statistics of other weights; these are its own. On pacgan32's coverage the
    effect is small and not always a gain (README "Mode coverage"). Only those BN layers run in
    training mode, so spectral-norm vectors, live networks' statistics and anything else
    mode-dependent (StyleGAN2's fixed noise) stay as they are. The same seed draws the same
    inputs every time, so every rank computes the same statistics. Translation families have no
    samples of their own: their config_problems refuse the option."""
    bns = [m for k in averaged if k in nets for m in nets[k].modules()
           if isinstance(m, nn.modules.batchnorm._BatchNorm)]
    if not bns or n < 1:
        return
    modules = list(nets.values())
    modes, momenta = [m.training for m in modules], [m.momentum for m in bns]
    device = next(modules[0].parameters()).device
    try:
        for m in modules:
            m.eval()
        for m in bns:
            m.reset_running_stats()
            m.momentum = None       # a cumulative average over every batch of the pass
            m.train()
        specs = family.inputs()
        for lo in range(0, n, batch):
            x = sampling.inputs(specs, lo, min(n, lo + batch), seed=seed)
            family.generate(nets, {k: v.to(device) for k, v in x.items()})
    finally:
        for m, training in zip(modules, modes):
            m.train(training)         # restores every submodule's mode, the BN layers' too
        for m, momentum in zip(bns, momenta):
            m.momentum = momentum
