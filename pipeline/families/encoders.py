"""GANs with an encoder: BiGAN/ALI and VAE-GAN. Both learn E: x -> z beside G: z -> x, so a
trained model maps images to latents and back (`ganforge encode`, Generator.encode/reconstruct).

- **BiGAN** (Donahue et al. 2017) / **ALI** (Dumoulin et al. 2017): D judges joint pairs,
  (x, E(x)) from data against (G(z), z) from the prior. At D's optimum E and G invert each other.
  BiGAN's E is deterministic; `model.stochastic: true` is ALI's, z = mu + sigma * eps. G and E
  learn together in one phase against the swapped labels (E's pairs called fake, G's real), the
  non-saturating form both papers train with. `model.recon_weight` adds ALICE's (Li et al. 2017)
  L1 between x and G(E(x)); 0, the default, is the plain adversarial objective.
- **VAE-GAN** (Larsen et al. 2016): a VAE whose decoder is G and whose reconstruction is measured
  in D's feature space (D's last feature maps), plus a GAN on both the reconstructions and prior
  samples. Loss of the E+G phase: kl_weight * KL(q(z|x) || N(0, I)) (summed over z, averaged over
  the batch) + feature_weight * the feature-space squared error (or, with `model.feature_match:
  mean`, Salimans et al.'s feature matching of batch means) + pixel_weight * pixel L1 + the GAN
  loss of reconstructions and samples. One optimizer trains E and G on that sum, so E also
  sees the GAN term, where the paper gives E the prior and reconstruction terms only: one phase
  instead of two forwards of every network.

The oracle metric for both is reconstruction accuracy on fresh shapestack images
(pipeline/evaluation/reconstruction.py): how often G(E(x)) shows x's glyphs.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

import torch
import torch.nn.functional as F

from models import dcgan
from models.encoders import Encoder, FeatureDiscriminator, JointDiscriminator
from pipeline.data.fields import Image, Label
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.spec import Family, Latent, Phase, unused_terms


def _check_unconditional(cfg) -> None:
    if cfg.num_classes:
        raise ValueError("num_classes: the encoder families are unconditional here (0)")
    if cfg.pack != 1:
        raise ValueError("pack: the encoder families judge each sample with its own latent; use 1")
    if cfg.mbstd_group:
        raise ValueError("mbstd_group: not used by the encoder families; use 0")


@dataclass(frozen=True, kw_only=True)
class BiGANConfig(dcgan.DCGANConfig):
    e_channels: int = 64          # E width at full resolution; doubles per block towards 4x4
    stochastic: bool = False      # ALI: E outputs (mu, log-variance), z is sampled; BiGAN: z = E(x)
    joint_hidden: int = 512       # width of D's z path and of its joint MLP
    dropout: float = 0.2          # in D (ALI uses dropout in every layer of D)
    recon_weight: float = 0.0     # ALICE's L1 between x and G(E(x)) in the G+E loss; 0 = off

    def __post_init__(self):
        super().__post_init__()
        _check_unconditional(self)
        if self.e_channels < 1 or self.joint_hidden < 1:
            raise ValueError("e_channels, joint_hidden: must be >= 1")
        if not 0 <= self.dropout < 1:
            raise ValueError(f"dropout: {self.dropout} must be in [0, 1)")
        if self.recon_weight < 0:
            raise ValueError("recon_weight: must be >= 0")


@dataclass(frozen=True, kw_only=True)
class VAEGANConfig(dcgan.DCGANConfig):
    e_channels: int = 64          # E width at full resolution; doubles per block towards 4x4
    kl_weight: float = 0.01       # weight of KL(q(z|x) || N(0, I)), summed over z dims
    feature_weight: float = 1.0   # weight of the squared error between D's features of x and G(E(x))
    pixel_weight: float = 0.0     # weight of a pixel L1 between x and G(E(x)); 0 = the paper's loss
    # "pairs": the paper's feature term, each G(E(x)) against its own x. "mean": Salimans et al.
    # (2016) feature matching instead, the batch mean of D's features over G's images (the
    # reconstructions and the prior samples) against the reals' mean. "pairs" with an E whose
    # posterior has collapsed compares samples with unrelated reals, which also shrinks G's feature
    # variance (E|f(G)-f(x)|^2 = |mean gap|^2 + Var f(G) + Var f(x)): a pull towards one image.
    feature_match: Literal["pairs", "mean"] = "pairs"
    # Class balance without conditioning: with balance_classes = K > 0, D gets a K-way head on its
    # features, trained with cross-entropy on the reals' labels (the `cls` field: the first glyph
    # on shapestack), and G's loss adds balance_weight * KL(the head's softmax averaged over G's
    # images || uniform). G stays G(z); it is pushed to draw each class equally often, the
    # marginal-entropy term of CatGAN (Springenberg 2016) with a head taught by labelled reals.
    balance_classes: int = 0
    balance_weight: float = 1.0

    def __post_init__(self):
        super().__post_init__()
        _check_unconditional(self)
        if self.e_channels < 1:
            raise ValueError("e_channels: must be >= 1")
        if self.balance_classes == 1 or self.balance_classes < 0:
            raise ValueError(f"balance_classes: {self.balance_classes}; use 0 (off) or >= 2 classes")
        for k in ("kl_weight", "feature_weight", "pixel_weight", "balance_weight"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}: must be >= 0")


class EncoderGAN(Family):
    """G(z) and E(x) trained together against one D: phases D, then EG on the same batch."""
    ema = ("G", "E")
    sample_nets = ("G", "E")

    @property
    def fields(self):
        return {"image": Image()}      # unlabelled shards train

    def inputs(self):
        return {"z": Latent(self.model.z_dim)}

    def optimizer_groups(self):
        o = self.cfg.optim
        return {"EG": (("E", "G"), o.g_lr), "D": (("D",), o.d_lr)}

    def phases(self):
        return [Phase("D", "D", repeat=self.cfg.optim.d_steps_per_g), Phase("EG", "EG", new_batch=False)]

    def config_problems(self):
        # VAE-GAN would augment reals and reconstructions independently, then compare their D
        # features: the reconstruction loss would measure the augmentation.
        return unused_terms(self, aug=self.name == "vaegan")

    def loss(self, phase, nets, batch, ctx):
        return getattr(self, f"_loss_{phase.name}")(nets, batch, ctx)

    def generate(self, nets, inputs):
        return nets["G"](inputs["z"])

    def encode(self, nets, x: torch.Tensor) -> torch.Tensor:
        """Images float [-1, 1] -> latents: E's mean for a stochastic encoder (what reconstructs)."""
        z = nets["E"](x)
        return z[0] if isinstance(z, tuple) else z

    def grid(self, nets, n, seed, batch):
        """Top half: seeded samples; bottom half: real images beside their reconstructions."""
        from pipeline.families import sampling

        half = max(2, n // 2)
        fakes = sampling.images(self, nets, 0, half, seed=seed)
        real = batch["image"][: max(1, half // 2)].to(fakes.device).float()
        with torch.no_grad():
            rec = self.generate(nets, {"z": self.encode(nets, real)}).float()
        pairs = torch.stack([real, rec], 1).flatten(0, 1)
        return torch.cat([fakes, pairs]), None

    @staticmethod
    def _sampled(e_out):
        """(z, kl per sample) from a stochastic E's (mu, logvar): reparameterized."""
        mu, logvar = e_out
        z = mu + torch.randn_like(mu) * (0.5 * logvar).exp()
        kl = 0.5 * (mu.float() ** 2 + logvar.float().exp() - 1 - logvar.float()).sum(1)
        return z, kl


@register("bigan", BiGANConfig)
class BiGAN(EncoderGAN):
    """BiGAN (deterministic E) and ALI (model.stochastic: true)."""

    def build(self):
        m = self.model
        return {"G": dcgan.Generator(dcgan.base_config(m)),
                "E": Encoder(m.resolution, m.z_dim, m.e_channels, m.stochastic),
                "D": JointDiscriminator(m, m.joint_hidden, m.dropout)}

    def _encode_train(self, E, x):
        out = E(x)
        return self._sampled(out)[0] if self.model.stochastic else out

    def _pairs(self, nets, real, ctx):
        G, E = nets["G"], nets["E"]
        z = torch.randn(real.shape[0], self.model.z_dim, device=real.device)
        with ctx.amp():
            return z, G(z), self._encode_train(E, real)

    def _loss_D(self, nets, batch, ctx):
        D, real = nets["D"], batch["image"]
        with torch.no_grad():
            z, fake, ez = self._pairs(nets, real, ctx)
        with ctx.amp():
            enc_logit = D(self.augment(real), ez).float()      # data side: (x, E(x)) is "real"
            gen_logit = D(self.augment(fake), z).float()       # prior side: (G(z), z) is "fake"
            loss = losses.d_loss(self.cfg.loss.kind, enc_logit, gen_logit)
        return loss, {"loss_d": loss.detach(), "d_real": enc_logit.mean().detach(),
                      "d_fake": gen_logit.mean().detach(), **self.ada_stat(enc_logit)}

    def _loss_EG(self, nets, batch, ctx):
        D, real = nets["D"], batch["image"]
        z, fake, ez = self._pairs(nets, real, ctx)
        with ctx.amp():
            enc_logit = D(self.augment(real), ez).float()
            gen_logit = D(self.augment(fake), z).float()
            # G and E win when D calls E's pairs fake and G's real: D's loss with the labels swapped.
            loss = losses.d_loss(self.cfg.loss.kind, gen_logit, enc_logit)
        stats = {"loss_g": loss.detach()}
        if self.model.recon_weight > 0:
            with ctx.amp():
                rec = nets["G"](self.encode(nets, real))
            l1 = (rec.float() - real.float()).abs().mean()
            loss = loss + self.model.recon_weight * l1
            stats["recon_l1"] = l1.detach()
        return loss, stats


@register("vaegan", VAEGANConfig)
class VAEGAN(EncoderGAN):
    """VAE-GAN: E the VAE's encoder, G its decoder, reconstruction in D's feature space."""

    @property
    def fields(self):
        # Labels only where D's class head learns from them; G is never given them.
        return {"image": Image(), **({"cls": Label()} if self.model.balance_classes else {})}

    def build(self):
        m = self.model
        return {"G": dcgan.Generator(dcgan.base_config(m)),
                "E": Encoder(m.resolution, m.z_dim, m.e_channels, stochastic=True),
                "D": FeatureDiscriminator(dcgan.base_config(m), m.balance_classes)}

    def _forward(self, nets, real, ctx):
        G, E = nets["G"], nets["E"]
        with ctx.amp():
            zq, kl = self._sampled(E(real))
            zp = torch.randn_like(zq)
            return G(zq), G(zp), kl

    def _loss_D(self, nets, batch, ctx):
        D, real = nets["D"], batch["image"]
        with torch.no_grad():
            rec, prior, _ = self._forward(nets, real, ctx)
        with ctx.amp():
            # features=True costs nothing more; it also returns the class head's logits where there is one
            real_logit, _, *cls = D(self.augment(real), features=True)
            real_logit = real_logit.float()
            fake_logit = D(self.augment(torch.cat([rec, prior]))).float()
            loss = losses.d_loss(self.cfg.loss.kind, real_logit, fake_logit)
        stats = {"loss_d": loss.detach(), "d_real": real_logit.mean().detach(),
                 "d_fake": fake_logit.mean().detach(), **self.ada_stat(real_logit)}
        if cls:
            y, cls = self._labels(batch), cls[0].float()
            aux = F.cross_entropy(cls, y)
            stats |= {"aux_d": aux.detach(), "d_real_class_acc": (cls.argmax(1) == y).float().mean()}
            loss = loss + aux
        return loss, stats

    def _labels(self, batch) -> torch.Tensor:
        y, k = batch["cls"], self.model.balance_classes
        lo, hi = (int(v) for v in torch.aminmax(y))   # one sync; cross_entropy's own error names nothing
        if lo < 0 or hi >= k:
            raise ValueError(f"model.balance_classes: {k}, but this batch has labels in [{lo}, {hi}] "
                             f"(-1: a sample without a label); labels must lie in [0, {k})")
        return y

    def _loss_EG(self, nets, batch, ctx):
        D, real, m = nets["D"], batch["image"], self.model
        rec, prior, kl = self._forward(nets, real, ctx)
        n = real.shape[0]
        with ctx.amp():
            # One D forward: reals (features only, no gradient needed into them), reconstructions, samples.
            logit, feat, *cls = D(self.augment(torch.cat([real, rec, prior])), features=True)
            gan = losses.g_loss(self.cfg.loss.kind, logit[n:].float())
        f_real, f_fake = feat[:n].float().detach(), feat[n:].float()
        if m.feature_match == "mean":
            feature = (f_fake.mean(0) - f_real.mean(0)).pow(2).mean()
        else:
            feature = (f_fake[:n] - f_real).pow(2).mean()
        kl = kl.mean()
        loss = m.kl_weight * kl + m.feature_weight * feature + gan
        stats = {"loss_g": gan.detach(), "kl": kl.detach(), "recon_feature": feature.detach()}
        if cls:
            # KL(mean class distribution of G's images || uniform): 0 when each class is as likely.
            p = cls[0][n:].float().softmax(1).mean(0)
            balance = (p * (p * p.numel()).clamp_min(1e-12).log()).sum()
            loss = loss + m.balance_weight * balance
            stats["class_balance_kl"] = balance.detach()
        if m.pixel_weight > 0:
            l1 = (rec.float() - real.float()).abs().mean()
            loss = loss + m.pixel_weight * l1
            stats["recon_l1"] = l1.detach()
        return loss, stats
