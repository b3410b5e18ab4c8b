"""Direct GANs: one generator G(z[, y]) and one discriminator D(x[, y]), two phases.

DCGAN/cGAN, BigGAN and BigGAN-deep differ only in their networks (models/); the adversarial loss
(loss.kind: minimax, nonsaturating, hinge, wasserstein, least_squares = LSGAN), WGAN-GP, R1
(every D step, or lazily as a "Dreg" phase), ProGAN's drift and BigGAN's orthogonal
regularization are config. SNGAN and SAGAN are presets of these networks (spectral norm; self-
attention), not families of their own.
"""
from __future__ import annotations

import torch

import models
from pipeline import augment
from models.biggan import BigGANConfig
from models.biggan_deep import BigGANDeepConfig
from models.dcgan import DCGANConfig
from pipeline.data.fields import Image, Label
from pipeline.engine import losses, regularizers
from pipeline.families import register
from pipeline.families.spec import ClassLabel, Ctx, Family, Latent, Nets, Phase, eager, unwrap


class DirectGAN(Family):
    """G(z, y) against D(x, y); y only when model.num_classes > 0."""

    @property
    def conditional(self) -> bool:
        return getattr(self.model, "num_classes", 0) > 0

    @property
    def fields(self):
        # An unconditional family reads images only, so unlabelled shards train.
        return {"image": Image(), **({"cls": Label()} if self.conditional else {})}

    def inputs(self):
        z = {"z": Latent(self.model.z_dim)}
        return {**z, "cls": ClassLabel(self.model.num_classes)} if self.conditional else z

    def build(self) -> Nets:
        return models.build(self.model)

    def optimizer_groups(self):
        o = self.cfg.optim
        return {"G": (("G",), o.g_lr), "D": (("D",), o.d_lr)}

    def phases(self):
        L = self.cfg.loss
        out = [Phase("D", "D", repeat=self.cfg.optim.d_steps_per_g)]
        if L.r1_gamma > 0 and L.r1_every > 1:
            out.append(Phase("Dreg", "D", every=L.r1_every, new_batch=False, lazy=True))
        return out + [Phase("G", "G", new_batch=False)]

    def generate(self, nets, inputs):
        return nets["G"](inputs["z"], inputs.get("cls"))

    per_sample_d = False          # a D head that predicts per sample (ACGAN's classifier, InfoGAN's Q)

    def config_problems(self):
        pack, b = getattr(self.model, "pack", 1), self.cfg.train.batch_size
        own_g = type(self)._loss_G is not DirectGAN._loss_G or "G" not in {p.name for p in self.phases()}
        if self.cfg.loss.mode_seeking_weight > 0 and own_g:
            return [("loss.mode_seeking_weight", f"{self.cfg.loss.mode_seeking_weight}: this family has "
                     f"its own G loss, which does not apply it; use 0")]
        if pack > 1 and self.per_sample_d:
            return [("model.pack", f"{pack}: this family's D head predicts per sample; use 1")]
        if b % pack:
            return [("train.batch_size", f"{b} does not divide into packs of model.pack={pack}")]
        return []

    # -- losses --------------------------------------------------------------------------------
    def reals(self, batch: dict) -> torch.Tensor:
        """The real images D sees (ProGAN downsamples them to its stage)."""
        return batch["image"]

    def labels(self, batch: dict):
        return batch.get("cls") if self.conditional else None

    def z(self, n: int, device) -> torch.Tensor:
        return torch.randn(n, self.model.z_dim, device=device)

    def augmented(self, D):
        """D behind the augmentation, for the penalties: R1/GP's gradient is taken w.r.t. the
        un-augmented input, through the augmentation (as stylegan2-ada's R1). D itself for none."""
        aug = self.augment
        return D if type(aug) is augment.Identity else (
            lambda x, y=None: D(aug(x), y))

    def loss(self, phase: Phase, nets: Nets, batch: dict, ctx: Ctx):
        return getattr(self, f"_loss_{phase.name}")(nets, batch, ctx)

    def _loss_D(self, nets, batch, ctx):
        G, D, L = nets["G"], nets["D"], self.cfg.loss
        real, y = self.reals(batch), self.labels(batch)
        with torch.no_grad(), ctx.amp():
            fake = G(self.z(real.shape[0], real.device), y)
        with ctx.amp():
            real_logits = D(self.augment(real), y).float()
            fake_logits = D(self.augment(fake), y).float()
            loss = losses.d_loss(L.kind, real_logits, fake_logits)
        stats = {"loss_d": loss.detach(), "d_real": real_logits.mean().detach(),
                 "d_fake": fake_logits.mean().detach(), **self.ada_stat(real_logits)}
        if L.gp_weight > 0:
            gp = regularizers.gradient_penalty(self.augmented(eager(D)), real, fake.float(), y)
            loss = loss + L.gp_weight * gp
            stats["gp"] = gp.detach()
        if L.r1_gamma > 0 and L.r1_every == 1:
            r1 = regularizers.r1_penalty(self.augmented(eager(D)), real, y)
            loss = loss + L.r1_gamma * r1
            stats["r1"] = r1.detach()
        if L.drift_weight > 0:
            loss = loss + L.drift_weight * regularizers.drift(real_logits)
        return loss, stats

    def _loss_Dreg(self, nets, batch, ctx):
        L = self.cfg.loss
        r1 = regularizers.r1_penalty(self.augmented(eager(nets["D"])), self.reals(batch), self.labels(batch))
        return L.r1_gamma * L.r1_every * r1, {"r1": r1.detach()}

    def _loss_G(self, nets, batch, ctx):
        G, D, L = nets["G"], nets["D"], self.cfg.loss
        y = self.labels(batch)
        n = batch["image"].shape[0]
        z = self.z(n, ctx.device)
        if L.mode_seeking_weight > 0 and y is not None:
            y = torch.cat([y[:n // 2], y[:n - n // 2]])   # pairs (i, i + n/2) share their class
        with ctx.amp():
            fake = G(z, y)
            loss = losses.g_loss(L.kind, D(self.augment(fake), y).float())
        stats = {"loss_g": loss.detach()}
        if L.mode_seeking_weight > 0:
            ms = regularizers.mode_seeking(fake, z)
            loss = loss + L.mode_seeking_weight * ms
            stats["mode_seeking"] = ms.detach()
        if L.ortho_weight > 0:
            ortho = regularizers.orthogonal(unwrap(G))
            loss = loss + L.ortho_weight * ortho
            stats["ortho"] = ortho.detach()
        return loss, stats


@register("dcgan", DCGANConfig)
class DCGAN(DirectGAN):
    """DCGAN and cGAN (projection D); LSGAN, WGAN(-GP) and SNGAN through loss.* and presets."""


@register("biggan", BigGANConfig)
class BigGAN(DirectGAN):
    """BigGAN; SAGAN is its preset with one attention layer and no orthogonal regularization."""


@register("biggan_deep", BigGANDeepConfig)
class BigGANDeep(DirectGAN):
    """BigGAN-deep bottleneck blocks."""
