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

import argparse
import os
import platform
import tempfile
import time
from pathlib import Path

import numpy as np
import torch

from pipeline import config as C
from pipeline.data import resolve_shards
from pipeline.data.datasets import shapepairs
from pipeline.engine.context import LocalContext
from pipeline.evaluation import translation as T
from pipeline.families import generator as GM
from pipeline.families import sampling


class _Budget(Exception):
    pass


class _Clocked(LocalContext):
    """The local context, scoring the checkpointed translator at each mark of the training clock."""

    def __init__(self, *a, marks, on_score, **k):
        super().__init__(*a, **k)
        self.marks, self.on_score, self.t0, self.paused = list(marks), on_score, time.monotonic(), 0.0

    def report(self, metrics, checkpoint_dir):
        super().report(metrics, checkpoint_dir)
        at = (time.monotonic() - self.t0 - self.paused) / 60
        if checkpoint_dir is None or not self.marks or at < self.marks[0]:
            return
        t = time.monotonic()
        while self.marks and self.marks[0] <= at:
            self.marks.pop(0)
        self.on_score(at, int(metrics["step"]), GM.from_checkpoint(checkpoint_dir))
        self.paused += time.monotonic() - t
        if not self.marks:
            raise _Budget


def score(gen, n: int, extractor, grid: Path | None = None) -> dict:
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


def run(preset, overrides, marks, n, device, work, extractor, out: Path, score_fn=None) -> list[dict]:
    """Train `preset` for the marks' minutes; -> a row per mark. score_fn(gen, n, grid_path) ->
    {name: value} (default: this file's translation scores); bench/quality_encoders.py passes its own."""
    score_fn = score_fn or (lambda gen, n_, grid: score(gen, n_, extractor, grid))
    from jobs.train import builtin_shards
    from pipeline.engine import loop

    cfg = C.load(preset, [*overrides, "train.steps=100000000", "train.checkpoint_every=50",
                          "train.log_every=50", "train.sample_every=0", "train.keep_checkpoints=1",
                          "scaling.num_workers=1", "data.loader_workers=0"])
    urls, _ = resolve_shards(cfg.data.shards or str(builtin_shards(cfg)))
    rows = []

    def on_score(minutes, step, gen):
        s = score_fn(gen, n, out / f"{preset}_{minutes:.0f}min.png")
        rows.append({"preset": preset, "minutes": round(minutes, 2), "step": step, **s})
        print(f"  {preset:<12} {minutes:>6.2f} min  step {step:>6}  " +
              "  ".join(f"{k} {v:.3f}" for k, v in s.items()), flush=True)

    ctx = _Clocked(cfg, work / preset, device, None, True, marks=marks, on_score=on_score)
    try:
        loop.run(cfg, ctx, {"urls": urls, "counts": None})
    except _Budget:
        pass
    return rows


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("presets", nargs="*", default=["pix2pix32", "cyclegan32", "stargan32"])
    ap.add_argument("--minutes", type=float, default=10.0)
    ap.add_argument("--at", default="1,2,5,10")
    ap.add_argument("--n", type=int, default=1000, help="translations scored at each mark")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE")
    ap.add_argument("--threads", type=int, default=2)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--out", default="bench_out/translation", help="grids: PRESET_Mmin.png, source | output pairs")
    a = ap.parse_args()
    out = Path(a.out)
    out.mkdir(parents=True, exist_ok=True)
    torch.set_num_threads(a.threads)
    marks = sorted(m for m in (float(x) for x in a.at.split(",")) if m <= a.minutes) or [a.minutes]
    os.environ.setdefault("GANFORGE_HOME", str(Path.cwd() / ".ganforge"))
    from pipeline.evaluation.extractors import small

    if not small.default_path().is_file():
        small.fit()
    extractor = small.load()
    print(f"machine: {os.cpu_count()} cores ({platform.processor() or platform.machine()}), torch "
          f"{torch.__version__}, {a.threads} threads, device {a.device}, load average "
          f"{os.getloadavg()[0]:.1f} before the runs; FID extractor {extractor.name}")
    rows = []
    with tempfile.TemporaryDirectory() as td:
        for p in a.presets:
            rows += run(p, a.set, marks, a.n, a.device, Path(td), extractor, out)
    keys = [k for k in rows[0] if k not in ("preset", "minutes", "step")]
    print(f"\n{'preset':<12}{'minutes':>8}{'step':>7}" + "".join(f"{k:>12}" for k in keys))
    for r in rows:
        print(f"{r['preset']:<12}{r['minutes']:>8.2f}{r['step']:>7}" +
              "".join(f"{r.get(k, float('nan')):>12.3f}" for k in keys))


if __name__ == "__main__":
    main()
