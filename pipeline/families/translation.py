"""What image-to-image families (pix2pix, CycleGAN, StarGAN) share: an image in, an image out.

Their generation input is a `SourceImage` (and, where there is a choice, a target `Domain`), so the
one sampler, `Generator.translate`, `ganforge translate` and the pyfunc model feed them images
instead of noise. Their training grids show, per sample, the input, the translation and the target
where the data has one, side by side. They keep no EMA (none of the three papers does): the
trained networks are what a user samples.
"""
from __future__ import annotations

import torch

from pipeline.data.fields import IMAGE_EXTS, Image
from pipeline.families.spec import Family, Nets


def image_field(prefix: str) -> Image:
    """The image stored as PREFIX.png / PREFIX.jpg / ... in each sample (pairs: source, target)."""
    return Image(members=tuple(f"{prefix}.{e}" for e in IMAGE_EXTS))


class Translator(Family):
    ema = ()

    def optimizer_groups(self):
        """One G and one D (pix2pix, StarGAN); CycleGAN groups its pairs."""
        o = self.cfg.optim
        return {"G": (("G",), o.g_lr), "D": (("D",), o.d_lr)}

    def source(self, batch: dict) -> torch.Tensor:
        """The batch's images to translate."""
        return batch["image"]

    def grid_inputs(self, batch: dict, n: int) -> dict[str, torch.Tensor]:
        """The generation inputs of the grid's first n samples of the batch."""
        return {"image": self.source(batch)[:n]}

    def grid_target(self, batch: dict, n: int) -> torch.Tensor | None:
        """What the translation should look like, where the data says (paired data)."""
        return None

    @torch.no_grad()
    def grid(self, nets: Nets, n: int, seed: int, batch: dict):
        inputs = self.grid_inputs(batch, n)
        modes = [m.training for m in nets.values()]
        for m in nets.values():
            m.eval()
        try:
            out = self.generate(nets, inputs).float()
        finally:
            for m, t in zip(nets.values(), modes):
                m.train(t)
        cols = [inputs["image"].float(), out]
        target = self.grid_target(batch, n)
        if target is not None:
            cols.append(target.float())
        per_row = max(1, int(len(out) ** 0.5))
        return torch.stack(cols, 1).flatten(0, 1), per_row * len(cols)

    def config_problems(self):
        out = []
        if getattr(self.cfg.aug, "kind", "none") != "none":
            out.append(("aug.kind", f"{self.cfg.aug.kind!r}: augmentation is not applied to translation "
                        f"families (their D sees image pairs or domains); use none"))
        if self.cfg.loss.mode_seeking_weight > 0:
            out.append(("loss.mode_seeking_weight", "translation families do not apply it; use 0"))
        if self.cfg.optim.ema_bn_samples:
            out.append(("optim.ema_bn_samples", f"{self.name} translates images, so its averaged networks "
                        "have no samples of their own to recompute BatchNorm statistics from; set it to 0"))
        if self.cfg.eval.every:
            out.append(("eval.every", "translators are not evaluated in the loop; set 0 and score a "
                        "trained one with bench/quality_translation.py or pipeline.evaluation.translation"))
        return out
