"""Blocks shared between families."""
from __future__ import annotations

import math

import torch
import torch.nn as nn
import torch.nn.functional as F


class ConditionalBatchNorm2d(nn.Module):
    """BatchNorm whose gain and bias come from a class embedding (cGAN, BigGAN)."""

    def __init__(self, channels: int, num_classes: int):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False)
        self.gain = nn.Embedding(num_classes, channels)
        self.bias = nn.Embedding(num_classes, channels)
        nn.init.ones_(self.gain.weight)
        nn.init.zeros_(self.bias.weight)

    def forward(self, x: torch.Tensor, y: torch.Tensor) -> torch.Tensor:
        return self.bn(x) * self.gain(y)[:, :, None, None] + self.bias(y)[:, :, None, None]


class _SpectralNorm(nn.utils.parametrizations._SpectralNorm):
    """torch's spectral-norm parametrization (same buffers, init and arithmetic), except that a
    training forward's power iteration *replaces* the u and v buffers instead of writing into
    them. Under torch.compile a graph may keep the very buffers it read for its backward; torch's
    in-place update in the next forward before that backward (D on reals, then on fakes) then
    fails autograd's version check. A replaced tensor is never modified."""

    def forward(self, weight: torch.Tensor) -> torch.Tensor:
        if weight.ndim == 1:
            return F.normalize(weight, dim=0, eps=self.eps)
        w = self._reshape_weight_to_matrix(weight)
        if self.training:
            with torch.no_grad():
                u, v = self._u, self._v
                for _ in range(self.n_power_iterations):
                    u = F.normalize(torch.mv(w, v), dim=0, eps=self.eps)
                    v = F.normalize(torch.mv(w.H, u), dim=0, eps=self.eps)
            self._u, self._v = u, v
        return weight / torch.vdot(self._u, torch.mv(w, self._v))


def spectral_norm(module: nn.Module) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) of module.weight, one power iteration per
    training forward; state_dict keys as torch.nn.utils.parametrizations.spectral_norm's."""
    dim = 1 if isinstance(module, (nn.ConvTranspose1d, nn.ConvTranspose2d, nn.ConvTranspose3d)) else 0
    nn.utils.parametrize.register_parametrization(module, "weight", _SpectralNorm(module.weight, 1, dim, 1e-12))
    return module


def maybe_sn(module: nn.Module, enabled: bool) -> nn.Module:
    """Spectral normalization (Miyato et al. 2018) when enabled; one power iteration per call."""
    return spectral_norm(module) if enabled else module


def dcgan_init(module: nn.Module) -> None:
    """N(0, 0.02) weights as in Radford et al. 2015."""
    for m in module.modules():
        if isinstance(m, (nn.Conv2d, nn.ConvTranspose2d, nn.Linear)):
            w = getattr(m, "parametrizations", None)
            weight = w.weight.original if w is not None and hasattr(w, "weight") else m.weight
            nn.init.normal_(weight, 0.0, 0.02)
            if m.bias is not None:
                nn.init.zeros_(m.bias)


# ---------------------------------------------------------------- BigGAN / SAGAN blocks

def _ortho_sn(module: nn.Module) -> nn.Module:
    # Orthogonal init (BigGAN's) makes every singular value of the flattened weight equal, so the
    # power iteration's estimate is exact from the first forward; then one iteration per forward.
    nn.init.orthogonal_(module.weight)
    if getattr(module, "bias", None) is not None:
        nn.init.zeros_(module.bias)
    return spectral_norm(module)


def sn_conv2d(cin: int, cout: int, kernel_size: int = 3, bias: bool = True) -> nn.Module:
    """Same-padded conv with spectral norm and orthogonal init (BigGAN-PyTorch's SNConv2d)."""
    return _ortho_sn(nn.Conv2d(cin, cout, kernel_size, padding=kernel_size // 2, bias=bias))


def sn_linear(cin: int, cout: int, bias: bool = True) -> nn.Module:
    return _ortho_sn(nn.Linear(cin, cout, bias=bias))


def sn_embedding(num: int, dim: int) -> nn.Module:
    return _ortho_sn(nn.Embedding(num, dim))


class SelfAttention(nn.Module):
    """SAGAN non-local block (Zhang et al. 2018) as BigGAN uses it: keys and values max-pooled 2x,
    q/k width c/8, value width c/2, no 1/sqrt(d) scaling, output gated by gamma (starts at 0)."""

    def __init__(self, channels: int):
        super().__init__()
        if channels % 8:
            raise ValueError(f"attention needs channels divisible by 8, got {channels}")
        c8, c2 = channels // 8, channels // 2
        self.theta = sn_conv2d(channels, c8, 1, bias=False)
        self.phi = sn_conv2d(channels, c8, 1, bias=False)
        self.g = sn_conv2d(channels, c2, 1, bias=False)
        self.o = sn_conv2d(c2, channels, 1, bias=False)
        self.gamma = nn.Parameter(torch.zeros(()))

    @staticmethod
    def _tokens(t: torch.Tensor) -> torch.Tensor:
        n, c, h, w = t.shape                  # NHWC view: free for channels_last activations
        return t.permute(0, 2, 3, 1).reshape(n, h * w, c)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        q = self._tokens(self.theta(x))
        k = self._tokens(F.max_pool2d(self.phi(x), 2))
        v = self._tokens(F.max_pool2d(self.g(x), 2))
        # One attention map; the c/2 value channels are split over 4 heads that share q and k, so
        # q, k and v have equal widths and the fused (flash / memory-efficient) kernels apply.
        heads = v.shape[-1] // q.shape[-1]
        q = q.unsqueeze(1).expand(-1, heads, -1, -1)
        k = k.unsqueeze(1).expand(-1, heads, -1, -1)
        v = v.unflatten(-1, (heads, -1)).transpose(1, 2)
        o = F.scaled_dot_product_attention(q, k, v, scale=1.0)           # [n, heads, hw, c/8]
        o = o.transpose(1, 2).reshape(n, h, w, c // 2).permute(0, 3, 1, 2)
        return x + self.gamma * self.o(o)


class LinearCondBatchNorm2d(nn.Module):
    """BigGAN's conditional BN: gain 1 + W_g c and bias W_b c from a conditioning vector c (the
    shared class embedding concatenated with this block's z chunk), both projections SN'd."""

    def __init__(self, channels: int, cond_dim: int, eps: float = 1e-5):
        super().__init__()
        self.bn = nn.BatchNorm2d(channels, affine=False, eps=eps)
        self.gain = sn_linear(cond_dim, channels)
        self.bias = sn_linear(cond_dim, channels)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        g = 1 + self.gain(c)
        return self.bn(x) * g[:, :, None, None].to(x.dtype) + self.bias(c)[:, :, None, None].to(x.dtype)


# ---------------------------------------------------------------- ProGAN blocks

class EqualizedConv2d(nn.Module):
    """Conv with ProGAN's equalized learning rate: N(0, 1) weights scaled at runtime by
    gain / sqrt(fan_in), so Adam's per-parameter step sizes act the same on every layer."""

    def __init__(self, cin: int, cout: int, kernel_size: int, gain: float = math.sqrt(2),
                 padding: int | None = None):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin, kernel_size, kernel_size))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin * kernel_size * kernel_size)
        self.padding = kernel_size // 2 if padding is None else padding

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.conv2d(x, self.weight * self.scale, self.bias, padding=self.padding)


class EqualizedLinear(nn.Module):
    def __init__(self, cin: int, cout: int, gain: float = math.sqrt(2)):
        super().__init__()
        self.weight = nn.Parameter(torch.randn(cout, cin))
        self.bias = nn.Parameter(torch.zeros(cout))
        self.scale = gain / math.sqrt(cin)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return F.linear(x, self.weight * self.scale, self.bias)


def pixel_norm(x: torch.Tensor, eps: float = 1e-8) -> torch.Tensor:
    """ProGAN's pixelwise feature vector normalization (unit RMS over channels at each pixel)."""
    return x * torch.rsqrt(x.square().mean(1, keepdim=True) + eps)


def packed(x: torch.Tensor, m: int) -> torch.Tensor:
    """[N, C, H, W] -> [N / m, m * C, H, W]: samples m*k .. m*k + m-1 side by side on the channel
    axis, so one D judgement sees m samples (PacGAN)."""
    if m == 1:
        return x
    n, c, h, w = x.shape
    if n % m:
        raise ValueError(f"model.pack: a batch of {n} does not divide into packs of {m}")
    return x.reshape(n // m, m * c, h, w)


def packed_labels(e: torch.Tensor, m: int) -> torch.Tensor:
    """[N, F] class embeddings -> [N / m, F]: each pack's embeddings summed, for a projection
    D's <embed(y), h> term on packed inputs (the pack's labels as a set)."""
    return e if m == 1 else e.reshape(e.shape[0] // m, m, -1).sum(1)


class MinibatchStdDev(nn.Module):
    """ProGAN's minibatch standard deviation: one extra feature map holding the std of each feature
    over a group of samples, averaged over features and pixels. The group is the largest divisor
    of the batch up to `group_size` (a batch that does not divide still works)."""

    def __init__(self, group_size: int = 4):
        super().__init__()
        self.group_size = group_size

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        n, c, h, w = x.shape
        g = math.gcd(n, self.group_size)
        s = x.float().reshape(g, n // g, c, h, w)              # sample i is in group i % (n // g)
        std = (s.var(0, unbiased=False) + 1e-8).sqrt().mean((1, 2, 3))      # [n // g]
        feat = std.to(x.dtype).reshape(1, n // g, 1, 1, 1).expand(g, -1, 1, h, w).reshape(n, 1, h, w)
        return torch.cat([x, feat], 1)
