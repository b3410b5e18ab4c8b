"""Scores of a trained translator (pix2pix, CycleGAN, StarGAN).

- The oracle, on the built-in tasks (pipeline/data/datasets/shapepairs.py): fresh glyph triples
  drawn in the source style are translated; content_acc says all three glyphs were kept (chance
  0.001), glyph_acc per channel (chance 0.1), domain_acc that the output is drawn in the target
  style (chance 1/3).
- For any data: FID of the translations against real target-domain images through a feature
  extractor (the protocol it returns names the extractor, its sha256 and the counts), and for
  paired data the pixel L1 in [-1, 1] units, PSNR (dB) and SSIM on [0, 1] images from
  torchmetrics (SSIM is easy to get subtly wrong by hand: window, padding, constants).
"""
from __future__ import annotations

import numpy as np
import torch

from pipeline.data.datasets import shapepairs

# What each family translates on its built-in set: (source style or None = every style, target).
TASKS = {"pix2pix": ("outline", "filled"), "cyclegan": ("outline", "filled"), "stargan": (None, None)}


def builtin_oracle(gen, n: int = 500, seed: int = 1234, batch: int = 100) -> dict[str, float]:
    """Oracle scores of `gen` on n fresh triples of its family's built-in task. StarGAN: source i
    drawn in style i % 3 and asked for each other domain in turn, scores averaged over both."""
    from pipeline import families

    fam = families.name_of(gen.cfg.model)
    if fam not in TASKS:
        raise ValueError(f"{fam}: no built-in translation task (known: {', '.join(TASKS)})")
    res = gen.cfg.model.resolution
    src_style, tgt_style = TASKS[fam]
    if src_style is not None:
        src, glyphs = shapepairs.generate(n, res, seed, src_style)
        return shapepairs.translation_scores(_f(translate(gen, src, batch=batch)), glyphs, tgt_style)
    names = gen.domains
    src, glyphs, have = mixed(n, res, seed, names)
    rows = []
    for shift in range(1, len(names)):
        want = (have + shift) % len(names)
        out = translate(gen, src, domains=want, batch=batch)
        for d, name in enumerate(names):
            m = want == d
            rows.append((int(m.sum()), shapepairs.translation_scores(_f(out[torch.from_numpy(m)]), glyphs[m], name)))
    total = sum(k for k, _ in rows)
    return {key: sum(k * r[key] for k, r in rows) / total for key in rows[0][1]}


def mixed(n: int, res: int, seed: int, styles) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """n triples, triple i drawn in style i % len(styles) -> (uint8 [n, R, R, 3], glyphs [n, 3],
    style index [n])."""
    have = np.arange(n) % len(styles)
    drawn = [shapepairs.generate(n, res, seed, s) for s in styles]
    return np.stack([drawn[have[i]][0][i] for i in range(n)]), drawn[0][1], have


def _f(x: torch.Tensor) -> torch.Tensor:
    """uint8 NCHW -> float [-1, 1] NCHW (what the oracle reads as generator output)."""
    return x.float() / 127.5 - 1


def translate(gen, images_nhwc: np.ndarray, *, domains: np.ndarray | None = None,
              batch: int = 100) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> uint8 [n, 3, R, R] translations; domains: per-sample target domain
    index (StarGAN), None for the translator's default."""
    x = torch.from_numpy(np.ascontiguousarray(images_nhwc)).permute(0, 3, 1, 2).contiguous()
    key = gen.domain_input
    groups = [(None, torch.arange(len(x)))] if domains is None else [
        (int(k), torch.from_numpy(np.nonzero(domains == k)[0])) for k in np.unique(domains)]
    out = None
    for k, idx in groups:
        for i in range(0, len(idx), batch):
            j = idx[i:i + batch]
            y = gen.translate(x[j], fixed=None if k is None else {key: k})
            out = torch.zeros(len(x), *y.shape[1:], dtype=torch.uint8) if out is None else out
            out[j] = y
    return out


def paired_scores(outputs: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    """uint8 N x 3 x H x W translations and their targets -> l1 (in [-1, 1] units), psnr (dB),
    ssim (torchmetrics, Gaussian window 11, on [0, 1])."""
    from torchmetrics.functional.image import (peak_signal_noise_ratio,
                                               structural_similarity_index_measure)

    a, b = outputs.float() / 255, targets.float() / 255
    return {"l1": float((a - b).abs().mean() * 2),
            "psnr": float(peak_signal_noise_ratio(a, b, data_range=1.0)),
            "ssim": float(structural_similarity_index_measure(a, b, data_range=1.0))}


def fid_against(outputs: torch.Tensor, reals: torch.Tensor, extractor, batch: int = 200) -> tuple[float, dict]:
    """FID of uint8 translations against uint8 real images of the target domain -> (fid, protocol)."""
    from pipeline.evaluation.metrics.features import FeatureStats
    from pipeline.evaluation.metrics.fid import frechet_distance

    def stats(x):
        f = torch.cat([extractor.features(x[i:i + batch].float() / 127.5 - 1) for i in range(0, len(x), batch)])
        s = FeatureStats.of(f.cpu().numpy())
        return s.mean, s.m2 / max(s.n - 1, 1)

    (m1, c1), (m2, c2) = stats(outputs), stats(reals)
    protocol = {"extractor": extractor.name, "extractor_sha256": extractor.sha256,
                "n_translated": len(outputs), "n_real": len(reals), "resize": extractor.resize}
    return frechet_distance(m1, c1, m2, c2), protocol
