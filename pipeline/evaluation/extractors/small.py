"""ganforge-small-shapestack: a small CNN trained on built-in shapestack to read the three glyphs.

Its 256-d penultimate layer gives features for FID/KID/PR; its three 10-way heads, combined into
one distribution over the 1000 glyph triples, give the class probabilities of the Inception Score.
Trained by the project (`ganforge fit-extractor`, under a minute on 2 CPU cores), so its scores
work offline but compare only with scores from the same weights (the sha256 is recorded with
every score). Inputs of any size are resized to 32x32 (bilinear, antialiased).
"""
from __future__ import annotations

import json
import time
from pathlib import Path

import torch
import torch.nn as nn
import torch.nn.functional as F

from pipeline.evaluation.extractors import Extractor

NAME = "ganforge-small-shapestack"
SIZE = 32
RESIZE = f"bilinear-antialias-{SIZE}"
FEATURES = 256


class SmallNet(nn.Module):
    def __init__(self):
        super().__init__()
        ch = (32, 64, 128, 128)
        layers, c_in = [], 3
        for i, c in enumerate(ch):           # 32 -> 16, 8, 4, 4 px
            layers += [nn.Conv2d(c_in, c, 3, stride=2 if i < 3 else 1, padding=1), nn.ReLU(inplace=True)]
            c_in = c
        self.conv = nn.Sequential(*layers)
        self.embed = nn.Sequential(nn.Linear(ch[-1] * 16, FEATURES), nn.ReLU(inplace=True))
        self.heads = nn.Linear(FEATURES, 30)  # 3 channels x 10 glyphs
        # Features are reported times this, set after training so real data has unit std per
        # entry: FID/KID values then sit in a readable range (KID's kernel assumes O(1) entries).
        self.register_buffer("scale", torch.ones(()))

    def glyph_logits(self, x):
        """x in [-1, 1] -> (features [N, 256], per-channel glyph logits [N, 3, 10])."""
        if x.shape[-2:] != (SIZE, SIZE):
            x = F.interpolate(x, size=(SIZE, SIZE), mode="bilinear", antialias=True, align_corners=False)
        f = self.embed(self.conv(x).flatten(1))
        return f * self.scale, self.heads(f).view(-1, 3, 10)

    def forward(self, x):
        """-> (features [N, 256], log-probabilities [N, 1000] of the triple g0*100 + g1*10 + g2)."""
        f, g = self.glyph_logits(x)
        lp = F.log_softmax(g, -1)
        joint = lp[:, 0, :, None, None] + lp[:, 1, None, :, None] + lp[:, 2, None, None, :]
        return f, joint.flatten(1)


def default_path() -> Path:
    from pipeline.config import ganforge_home
    return ganforge_home() / "extractors" / f"{NAME}.pt"


def _data(n: int, seed: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Shapestack rendered at 16, 32 and 64 px, all resized to SIZE as at evaluation."""
    from pipeline.data.datasets import shapestack

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
        n_train: int = 9216, log=print) -> dict:
    """Train on CPU, save the state dict to out_path and its metadata (sha256, held-out glyph
    accuracy) beside it as .json; returns the metadata."""
    from pipeline.engine.checkpoint import _atomic_write, sha256_file

    t0, threads = time.time(), torch.get_num_threads()
    # One thread: this net is too small to gain from more, and on a shared machine OpenMP
    # threads that wait on each other made steps 10x slower (measured on 2 busy cores).
    torch.set_num_threads(1)
    try:
        net, acc = _train(steps, seed, batch_size, n_train, log)
    finally:
        torch.set_num_threads(threads)
    out = Path(out_path) if out_path else default_path()
    out.parent.mkdir(parents=True, exist_ok=True)
    _atomic_write(out, lambda f: torch.save(net.state_dict(), f))
    meta = {"name": NAME, "sha256": sha256_file(out), "steps": steps, "seed": seed, **acc,
            "features": FEATURES, "input_size": SIZE, "resize": RESIZE,
            "seconds": round(time.time() - t0, 1)}
    _atomic_write(out.with_suffix(".json"), lambda f: f.write(json.dumps(meta, indent=1).encode()))
    return meta


def _train(steps: int, seed: int, batch_size: int, n_train: int, log) -> tuple[SmallNet, dict]:
    torch.manual_seed(seed)
    x, y = _data(n_train, seed)
    xv, yv = _data(max(384, n_train // 3), seed + 1000)
    net = SmallNet()
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


def load(path: str | Path | None = None) -> Extractor:
    from pipeline.engine.checkpoint import sha256_file

    p = Path(path) if path else default_path()
    if not p.is_file():
        raise FileNotFoundError(f"{NAME} weights not found at {p}: run `ganforge fit-extractor"
                                f"{'' if path is None else ' --out ' + str(p)}` (CPU, under a minute)")
    net = SmallNet()
    try:
        net.load_state_dict(torch.load(p, map_location="cpu", weights_only=True))
    except Exception as e:   # weights_only refuses pickled code; a stale file has other keys
        raise ValueError(f"{p}: not {NAME} weights of this version ({str(e).splitlines()[0][:160]}); "
                         "refit with `ganforge fit-extractor`") from None
    return Extractor(net, name=NAME, sha256=sha256_file(p), resize=RESIZE, standard=False)
