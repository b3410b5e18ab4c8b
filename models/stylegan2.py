"""StyleGAN2 (Karras et al. 2020) as in stylegan2-ada-pytorch's `training/networks.py`: a mapping
network z[, c] -> w (lr multiplier 0.01, a running mean `w_avg` for truncation), a skip generator
of modulated/demodulated 3x3 convolutions with per-pixel noise and a toRGB at every resolution,
and a residual discriminator with minibatch standard deviation; equalized lr everywhere.

Deviations, for single-device CPU-friendly code: 2x up/down-sampling is bilinear interpolation /
2x2 average pooling instead of the [1, 3, 3, 1] FIR filter (upfirdn2d); no conv clamping or fp16
layers. The training losses (R1, path length, style mixing) live in pipeline/families/stylegan2.py.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
import torch.nn as nn
import torch.nn.functional as F

from models.layers import EqualizedConv2d, EqualizedLinear, MinibatchStdDev

SQRT2 = math.sqrt(2)


@dataclass(frozen=True, kw_only=True)
class StyleGAN2Config:
    resolution: int = 256         # px, a power of two in [16, 1024]
    z_dim: int = 512              # latent size
    w_dim: int = 512              # intermediate latent (style) size
    mapping_layers: int = 8       # dense layers in the mapping network
    mapping_lr_mul: float = 0.01  # learning-rate multiplier of the mapping network (> 0)
    # Width at r px is min(channel_base // r, channel_max): the paper's 256 px config is 16384/512.
    channel_base: int = 16384
    channel_max: int = 512
    num_classes: int = 0          # 0 = unconditional; >0: a class embedding joins z in the mapping
    mbstd_group: int = 4          # minibatch-stddev group (the largest divisor of the batch up to it)
    w_avg_beta: float = 0.995     # decay of the running mean of w (truncation's centre), per D step
    # Training (read by the family, as ProGAN's schedule is):
    mixing_prob: float = 0.9      # probability of a style-mixing batch in [0, 1]; 0 disables
    pl_weight: float = 2.0        # path-length regularization weight; 0 disables the Greg phase
    pl_every: int = 4             # Greg runs every N steps (lazy: loss x N, G's lr/betas corrected)
    pl_decay: float = 0.01        # EMA rate of the path-length mean (pl_mean), in (0, 1]
    pl_batch_shrink: int = 2      # Greg's batch is the step's batch // this (at least 1)

    def __post_init__(self):
        r = self.resolution
        if r < 16 or r > 1024 or r & (r - 1):
            raise ValueError(f"resolution: {r} must be a power of two in [16, 1024]")
        for k in ("z_dim", "w_dim", "mapping_layers", "channel_base", "channel_max", "mbstd_group",
                  "pl_every", "pl_batch_shrink"):
            if getattr(self, k) < 1:
                raise ValueError(f"{k}: must be >= 1")
        if self.num_classes < 0:
            raise ValueError("num_classes: must be >= 0")
        if self.channel_base < r:
            raise ValueError(f"channel_base: {self.channel_base} gives no channels at {r} px")
        if not self.mapping_lr_mul > 0:
            raise ValueError("mapping_lr_mul: must be > 0")
        if not 0 <= self.w_avg_beta < 1:
            raise ValueError("w_avg_beta: must be in [0, 1)")
        if not 0 <= self.mixing_prob <= 1:
            raise ValueError(f"mixing_prob: {self.mixing_prob} not in [0, 1]")
        if self.pl_weight < 0:
            raise ValueError("pl_weight: must be >= 0")
        if not 0 < self.pl_decay <= 1:
            raise ValueError("pl_decay: must be in (0, 1]")

    @property
    def num_ws(self) -> int:
        """w vectors the synthesis reads: two per resolution above 4 px, one conv and a toRGB at 4."""
        return 2 * int(math.log2(self.resolution)) - 2

    def width(self, r: int) -> int:
        return min(self.channel_base // r, self.channel_max)


def _act(x: torch.Tensor) -> torch.Tensor:
    # stylegan2-ada's lrelu with gain sqrt(2); the layers before it use gain 1.
    return F.leaky_relu(x, 0.2) * SQRT2


class _LrMulLinear(EqualizedLinear):
    """EqualizedLinear with a learning-rate multiplier: weights stored / lr_mul and scaled back at
    runtime, so Adam's steps on them are lr_mul times smaller in effect."""

    def __init__(self, cin: int, cout: int, lr_mul: float, bias_init: float = 0.0):
        super().__init__(cin, cout, gain=1.0)
        self.weight.data /= lr_mul
        self.bias.data.fill_(bias_init / lr_mul)
        self.scale, self.lr_mul = self.scale * lr_mul, lr_mul

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias * self.lr_mul)


def _norm2(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    return x * (x.square().mean(1, keepdim=True) + eps).rsqrt()


class Mapping(nn.Module):
    """z[, c] -> w. `w_avg` is the running mean of w, updated when asked (D's fakes in training)."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.num_classes, self.beta = cfg.num_classes, cfg.w_avg_beta
        self.embed = EqualizedLinear(cfg.num_classes, cfg.w_dim, gain=1.0) if cfg.num_classes else None
        dims = [cfg.z_dim + (cfg.w_dim if cfg.num_classes else 0)] + [cfg.w_dim] * cfg.mapping_layers
        self.fc = nn.ModuleList(_LrMulLinear(a, b, cfg.mapping_lr_mul) for a, b in zip(dims[:-1], dims[1:]))
        self.register_buffer("w_avg", torch.zeros(cfg.w_dim))

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, update_w_avg: bool = False) -> torch.Tensor:
        x = _norm2(z)
        if self.embed is not None:
            if y is None:
                raise ValueError("class-conditional generator needs labels y")
            c = self.embed(F.one_hot(y, self.num_classes).to(z.dtype))
            x = torch.cat([x, _norm2(c)], 1)
        for fc in self.fc:
            x = _act(fc(x))
        if update_w_avg:
            self.w_avg.copy_(x.detach().float().mean(0).lerp(self.w_avg, self.beta))
        return x


def modulated_conv2d(x: torch.Tensor, weight: torch.Tensor, styles: torch.Tensor,
                     demodulate: bool = True, padding: int = 0) -> torch.Tensor:
    """StyleGAN2's modulated convolution as one grouped conv (one group per sample).

    x [N, I, H, W], weight [O, I, k, k] (already lr-scaled), styles [N, I]. Each sample's kernel is
    weight * style over input channels; with `demodulate` each output channel's kernel is then
    scaled to unit L2 norm (eq. 3 of the paper), so outputs have unit variance for unit inputs.
    """
    n, cin, h, w = x.shape
    wgt = weight[None] * styles[:, None, :, None, None]                     # [N, O, I, k, k]
    if demodulate:
        wgt = wgt * (wgt.square().sum((2, 3, 4), keepdim=True) + 1e-8).rsqrt()
    out = F.conv2d(x.reshape(1, n * cin, h, w), wgt.reshape(-1, cin, *wgt.shape[3:]),
                   padding=padding, groups=n)
    return out.reshape(n, -1, *out.shape[2:])


class ModulatedConv(nn.Module):
    """Affine(w) -> style, modulated (and demodulated) k x k conv, optional 2x upsampling first."""

    def __init__(self, cin: int, cout: int, k: int, w_dim: int, demodulate: bool = True, up: bool = False):
        super().__init__()
        self.affine = EqualizedLinear(w_dim, cin, gain=1.0)
        nn.init.ones_(self.affine.bias)            # styles start at 1: an unmodulated conv
        self.weight = nn.Parameter(torch.randn(cout, cin, k, k))
        self.scale, self.demodulate, self.up, self.padding = 1 / math.sqrt(cin * k * k), demodulate, up, k // 2

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        if self.up:
            x = F.interpolate(x, scale_factor=2.0, mode="bilinear", align_corners=False)
        return modulated_conv2d(x, self.weight * self.scale, self.affine(w), self.demodulate, self.padding)


class StyleLayer(nn.Module):
    """Modulated 3x3 conv, per-pixel noise with learned strength, bias, lrelu."""

    def __init__(self, cin: int, cout: int, w_dim: int, res: int, up: bool = False):
        super().__init__()
        self.conv = ModulatedConv(cin, cout, 3, w_dim, up=up)
        self.noise_strength = nn.Parameter(torch.zeros(()))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.register_buffer("noise_const", torch.randn(res, res))    # fixed noise for sampling

    def forward(self, x: torch.Tensor, w: torch.Tensor, noise: str = "random") -> torch.Tensor:
        x = self.conv(x, w)
        if noise == "random":
            x = x + torch.randn(x.shape[0], 1, *x.shape[2:], device=x.device, dtype=x.dtype) * self.noise_strength
        elif noise == "const":
            x = x + self.noise_const.to(x.dtype) * self.noise_strength
        return _act(x + self.bias[None, :, None, None])


class ToRGB(nn.Module):
    def __init__(self, cin: int, w_dim: int):
        super().__init__()
        self.conv = ModulatedConv(cin, 3, 1, w_dim, demodulate=False)
        self.bias = nn.Parameter(torch.zeros(3))

    def forward(self, x: torch.Tensor, w: torch.Tensor) -> torch.Tensor:
        return self.conv(x, w) + self.bias[None, :, None, None]


class Generator(nn.Module):
    """G(z, y): mapping, then the skip synthesis network from a learned 4x4 constant."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = cfg.z_dim, cfg.num_classes, cfg.resolution
        self.num_ws = cfg.num_ws
        self.mapping = Mapping(cfg)
        self.const = nn.Parameter(torch.randn(cfg.width(4), 4, 4))
        res = [2 ** i for i in range(2, int(math.log2(cfg.resolution)) + 1)]
        self.layers = nn.ModuleList([StyleLayer(cfg.width(4), cfg.width(4), cfg.w_dim, 4)])
        for r in res[1:]:
            self.layers.extend([StyleLayer(cfg.width(r // 2), cfg.width(r), cfg.w_dim, r, up=True),
                                StyleLayer(cfg.width(r), cfg.width(r), cfg.w_dim, r)])
        self.torgb = nn.ModuleList(ToRGB(cfg.width(r), cfg.w_dim) for r in res)

    def ws(self, z: torch.Tensor, y: torch.Tensor | None = None, *, psi=1.0, z2: torch.Tensor | None = None,
           cutoff: int | torch.Tensor | None = None, update_w_avg: bool = False) -> torch.Tensor:
        """[N, num_ws, w_dim]: w broadcast to every layer; with z2, layers from `cutoff` (an int or
        a 0-d tensor) on take z2's w (style mixing); psi (a float or [N]) truncates towards w_avg:
        w_avg + psi (w - w_avg)."""
        w = self.mapping(z, y, update_w_avg)
        if not (isinstance(psi, (int, float)) and psi == 1):
            psi = torch.as_tensor(psi, dtype=w.dtype, device=w.device).reshape(-1, 1)
            w = self.mapping.w_avg.to(w.dtype).lerp(w, psi)
        ws = w[:, None].expand(-1, self.num_ws, -1)
        if z2 is not None and cutoff is not None:
            # A mask, not a slice: a tensor cutoff keeps one compiled graph and needs no host read.
            layer = torch.arange(self.num_ws, device=w.device)[None, :, None]
            ws = torch.where(layer < cutoff, ws, self.mapping(z2, y)[:, None])
        return ws

    def synthesis(self, ws: torch.Tensor, noise: str = "random") -> torch.Tensor:
        """Images (unbounded, about [-1, 1] as in the paper: no tanh) from ws [N, num_ws, w_dim]."""
        x = self.const[None].expand(ws.shape[0], -1, -1, -1).to(ws.dtype)
        x = self.layers[0](x, ws[:, 0], noise)
        img = self.torgb[0](x, ws[:, 1])
        for i, rgb in enumerate(self.torgb[1:], start=1):
            x = self.layers[2 * i - 1](x, ws[:, 2 * i - 1], noise)
            x = self.layers[2 * i](x, ws[:, 2 * i], noise)
            img = F.interpolate(img, scale_factor=2.0, mode="bilinear", align_corners=False) + rgb(x, ws[:, 2 * i + 1])
        return img

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None, *, psi=1.0, z2=None, cutoff=None,
                noise: str = "random", update_w_avg: bool = False, return_ws: bool = False):
        """One forward for DDP: mapping and synthesis. noise: "random" (training), "const" (the
        fixed per-layer buffers: sampling is a pure function of the inputs) or "none"."""
        ws = self.ws(z, y, psi=psi, z2=z2, cutoff=cutoff, update_w_avg=update_w_avg)
        img = self.synthesis(ws, noise)
        return (img, ws) if return_ws else img


class _DBlock(nn.Module):
    """Residual block: two 3x3 convs (the second halving the resolution) plus a 1x1 skip."""

    def __init__(self, cin: int, cout: int):
        super().__init__()
        self.conv0, self.conv1 = EqualizedConv2d(cin, cin, 3, gain=1.0), EqualizedConv2d(cin, cout, 3, gain=1.0)
        self.skip = EqualizedConv2d(cin, cout, 1, gain=1.0)
        nn.init.zeros_(self.skip.bias)
        self.skip.bias.requires_grad_(False)        # the paper's skip has no bias

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        y = self.skip(F.avg_pool2d(x, 2))
        x = F.avg_pool2d(_act(self.conv1(_act(self.conv0(x)))), 2)
        return (x + y) * math.sqrt(0.5)


class Discriminator(nn.Module):
    """D(x, y): fromRGB, residual blocks down to 4x4, minibatch stddev, conv, dense, output;
    conditional: a projection onto an embedding of y (stylegan2-ada's cmap)."""

    def __init__(self, cfg: StyleGAN2Config):
        super().__init__()
        self.num_classes, self.resolution = cfg.num_classes, cfg.resolution
        res = [2 ** i for i in range(int(math.log2(cfg.resolution)), 2, -1)]     # R, R/2, ..., 8
        self.fromrgb = EqualizedConv2d(3, cfg.width(cfg.resolution), 1, gain=1.0)
        self.blocks = nn.Sequential(*(_DBlock(cfg.width(r), cfg.width(r // 2)) for r in res))
        c = cfg.width(4)
        self.mbstd = MinibatchStdDev(cfg.mbstd_group)
        self.conv = EqualizedConv2d(c + 1, c, 3, gain=1.0)
        self.fc = EqualizedLinear(c * 16, c, gain=1.0)
        self.out = EqualizedLinear(c, c if cfg.num_classes else 1, gain=1.0)
        self.embed = EqualizedLinear(cfg.num_classes, c, gain=1.0) if cfg.num_classes else None

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if x.shape[-1] != self.resolution:
            raise ValueError(f"D takes {self.resolution} px images, got {x.shape[-1]}")
        h = self.blocks(_act(self.fromrgb(x)))
        h = _act(self.conv(self.mbstd(h)))
        out = self.out(_act(self.fc(h.flatten(1))))
        if self.embed is None:
            return out.squeeze(1).float()
        if y is None:
            raise ValueError("class-conditional discriminator needs labels y")
        cmap = self.embed(F.one_hot(y, self.num_classes).to(out.dtype))
        return ((out * cmap).sum(1) / math.sqrt(cmap.shape[1])).float()


def build(cfg: StyleGAN2Config) -> dict[str, nn.Module]:
    return {"G": Generator(cfg), "D": Discriminator(cfg)}
