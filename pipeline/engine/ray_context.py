"""The Ray Train context: the one place the engine meets ray.train.

Every rank must call `ray.train.report` (a barrier); rank 0 passes the checkpoint folder.
Resume comes from `ray.train.get_checkpoint()` (a restarted worker group, or a rerun of the same
run name) or the driver's `resume_from`.
"""
from __future__ import annotations

import contextlib
import json
import logging
import time

import ray.train
import ray.train.torch
import torch
import torch.distributed as dist

from pipeline import config as C
from pipeline.engine import checkpoint, loop
from pipeline.engine.progress import PROGRESS_FILE

log = logging.getLogger("ganforge.train")


class RayContext:
    def __init__(self, loop_config: dict):
        c = ray.train.get_context()
        self.rank, self.world = c.get_world_rank(), c.get_world_size()
        self.device = ray.train.torch.get_device()
        self.run_dir = loop_config["run_dir"]
        self.resume_from = loop_config.get("resume_from")
        self.tracker = None
        if self.rank == 0:
            from pipeline.tracking.runs import RankZeroLogger
            self.tracker = RankZeroLogger(loop_config["tracking_uri"], loop_config["mlflow_run_id"])

    @contextlib.contextmanager
    def restore(self):
        """Ray Train's latest checkpoint; if it fails its integrity check, the newest intact one
        beside it in the run's storage (with a warning naming both); else `resume_from`."""
        ckpt = ray.train.get_checkpoint()
        if ckpt is None:
            yield checkpoint.load(self.resume_from, map_location=self.device) if self.resume_from else None
            return

        def warn(m):
            if self.rank == 0:
                log.warning(m)
                print(f"[ganforge] warning: {m}", flush=True)
        yield checkpoint.load_newest_intact(_newest_first(ckpt), lambda c: c.as_directory(), self.device, warn)

    def wrap(self, module):
        # No buffer sync per forward: D runs twice (real, fake) per backward and rank 0's BN/SN
        # buffers would be copied in place between the two forwards. Buffers still sync at init.
        if not any(p.requires_grad for p in module.parameters()):
            return module
        return ray.train.torch.prepare_model(module, parallel_strategy_kwargs={"forward_sync_buffers": False})

    def all_sum(self, t: torch.Tensor) -> torch.Tensor:
        """Sum over ranks of a small CPU tensor (NCCL reduces device tensors only)."""
        if self.world == 1:
            return t
        on = self.device if dist.get_backend() == "nccl" else torch.device("cpu")
        t = t.to(on, copy=True)
        dist.all_reduce(t)
        return t.cpu()

    def gather(self, obj) -> list:
        if self.world == 1:
            return [obj]
        out = [None] * self.world
        dist.all_gather_object(out, obj)
        return out

    def note(self, text: str) -> None:
        print(f"[ganforge] {text}", flush=True)

    def progress(self, total: int, start: int):
        return _ProgressFile(self.run_dir, total)

    def report(self, metrics: dict, checkpoint_dir: str | None) -> None:
        ckpt = ray.train.Checkpoint.from_directory(checkpoint_dir) if checkpoint_dir else None
        ray.train.report(metrics, checkpoint=ckpt)


def _newest_first(latest: ray.train.Checkpoint) -> list:
    """Ray Train's latest checkpoint, then the other finished checkpoints of the same run, newest
    first (its folders are named checkpoint_<timestamp>, so names sort by time)."""
    import pyarrow.fs as pafs

    parent = latest.path.rstrip("/").rsplit("/", 1)[0]
    infos = latest.filesystem.get_file_info(pafs.FileSelector(parent))
    older = sorted((i.path for i in infos if i.type == pafs.FileType.Directory
                    and i.base_name.startswith("checkpoint_") and i.path.rstrip("/") != latest.path.rstrip("/")),
                   reverse=True)
    return [latest] + [ray.train.Checkpoint(p, filesystem=latest.filesystem) for p in older
                       if p < latest.path]


class _ProgressFile:
    """Rank 0's latest report in the run folder, for the driver's progress line (jobs/train.py):
    a worker's own bar would reach the driver's terminal through Ray's log monitor, prefixed
    with its pid and re-printed. One small write per report, on the run's storage."""

    def __init__(self, run_dir: str, total: int):
        from pipeline.tracking import storage
        self.write, self.path, self.total = storage.write_text, storage.join(run_dir, PROGRESS_FILE), total

    def show(self, step: int, m: dict) -> None:
        values = {k: float(v) for k, v in m.items() if isinstance(v, (int, float))}
        try:
            self.write(self.path, json.dumps({"step": step, "total": self.total, "time": time.time(),
                                              "metrics": values}))
        except OSError as e:        # progress display must never fail a training run
            log.warning("could not write %s: %s", self.path, e)

    def close(self) -> None:
        pass


def _quiet_ray_reports() -> None:
    """Ray Train 2.60 logs every report (about 300 characters) at INFO on a logger named by its
    file path, which RunConfig's LoggingConfig does not reach; on the driver's terminal they
    bury the progress bar. Ray's log files keep everything at WARNING and above."""
    try:
        from ray.train.v2._internal.execution import context as ray_train_context
    except ImportError:      # another Ray layout: nothing to quiet
        return
    logging.getLogger(ray_train_context.__file__).setLevel(logging.WARNING)


def train_loop_per_worker(loop_config: dict) -> dict:
    """Ray Train's worker function: a thin adapter from the driver's loop config to the engine."""
    if not loop_config.get("verbose"):
        _quiet_ray_reports()
    cfg = C.from_dict(loop_config["config"])
    data = {"urls": loop_config["shard_urls"], "counts": loop_config.get("shard_counts")}
    return loop.run(cfg, RayContext(loop_config), data, loop_config.get("eval"))
