"""The best checkpoint by an evaluation metric, kept beside a run's Ray Train checkpoints."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
from pathlib import Path

from pipeline.engine import checkpoint
from pipeline.tracking import storage

FOLDER = "best_checkpoint"


def best_so_far(run_dir: str) -> float:
    text = storage.read_text(storage.join(run_dir, FOLDER, checkpoint.META))
    return float(json.loads(text).get("best_score", "inf")) if text else float("inf")


def keep_best(scores: dict[str, float], best: float, metric: str, state, run_dir: str) -> float:
    """Rank 0: copy the full state to <run_dir>/best_checkpoint when `metric` improves (lower is
    better). Written beside and renamed over, so the best checkpoint is never half-written."""
    key = next((k for k in scores if k.split("/")[-1] == metric), None)
    if key is None or not scores[key] < best:
        return best
    meta = {"best_metric": key, "best_score": scores[key]}
    if storage.is_uri(run_dir):   # object stores cannot rename folders: meta.json goes up last
        with tempfile.TemporaryDirectory() as td:
            checkpoint.save(state(), td, meta=meta)
            storage.upload_dir(td, storage.join(run_dir, FOLDER), last=checkpoint.META)
        return scores[key]
    final = Path(run_dir) / FOLDER
    tmp = final.with_name(f".{FOLDER}.tmp-{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    checkpoint.save(state(), tmp, meta=meta)
    old = final.with_name(f".{FOLDER}.old-{os.getpid()}")
    if final.exists():
        final.rename(old)
    tmp.rename(final)
    shutil.rmtree(old, ignore_errors=True)
    return scores[key]
