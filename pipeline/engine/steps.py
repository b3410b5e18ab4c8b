"""One function per GAN phase. No Ray, no logging: each returns named stats as detached tensors
(no .item(), so no host sync per step); the loop decides when to read them.

`G` and `D` may be DDP-wrapped; `G_ema` is the unwrapped averaged copy.
"""
from __future__ import annotations

import contextlib
from dataclasses import dataclass

import torch

from pipeline.engine import losses, regularizers
from pipeline.config import LossConfig


@dataclass
class Phase:
    """What every phase needs besides the networks."""
    loss: LossConfig
    z_dim: int
    conditional: bool
    autocast: contextlib.AbstractContextManager | None = None

    def amp(self):
        return self.autocast if self.autocast is not None else contextlib.nullcontext()


def sample_z(n: int, z_dim: int, device, generator: torch.Generator | None = None) -> torch.Tensor:
    return torch.randn(n, z_dim, device=device, generator=generator)


def d_step(G, D, opt_d, real: torch.Tensor, y: torch.Tensor | None, ph: Phase) -> dict:
    """Discriminator update on one real batch and as many fakes (labels drawn from the batch)."""
    y = y if ph.conditional else None
    with torch.no_grad(), ph.amp():
        fake = G(sample_z(real.shape[0], ph.z_dim, real.device), y)
    with ph.amp():
        real_logits = D(real, y).float()
        fake_logits = D(fake, y).float()
        loss = losses.d_loss(ph.loss.kind, real_logits, fake_logits)
    stats = {"loss_d": loss.detach(), "d_real": real_logits.mean().detach(),
             "d_fake": fake_logits.mean().detach()}
    if ph.loss.gp_weight > 0:
        gp = regularizers.gradient_penalty(D, real, fake.float(), y)
        loss = loss + ph.loss.gp_weight * gp
        stats["gp"] = gp.detach()
    if ph.loss.r1_gamma > 0:
        r1 = regularizers.r1_penalty(D, real, y)
        loss = loss + ph.loss.r1_gamma * r1
        stats["r1"] = r1.detach()
    if ph.loss.drift_weight > 0:
        loss = loss + ph.loss.drift_weight * regularizers.drift(real_logits)
    opt_d.zero_grad(set_to_none=True)
    loss.backward()
    opt_d.step()
    return stats


def g_step(G, D, opt_g, n: int, y: torch.Tensor | None, ph: Phase, device) -> dict:
    """Generator update on n fakes; D's gradients from this pass are discarded by the next d_step."""
    y = y if ph.conditional else None
    with ph.amp():
        fake = G(sample_z(n, ph.z_dim, device), y)
        loss = losses.g_loss(ph.loss.kind, D(fake, y).float())
    stats = {"loss_g": loss.detach()}
    if ph.loss.ortho_weight > 0:
        ortho = regularizers.orthogonal(getattr(G, "module", G))
        loss = loss + ph.loss.ortho_weight * ortho
        stats["ortho"] = ortho.detach()
    opt_g.zero_grad(set_to_none=True)
    loss.backward()
    opt_g.step()
    return stats


@torch.no_grad()
def ema_step(G_ema: torch.nn.Module, G: torch.nn.Module, decay: float) -> None:
    """G_ema <- decay * G_ema + (1 - decay) * G; buffers (BN stats) are copied."""
    src = getattr(G, "module", G)
    e_params, g_params = list(G_ema.parameters()), list(src.parameters())
    if decay == 0:
        torch._foreach_copy_(e_params, g_params)
    else:
        torch._foreach_lerp_(e_params, g_params, 1.0 - decay)
    for eb, gb in zip(G_ema.buffers(), src.buffers()):
        eb.copy_(gb)
