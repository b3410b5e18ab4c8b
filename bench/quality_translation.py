"""Translation quality against wall-clock minutes: pix2pix, CycleGAN and StarGAN on their built-in
tasks, scored by the exact oracle and by FID against the target domain.

    python bench/quality_translation.py [PRESET ...] [--minutes 10] [--at 1,2,5,10] [--n 1000]
                                        [--set key=value ...] [--threads 2] [--out DIR]

Each preset (default: pix2pix32 cyclegan32 stargan32) trains through the engine's local context
(the real phases and data stream; no Ray, no MLflow) for a wall-clock budget; at each mark its
checkpointed translator translates n fresh triples and is scored (scoring time not counted):
  content_acc  all three glyphs kept (chance 0.001)     glyph_acc  per channel (chance 0.1)
  domain_acc   drawn in the target style (chance 1/3)   fid        against n real target images
  l1, psnr, ssim against the true targets (pix2pix, whose data is paired)
FID uses ganforge-small-shapestack (offline; fitted here if missing): its numbers compare with
each other only. A benchmark that prints figures, not a test: they depend on the machine.
"""
from __future__ import annotations

from pathlib import Path

import numpy as np
import torch

import clocked   # the clocked training run and command line shared by the oracle benchmarks (bench/)

from pipeline.data.datasets import shapepairs
from pipeline.evaluation import translation as T
from pipeline.families import sampling


def score(gen, n: int, grid: Path | None, extractor) -> dict:
    out = T.builtin_oracle(gen, n=n)
    fam = gen.family.name
    res = gen.cfg.model.resolution
    if fam == "stargan":      # sources in every style, each sent to the next domain
        names = gen.domains
        src, _, have = T.mixed(n, res, 99, names)
        outs = T.translate(gen, src, domains=(have + 1) % len(names))
        real, _, _ = T.mixed(n, res, 77, names[1:] + names[:1])   # the same mix of target styles
    else:
        src_style, tgt_style = T.TASKS[fam]
        src, _ = shapepairs.generate(n, res, 99, src_style)
        outs = T.translate(gen, src)
        real = shapepairs.generate(n, res, 77, tgt_style)[0]     # other triples: the target domain
        if fam == "pix2pix":
            out_tgt = torch.from_numpy(shapepairs.generate(n, res, 99, tgt_style)[0]).permute(0, 3, 1, 2)
            out.update(T.paired_scores(outs, out_tgt))
    fid, _ = T.fid_against(outs, torch.from_numpy(real).permute(0, 3, 1, 2), extractor)
    if grid is not None:       # 16 sources beside their translations
        k = torch.from_numpy(np.ascontiguousarray(src[:16])).permute(0, 3, 1, 2)
        sampling.write_grid(torch.stack([k, outs[:16]], 1).flatten(0, 1), grid, nrow=8)
    return {**out, "fid": fid}


if __name__ == "__main__":
    clocked.main(__doc__, ["pix2pix32", "cyclegan32", "stargan32"], score, fid=True,
                 n_help="translations scored at each mark", out="bench_out/translation")
