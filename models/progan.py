"""ProGAN (Karras et al. 2018): progressive growing from 4x4 with a fade-in of each new resolution,
equalized learning rate, pixelwise feature normalization in G, minibatch standard deviation in D.
Its loss is WGAN-GP with the drift term (loss.kind=wasserstein, gp_weight=10, drift_weight=0.001).

G and D hold every resolution's layers. `set_stage(level, alpha)` selects resolution 4 * 2**level
and how far its newest layers are faded in; `progan_schedule` maps the images shown so far to the
stage, batch size and learning rate; `progan_reals` brings real images to the stage's resolution.
Deviations from the paper: G ends in tanh (the project's images are in [-1, 1]), and the
class-conditional variant uses a projection head in D rather than an auxiliary classifier.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import NamedTuple

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models.layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev, pixel_norm


@dataclass(frozen=True, kw_only=True)
class ProGANConfig:
    resolution: int = 256         # final px, a power of two in [8, 1024]; training starts at 4x4
    z_dim: int = 512              # latent size
    num_classes: int = 0          # 0 = unconditional; >0: label embedding joins z, projection in D
    # Width at r px is min(channel_base // r, channel_max): the paper's 512 up to 32 px, then halving.
    # channel_max None = 512 from 64 px up, and a CPU-sized 64 below (tests and smoke runs).
    channel_base: int = 16384
    channel_max: int | None = None
    mbstd_group: int = 4          # minibatch-stddev group (the largest divisor of the batch up to it)
    # Schedule, one entry per level (4, 8, ..., resolution px). Level L lasts phase_images[L] real
    # images shown to D, counted over all workers: the first half fades the new resolution in
    # (alpha 0 -> 1), the rest trains it stable; level 0 has no fade-in; training stays at the
    # last level until train.steps. None = the paper's 800k images at 4x4, then 1.6M per level.
    phase_images: tuple[int, ...] | None = None
    phase_batch: tuple[int, ...] | None = None    # per-worker batch per level; None = train.batch_size
    phase_lr: tuple[float, ...] | None = None     # Adam lr of G and D per level; None = optim.*_lr

    def __post_init__(self):
        r = self.resolution
        if r < 8 or r > 1024 or r & (r - 1):
            raise ValueError(f"resolution: {r} must be a power of two in [8, 1024]")
        for k in ("z_dim", "channel_base", "mbstd_group"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        if self.num_classes < 0:
            raise ValueError("num_classes: must be >= 0")
        if self.channel_max is not None and self.channel_max < 1:
            raise ValueError("channel_max: must be >= 1 (or null for the default)")
        if self.channel_base < r:
            raise ValueError(f"channel_base: {self.channel_base} gives no channels at {r} px")
        for k in ("phase_images", "phase_batch", "phase_lr"):
            v = getattr(self, k)
            if v is None:
                continue
            if len(v) != self.levels:
                raise ValueError(f"{k}: needs {self.levels} entries (4 to {r} px), got {len(v)}")
            if any(x <= 0 for x in v):
                raise ValueError(f"{k}: entries must be > 0")

    @property
    def levels(self) -> int:
        return int(math.log2(self.resolution)) - 1

    @property
    def images(self) -> tuple[int, ...]:
        return self.phase_images or (800_000,) + (1_600_000,) * (self.levels - 1)

    def width(self, r: int) -> int:
        cap = self.channel_max or (512 if self.resolution >= 64 else 64)
        return min(self.channel_base // r, cap)


class Stage(NamedTuple):
    level: int                    # resolution 4 * 2**level
    alpha: float                  # fade-in weight of the newest layers, 1 = fully in
    batch_size: int | None        # per worker; None = train.batch_size
    lr: float | None              # G and D; None = optim.g_lr / optim.d_lr

    @property
    def resolution(self) -> int:
        return 4 * 2 ** self.level


def progan_schedule(cfg: ProGANConfig, images_seen: int) -> Stage:
    """The stage after `images_seen` real images (all workers). Pure: call it every step."""
    if images_seen < 0:
        raise ValueError(f"images_seen: {images_seen} must be >= 0")
    start = 0
    for level, n in enumerate(cfg.images):
        if images_seen < start + n or level == cfg.levels - 1:
            fade = n // 2 if level else 0
            alpha = min(1.0, (images_seen - start) / fade) if fade else 1.0
            return Stage(level, alpha, cfg.phase_batch[level] if cfg.phase_batch else None,
                         cfg.phase_lr[level] if cfg.phase_lr else None)
        start += n
    raise AssertionError("unreachable")


def progan_reals(x: torch.Tensor, level: int, alpha: float) -> torch.Tensor:
    """Real images at the stage's resolution. During a fade-in they are blended with their 2x
    coarser version exactly as G blends its output (the official code's process_reals), so D
    cannot tell reals from fakes by sharpness alone."""
    r = 4 * 2 ** level
    if x.shape[-1] != r:
        x = F.interpolate(x, size=(r, r), mode="area")        # box filter for 2**k downscaling
    if level > 0 and alpha < 1:
        coarse = F.interpolate(F.avg_pool2d(x, 2), scale_factor=2.0)
        x = coarse + (x - coarse) * alpha
    return x


def _act(x: torch.Tensor) -> torch.Tensor:
    return F.leaky_relu(x, 0.2)


def _restore_stage(module: _Progressive, incompatible_keys) -> None:
    # After load_state_dict: the loaded buffers decide the stage (one host read, at load time).
    module.set_stage(int(module.level), float(module.alpha))


class _Progressive(nn.Module):
    """Stage bookkeeping for G and D. Subclasses fill `grow` (level i's block) and `rgb` (level i's
    to/from-RGB layer). The stage is kept twice: buffers, so state_dict and checkpoints carry it,
    and Python values, so forward reads it without a device-to-host sync (torch.compile guards on
    them and recompiles once per change, about twice per level)."""

    def __init__(self, levels: int):
        super().__init__()
        self.register_buffer("level", torch.tensor(levels - 1))
        self.register_buffer("alpha", torch.tensor(1.0))
        self._level, self._fading = levels - 1, False
        self.register_load_state_dict_post_hook(_restore_stage)

    def set_stage(self, level: int, alpha: float) -> bool:
        """Select resolution 4 * 2**level with fade-in weight alpha. Layers the stage does not use
        get requires_grad=False, unless the whole network is frozen (an EMA copy), which stays so.
        Returns True when the set of trained parameters changed (re-wrap DDP then)."""
        if not 0 <= level < len(self.grow):
            raise ValueError(f"level: {level} not in [0, {len(self.grow) - 1}]")
        if not 0.0 <= alpha <= 1.0:
            raise ValueError(f"alpha: {alpha} not in [0, 1]")
        self.level.fill_(level)
        self.alpha.fill_(alpha)
        fading = level > 0 and alpha < 1
        changed = (level, fading) != (self._level, self._fading)
        self._level, self._fading = level, fading
        if any(p.requires_grad for p in self.parameters()):
            for i, (block, rgb) in enumerate(zip(self.grow, self.rgb)):
                block.requires_grad_(i <= level)
                rgb.requires_grad_(i == level or (fading and i == level - 1))
        return changed

    @property
    def current_resolution(self) -> int:
        return 4 * 2 ** self._level


class _GFirst(nn.Module):
    def __init__(self, zin: int, w: int):
        super().__init__()
        # The paper's 4x4 conv on a 1x1 input, written as a dense layer (official gain sqrt(2)/4).
        self.dense = EqualizedLinear(zin, w * 16, gain=math.sqrt(2) / 4)
        self.conv = EqualizedConv2d(w, w, 3)

    def forward(self, z: torch.Tensor) -> torch.Tensor:
        h = pixel_norm(_act(self.dense(z).unflatten(1, (-1, 4, 4))))
        return pixel_norm(_act(self.conv(h)))


class _GBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.conv2 = EqualizedConv2d(cin, cout, 3), EqualizedConv2d(cout, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = pixel_norm(_act(self.conv1(F.interpolate(x, scale_factor=2.0))))
        return pixel_norm(_act(self.conv2(h)))


class Generator(_Progressive):
    def __init__(self, cfg: ProGANConfig):
        super().__init__(cfg.levels)
        self.z_dim, self.num_classes, self.resolution = cfg.z_dim, cfg.num_classes, cfg.resolution
        w = [cfg.width(4 * 2 ** i) for i in range(cfg.levels)]
        self.embed = nn.Embedding(cfg.num_classes, cfg.z_dim) if cfg.num_classes else None
        zin = cfg.z_dim * (2 if cfg.num_classes else 1)
        self.grow = nn.ModuleList([_GFirst(zin, w[0])] + [_GBlock(a, b) for a, b in zip(w[:-1], w[1:])])
        self.rgb = nn.ModuleList(EqualizedConv2d(c, 3, 1, gain=1.0) for c in w)
        self.set_stage(cfg.levels - 1, 1.0)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.embed is not None:
            if y is None:
                raise ValueError("class-conditional generator needs labels y")
            z = torch.cat([z, self.embed(y)], 1)
        h = self.grow[0](pixel_norm(z))
        top = self._level
        for i in range(1, top):
            h = self.grow[i](h)
        if top == 0:
            return torch.tanh(self.rgb[0](h))
        out = self.rgb[top](self.grow[top](h))
        if self._fading:                           # previous resolution's output, upsampled
            old = F.interpolate(self.rgb[top - 1](h), scale_factor=2.0)
            out = old + (out - old) * self.alpha
        return torch.tanh(out)


class _DLast(nn.Module):
    """4x4 block: minibatch stddev, 3x3 conv, 4x4 valid conv -> features [N, w]."""

    def __init__(self, w: int, group: int):
        super().__init__()
        self.mbstd = MinibatchStdDev(group)
        self.conv = EqualizedConv2d(w + 1, w, 3)
        self.conv4 = EqualizedConv2d(w, w, 4, padding=0)

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        return _act(self.conv4(_act(self.conv(self.mbstd(h))))).flatten(1)


class _DBlock(nn.Module):
    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv1, self.conv2 = EqualizedConv2d(cin, cin, 3), EqualizedConv2d(cin, cout, 3)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.avg_pool2d(_act(self.conv2(_act(self.conv1(x)))), 2)


class Discriminator(_Progressive):
    def __init__(self, cfg: ProGANConfig):
        super().__init__(cfg.levels)
        self.num_classes = cfg.num_classes
        w = [cfg.width(4 * 2 ** i) for i in range(cfg.levels)]
        self.grow = nn.ModuleList([_DLast(w[0], cfg.mbstd_group)] +
                                  [_DBlock(b, a) for a, b in zip(w[:-1], w[1:])])
        self.rgb = nn.ModuleList(EqualizedConv2d(3, c, 1) for c in w)
        self.out = EqualizedLinear(w[0], 1, gain=1.0)
        self.embed = nn.Embedding(cfg.num_classes, w[0]) if cfg.num_classes else None
        self.set_stage(cfg.levels - 1, 1.0)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        top = self._level
        if x.shape[-1] != 4 * 2 ** top:
            raise ValueError(f"D at level {top} takes {4 * 2 ** top} px images, got {x.shape[-1]} "
                             "(bring reals to the stage with progan_reals)")
        h = _act(self.rgb[top](x))
        if top > 0:
            h = self.grow[top](h)
            if self._fading:                       # previous resolution's input path
                old = _act(self.rgb[top - 1](F.avg_pool2d(x, 2)))
                h = old + (h - old) * self.alpha
            for i in range(top - 1, 0, -1):
                h = self.grow[i](h)
        h = self.grow[0](h)
        out = self.out(h).squeeze(1).float()
        if self.embed is not None:
            if y is None:
                raise ValueError("class-conditional discriminator needs labels y")
            out = out + (self.embed(y) * h.float()).sum(1)
        return out


@register("progan", ProGANConfig)
def build(cfg: ProGANConfig):
    return {"G": Generator(cfg), "D": Discriminator(cfg)}
