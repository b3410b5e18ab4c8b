"""ProGAN through Ray Train (2 CPU workers): growing through resolutions with fade-in, per-level
batch and learning rate; a worker failure mid-growth that the restarted group recovers from; and
a rerun past a corrupt newest checkpoint that resumes from the intact one, in the middle of a
fade-in. Uses the progan32 preset with shorter phases so all of growth fits in 22 steps.

The shards stream over HTTP and from an S3-compatible server (moto), and the run's results go
to a storage URI, so every restore also resumes network streams mid-shard. Faults (stalls, cuts,
5xx) are tested without Ray in test_network_shards.py.

One run and its rerun check all of this together: on 2 cores a Ray Train fit costs ~20 s of
process start-up, its steps almost nothing.
"""
from __future__ import annotations

import functools
import json
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import numpy as np
import pytest
import yaml
from mlflow.tracking import MlflowClient
from PIL import Image

from jobs.train import builtin_shards, run_training
from models.progan import progan_schedule
from pipeline.engine import checkpoint
from pipeline.tracking import storage
from pipeline import config as C

pytestmark = pytest.mark.slow

# 2 workers: 16 images per step at 4 and 8 px, 8 per step at 16 and 32 px (phase_batch), so the
# levels take 2, 4, 8 and 8 steps; fade-ins last 2 (8 px), 4 (16 px) and 4 (32 px) steps.
PHASES = ["model.phase_images=[32, 64, 64, 64]", "model.phase_batch=[8, 8, 4, 4]",
          "model.phase_lr=[0.001, 0.002, 0.002, 0.001]"]


@pytest.fixture(scope="module")
def shards32(ganforge_home):
    return builtin_shards(C.load("progan32"))


class _Quiet(SimpleHTTPRequestHandler):
    served: list[str] = []

    def log_message(self, fmt, *args):   # count requests instead of printing them
        self.served.append(self.path)


@pytest.fixture
def http_shards(shards32):
    """The first half of the shards over HTTP: an http(s):// brace pattern, and who asked for what."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(shards32)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    n = len(json.loads((shards32 / "manifest.json").read_text())["shards"])
    yield f"http://127.0.0.1:{server.server_address[1]}/shard-{{000000..{n // 2 - 1:06d}}}.tar", _Quiet.served
    server.shutdown()
    server.server_close()


@pytest.fixture
def s3_shards(shards32):
    """The second half in moto's S3 server on 127.0.0.1, as an s3:// brace pattern. Credentials
    and endpoint ride in the URI (pyarrow's S3 URI form): Ray's workers started before this
    test and do not see environment variables set now (the env form: test_network_shards.py)."""
    from moto.server import ThreadedMotoServer
    import pyarrow.fs as pafs

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=f"http://{host}:{port}", allow_bucket_creation=True)
    fs.create_dir("shards")
    names = [s["name"] for s in json.loads((shards32 / "manifest.json").read_text())["shards"]]
    for name in names[len(names) // 2:]:
        with fs.open_output_stream(f"shards/progan32/{name}") as f:
            f.write((shards32 / name).read_bytes())
    yield (f"s3://testing:testing@shards/progan32/shard-{{{len(names) // 2:06d}..{len(names) - 1:06d}}}.tar"
           f"?scheme=http&endpoint_override={host}:{port}&region=us-east-1")
    server.stop()


def _cfg(shards, store, name, steps, *over):
    # No DataLoader process per rank (~3 s each to start here); the terminal test's fit runs one.
    return C.load("progan32", [f"data.shards={shards}", f"train.run_name={name}", f"train.storage_path={store}",
                               f"train.steps={steps}", "train.log_every=1", "train.checkpoint_every=8",
                               "train.sample_every=8", "tracking.register=false", "data.loader_workers=0",
                               "tracking.log_checkpoint=false", *PHASES, *over])


def _expected(cfg, steps):
    """(level, alpha) the schedule gives for each step, counting images as the loop should."""
    out, seen = [], 0
    for _ in range(steps):
        s = progan_schedule(cfg.model, seen)
        out.append((s.level, s.alpha))
        seen += s.batch_size * cfg.scaling.num_workers
    return out, seen


def _steps(s, key):
    """Every logged step of `key`, in logging order: a restart logs some steps again."""
    ms = MlflowClient(s.tracking_uri).get_metric_history(s.mlflow_run_id, key)
    return [m.step for m in sorted(ms, key=lambda m: m.timestamp)]


def _history(s, key):
    """One value per step, the last one logged (a step logged twice has the same schedule)."""
    ms = MlflowClient(s.tracking_uri).get_metric_history(s.mlflow_run_id, key)
    return [v for _, v in sorted({m.step: m.value for m in sorted(ms, key=lambda m: m.timestamp)}.items())]


def test_grows_recovers_a_failure_and_resumes_mid_fade_past_a_corrupt_checkpoint(
        ray_session, http_shards, s3_shards, tmp_path):
    http_url, served = http_shards
    shards = f"{http_url}::{s3_shards}"     # each rank reads urls[rank::2]: one http and one s3 shard
    store = (tmp_path / "bucket").as_uri()          # file:// takes the same pyarrow.fs path as s3://
    # Rank 1 raises at step 12 (16 px, stable); the group restarts from the step-8 checkpoint,
    # in the middle of the 16 px fade-in, and finishes at step 16.
    name = f"pg-{uuid.uuid4().hex[:8]}"
    run_dir = tmp_path / "bucket" / name
    first = run_training(_cfg(shards, store, name, 16, "train.inject_failure_at=12"))
    assert first.steps == 16 and (run_dir / ".injected_failure_12").exists()
    assert any(p.startswith("/shard-") for p in served)      # the workers really read over HTTP
    assert first.run_dir == f"{store}/{name}"
    assert yaml.safe_load(storage.read_text(f"{first.run_dir}/resolved_config.yaml"))["data"]["shards"] == shards
    assert json.loads(storage.read_text(f"{first.run_dir}/ganforge_run.json"))["mlflow_run_id"] == first.mlflow_run_id
    # Step 12 is reported only by the restarted group: the failure came before its report.
    assert _steps(first, "loss_d") == [*range(1, 12), *range(9, 17)]
    # Step 16 is the second step of the 32 px fade-in: stopped with alpha 0.25; the restarted
    # group counted images from the restored checkpoint on.
    newest_dir = run_dir / first.checkpoint.rsplit("/", 1)[-1]
    state = checkpoint.load(newest_dir)
    assert len(state["data_positions"]) == 2
    expected, seen = _expected(first_cfg := _cfg(shards, store, name, 24), 24)
    assert state["step"] == 16 and state["images_seen"] == _expected(first_cfg, 16)[1] == 176
    assert float(state["nets"]["G"]["level"]) == 3 and float(state["nets"]["G"]["alpha"]) == pytest.approx(0.25)
    assert float(state["ema"]["G"]["alpha"]) == pytest.approx(0.25)

    # Re-running the same run name with more steps continues the finished run, even when its
    # newest checkpoint (step 16) was corrupted on disk meanwhile: the rerun warns and resumes
    # from the intact step-8 one (alpha 0.25 of the 16 px fade-in) instead of failing after
    # its restarts.
    newest = newest_dir / checkpoint.STATE
    blob = bytearray(newest.read_bytes())
    blob[1000:1064] = bytes(b ^ 0xFF for b in blob[1000:1064])
    newest.write_bytes(bytes(blob))
    second = run_training(first_cfg)
    assert second.mlflow_run_id == first.mlflow_run_id and second.steps == 24     # one run, one curve
    assert _steps(second, "loss_d") == [*range(1, 12), *range(9, 17), *range(9, 25)]
    levels, alphas = _history(second, "level"), _history(second, "alpha")
    assert len(levels) == 24
    assert list(zip(levels, alphas)) == [(float(lv), pytest.approx(a)) for lv, a in expected]
    assert alphas[8] == pytest.approx(0.5) and levels[8] == 2     # first step after each resume
    # Three fade-ins, each 0 -> 1, through 4 resolutions.
    assert sorted(set(_history(second, "resolution"))) == [4, 8, 16, 32]
    for lv in (1, 2, 3):
        a = [al for level, al in zip(levels, alphas) if level == lv]
        assert a[0] == 0 and a[-1] == 1 and a == sorted(a) and any(0 < x < 1 for x in a)
    assert _history(second, "images_seen")[-1] == seen
    assert all(np.isfinite(_history(second, "loss_d")))
    assert checkpoint.load(run_dir / second.checkpoint.rsplit("/", 1)[-1])["images_seen"] == seen
    for key in ("skipped_shards", "shard_retries"):          # reported, and nothing went wrong
        assert set(_history(second, key)) == {0}, key

    # Grids show the current stage upscaled to 32 px: at step 8 (16 px) every 2x2 block is flat.
    client = MlflowClient(second.tracking_uri)
    grid = np.asarray(Image.open(client.download_artifacts(second.mlflow_run_id, "samples/step_0000008.png",
                                                           str(tmp_path))))
    assert grid.shape[:2] == (4 * 33 + 1, 4 * 33 + 1)        # 16 samples of 32 px, padding 1
    cell = grid[1:33, 1:33].astype(int)
    assert (cell[0::2, 0::2] == cell[1::2, 1::2]).all() and cell.std() > 0
