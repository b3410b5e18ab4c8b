"""StyleGAN2: stylegan2-ada-pytorch's four phases on the networks of models/stylegan2.py.

Dmain (every step): the adversarial loss (loss.kind; the paper's is nonsaturating logistic) on
reals and style-mixed fakes; its fakes also update G's running mean of w (`w_avg`). Dreg (every
loss.r1_every steps, lazy): R1 with weight loss.r1_gamma / 2, times the interval. Gmain (every
step): the adversarial loss of style-mixed fakes. Greg (every model.pl_every steps, lazy): path-length
regularization on a batch shrunk by model.pl_batch_shrink, weight model.pl_weight times the
interval. The engine corrects a lazy phase's optimizer (lr * c, beta ** c, c = N / (N + 1)).

The path-length mean `pl_mean` is family state: `state()` puts it in every checkpoint and
`load_state` restores it, so a resumed run continues it exactly. As in stylegan2-ada each rank
keeps its own; a checkpoint holds rank 0's, which every rank resumes from.

Truncation is in w space: the generation inputs carry a `Truncation` ("psi", float [n]) that
sampling fills from `truncation` (None = 1), and `generate` computes w_avg + psi * (w - w_avg)
with the G_ema's w_avg (copied from G's buffer with every EMA update). z is not redrawn.

Augmentation (config `aug`): `_d` below is the one place D sees images (reals, fakes, and R1's
reals, whose gradient is taken through the augmentation as in stylegan2-ada); ADA's p joins
`state()` beside pl_mean.
"""
from __future__ import annotations

import math

import torch

from models.stylegan2 import StyleGAN2Config, build
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.gan import DirectGAN
from pipeline.families.spec import ClassLabel, Ctx, Latent, Phase, Truncation, eager


@register("stylegan2", StyleGAN2Config)
class StyleGAN2(DirectGAN):
    """Mapping network, modulated convs with noise, skip G, residual D; lazy R1 and path length."""

    def __init__(self, cfg):
        super().__init__(cfg)
        self.pl_mean = torch.zeros(())

    def inputs(self):
        out = {"z": Latent(self.model.z_dim)}
        if self.conditional:
            out["cls"] = ClassLabel(self.model.num_classes)
        return {**out, "psi": Truncation()}

    def build(self):
        return build(self.model)

    def phases(self):
        L, m = self.cfg.loss, self.model
        out = [Phase("Dmain", "D")]
        if L.r1_gamma > 0:
            out.append(Phase("Dreg", "D", every=L.r1_every, new_batch=False, lazy=L.r1_every > 1))
        out.append(Phase("Gmain", "G", new_batch=False))
        if m.pl_weight > 0:
            out.append(Phase("Greg", "G", every=m.pl_every, new_batch=False, lazy=m.pl_every > 1))
        return out

    def generate(self, nets, inputs):
        img = nets["G"](inputs["z"], inputs.get("cls"), psi=inputs["psi"], noise="const")
        return img.clamp(-1, 1)

    def state(self):
        return {**super().state(), "pl_mean": self.pl_mean.detach().cpu().clone()}

    def load_state(self, state):
        super().load_state(state)
        if "pl_mean" in state:
            self.pl_mean = torch.as_tensor(state["pl_mean"]).float().clone()

    # -- losses --------------------------------------------------------------------------------
    def _fake(self, G, n: int, y, device, **kw):
        """G on fresh z; style mixing with probability model.mixing_prob: layers from a random
        cutoff in [1, num_ws) take a second z's w (one cutoff per batch, as stylegan2-ada)."""
        z = torch.randn(n, self.model.z_dim, device=device)
        if self.model.mixing_prob == 0:
            return G(z, y, **kw)
        # Every batch passes z2 and a tensor cutoff (num_ws: no layer takes z2's w), so a compiled
        # G has one graph whether a batch mixes or not, and whatever its cutoff; no host sync.
        num_ws = self.model.num_ws
        mix = bool(torch.rand(()) < self.model.mixing_prob)
        cutoff = torch.randint(1, num_ws, ()) if mix else torch.tensor(num_ws)
        return G(z, y, z2=torch.randn_like(z), cutoff=cutoff.to(device), **kw)

    def _d(self, D, x, y):
        return D(self.augment(x), y).float()

    def _loss_Dmain(self, nets, batch, ctx: Ctx):
        G, D = nets["G"], nets["D"]
        real, y = batch["image"], self.labels(batch)
        with torch.no_grad(), ctx.amp():
            fake = self._fake(G, real.shape[0], y, real.device, update_w_avg=True)
        with ctx.amp():
            real_logits, fake_logits = self._d(D, real, y), self._d(D, fake, y)
            loss = losses.d_loss(self.cfg.loss.kind, real_logits, fake_logits)
        return loss, {"loss_d": loss.detach(), "d_real": real_logits.mean().detach(),
                      "d_fake": fake_logits.mean().detach(), **self.ada_stat(real_logits)}

    def _loss_Dreg(self, nets, batch, ctx: Ctx):
        L, ph = self.cfg.loss, ctx.phase
        x = batch["image"].detach().requires_grad_(True)
        logits = self._d(eager(nets["D"]), x, self.labels(batch))   # fp32, eager: double backward
        (grad,) = torch.autograd.grad(logits.sum(), x, create_graph=True)
        r1 = grad.square().sum((1, 2, 3)).mean()
        every = ph.every if ph is not None and ph.lazy else 1
        # logits * 0: every D parameter is in the graph, so DDP's reducer sees a gradient for each.
        return (L.r1_gamma / 2) * r1 * every + (logits * 0).mean(), {"r1": r1.detach()}

    def _loss_Gmain(self, nets, batch, ctx: Ctx):
        G, D = nets["G"], nets["D"]
        y = self.labels(batch)
        with ctx.amp():
            fake = self._fake(G, batch["image"].shape[0], y, ctx.device)
            loss = losses.g_loss(self.cfg.loss.kind, self._d(D, fake, y))
        return loss, {"loss_g": loss.detach()}

    def _loss_Greg(self, nets, batch, ctx: Ctx):
        m, ph = self.model, ctx.phase
        n = max(1, batch["image"].shape[0] // m.pl_batch_shrink)
        y = self.labels(batch)
        img, ws = self._fake(eager(nets["G"]), n, None if y is None else y[:n], ctx.device, return_ws=True)
        # Path length |J_w^T u| for image-space noise u scaled so its length is resolution-free.
        u = torch.randn_like(img) / math.sqrt(img.shape[2] * img.shape[3])
        (grad,) = torch.autograd.grad((img * u).sum(), ws, create_graph=True)
        lengths = grad.square().sum(2).mean(1).sqrt()
        self.pl_mean = self.pl_mean.to(lengths.device).lerp(lengths.mean().detach(), m.pl_decay)
        penalty = (lengths - self.pl_mean).square().mean()
        every = ph.every if ph is not None and ph.lazy else 1
        # img * 0: toRGB's bias and other parameters outside the Jacobian still join DDP's reduce.
        loss = m.pl_weight * every * penalty + (img[:, 0, 0, 0] * 0).mean()
        return loss, {"pl_penalty": penalty.detach(), "pl_mean": self.pl_mean.detach().clone()}
