"""Shards streamed over HTTP into a 2-worker run, results written to a storage URI. The run is
BigGAN-deep at 32 px, which is also that family's 2-worker forward/backward check (one Ray Train
fit serves both: each fit costs the suite ~30 s on 2 cores)."""
from __future__ import annotations

import functools
import json
import math
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml
from mlflow.tracking import MlflowClient

from jobs.train import builtin_shards, run_training
from pipeline.engine import checkpoint
from pipeline.tracking import storage
from pipeline import config as C

pytestmark = pytest.mark.slow


class _Quiet(SimpleHTTPRequestHandler):
    served: list[str] = []

    def log_message(self, fmt, *args):   # count requests instead of printing them
        self.served.append(self.path)


@pytest.fixture(scope="module")
def shards32(ganforge_home):
    return builtin_shards(C.load("biggan32_cpu"))


@pytest.fixture
def http_shards(shards32):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(shards32)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    n = len(json.loads((shards32 / "manifest.json").read_text())["shards"])
    yield f"http://127.0.0.1:{server.server_address[1]}/shard-{{000000..{n - 1:06d}}}.tar", _Quiet.served
    server.shutdown()
    server.server_close()


def test_two_workers_train_from_http_shards_into_a_storage_uri(ray_session, http_shards, tmp_path):
    url, served = http_shards
    store = (tmp_path / "bucket").as_uri()          # file:// takes the same pyarrow.fs path as s3://
    name = f"http-{uuid.uuid4().hex[:8]}"
    cfg = C.load("biggan32_cpu", [f"data.shards={url}", f"train.storage_path={store}", f"train.run_name={name}",
                                  "model.name=biggan_deep", "model.ch=8", "train.steps=4", "train.batch_size=4",
                                  "train.log_every=2", "train.checkpoint_every=4", "train.sample_every=0",
                                  "eval.every=0", "tracking.register=false", "tracking.log_checkpoint=false"])
    s = run_training(cfg)
    assert s.steps == 4
    assert any(p.startswith("/shard-") for p in served)      # the workers really read over HTTP
    assert s.run_dir == f"{store}/{name}"
    assert yaml.safe_load(storage.read_text(f"{s.run_dir}/resolved_config.yaml"))["data"]["shards"] == url
    assert json.loads(storage.read_text(f"{s.run_dir}/ganforge_run.json"))["mlflow_run_id"] == s.mlflow_run_id
    state = checkpoint.load(tmp_path / "bucket" / name / s.checkpoint.rsplit("/", 1)[-1])
    assert state["step"] == 4 and len(state["data_positions"]) == 2
    client = MlflowClient(s.tracking_uri)
    for key in ("loss_d", "loss_g", "ortho"):
        values = [m.value for m in client.get_metric_history(s.mlflow_run_id, key)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
