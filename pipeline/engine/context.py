"""The local, single-process context: the engine's loop with torch alone.

No Ray, no MLflow: metrics go to stdout and `metrics.jsonl`, grids and scores to files under the
run folder, checkpoints to `<run_dir>/checkpoint_NNNNNNN` (each written whole in a temporary
folder, then renamed; the newest `train.keep_checkpoints` kept). A bare GPU machine runs the real
training step through it, and benchmarks time it.
"""
from __future__ import annotations

import contextlib
import json
import shutil
import sys
from pathlib import Path

import torch

from pipeline.engine import checkpoint


class LocalTracker:
    """Rank-0 duties written to files: metrics.jsonl, samples/step_NNNNNNN.png, scores."""

    def __init__(self, run_dir: Path, quiet: bool = False):
        self.dir, self.quiet = Path(run_dir), quiet
        self.dir.mkdir(parents=True, exist_ok=True)

    def _append(self, row: dict) -> None:
        with open(self.dir / "metrics.jsonl", "a") as f:
            f.write(json.dumps(row) + "\n")

    def metrics(self, values: dict[str, float], step: int) -> None:
        self._append({"step": step, **values})

    def grid(self, images: torch.Tensor, step: int, nrow: int | None = None) -> str:
        import torchvision.utils as vutils

        p = self.dir / "samples" / f"step_{step:07d}.png"
        p.parent.mkdir(exist_ok=True)
        nrow = nrow or max(1, int(len(images) ** 0.5))
        vutils.save_image(images.float().clamp(-1, 1) * 0.5 + 0.5, p, nrow=nrow, padding=1)
        return str(p)

    def scores(self, results: dict, protocol, *, step: int, ref_path=None) -> dict[str, float]:
        from pipeline.evaluation.metrics import metric_keys

        keys = metric_keys(results, protocol.extractor, protocol.standard, "eval")
        self._append({"step": step, **keys, **protocol.tags()})
        return keys


def checkpoints(run_dir: Path) -> list[Path]:
    """Finished checkpoint folders, oldest first."""
    return sorted(p for p in Path(run_dir).glob("checkpoint_*") if (p / checkpoint.META).is_file())


class LocalContext:
    """rank 0 of 1 on `device`; resumes from the newest checkpoint in run_dir (or `resume_from`)."""

    rank, world = 0, 1

    def __init__(self, cfg, run_dir: str | Path, device: str | torch.device = "cpu",
                 resume_from: str | None = None, quiet: bool = False):
        self.cfg, self.device = cfg, torch.device(device)
        self.run_dir = str(Path(run_dir).resolve())
        self.resume_from, self.quiet = resume_from, quiet
        self.tracker = LocalTracker(Path(self.run_dir), quiet)
        self.reports: list[dict] = []
        self.notes: list[str] = []          # what note() said, quiet or not

    @contextlib.contextmanager
    def restore(self):
        """The newest intact checkpoint in run_dir (a corrupt newer one is skipped with a
        warning), else `resume_from`, else None."""
        have = [str(p) for p in reversed(checkpoints(Path(self.run_dir)))] or (
            [self.resume_from] if self.resume_from else [])
        warn = lambda m: print(f"[ganforge] warning: {m}", file=sys.stderr, flush=True)  # noqa: E731
        yield checkpoint.load_newest_intact(have, contextlib.nullcontext, self.device, warn)

    def wrap(self, module):
        return module

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        return t

    def gather(self, obj) -> list:
        return [obj]

    def note(self, text: str) -> None:
        self.notes.append(text)
        if not self.quiet:
            print(f"[ganforge] {text}", flush=True)

    def progress(self, total: int, start: int):
        from pipeline.engine.progress import ProgressLine
        return None if self.quiet else ProgressLine(total, out=sys.stdout)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> str | None:
        """Keep the metrics, and the checkpoint as run_dir/checkpoint_NNNNNNN. -> that folder."""
        self.reports.append(dict(metrics))
        if checkpoint_dir is None:
            return None
        final = Path(self.run_dir) / f"checkpoint_{int(metrics['step']):07d}"
        tmp = final.with_name(f".{final.name}.tmp")
        shutil.rmtree(tmp, ignore_errors=True)
        shutil.copytree(checkpoint_dir, tmp)
        if final.exists():
            shutil.rmtree(final)
        tmp.rename(final)      # a crash mid-copy leaves only a hidden .tmp folder, never a bad latest
        for old in checkpoints(Path(self.run_dir))[:-self.cfg.train.keep_checkpoints]:
            shutil.rmtree(old, ignore_errors=True)
        return str(final)


def train_local(cfg, data: dict, run_dir: str | Path, *, device: str = "cpu",
                resume_from: str | None = None, eval_prepared: dict | None = None,
                quiet: bool = False) -> tuple[dict, LocalContext]:
    """Run the engine in this process. -> (the engine's result, the context with its reports)."""
    from pipeline.engine import loop

    ctx = LocalContext(cfg, run_dir, device, resume_from, quiet)
    return loop.run(cfg, ctx, data, eval_prepared), ctx
