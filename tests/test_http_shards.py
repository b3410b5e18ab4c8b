"""Shards streamed over HTTP into a 2-worker run, results written to a storage URI."""
from __future__ import annotations

import functools
import json
import threading
import uuid
from http.server import SimpleHTTPRequestHandler, ThreadingHTTPServer

import pytest
import yaml

from jobs.train import run_training
from pipeline import checkpoint, storage
from pipeline import config as C

pytestmark = pytest.mark.slow


class _Quiet(SimpleHTTPRequestHandler):
    served: list[str] = []

    def log_message(self, fmt, *args):   # count requests instead of printing them
        self.served.append(self.path)


@pytest.fixture
def http_shards(smoke_shards):
    server = ThreadingHTTPServer(("127.0.0.1", 0), functools.partial(_Quiet, directory=str(smoke_shards)))
    t = threading.Thread(target=server.serve_forever, daemon=True)
    t.start()
    n = len(json.loads((smoke_shards / "manifest.json").read_text())["shards"])
    yield f"http://127.0.0.1:{server.server_address[1]}/shard-{{000000..{n - 1:06d}}}.tar", _Quiet.served
    server.shutdown()
    server.server_close()


def test_two_workers_train_from_http_shards_into_a_storage_uri(ray_session, http_shards, tmp_path):
    url, served = http_shards
    store = (tmp_path / "bucket").as_uri()          # file:// takes the same pyarrow.fs path as s3://
    name = f"http-{uuid.uuid4().hex[:8]}"
    cfg = C.load("smoke", [f"data.shards={url}", f"train.storage_path={store}", f"train.run_name={name}",
                           "tracking.register=false", "tracking.log_checkpoint=false", "train.sample_every=0"])
    s = run_training(cfg)
    assert s.steps == 8
    assert any(p.startswith("/shard-") for p in served)      # the workers really read over HTTP
    assert s.run_dir == f"{store}/{name}"
    assert yaml.safe_load(storage.read_text(f"{s.run_dir}/resolved_config.yaml"))["data"]["shards"] == url
    assert json.loads(storage.read_text(f"{s.run_dir}/ganforge_run.json"))["mlflow_run_id"] == s.mlflow_run_id
    state = checkpoint.load(tmp_path / "bucket" / name / s.checkpoint.rsplit("/", 1)[-1])
    assert state["step"] == 8 and len(state["data_positions"]) == 2
