"""ganforge-small-shapestack: a small CNN trained on built-in shapestack to read the three glyphs.

Its 256-d penultimate layer gives features for FID/KID/PR; its three 10-way heads, combined into
one distribution over the 1000 glyph triples, give the class probabilities of the Inception Score.
Trained by the project (`ganforge fit-extractor`, under a minute on 2 CPU cores), so its scores
work offline but compare only with scores from the same weights (the sha256 is recorded with
every score). Inputs of any size are resized to 32x32 (bilinear, antialiased).

ganforge-small-animals (`ganforge fit-extractor --data animals`) is the same network trained to
name the animal of built-in `animals` (one 10-way head), for FID on real silhouettes, as MNIST
GANs are scored with a digit classifier's features: the glyph reader's features know nothing of
legs and ears.
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import numpy as np
import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.evaluation.extractors import Extractor

NAME = "ganforge-small-shapestack"
NAMES = {"shapestack": NAME, "animals": "ganforge-small-animals"}
HEADS = {"shapestack": 3, "animals": 1}      # 10-way heads: a glyph per channel, or the animal


def data_for(name: str) -> str | None:
    """The built-in set a small-extractor name or alias reads ("small", "small-animals", a full
    name), or None when the name is not one of them."""
    for data, full in NAMES.items():
        if name in (full, "small" if data == "shapestack" else f"small-{data}"):
            return data
    return None
SIZE = 32
RESIZE = f"bilinear-antialias-{SIZE}"
FEATURES = 256


class SmallNet(nn.Module):
    def __init__(self, heads: int = 3):
        super().__init__()
        self.n_heads = heads
        ch = (32, 64, 128, 128)
        layers, c_in = [], 3
        for i, c in enumerate(ch):           # 32 -> 16, 8, 4, 4 px
            layers += [nn.Conv2d(c_in, c, 3, stride=2 if i < 3 else 1, padding=1), nn.ReLU(inplace=True)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(ch[-1] * 16, FEATURES), nn.ReLU(inplace=True))
        self.heads = nn.Linear(FEATURES, 10 * heads)  # 3 channels x 10 glyphs, or 10 animals
        # Features are reported times this, set after training so real data has unit std per
        # entry: FID/KID values then sit in a readable range (KID's kernel assumes O(1) entries).
        self.register_buffer("scale", torch.ones(()))

    def glyph_logits(self, x):
        """x in [-1, 1] -> (features [N, 256], per-head logits [N, heads, 10])."""
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        f = self.embed(self.conv(x).flatten(1))
        return f * self.scale, self.heads(f).view(-1, self.n_heads, 10)

    def forward(self, x):
        """-> (features [N, 256], log-probabilities [N, 1000] of the triple g0*100 + g1*10 + g2,
        or [N, 10] of the animal)."""
        f, g = self.glyph_logits(x)
        lp = F.log_softmax(g, -1)
        if self.n_heads == 1:
            return f, lp[:, 0]
        joint = lp[:, 0, :, None, None] + lp[:, 1, None, :, None] + lp[:, 2, None, None, :]
        return f, joint.flatten(1)


def default_path(data: str = "shapestack") -> Path:
    from pipeline.config import ganforge_home
    return ganforge_home() / "extractors" / f"{NAMES[data]}.pt"


def _animals(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Held-out split by seed: seed 0's training images are the first 9,000 of a fixed order,
    any other seed's (validation) the last 1,000; labels [N, 1]."""
    from pipeline.data.datasets import animals

    images, labels = animals.load()
    order = torch.from_numpy(np.random.default_rng(12345).permutation(len(images)))
    idx = order[:9000][:n] if seed < 1000 else order[9000:][:n]
    x = torch.from_numpy(images[idx.numpy()]).float()[:, None].expand(-1, 3, -1, -1) / 127.5 - 1
    x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
    return x, torch.from_numpy(labels[idx.numpy()])[:, None]


def _data(n: int, seed: int, data: str = "shapestack") -> tuple[torch.Tensor, torch.Tensor]:
    """Shapestack rendered at 16, 32 and 64 px, all resized to SIZE as at evaluation."""
    from pipeline.data.datasets import shapestack

    if data == "animals":
        return _animals(n, seed)
    xs, ys = [], []
    for i, res in enumerate((16, 32, 64)):
        img, glyphs = shapestack.generate(n // 3, res, seed * 3 + i)
        x = torch.from_numpy(img).permute(0, 3, 1, 2).float() / 127.5 - 1
        if res != SIZE:
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        xs.append(x)
        ys.append(torch.from_numpy(glyphs).long())
    return torch.cat(xs), torch.cat(ys)


def fit(out_path: str | Path | None = None, steps: int = 400, seed: int = 0, batch_size: int = 64,
        n_train: int = 9216, log=print, data: str = "shapestack") -> dict:
    """Train on CPU on built-in `data` (shapestack or animals), save the state dict to out_path
    and its metadata (sha256, held-out accuracy) beside it as .json; returns the metadata."""
    if data not in NAMES:
        raise ValueError(f"fit-extractor data {data!r}: choose from {sorted(NAMES)}")
    from pipeline.engine.checkpoint import _atomic_write, sha256_file

    t0, threads = time.time(), torch.get_num_threads()
    # One thread: this net is too small to gain from more, and on a shared machine OpenMP
    # threads that wait on each other made steps 10x slower (measured on 2 busy cores).
    torch.set_num_threads(1)
    try:
        net, acc = _train(steps, seed, batch_size, n_train, log, data)
    finally:
        torch.set_num_threads(threads)
    out = Path(out_path) if out_path else default_path(data)
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, lambda f: torch.save(net.state_dict(), f))
    meta = {"name": NAMES[data], "sha256": sha256_file(out), "steps": steps, "seed": seed, **acc,
            "features": FEATURES, "input_size": SIZE, "resize": RESIZE,
            "seconds": round(time.time() - t0, 1)}
    _atomic_write(out.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return meta


def _train(steps: int, seed: int, batch_size: int, n_train: int, log, data: str) -> tuple[SmallNet, dict]:
    torch.manual_seed(seed)
    x, y = _data(n_train, seed, data)
    xv, yv = _data(max(384, n_train // 3), seed + 1000, data)
    net = SmallNet(HEADS[data])
    opt = torch.optim.Adam(net.parameters(), lr=2e-3)
    sched = torch.optim.lr_scheduler.OneCycleLR(opt, max_lr=3e-3, total_steps=steps, pct_start=0.15)
    g = torch.Generator().manual_seed(seed)
    for step in range(steps):
        idx = torch.randint(len(x), (batch_size,), generator=g)
        loss = F.cross_entropy(net.glyph_logits(x[idx])[1].flatten(0, 1), y[idx].flatten())
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        sched.step()
        if log and (step + 1) % max(1, steps // 5) == 0:
            log(f"[fit-extractor] step {step + 1}/{steps} loss {loss.item():.4f}")
    net.eval()
    with torch.no_grad():
        out = [net.glyph_logits(xv[i:i + 512]) for i in range(0, len(xv), 512)]
        pred = torch.cat([g for _, g in out]).argmax(-1)
        net.scale.fill_(1 / torch.cat([f for f, _ in out]).std().clamp_min(1e-8))
    return net, {"glyph_accuracy": float((pred == yv).float().mean()),
                 "triple_accuracy": float((pred == yv).all(-1).float().mean())}


def load(path: str | Path | None = None, data: str = "shapestack") -> Extractor:
    """The weights at `path` (default: `data`'s fitted file); which of the two networks they are
    is read from their head, so a path alone is enough."""
    from pipeline.engine.checkpoint import sha256_file

    p = Path(path) if path else default_path(data)
    fit_cmd = "ganforge fit-extractor" + ("" if data == "shapestack" else f" --data {data}")
    if not p.is_file():
        raise FileNotFoundError(f"{NAMES[data]} weights not found at {p}: run `{fit_cmd}"
                                f"{'' if path is None else ' --out ' + str(p)}` (CPU, under a minute)")
    try:
        state = torch.load(p, map_location="cpu", weights_only=True)
        kind = {10 * h: d for d, h in HEADS.items()}[state["heads.weight"].shape[0]]
        net = SmallNet(HEADS[kind])
        net.load_state_dict(state)
    except Exception as e:   # weights_only refuses pickled code; a stale file has other keys
        raise ValueError(f"{p}: not {NAMES[data]} weights of this version ({str(e).splitlines()[0][:160]}); "
                         f"refit with `{fit_cmd}`") from None
    return Extractor(net, name=NAMES[kind], sha256=sha256_file(p), resize=RESIZE, standard=False)
