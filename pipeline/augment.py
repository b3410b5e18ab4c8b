"""Differentiable augmentation of everything D sees, for every family (config section `aug`).

DiffAugment (Zhao et al. 2020): the same random colour / translation / cutout function applied
to reals and fakes, in D's and G's losses. ADA (Karras et al. 2020): stylegan2-ada's geometric
and colour pipeline, each transform applied per sample with probability p, and p steered by the
sign of D on reals towards a target (`update`). Images are in [-1, 1] and stay there; every op is
arithmetic, indexing or grid_sample, so gradients reach the input. Written by hand: torchvision's
transforms draw one parameter set per call, not per sample, and are not steered.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F

POLICY_OPS = ("color", "translation", "cutout")


class Identity:
    """kind=none: returns its input itself, draws no random numbers."""

    def __call__(self, x: torch.Tensor) -> torch.Tensor:
        return x

    def update(self, sign: float | None, images: int) -> None:
        pass

    def metrics(self) -> dict[str, float]:
        return {}

    def state(self) -> dict:
        return {}

    def load_state(self, state: dict) -> None:
        pass


# ---------------------------------------------------------------- DiffAugment

def _rand(x, *shape):
    return torch.rand(x.shape[0], *shape, device=x.device, dtype=x.dtype)


def color(x: torch.Tensor) -> torch.Tensor:
    """Brightness +-0.5, saturation x[0, 2], contrast x[0.5, 1.5] (DiffAugment's ranges, in
    [-1, 1] units as the reference code applies them), clamped back to [-1, 1]."""
    x = x + (_rand(x, 1, 1, 1) - 0.5)
    m = x.mean(1, keepdim=True)
    x = (x - m) * (_rand(x, 1, 1, 1) * 2) + m
    m = x.mean((1, 2, 3), keepdim=True)
    x = (x - m) * (_rand(x, 1, 1, 1) + 0.5) + m
    return x.clamp(-1, 1)


def translation(x: torch.Tensor, ratio: float = 0.125) -> torch.Tensor:
    """Integer shift of up to ratio * size per axis, per sample; zeros come in."""
    n, _, h, w = x.shape
    sh, sw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    ty = torch.randint(-sh, sh + 1, (n, 1, 1), device=x.device)
    tx = torch.randint(-sw, sw + 1, (n, 1, 1), device=x.device)
    rows = torch.arange(h, device=x.device)[None, :, None] + ty + sh
    cols = torch.arange(w, device=x.device)[None, None, :] + tx + sw
    pad = F.pad(x, [sw, sw, sh, sh]).permute(0, 2, 3, 1)
    return pad[torch.arange(n, device=x.device)[:, None, None], rows, cols].permute(0, 3, 1, 2)


def cutout(x: torch.Tensor, ratio: float = 0.5) -> torch.Tensor:
    """Zero a (ratio * size)^2 square at a random centre per sample (clipped at the border)."""
    n, _, h, w = x.shape
    ch, cw = int(h * ratio + 0.5), int(w * ratio + 0.5)
    cy = torch.randint(0, h, (n, 1, 1), device=x.device) - ch // 2
    cx = torch.randint(0, w, (n, 1, 1), device=x.device) - cw // 2
    r = torch.arange(h, device=x.device)[None, :, None]
    c = torch.arange(w, device=x.device)[None, None, :]
    inside = (r >= cy) & (r < cy + ch) & (c >= cx) & (c < cx + cw)
    return x * (~inside).to(x.dtype)[:, None]


_OPS = {"color": color, "translation": translation, "cutout": cutout}


class DiffAugment(Identity):
    def __init__(self, policy: str):
        self.ops = [_OPS[p.strip()] for p in policy.split(",") if p.strip()]

    def __call__(self, x):
        for op in self.ops:
            x = op(x)
        return x


# ---------------------------------------------------------------- ADA

_LUMA = torch.tensor([1.0, 1.0, 1.0]) / math.sqrt(3)


def _gate(x, p):
    """[n] bool: which samples get a transform this call."""
    return torch.rand(x.shape[0], device=x.device) < p


class ADA(Identity):
    """stylegan2-ada's 'bgc' pipeline ('bg': its geometric half only): x-flip, 90-degree rotation, integer translation (1/8 of
    the size, reflected), isotropic scaling and rotation (one bilinear grid_sample with reflection
    padding), then brightness, contrast, luma flip, hue rotation and saturation as one colour
    matrix. Each transform is drawn per sample with probability p; untouched samples pass through
    exactly (torch.where), and p = 0 returns the input itself."""

    def __init__(self, target: float, speed_kimg: float, p: float = 0.0, p_max: float = 1.0,
                 pipeline: str = "bgc"):
        self.target, self.speed, self.p, self.p_max = target, speed_kimg * 1000, float(p), p_max
        self.sign, self.color = float("nan"), pipeline == "bgc"

    def update(self, sign, images):
        """p += sign(r_t - target) * images / (speed_kimg * 1000), clamped to [0, p_max]."""
        if sign is None or images <= 0:
            return
        self.sign = float(sign)
        step = math.copysign(images / self.speed, self.sign - self.target) if self.sign != self.target else 0.0
        self.p = min(max(self.p + step, 0.0), self.p_max)

    def metrics(self):
        return {"aug_p": self.p}

    def state(self):
        return {"aug_p": self.p}

    def load_state(self, state):
        if "aug_p" in state:
            self.p = float(state["aug_p"])

    def __call__(self, x):
        if self.p <= 0:
            return x
        x = self._geometric(x)
        return self._color(x) if self.color else x

    def _geometric(self, x):
        n, _, h, w = x.shape
        sel = lambda m, a, b: torch.where(m[:, None, None, None], a, b)  # noqa: E731
        x = sel(_gate(x, self.p) & (torch.rand(n, device=x.device) < 0.5), x.flip(3), x)
        if h == w:
            k = torch.randint(0, 4, (n,), device=x.device) * _gate(x, self.p)
            for r in (1, 2, 3):
                x = sel(k == r, x.rot90(r, (2, 3)), x)
        # Integer translation with reflection: index maps, per sample.
        t = (torch.rand(n, 2, device=x.device) * 2 - 1) * 0.125
        t = (t * torch.tensor([h, w], device=x.device)).round().long() * _gate(x, self.p)[:, None]
        rows = _reflect(torch.arange(h, device=x.device)[None, :] - t[:, :1], h)
        cols = _reflect(torch.arange(w, device=x.device)[None, :] - t[:, 1:], w)
        x = x.permute(0, 2, 3, 1)[torch.arange(n, device=x.device)[:, None, None],
                                  rows[:, :, None], cols[:, None, :]].permute(0, 3, 1, 2)
        # Isotropic scale (lognormal, std 0.2 ln 2) and rotation (uniform +-180 degrees).
        scale = torch.where(_gate(x, self.p), torch.exp2(torch.randn(n, device=x.device) * 0.2),
                            torch.ones(n, device=x.device))
        angle = torch.where(_gate(x, self.p), (torch.rand(n, device=x.device) * 2 - 1) * math.pi,
                            torch.zeros(n, device=x.device))
        moved = (scale != 1) | (angle != 0)
        if bool(moved.any()):
            cos, sin = torch.cos(angle) / scale, torch.sin(angle) / scale
            theta = torch.stack([torch.stack([cos, -sin, torch.zeros_like(cos)], 1),
                                 torch.stack([sin, cos, torch.zeros_like(cos)], 1)], 1).to(x.dtype)
            grid = F.affine_grid(theta, list(x.shape), align_corners=False)
            warped = F.grid_sample(x, grid, mode="bilinear", padding_mode="reflection", align_corners=False)
            x = sel(moved, warped, x)
        return x

    def _color(self, x):
        n, dev = x.shape[0], x.device
        v = _LUMA.to(dev)
        eye = torch.eye(4, device=dev).expand(n, 4, 4)
        C = eye.clone()

        def gated(M):                        # M [n, 4, 4] applied where the gate opens
            return torch.where(_gate(x, self.p)[:, None, None], M, eye) @ C

        b = torch.randn(n, device=dev) * 0.2                     # brightness
        T = eye.clone()
        T[:, :3, 3] = b[:, None]
        C = gated(T)
        c = torch.exp2(torch.randn(n, device=dev) * 0.5)           # contrast
        C = gated(torch.diag_embed(torch.stack([c, c, c, torch.ones_like(c)], 1)))
        vv = torch.zeros(4, 4, device=dev)
        vv[:3, :3] = torch.outer(v, v)
        flip = torch.randint(0, 2, (n,), device=dev).float()       # luma flip
        C = gated(eye - 2 * vv * flip[:, None, None])
        th = (torch.rand(n, device=dev) * 2 - 1) * math.pi          # hue rotation about the luma axis
        K = torch.tensor([[0, -v[2], v[1]], [v[2], 0, -v[0]], [-v[1], v[0], 0]], device=dev)
        R = eye.clone()
        R[:, :3, :3] = (torch.cos(th)[:, None, None] * torch.eye(3, device=dev)
                        + torch.sin(th)[:, None, None] * K
                        + (1 - torch.cos(th))[:, None, None] * torch.outer(v, v))
        C = gated(R)
        s = torch.exp2(torch.randn(n, device=dev))                 # saturation
        C = gated(_saturation(vv, s))
        moved = (C != eye).flatten(1).any(1)
        if not bool(moved.any()):
            return x
        C = C.to(x.dtype)
        out = torch.einsum("nij,njhw->nihw", C[:, :3, :3], x[:, :3]) + C[:, :3, 3, None, None]
        out = torch.cat([out, x[:, 3:]], 1).clamp(-1, 1)
        return torch.where(moved[:, None, None, None], out, x)


def _saturation(vv: torch.Tensor, s: torch.Tensor) -> torch.Tensor:
    """v v^T + (I - v v^T) s, homogeneous 4x4 (the w row/column left as identity)."""
    eye = torch.eye(4, device=s.device)
    M = vv + (eye - vv) * s[:, None, None]
    M[:, 3, 3] = 1
    return M


def _reflect(i: torch.Tensor, n: int) -> torch.Tensor:
    """Indices mirrored into [0, n) (reflection without repeating the edge pixel)."""
    period = 2 * (n - 1) if n > 1 else 1
    i = i.remainder(period)
    return torch.where(i >= n, period - i, i)


def build(aug) -> Identity:
    """The augmenter for an `aug` config section (None = none)."""
    if aug is None or aug.kind == "none":
        return Identity()
    if aug.kind == "diffaugment":
        return DiffAugment(aug.policy)
    return ADA(aug.ada_target, aug.ada_speed_kimg, aug.ada_p_init, aug.ada_p_max, aug.ada_pipeline)
