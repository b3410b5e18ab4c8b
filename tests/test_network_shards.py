"""Remote shards under faults, against real servers on 127.0.0.1: an http.server that stalls,
cuts, answers 500 or ignores Range, and moto's S3 server. Reader and stream level, no Ray: each
case runs within a budget of seconds (timeouts of 0.5 s)."""
from __future__ import annotations

import logging
import threading
import time
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import config as C
from pipeline.data import DataError, RankStream, read_samples, resolve_shards, write_shards
from pipeline.data.netio import Budget, ShardUnreadable, Tally

FAST = Budget(connect_timeout_s=1.0, stall_timeout_s=0.5, retries=3, retry_backoff_s=0.05)
N_SHARDS, PER_SHARD = 2, 48


@pytest.fixture(scope="module")
def shards(tmp_path_factory) -> Path:
    """Two 48-sample PNG shards of noise (~150 KB each: incompressible, so a cut lands mid-shard)."""
    out = tmp_path_factory.mktemp("net_shards")
    rng = np.random.default_rng(0)
    samples = ((f"s{i:04d}", rng.integers(0, 256, (32, 32, 3), dtype=np.uint8), i % 10)
               for i in range(N_SHARDS * PER_SHARD))
    write_shards(samples, out, resolution=32, classes=[str(i) for i in range(10)], source="test",
                 shard_size=PER_SHARD)
    return out


class _Faulty(BaseHTTPRequestHandler):
    """Serves the shard folder honouring Range; `plan[name]` lists what successive GETs of a shard
    get: "ok", "stall" (half the body, then silence with the socket open), "cut" (half, then
    close), "500", "norange" (the whole file with 200, Range ignored). Past the list: "ok"."""
    protocol_version = "HTTP/1.1"
    root: Path
    plan: dict[str, list[str]] = {}
    seen: list[tuple[str, str | None]] = []     # (name, Range header) per GET
    release = threading.Event()                  # ends stalled handlers at teardown

    def log_message(self, *args):
        pass

    def do_GET(self):
        name = self.path.lstrip("/")
        self.seen.append((name, self.headers.get("Range")))
        path = self.root / name
        if not path.is_file():
            self.send_error(404)
            return
        todo = self.plan.get(name) or ["ok"]
        what = todo.pop(0) if todo else "ok"
        if what == "500":
            self.send_error(500)
            return
        data = path.read_bytes()
        start = 0
        rng = self.headers.get("Range")
        if rng and what != "norange":
            start = int(rng.split("=")[1].split("-")[0])
            self.send_response(206)
            self.send_header("Content-Range", f"bytes {start}-{len(data) - 1}/{len(data)}")
        else:
            self.send_response(200)
        body = data[start:]
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if what in ("stall", "cut"):
            self.wfile.write(body[:len(body) // 2])
            self.wfile.flush()
            if what == "stall":
                self.release.wait(30)
            self.close_connection = True
            return
        self.wfile.write(body)


@pytest.fixture
def server(shards):
    _Faulty.root, _Faulty.plan, _Faulty.seen = shards, {}, []
    _Faulty.release.clear()
    srv = ThreadingHTTPServer(("127.0.0.1", 0), _Faulty)
    srv.daemon_threads = True
    threading.Thread(target=srv.serve_forever, kwargs={"poll_interval": 0.05}, daemon=True).start()
    yield srv, f"http://127.0.0.1:{srv.server_address[1]}"
    _Faulty.release.set()
    srv.shutdown()
    srv.server_close()


def _local(shards, i=0):
    return [(k, m) for k, m in read_samples(str(shards / f"shard-{i:06d}.tar"))]


@pytest.mark.parametrize("faults", [["stall"], ["cut"], ["500", "500"], ["stall", "norange"], ["cut", "cut", "cut"]])
def test_faults_are_retried_and_resumed_with_every_sample_once(server, shards, faults):
    srv, base = server
    _Faulty.plan = {"shard-000000.tar": list(faults)}
    tally = Tally()
    t0 = time.monotonic()
    got = list(read_samples(f"{base}/shard-000000.tar", budget=FAST, tally=tally))
    assert time.monotonic() - t0 < 1 + len(faults) * (FAST.stall_timeout_s + 0.5)
    assert got == _local(shards)                       # every sample, once, in order, same bytes
    assert tally.retries == len([f for f in faults if f != "norange"])   # ignoring Range is no fault
    ranges = [r for name, r in _Faulty.seen]
    if faults[0] in ("stall", "cut"):                  # the retry asked for the rest only
        assert ranges[1] is not None and int(ranges[1].split("=")[1].rstrip("-")) > 0


def test_exhausted_retries_raise_naming_shard_cause_and_attempts(server):
    srv, base = server
    _Faulty.plan = {"shard-000000.tar": ["stall"] * 10}
    t0 = time.monotonic()
    with pytest.raises(ShardUnreadable) as e:
        list(read_samples(f"{base}/shard-000000.tar", budget=FAST))
    # 4 attempts of 0.5 s stall each, plus 0.05 + 0.1 + 0.2 s of backoff
    assert time.monotonic() - t0 < 4 * FAST.stall_timeout_s + 0.35 + 1.5
    msg = str(e.value)
    assert f"{base}/shard-000000.tar" in msg and "4 attempts" in msg and "stalled" in msg, msg


def test_404_fails_at_once_and_names_the_shard(server):
    srv, base = server
    t0 = time.monotonic()
    with pytest.raises(DataError, match=r"shard .*/missing\.tar does not exist \(HTTP 404"):
        list(read_samples(f"{base}/missing.tar", budget=FAST))
    assert time.monotonic() - t0 < 1 and len(_Faulty.seen) == 1   # not retried


def test_nothing_listening_is_retried_then_unreadable():
    import socket

    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    with pytest.raises(ShardUnreadable, match=r"after 2 attempts .*ConnectionRefused"):
        list(read_samples(f"http://127.0.0.1:{port}/x.tar", budget=Budget(retries=1, retry_backoff_s=0.01)))


def _stream(urls, policy, workers=0):
    return RankStream(urls, rank=0, world_size=1, batch_size=16, resolution=32, loader_workers=workers,
                      seed=0, shuffle_buffer=0, bad_samples=policy, budget=FAST)


def _batches(stream, n):
    out = [next(stream) for _ in range(n)]
    stream.close()
    return out


def test_stream_from_a_faulty_server_matches_local_files_in_a_loader_worker(server, shards):
    """A stall and a cut, read in a DataLoader worker process: the batches are those of the
    local files, byte for byte, and the retries reach the main process as counts."""
    srv, base = server
    _Faulty.plan = {"shard-000000.tar": ["stall"], "shard-000001.tar": ["cut"]}
    n = N_SHARDS * PER_SHARD // 16                     # one epoch
    local = _batches(_stream(resolve_shards(str(shards))[0], "convert"), n)
    remote = _batches(_stream(resolve_shards(f"{base}/shard-{{000000..000001}}.tar")[0], "convert", 1), n)
    for a, b in zip(local, remote):
        assert torch.equal(a.images, b.images) and torch.equal(a.labels, b.labels)
    assert sum(b.n_retries for b in remote) == 2 and sum(b.n_skipped_shards for b in remote) == 0


def test_unreadable_shard_is_skipped_counted_and_logged_or_strict_fails(server, caplog):
    srv, base = server
    urls = resolve_shards(f"{base}/shard-{{000000..000001}}.tar")[0]
    _Faulty.plan = {"shard-000001.tar": ["stall"] * 20}
    t0 = time.monotonic()
    with caplog.at_level(logging.WARNING, logger="pipeline.data.stream"):
        batches = _batches(_stream(urls, "skip"), 2 * PER_SHARD // 16)   # two passes' worth
    assert time.monotonic() - t0 < 2 * (4 * FAST.stall_timeout_s + 0.35) + 3
    assert sum(b.n_skipped_shards for b in batches) >= 1
    assert sum(b.n_retries for b in batches) >= FAST.retries
    warning = next(r.getMessage() for r in caplog.records if "skipped the rest" in r.getMessage())
    assert "shard-000001.tar" in warning and "4 attempts" in warning and "stalled" in warning, warning

    _Faulty.plan = {"shard-000001.tar": ["stall"] * 20}
    t0 = time.monotonic()
    with pytest.raises(DataError) as e:
        _batches(_stream(urls, "strict", 1), 2 * PER_SHARD // 16)
    assert time.monotonic() - t0 < 4 * FAST.stall_timeout_s + 0.35 + 5
    line = str(e.value)
    assert "\n" not in line and "shard-000001.tar" in line and "4 attempts" in line and "stalled" in line, line


def test_budget_config_keys_are_validated():
    d = C.DataConfig()
    assert (d.connect_timeout_s, d.stall_timeout_s, d.retries, d.retry_backoff_s) == (
        Budget().connect_timeout_s, Budget().stall_timeout_s, Budget().retries, Budget().retry_backoff_s)
    for key, bad in (("stall_timeout_s", 0), ("connect_timeout_s", -1), ("retries", -1), ("retry_backoff_s", -0.5)):
        with pytest.raises(C.ConfigError, match=rf"^data\.{key}:"):
            C.DataConfig(**{key: bad})


# ---------------------------------------------------------------- S3 (moto's server)

@pytest.fixture(scope="module")
def s3(shards):
    """moto's S3 server on 127.0.0.1 holding the shards under s3://ganforge-test/net/."""
    moto_server = pytest.importorskip("moto.server")
    import pyarrow.fs as pafs

    srv = moto_server.ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    srv.start()
    host, port = srv.get_host_and_port()
    fs = pafs.S3FileSystem(access_key="testing", secret_key="testing", region="us-east-1",
                           endpoint_override=f"http://{host}:{port}", allow_bucket_creation=True)
    fs.create_dir("ganforge-test")
    for p in sorted(shards.glob("*.tar")):
        with fs.open_output_stream(f"ganforge-test/net/{p.name}") as f:
            f.write(p.read_bytes())
    yield f"http://{host}:{port}"
    srv.stop()


def test_s3_shards_with_credentials_and_endpoint_from_the_environment(s3, shards, monkeypatch):
    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3}.items():
        monkeypatch.setenv(k, v)
    urls, manifest = resolve_shards("s3://ganforge-test/net/shard-{000000..000001}.tar")
    assert urls == [f"s3://ganforge-test/net/shard-{i:06d}.tar" for i in range(2)] and manifest is None
    assert list(read_samples(urls[1], budget=FAST)) == _local(shards, 1)
    with pytest.raises(DataError, match=r"shard s3://ganforge-test/net/nope\.tar does not exist"):
        list(read_samples("s3://ganforge-test/net/nope.tar", budget=FAST))
    # The same through a loader worker process (forked after this process used S3).
    n = PER_SHARD // 16
    remote = _batches(_stream(urls[:1], "strict", 1), n)
    local = _batches(_stream([str(shards / "shard-000000.tar")], "strict"), n)
    assert all(torch.equal(a.images, b.images) for a, b in zip(local, remote))


def test_s3_read_error_mid_shard_is_retried_and_resumed(s3, shards, monkeypatch):
    """An object-store I/O error mid-read: the reader reopens the object, seeks, goes on."""
    from pipeline.data import netio

    for k, v in {"AWS_ACCESS_KEY_ID": "testing", "AWS_SECRET_ACCESS_KEY": "testing",
                 "AWS_DEFAULT_REGION": "us-east-1", "AWS_ENDPOINT_URL": s3}.items():
        monkeypatch.setenv(k, v)
    opened = []
    real_open = netio._Store.open

    def flaky_open(self, pos):
        f, size, drop = real_open(self, pos)
        opened.append(pos)
        if len(opened) > 1:
            return f, size, drop

        class Breaks:  # hands out 100 KB, then fails like a reset connection
            def readinto(self, b):
                if f.tell() >= 100_000:
                    raise OSError("AWS Error NETWORK_CONNECTION during GetObject operation: reset")
                return f.readinto(memoryview(b)[:100_000 - f.tell()])

            def close(self):
                f.close()
        return Breaks(), size, drop

    monkeypatch.setattr(netio._Store, "open", flaky_open)
    tally = Tally()
    got = list(read_samples("s3://ganforge-test/net/shard-000000.tar", budget=FAST, tally=tally))
    assert got == _local(shards) and tally.retries == 1 and opened == [0, 100_000]
