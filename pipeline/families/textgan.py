"""GAN-INT-CLS (Reed et al. 2016): images from captions (models/textgan.py).

CLS, the matching-aware D: besides real images with their own caption (real) and generated ones
(fake), D sees real images with another sample's caption (the batch's captions rolled by one) and
must call them fake too; the two fake terms are averaged as in the paper's algorithm 1, so D
learns whether an image matches its text, not only whether it looks real. INT: G also trains on
embeddings halfway between two captions (beta = 0.5), which D judges with that embedding: it
fills the gaps between the training captions. `model.interpolate` weights that loss (0 = off).

The text encoder (`model.text_encoder`, pipeline.text): "trained", a word encoder network T
trained with D's optimizer (G reads its output without a gradient, so G cannot move the text
space to suit itself), or "minilm", frozen all-MiniLM-L6-v2 features (no T). Captions are read
from `model.caption_member` (txt); a sample without one is a bad sample (skipped and counted, or
named under data.bad_samples=strict). Prompts with words the trained encoder never saw are
refused by name (check_fixed).
"""
from __future__ import annotations

import torch

from models.textgan import Discriminator, Generator, TextConditionConfig, TextGANConfig, WordEncoder
from pipeline import text
from pipeline.data.fields import Image, Text
from pipeline.engine import losses
from pipeline.families import register
from pipeline.families.gan import DirectGAN
from pipeline.families.spec import Caption, Latent, Phase, unused_terms, unwrap


class TextCondition:
    """The caption side of a text-conditioned family (GAN-INT-CLS, StackGAN with condition: text):
    its sample field, its generation input, the trained encoder network T (none for MiniLM),
    sentence embeddings and the check that refuses prompts with words T never read."""

    def __init__(self, model: TextConditionConfig):
        self.m = model

    @property
    def trained(self) -> bool:
        return self.m.text_encoder == "trained"

    def field(self) -> Text:
        return Text(members=(self.m.caption_member,))

    def input(self) -> Caption:
        return Caption(self.m.text_encoder, self.m.buckets, self.m.max_words)

    def with_encoder(self, names: tuple[str, ...]) -> tuple[str, ...]:
        """Network names plus T when the encoder is trained: it is sampled with G and, as in
        GAN-INT-CLS, trained by D's optimizer."""
        return (*names, "T") if self.trained else names

    def build(self) -> dict:
        return {"T": WordEncoder(self.m.buckets, self.m.word_dim, self.m.sent_dim)} if self.trained else {}

    def embed(self, nets, feats: torch.Tensor) -> torch.Tensor:
        """Sentence embeddings of a caption tensor (pipeline.text.features)."""
        return nets["T"](feats) if "T" in nets else feats.float()

    def of_batch(self, nets, captions: list[str], device, grad: bool) -> torch.Tensor:
        feats = text.features(self.input(), captions).to(device)
        if grad:
            return self.embed(nets, feats)
        with torch.no_grad():      # no DDP reduction is prepared for a forward without grad
            return self.embed(nets, feats)

    def check(self, nets, caps, name: str) -> None:
        if caps is None or not self.trained:
            return
        caps = [caps] if isinstance(caps, str) else list(caps)
        T = unwrap(nets["T"])
        unknown = text.unknown_words(self.input(), caps, T.seen)
        if unknown:
            raise ValueError(f"{name}: {', '.join(repr(w) for w in unknown[:10])} never appeared in this "
                             f"model's training captions ({int(T.seen.sum())} word ids did), so its trained "
                             f"text encoder has no embedding for them; use the words it was trained on")


@register("gan_int_cls", TextGANConfig)
class GANINTCLS(DirectGAN):
    per_sample_d = True

    @property
    def text(self) -> TextCondition:
        return TextCondition(self.model)

    @property
    def sample_nets(self):
        return self.text.with_encoder(("G",))

    @property
    def fields(self):
        return {"image": Image(), "txt": self.text.field()}

    def inputs(self):
        return {"z": Latent(self.model.z_dim), "txt": self.text.input()}

    def build(self):
        return {"G": Generator(self.model), "D": Discriminator(self.model), **self.text.build()}

    def optimizer_groups(self):
        o = self.cfg.optim
        return {"G": (("G",), o.g_lr), "D": (self.text.with_encoder(("D",)), o.d_lr)}

    def phases(self):
        return [Phase("D", "D", repeat=self.cfg.optim.d_steps_per_g), Phase("G", "G", new_batch=False)]

    def config_problems(self):
        # R1/GP would need D's gradient w.r.t. the image at a fixed caption: not built here.
        return unused_terms(self, aug=False) or super().config_problems()

    def generate(self, nets, inputs):
        return nets["G"](inputs["z"], self.text.embed(nets, inputs["txt"]))

    def check_fixed(self, nets, fixed):
        self.text.check(nets, fixed.get("txt"), "txt")

    # -- losses -------------------------------------------------------------------------------
    def _loss_D(self, nets, batch, ctx):
        G, D, kind = nets["G"], nets["D"], self.cfg.loss.kind
        real = batch["image"]
        e = self.text.of_batch(nets, batch["txt"], ctx.device, grad=True)
        with torch.no_grad(), ctx.amp():
            fake = G(self.z(real.shape[0], real.device), e.detach())
        with ctx.amp():
            s_real = D(self.augment(real), e).float()
            s_fake = D(self.augment(fake), e).float()
            stats = {}
            if self.model.matching_aware:
                s_wrong = D(self.augment(real), e.roll(1, 0)).float()
                # the paper's (log(1 - s_w) + log(1 - s_f)) / 2: the mean over both halves
                loss = losses.d_loss(kind, s_real, torch.cat([s_fake, s_wrong]))
                stats["d_wrong"] = s_wrong.mean().detach()
            else:
                loss = losses.d_loss(kind, s_real, s_fake)
        return loss, {"loss_d": loss.detach(), "d_real": s_real.mean().detach(),
                      "d_fake": s_fake.mean().detach(), **stats, **self.ada_stat(s_real)}

    def _loss_G(self, nets, batch, ctx):
        G, D, kind, w = nets["G"], nets["D"], self.cfg.loss.kind, self.model.interpolate
        e = self.text.of_batch(nets, batch["txt"], ctx.device, grad=False)
        n = e.shape[0]
        with ctx.amp():
            loss = losses.g_loss(kind, D(self.augment(G(self.z(n, ctx.device), e)), e).float())
            stats = {"loss_g": loss.detach()}
            if w > 0:
                mid = 0.5 * (e + e.roll(1, 0))           # GAN-INT, beta = 0.5
                interp = losses.g_loss(kind, D(self.augment(G(self.z(n, ctx.device), mid)), mid).float())
                loss = loss + w * interp
                stats["loss_g_int"] = interp.detach()
        return loss, stats
