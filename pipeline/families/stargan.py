"""StarGAN (Choi et al. 2018): one generator for every pair of domains.

Data: images with their domain as cls (`ganforge shards --from-folder DIR` with one folder per
domain; names in model.domains, in cls order). G(x, c') translates x to domain c'; D judges
real/fake per patch and classifies the domain. Each step draws, per sample, a target domain other
than its own. D (optim.d_steps_per_g times per G step; the paper's 5): the adversarial loss
(loss.kind; the paper's wasserstein) + model.gp_weight * WGAN-GP + model.cls_weight * CE(D_cls(x),
c). G: adversarial + model.cls_weight * CE(D_cls(G(x, c')), c') + model.cycle_weight *
|G(G(x, c'), c) - x|_1.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from models import stargan
from models.stargan import StarGANConfig
from pipeline.data.fields import Image, Label
from pipeline.engine import losses, regularizers
from pipeline.families import register
from pipeline.families.spec import Domain, Phase, SourceImage, eager
from pipeline.families.translation import Translator


@register("stargan", StarGANConfig)
class StarGAN(Translator):
    # what a study ranks by without in-loop evaluation
    objectives = {"cycle": "min", "cls_g": "min"}
    proxy = "cycle"

    @property
    def fields(self):
        return {"image": Image(), "cls": Label()}

    @property
    def k(self) -> int:
        return len(self.model.domains)

    def inputs(self):
        # unfixed, sample i goes to domain i % k
        return {"image": SourceImage(self.model.resolution), "domain": Domain(tuple(self.model.domains))}

    def build(self):
        return stargan.build(self.model)

    def phases(self):
        return [Phase("D", "D", repeat=self.cfg.optim.d_steps_per_g), Phase("G", "G", new_batch=False)]

    def generate(self, nets, inputs):
        return nets["G"](inputs["image"], inputs["domain"])

    def grid_inputs(self, batch, n):
        return {"image": batch["image"][:n], "domain": (batch["cls"][:n] + 1) % self.k}

    def _target(self, c: torch.Tensor) -> torch.Tensor:
        """A random domain other than each sample's own."""
        return (c + torch.randint(1, self.k, c.shape, device=c.device)) % self.k

    def loss(self, phase, nets, batch, ctx):
        G, D, m, kind = nets["G"], nets["D"], self.model, self.cfg.loss.kind
        x, c = batch["image"], batch["cls"]
        t = self._target(c)
        if phase.name == "D":
            with torch.no_grad(), ctx.amp():
                fake = G(x, t).float()
            with ctx.amp():
                src_real, cls_real = (v.float() for v in D(x))
                src_fake, _ = D(fake)
                adv = losses.d_loss(kind, src_real, src_fake.float())
            cls = F.cross_entropy(cls_real, c)
            loss = adv + m.cls_weight * cls
            stats = {"loss_d": adv.detach(), "cls_d": cls.detach(),
                     "d_real_domain_acc": (cls_real.argmax(1) == c).float().mean().detach()}
            if m.gp_weight > 0:
                gp = regularizers.gradient_penalty(lambda v, y=None: eager(D)(v)[0], x, fake)
                loss = loss + m.gp_weight * gp
                stats["gp"] = gp.detach()
            return loss, stats
        with ctx.amp():
            fake = G(x, t)
            src, cls_logits = (v.float() for v in D(fake))
            rec = G(fake, c)
        adv = losses.g_loss(kind, src)
        cls = F.cross_entropy(cls_logits, t)
        cycle = (rec.float() - x).abs().mean()
        loss = adv + m.cls_weight * cls + m.cycle_weight * cycle
        return loss, {"loss_g": adv.detach(), "cls_g": cls.detach(), "cycle": cycle.detach()}
