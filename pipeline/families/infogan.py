"""InfoGAN (Chen et al. 2016): latent codes that G must keep recoverable from its images.

G(z, c) sees noise plus categorical codes (one-hot) and continuous codes in [-1, 1]; a Q head on
D's body predicts the codes. D and Q minimise D's loss plus info_weight times the information
loss on fakes (cross-entropy of the categorical codes, cont_weight times the squared error of the
continuous ones: a Gaussian of unit variance); G minimises its loss plus the same term. Metric
`code_purity`: how well the first categorical code predicts a shapestack oracle glyph.
"""
from __future__ import annotations

from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F

from models import dcgan
from pipeline.data.fields import Image
from pipeline.engine import losses
from pipeline.evaluation.metrics import register as register_metric
from pipeline.families import register
from pipeline.families.gan import DirectGAN
from pipeline.families.spec import Categorical, Latent, Uniform


@dataclass(frozen=True, kw_only=True)
class InfoGANConfig(dcgan.DCGANConfig):
    cat_codes: tuple[int, ...] = (10,)  # sizes of the categorical codes (cat0, cat1, ...)
    cont_codes: int = 2                 # continuous codes cont0, cont1, ... uniform in [-1, 1]
    info_weight: float = 1.0            # lambda: weight of the information loss (>= 0)
    cont_weight: float = 0.1            # weight of the continuous codes within it (>= 0)

    def __post_init__(self):
        super().__post_init__()
        if self.num_classes:
            raise ValueError("num_classes: InfoGAN is unconditional here (0); its codes replace classes")
        if any(k < 2 for k in self.cat_codes):
            raise ValueError("cat_codes: each code needs >= 2 values")
        for k in ("cont_codes", "info_weight", "cont_weight"):
            if getattr(self, k) < 0:
                raise ValueError(f"{k}: must be >= 0")

    @property
    def code_dim(self) -> int:
        return sum(self.cat_codes) + self.cont_codes


@register("infogan", InfoGANConfig)
class InfoGAN(DirectGAN):
    per_sample_d = True

    @property
    def fields(self):
        return {"image": Image()}

    def inputs(self):
        m = self.model
        return {"z": Latent(m.z_dim), **{f"cat{i}": Categorical(k) for i, k in enumerate(m.cat_codes)},
                **{f"cont{i}": Uniform(1) for i in range(m.cont_codes)}}

    def build(self):
        m = self.model
        # G sees noise and codes as one vector; D(x, head=True) -> (logit, Q's code predictions)
        return {"G": dcgan.Generator(dcgan.base_config(m, z_dim=m.z_dim + m.code_dim)),
                "D": dcgan.HeadedDiscriminator(m, m.code_dim, hidden=128)}

    def optimizer_groups(self):
        o = self.cfg.optim
        return {"G": (("G",), o.g_lr), "D": (("D",), o.d_lr)}   # D holds Q: they learn together

    def _g_input(self, x: dict) -> torch.Tensor:
        m = self.model
        parts = [x["z"]] + [F.one_hot(x[f"cat{i}"], k).float() for i, k in enumerate(m.cat_codes)]
        return torch.cat(parts + [x[f"cont{i}"] for i in range(m.cont_codes)], 1)

    def generate(self, nets, inputs):
        return nets["G"](self._g_input(inputs))

    def _info(self, pred: torch.Tensor, x: dict) -> tuple[torch.Tensor, dict]:
        m, at, cat = self.model, 0, torch.zeros((), device=pred.device)
        for i, k in enumerate(m.cat_codes):
            cat = cat + F.cross_entropy(pred[:, at:at + k].float(), x[f"cat{i}"])
            at += k
        cont = (F.mse_loss(pred[:, at:].float(), torch.cat([x[f"cont{i}"] for i in range(m.cont_codes)], 1))
                if m.cont_codes else torch.zeros((), device=pred.device))
        return cat + m.cont_weight * cont, {"info_cat": cat.detach(), "info_cont": cont.detach()}

    def _loss_D(self, nets, batch, ctx):
        G, D = nets["G"], nets["D"]
        real = batch["image"]
        x = self.draw(real.shape[0], real.device)
        with torch.no_grad(), ctx.amp():
            fake = G(self._g_input(x))
        with ctx.amp():
            real_logit = D(self.augment(real)).float()
            fake_logit, pred = D(self.augment(fake), head=True)
            adv = losses.d_loss(self.cfg.loss.kind, real_logit, fake_logit.float())
        info, s = self._info(pred, x)
        stats = {"loss_d": adv.detach(), "d_real": real_logit.mean().detach(),
                 "d_fake": fake_logit.float().mean().detach(), **{f"{k}_d": v for k, v in s.items()},
                 **self.ada_stat(real_logit)}
        return adv + self.model.info_weight * info, stats

    def _loss_G(self, nets, batch, ctx):
        G, D = nets["G"], nets["D"]
        x = self.draw(batch["image"].shape[0], ctx.device)
        with ctx.amp():
            logit, pred = D(self.augment(G(self._g_input(x))), head=True)
            adv = losses.g_loss(self.cfg.loss.kind, logit.float())
        info, s = self._info(pred, x)
        return adv + self.model.info_weight * info, {"loss_g": adv.detach(), **s}


def _purity(codes, glyph) -> float:
    """For each value of the code, the share of its samples showing its most common glyph."""
    return float(sum(np.bincount(glyph[codes == k]).max() for k in np.unique(codes)) / len(codes))


def code_purity(codes, glyphs, seed: int = 0) -> tuple[float, float]:
    """(purity, chance) on the glyph channel the code predicts best beyond chance; chance is the
    same images' purity with their codes shuffled: what a generator that ignores its code scores
    (a collapsed channel scores high on both, so "above chance" is the gap)."""
    codes, glyphs = np.asarray(codes), np.asarray(glyphs)
    shuffled = np.random.default_rng(seed).permutation(codes)
    pairs = [(_purity(codes, glyphs[:, ch]), _purity(shuffled, glyphs[:, ch])) for ch in range(glyphs.shape[1])]
    return max(pairs, key=lambda pc: pc[0] - pc[1])


@register_metric("code_purity", needs=("glyphs", "labels"))
def _code_purity_metric(fake, ref=None, seed: int = 0, **_):
    if fake.labels is None:
        raise ValueError("code_purity needs a categorical code (an InfoGAN generator)")
    purity, chance = code_purity(fake.labels, fake.glyphs, seed)
    return {"code_purity": purity, "code_purity_chance": chance}
