"""CycleGAN (Zhu et al. 2017): unpaired translation between two domains with cycle consistency.

Data: one set with a domain field, cls 0 = domain A and cls 1 = domain B (`ganforge shards
--from-folder DIR` with DIR/A/... and DIR/B/...; names in model.domains); no image has a partner.
Every batch mixes both domains, and every term is a per-sample mean over the samples of its
domain (losses.mean with a 0/1 weight), so a batch that happens to hold one domain only is fine and
every network runs on the whole batch (DDP sees each parameter used on every rank). G_ab applied
to a B image is the identity term's input, so the four G passes per batch are all used.

D (both discriminators, one optimizer): the adversarial loss (loss.kind; the paper's is
least_squares) on reals of its domain against fakes drawn from its history pool, halved as in the
paper. G (both generators): adversarial + model.cycle_weight * cycle + model.cycle_weight *
model.identity_weight * identity.

The history pools (Shrivastava et al. 2017, as the paper uses them): each D sees, per fake, with
probability 1/2 a fake stored earlier in its pool (which then stores the new one) once the pool
is full. They are family state: every checkpoint holds rank 0's pools and a resumed run continues
from them on every rank.
"""
from __future__ import annotations

import torch

from models.pix2pix import CycleGANConfig, build_cyclegan
from pipeline.data.fields import Image, Label
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.spec import Domain, Phase, SourceImage
from pipeline.families.translation import Translator


class ImagePool:
    """A history of up to `size` fakes (float [k, 3, R, R]) on one device."""

    def __init__(self, size: int):
        self.size, self.images = size, None

    def query(self, fakes: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """fakes [N, ...] of which `mask` [N] bool are real fakes of this pool's domain -> the
        images D should see instead (unmasked rows pass through untouched)."""
        if self.size == 0:
            return fakes
        if self.images is not None and self.images.device != fakes.device:
            self.images = self.images.to(fakes.device)     # restored on the CPU from a checkpoint
        out = fakes.clone()
        for i in torch.nonzero(mask).flatten().tolist():
            f = fakes[i:i + 1].detach()
            if self.images is None or len(self.images) < self.size:
                self.images = f.clone() if self.images is None else torch.cat([self.images, f])
            elif torch.rand(()) < 0.5:
                j = int(torch.randint(0, self.size, ()))
                out[i] = self.images[j]
                self.images[j] = f[0]
        return out

    def state(self) -> torch.Tensor:
        return torch.zeros(0) if self.images is None else self.images.detach().cpu().clone()

    def load(self, t: torch.Tensor) -> None:
        self.images = t.clone() if len(t) else None


@register("cyclegan", CycleGANConfig)
class CycleGAN(Translator):
    sample_nets = ("G_ab", "G_ba")
    # what a study ranks by without in-loop evaluation
    objectives = {"cycle": "min", "identity": "min"}
    proxy = "cycle"

    def __init__(self, cfg):
        super().__init__(cfg)
        self.pools = {"a": ImagePool(self.model.pool_size), "b": ImagePool(self.model.pool_size)}

    @property
    def fields(self):
        return {"image": Image(), "cls": Label()}

    def inputs(self):
        # to = 1: A -> B (the default), to = 0: B -> A
        return {"image": SourceImage(self.model.resolution), "to": Domain(tuple(self.model.domains), default=1)}

    def build(self):
        return build_cyclegan(self.model)

    def optimizer_groups(self):
        o = self.cfg.optim
        return {"G": (("G_ab", "G_ba"), o.g_lr), "D": (("D_a", "D_b"), o.d_lr)}

    def phases(self):
        return [Phase("D", "D"), Phase("G", "G", new_batch=False)]

    def generate(self, nets, inputs):
        x, to = inputs["image"], inputs["to"]
        return torch.where((to == 1)[:, None, None, None], nets["G_ab"](x), nets["G_ba"](x))

    def grid_inputs(self, batch, n):
        return {"image": batch["image"][:n], "to": (batch["cls"][:n] != 1).long()}   # each to the other side

    def loss(self, phase, nets, batch, ctx):
        x, c, kind = batch["image"], batch["cls"], self.cfg.loss.kind
        is_a, is_b = (c == 0).float(), (c == 1).float()
        G_ab, G_ba, D_a, D_b = nets["G_ab"], nets["G_ba"], nets["D_a"], nets["D_b"]
        if phase.name == "D":
            with torch.no_grad(), ctx.amp():
                fake_b, fake_a = G_ab(x).float(), G_ba(x).float()
            fake_b = self.pools["b"].query(fake_b, is_a.bool())
            fake_a = self.pools["a"].query(fake_a, is_b.bool())
            with ctx.amp():
                loss_b = losses.d_loss(kind, D_b(x).float(), D_b(fake_b).float(), w_real=is_b, w_fake=is_a)
                loss_a = losses.d_loss(kind, D_a(x).float(), D_a(fake_a).float(), w_real=is_a, w_fake=is_b)
            loss = 0.5 * (loss_a + loss_b)
            return loss, {"loss_d": loss.detach(), "loss_d_a": loss_a.detach(), "loss_d_b": loss_b.detach()}
        m = self.model
        with ctx.amp():
            fake_b, fake_a = G_ab(x), G_ba(x)        # A rows: translations; B rows: identity terms
            adv = (losses.g_loss(kind, D_b(fake_b).float(), w=is_a) +
                   losses.g_loss(kind, D_a(fake_a).float(), w=is_b))
            rec_a, rec_b = G_ba(fake_b), G_ab(fake_a)
        cycle = losses.mean((rec_a.float() - x).abs(), is_a) + losses.mean((rec_b.float() - x).abs(), is_b)
        ident = losses.mean((fake_b.float() - x).abs(), is_b) + losses.mean((fake_a.float() - x).abs(), is_a)
        loss = adv + m.cycle_weight * cycle + m.cycle_weight * m.identity_weight * ident
        return loss, {"loss_g": adv.detach(), "cycle": cycle.detach(), "identity": ident.detach()}

    def state(self):
        return {**super().state(), "pool_a": self.pools["a"].state(), "pool_b": self.pools["b"].state()}

    def load_state(self, state):
        super().load_state(state)
        for k in ("a", "b"):
            if f"pool_{k}" in state:
                self.pools[k].load(state[f"pool_{k}"])
