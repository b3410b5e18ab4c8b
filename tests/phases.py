"""Test helpers: one D or G phase of a family on a given batch, as the engine runs it."""
import torch

from pipeline.engine.loop import run_phase
from pipeline.families.spec import Ctx, Phase


def d_step(fam, nets, opt, real, y=None):
    batch = {"image": real, **({"cls": y} if y is not None else {})}
    return run_phase(fam, Phase("D", "D"), nets, {"D": opt}, batch, Ctx(step=1, device=real.device))


def g_step(fam, nets, opt, n, y=None, device="cpu"):
    batch = {"image": torch.zeros(n, 1), **({"cls": y} if y is not None else {})}
    return run_phase(fam, Phase("G", "G"), nets, {"G": opt}, batch, Ctx(step=1, device=torch.device(device)))
