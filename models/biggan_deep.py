"""BigGAN-deep (Brock et al. 2019, appendix B): bottleneck residual blocks (1x1 down to a quarter
of the width, two 3x3, 1x1 back), two blocks per resolution, skips that drop channels in G and
concatenate new ones in D (no 1x1 projection on the identity path), and the whole z, not a chunk,
concatenated with the shared class embedding for every conditional BN.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import ClassVar

import torch
import torch.nn as nn
import torch.nn.functional as F

from models import register
from models.biggan import G_MULT, BigGANConfig, ProjectionHead
from models.layers import LinearCondBatchNorm2d, SelfAttention, packed, sn_conv2d, sn_linear

# D: width of the input conv, then each stage's output width (multiples of d_ch); every stage
# halves the resolution down to 4x4.
DEEP_D_STEM = {32: 4, 64: 1, 128: 1, 256: 1}
DEEP_D_MULT = {32: (4, 4, 4), 64: (2, 4, 8, 16), 128: (2, 4, 8, 16, 16), 256: (2, 4, 8, 8, 16, 16)}
DEEP_CH_DEFAULT = {32: 16, 64: 64, 128: 128, 256: 128}   # the paper's 128; CPU-sized at 32 px


@dataclass(frozen=True, kw_only=True)
class BigGANDeepConfig(BigGANConfig):
    """BigGANConfig's fields with the paper's BigGAN-deep defaults (ch 128, z 128, not split)."""
    z_dim: int = 128

    hierarchical: ClassVar[bool] = False
    d_mult: ClassVar[dict] = DEEP_D_MULT
    ch_default: ClassVar[dict] = DEEP_CH_DEFAULT


def _up(t: torch.Tensor) -> torch.Tensor:
    return F.interpolate(t, scale_factor=2.0)


class DeepGBlock(nn.Module):
    def __init__(self, cin: int, cout: int, cond_dim: int, up: bool):
        super().__init__()
        if cout > cin:
            raise ValueError(f"G block widths may only shrink ({cin} -> {cout})")
        hid, self.cout, self.up = cin // 4, cout, up
        self.bn1, self.conv1 = LinearCondBatchNorm2d(cin, cond_dim), sn_conv2d(cin, hid, 1)
        self.bn2, self.conv2 = LinearCondBatchNorm2d(hid, cond_dim), sn_conv2d(hid, hid)
        self.bn3, self.conv3 = LinearCondBatchNorm2d(hid, cond_dim), sn_conv2d(hid, hid)
        self.bn4, self.conv4 = LinearCondBatchNorm2d(hid, cond_dim), sn_conv2d(hid, cout, 1)

    def forward(self, x: torch.Tensor, c: torch.Tensor) -> torch.Tensor:
        h = F.relu(self.bn2(self.conv1(F.relu(self.bn1(x, c))), c))
        x = x[:, :self.cout]                      # the skip drops the channels G no longer needs
        if self.up:
            h, x = _up(h), _up(x)
        h = self.conv3(F.relu(self.bn3(self.conv2(h), c)))
        return x + self.conv4(F.relu(self.bn4(h, c)))


class DeepDBlock(nn.Module):
    def __init__(self, cin: int, cout: int, down: bool):
        super().__init__()
        if cout < cin:
            raise ValueError(f"D block widths may only grow ({cin} -> {cout})")
        hid, self.down = max(cout // 4, 1), down
        self.conv1, self.conv2 = sn_conv2d(cin, hid, 1), sn_conv2d(hid, hid)
        self.conv3, self.conv4 = sn_conv2d(hid, hid), sn_conv2d(hid, cout, 1)
        self.extra = sn_conv2d(cin, cout - cin, 1) if cout > cin else None

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        h = self.conv2(F.relu(self.conv1(F.relu(x))))
        h = F.relu(self.conv3(F.relu(h)))
        if self.down:
            h, x = F.avg_pool2d(h, 2), F.avg_pool2d(x, 2)
        if self.extra is not None:                # the skip keeps x and appends new channels
            x = torch.cat([x, self.extra(x)], 1)
        return x + self.conv4(h)


class Generator(nn.Module):
    def __init__(self, cfg: BigGANDeepConfig):
        super().__init__()
        self.z_dim, self.num_classes, self.resolution = cfg.z_dim, cfg.num_classes, cfg.resolution
        w = [cfg.g_width * m for m in G_MULT[cfg.resolution]]
        self.shared = nn.Embedding(cfg.num_classes, cfg.shared_dim) if cfg.num_classes else None
        if self.shared is not None:
            nn.init.orthogonal_(self.shared.weight)
        cond = cfg.z_dim + (cfg.shared_dim if cfg.num_classes else 0)
        self.linear = sn_linear(cond, w[0] * 16)
        self.blocks = nn.ModuleList()
        for a, b in zip(w[:-1], w[1:]):           # per resolution: keep width, then upsample
            self.blocks.extend([DeepGBlock(a, a, cond, up=False), DeepGBlock(a, b, cond, up=True)])
        # Stage i (blocks 2i, 2i+1) outputs 8 * 2**i px; attention follows the stage at cfg.attn.
        stage = int(math.log2(cfg.attn)) - 3 if cfg.attn else -1
        self.attn_after = 2 * stage + 1 if cfg.attn else -1
        self.attn = SelfAttention(w[stage + 1]) if cfg.attn else None
        self.out_bn = nn.BatchNorm2d(w[-1])
        self.out_conv = sn_conv2d(w[-1], 3)

    def forward(self, z: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        if self.shared is not None:
            if y is None:
                raise ValueError("class-conditional generator needs labels y")
            z = torch.cat([self.shared(y), z], 1)
        h = self.linear(z).unflatten(1, (-1, 4, 4))
        for i, block in enumerate(self.blocks):
            h = block(h, z)
            if i == self.attn_after:
                h = self.attn(h)
        return torch.tanh(self.out_conv(F.relu(self.out_bn(h))))


class Discriminator(nn.Module):
    def __init__(self, cfg: BigGANDeepConfig):
        super().__init__()
        self.num_classes = cfg.num_classes
        d_ch = cfg.d_width
        w = [d_ch * DEEP_D_STEM[cfg.resolution]] + [d_ch * m for m in DEEP_D_MULT[cfg.resolution]]
        self.stem = sn_conv2d(3 * cfg.pack, w[0])
        self.pack = cfg.pack
        self.blocks = nn.ModuleList()
        for a, b in zip(w[:-1], w[1:]):           # per resolution: downsample and widen, then keep
            self.blocks.extend([DeepDBlock(a, b, down=True), DeepDBlock(b, b, down=False)])
        # Stage i outputs resolution / 2**(i+1) px.
        stage = int(math.log2(cfg.resolution // cfg.attn)) - 1 if cfg.attn else -1
        self.attn_after = 2 * stage + 1 if cfg.attn else -1
        self.attn = SelfAttention(w[stage + 1]) if cfg.attn else None
        self.head = ProjectionHead(w[-1], cfg.num_classes, cfg.pack)

    def forward(self, x: torch.Tensor, y: torch.Tensor | None = None) -> torch.Tensor:
        h = self.stem(packed(x, self.pack))
        for i, block in enumerate(self.blocks):
            h = block(h)
            if i == self.attn_after:
                h = self.attn(h)
        return self.head(h, y)


@register("biggan_deep", BigGANDeepConfig)
def build(cfg: BigGANDeepConfig):
    return {"G": Generator(cfg), "D": Discriminator(cfg)}
