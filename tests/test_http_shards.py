"""Shards streamed over HTTP and from an S3-compatible server (moto) into a 2-worker run, results
written to a storage URI. The run is BigGAN-deep at 32 px, which is also that family's 2-worker
forward/backward check (one Ray Train fit serves all three: each fit costs the suite ~30 s on 2
cores). Faults (stalls, cuts, 5xx) are tested without Ray in test_network_shards.py."""
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
        with fs.open_output_stream(f"shards/biggan32/{name}") as f:
            f.write((shards32 / name).read_bytes())
    yield (f"s3://testing:testing@shards/biggan32/shard-{{{len(names) // 2:06d}..{len(names) - 1:06d}}}.tar"
           f"?scheme=http&endpoint_override={host}:{port}&region=us-east-1")
    server.stop()


def test_two_workers_train_from_http_and_s3_shards_into_a_storage_uri(ray_session, http_shards, s3_shards,
                                                                       tmp_path):
    http_url, served = http_shards
    url = f"{http_url}::{s3_shards}"     # each rank reads urls[rank::2]: one http and one s3 shard
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
    for key in ("skipped_shards", "shard_retries"):          # reported, and nothing went wrong
        assert [m.value for m in client.get_metric_history(s.mlflow_run_id, key)] == [0, 0], key
    for key in ("loss_d", "loss_g", "ortho"):
        values = [m.value for m in client.get_metric_history(s.mlflow_run_id, key)]
        assert len(values) == 2 and all(math.isfinite(v) for v in values), key
