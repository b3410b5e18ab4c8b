"""What a GAN family declares, so the engine, checkpoints, registry, sampling, evaluation and Tune
read the declaration and never name G or D themselves.

A family is a subclass of `Family` bound to one run config: its networks (`build`), its optimizers
(`optimizers`), its phases (named units of work as in stylegan2-ada's Gmain/Greg/Dmain/Dreg, each
with its optimizer, interval and repeat count), one `loss(phase, ...)` that returns (loss, named
detached stats) and never logs, the sample fields it reads, its generation inputs and one
`generate` that grids, evaluation, `ganforge sample`, the pyfunc model and the pt2 export all use.
"""
from __future__ import annotations

import contextlib
import functools
from dataclasses import dataclass, field
from typing import Any, ClassVar

import torch
import torch.nn as nn

from pipeline.data.fields import DEFAULT_FIELDS, Field
from pipeline.text import TextEncoder

Nets = dict[str, nn.Module]


def eager(m):
    """The network without torch.compile's wrapper (a DDP wrapper stays). Losses that
    differentiate twice (R1, WGAN-GP, path length) call this: a compiled graph's backward
    cannot itself be differentiated."""
    return getattr(m, "_orig_mod", m)


def unwrap(m):
    """The bare network, without torch.compile's or DDP's wrapper (prepare_model wraps only with
    more than one worker): for reading its parameters, never for a forward that DDP must see."""
    m = eager(m)
    return getattr(m, "module", m)


# ---------------------------------------------------------------- phases

@dataclass(frozen=True)
class Phase:
    """One named unit of work per step.

    every: run on steps where step % every == 0 (lazy regularization; with `lazy`, the loss is
      scaled by `every` and its optimizer's lr and betas are corrected as in StyleGAN2:
      c = every / (every + 1), lr * c, beta ** c).
    repeat: times per step (D steps per G step), each on a new batch when `new_batch`.
    new_batch: draw a fresh batch from the stream; False reuses the phase before's batch (a G
      step conditions on the labels D just saw, and reads no extra data).
    """
    name: str
    optimizer: str
    every: int = 1
    repeat: int = 1
    new_batch: bool = True
    lazy: bool = False

    def due(self, step: int) -> bool:
        return step % self.every == 0


@dataclass
class Ctx:
    """What a loss sees besides the networks and the batch."""
    step: int
    device: torch.device
    autocast: contextlib.AbstractContextManager | None = None
    phase: Phase | None = None
    lr_scale: float = 1.0       # optim.lr_decay_from's factor this step, applied at each opt.step

    def amp(self):
        return self.autocast if self.autocast is not None else contextlib.nullcontext()


@dataclass(frozen=True)
class Change:
    """A growth hook's answer: the trained parameter set changed (re-wrap DDP), the per-worker
    batch size changed (re-open the data stream)."""
    rewrap: bool = False
    batch_size: int | None = None


# ---------------------------------------------------------------- generation inputs

@dataclass(frozen=True)
class Latent:
    """Standard normal noise; `truncation` (sampling only) redraws entries beyond |t|."""
    dim: int


@dataclass(frozen=True)
class ClassLabel:
    """A class index in [0, num_classes); sample i asks for i % num_classes unless fixed."""
    num_classes: int


@dataclass(frozen=True)
class Categorical:
    """An InfoGAN-style categorical code, one-hot of size k; sample i gets i % k unless fixed."""
    k: int


@dataclass(frozen=True)
class Uniform:
    """Continuous codes in [-1, 1]; a fixed value sets every sample's code."""
    dim: int


@dataclass(frozen=True)
class Truncation:
    """Per-sample truncation psi, float [n], for a family that truncates in its own latent space
    (StyleGAN2: w_avg + psi * (w - w_avg)). Sampling's `truncation` fills it (None = 1, untruncated;
    0 = the average image) and then redraws no Latent; training draws 1. Not fixable."""


@dataclass(frozen=True)
class SourceImage:
    """The image a translation family translates: float [n, 3, R, R] in [-1, 1], always given
    by the caller (a batch of real images in training and grids, `ganforge translate --input`,
    the pyfunc model's images), never drawn."""
    resolution: int


@dataclass(frozen=True)
class Domain:
    """The target domain of a translation, an index into `names`; fixed by name or index
    (`--to filled`); unfixed, every sample goes to `default`, or sample i to i % len(names) when
    `default` is None."""
    names: tuple[str, ...]
    default: int | None = None


@dataclass(frozen=True)
class Caption(TextEncoder):
    """What the image should show, as text, made a tensor by its encoder (pipeline.text.features:
    word ids for the trained encoder, MiniLM's embedding). Fixed by a prompt (`--prompt`, the
    pyfunc model's `prompt` column): one caption for every sample, or a list of one per sample.
    Unfixed, sample i shows the built-in captioned set's caption i
    (pipeline.data.captions.default_caption: every shapestack mode once per 1000 samples).
    Training reads the batch's captions; nothing is drawn."""


Input = Latent | ClassLabel | Categorical | Uniform | Truncation | SourceImage | Domain | Caption


# ---------------------------------------------------------------- the family

class Family:
    """Base class: subclass, fill the declarations, register with @families.register(name, Config).

    Bound to a run config (`self.cfg`: the whole pipeline Config; `self.model` its model section).
    """
    name: ClassVar[str] = ""
    Config: ClassVar[type] = object
    ema: ClassVar[tuple[str, ...]] = ("G",)        # networks that get an averaged copy
    sample_nets: ClassVar[tuple[str, ...]] = ("G",)  # what a user samples from (EMA copy if any)
    # Stats of `loss` a Tune study may rank by, with their direction, beside the loop's metrics;
    # and the study's default objective without in-loop evaluation (d_gap = d_real - d_fake).
    objectives: ClassVar[dict[str, str]] = {}
    proxy: ClassVar[str] = "d_gap"

    def __init__(self, cfg):
        self.cfg, self.model = cfg, cfg.model

    # -- declarations ------------------------------------------------------------------------
    @property
    def fields(self) -> dict[str, Field]:
        """Sample fields read from shards."""
        return dict(DEFAULT_FIELDS)

    def inputs(self) -> dict[str, Input]:
        """Generation inputs, in the order `generate` and the pt2 export take them."""
        raise NotImplementedError

    def build(self) -> Nets:
        raise NotImplementedError

    def optimizer_groups(self) -> dict[str, tuple[tuple[str, ...], float]]:
        """{optimizer name: (network names it trains, learning rate)}."""
        raise NotImplementedError

    def optimizers(self, nets: Nets, device) -> dict[str, torch.optim.Optimizer]:
        """Adam per group with optim.betas; groups that a lazy phase also steps get StyleGAN2's
        lr/betas correction for its interval."""
        kw = {"fused": True} if torch.device(device).type == "cuda" else {"foreach": True}
        lazy = {p.optimizer: p.every for p in self.phases() if p.lazy and p.every > 1}
        out = {}
        for name, (net_names, lr) in self.optimizer_groups().items():
            params = [p for n in net_names for p in nets[n].parameters()]
            betas = tuple(self.cfg.optim.betas)
            if name in lazy:
                c = lazy[name] / (lazy[name] + 1)
                lr, betas = lr * c, tuple(b ** c for b in betas)
            out[name] = torch.optim.Adam(params, lr=lr, betas=betas, **kw)
        return out

    def phases(self) -> list[Phase]:
        raise NotImplementedError

    def loss(self, phase: Phase, nets: Nets, batch: dict, ctx: Ctx) -> tuple[torch.Tensor, dict]:
        """(loss to backward, {stat name: detached scalar tensor}). `nets` may be DDP-wrapped."""
        raise NotImplementedError

    def generate(self, nets: Nets, inputs: dict[str, torch.Tensor]) -> torch.Tensor:
        """Images in [-1, 1] from the sample nets (unwrapped, usually the EMA copies)."""
        raise NotImplementedError

    def grid(self, nets: Nets, n: int, seed: int, batch: dict) -> tuple[torch.Tensor, int | None]:
        """(float [-1, 1] images, images per row or None for a square grid) for the training grid:
        n seeded samples. `batch` is the step's last batch (translators show its images in,
        translated, and the target where there is one, side by side)."""
        from pipeline.families import sampling
        return sampling.images(self, nets, 0, n, seed=seed), None

    def draw(self, n: int, device) -> dict[str, torch.Tensor]:
        """Training-time inputs from the global torch RNG (per-rank noise, checkpointed)."""
        from pipeline.families import sampling
        return sampling.draw(self.inputs(), n, device)

    @property
    def translates(self) -> bool:
        """An image-to-image family (pix2pix, CycleGAN, StarGAN): its inputs include a SourceImage."""
        return any(isinstance(s, SourceImage) for s in self.inputs().values())

    def check_fixed(self, nets: Nets, fixed: dict) -> None:
        """Refuse fixed inputs the trained networks cannot honour (a caption with words the text
        encoder never saw); raises ValueError naming the input. Called before sampling."""

    def config_problems(self) -> list[tuple[str, str]]:
        """(dotted config key, what is wrong) for settings this family cannot honour; loading a
        config raises a ConfigError for the first."""
        return []

    # -- optional hooks -----------------------------------------------------------------------
    def on_progress(self, images_seen: int, nets: Nets, emas: Nets,
                    opts: dict[str, torch.optim.Optimizer]) -> Change | None:
        """Growth (ProGAN levels, stages): called before every step. None = nothing changed."""
        return None

    def batch_size(self) -> int:
        """Per-worker batch of the current stage."""
        return self.cfg.train.batch_size

    @functools.cached_property
    def augment(self):
        """What every D call on images goes through (config `aug`; identity for kind none)."""
        from pipeline import augment
        return augment.build(getattr(self.cfg, "aug", None))

    def after_log(self, metrics: dict[str, float], images: int) -> None:
        """Called on every rank right after the stats are reduced at a log step, with the
        rank-identical reduced stats and the real images shown to D since the last log (all
        ranks): ADA steers p here, so p stays the same on every rank."""
        self.augment.update(metrics.get("ada_sign"), images)

    def ada_stat(self, real_logits: torch.Tensor) -> dict[str, torch.Tensor]:
        """{"ada_sign": E[sign D(real)]} for a D loss to return under ADA, else {}."""
        if not hasattr(self.augment, "target"):
            return {}
        return {"ada_sign": real_logits.detach().float().sign().mean()}

    def metrics(self) -> dict[str, float]:
        """Extra numbers reported with every log (ProGAN's level and alpha, ADA's aug_p)."""
        return self.augment.metrics()

    def state(self) -> dict[str, Any]:
        """Family state to checkpoint (image pools, path-length mean, ADA p): tensors and plain
        Python only (checkpoints load with weights_only=True). Subclasses merge super()'s."""
        return self.augment.state()

    def load_state(self, state: dict[str, Any]) -> None:
        self.augment.load_state(state)

    def describe(self) -> dict[str, Any]:
        """Plain facts about the sample nets for manifests and model cards."""
        return {"inputs": {k: _plain(v) for k, v in self.inputs().items()}}


def unused_terms(family: Family, aug: bool = True) -> list[tuple[str, str]]:
    """config_problems for a family whose losses are its own: DirectGAN's penalty and
    regularizer weights (loss.*) would be silently ignored, so a non-zero one is refused; with
    `aug`, so is an augmentation the family cannot apply consistently."""
    L = family.cfg.loss
    for k in ("gp_weight", "r1_gamma", "mode_seeking_weight", "ortho_weight", "drift_weight"):
        if getattr(L, k) > 0:
            return [(f"loss.{k}", f"{getattr(L, k)}: not used by the {family.name} family; use 0")]
    a = getattr(family.cfg, "aug", None)
    if aug and a is not None and a.kind != "none":
        return [("aug.kind", f"{a.kind}: not supported by the {family.name} family; use none")]
    return []


class StagedFamily(Family):
    """A coarse-to-fine family whose stages live in one G and one D module (LAPGAN, StackGAN):
    one D phase and one G phase on the same batch, each the sum of the stages' losses."""

    def optimizer_groups(self):
        o = self.cfg.optim
        return {"G": (("G",), o.g_lr), "D": (("D",), o.d_lr)}

    def phases(self):
        return [Phase("D", "D", repeat=self.cfg.optim.d_steps_per_g), Phase("G", "G", new_batch=False)]

    def config_problems(self):
        if self.cfg.data.resolution != self.model.resolution:
            return [("data.resolution", f"{self.cfg.data.resolution}: must equal model.resolution "
                     f"({self.model.resolution}), the final stage's")]
        # Augmenting a stage's image and the images it is judged with alike: not built.
        return unused_terms(self)


def _plain(inp: Input) -> dict:
    d = {"kind": type(inp).__name__}
    d.update({k: getattr(inp, k) for k in inp.__dataclass_fields__})
    return d


@dataclass
class Trained:
    """A family with its networks: what checkpoints and generator folders rebuild."""
    family: Family
    nets: Nets
    emas: Nets = field(default_factory=dict)

    def sample_nets(self) -> Nets:
        """The EMA copy where there is one, else the network itself."""
        return {n: self.emas.get(n, self.nets[n]) for n in self.family.sample_nets}
