"""Shared fixtures: one real local Ray per session, an isolated GANFORGE_HOME, smoke shards."""
from __future__ import annotations

import os
from pathlib import Path

import pytest

# Before anything starts Ray: faster controller polling, no preemption watcher noise, and no
# telemetry files in the user's home.
os.environ.setdefault("RAY_TRAIN_HEALTH_CHECK_INTERVAL_S", "0.1")
os.environ.setdefault("RAY_TRAIN_ENABLE_PREEMPTION_WATCHER", "0")
os.environ.setdefault("MLFLOW_DISABLE_TELEMETRY", "true")


# The longest files first: under `pytest -n 2 --dist loadfile` (the README's command) each xdist
# worker takes the next file when it is free, so the two finish together instead of one running
# the Tune studies alone at the end. Measured per file on 2 cores, in seconds.
LONGEST_FIRST = ["test_tune.py",            # ~290: the Train-trial resume study, two in-process ones
                 "test_families.py",        # ~190: two fits over every family
                 "test_node_loss.py",       # ~110: its own 3-node cluster
                 "test_submit_head.py",     # ~130: its own head and a submitted job
                 "test_registry_server.py",  # ~115: ganforge train on a pty, then the registry flow
                 "test_progan_train.py",    # ~100: a run with a restart, then a rerun
                 "test_compile.py",         # ~80 cold (inductor compiles in C++), ~15 warm
                 "test_gpu_suite.py"]       # ~45: bench/gpu_suite.sh --tiny in a subprocess


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))   # stable: file order kept otherwise


@pytest.fixture(scope="session", autouse=True)
def ganforge_home(tmp_path_factory) -> Path:
    home = tmp_path_factory.mktemp("ganforge_home")
    os.environ["GANFORGE_HOME"] = str(home)
    os.environ.pop("MLFLOW_TRACKING_URI", None)
    return home


@pytest.fixture(scope="session", autouse=True)
def small_extractor(ganforge_home):
    """The offline extractor at its default path, fitted once per session in 80 steps (~3 s;
    glyph accuracy > 0.8) instead of the 400 the first in-loop evaluation would fit (~15 s):
    the evaluation tests check plumbing and agreement, not the extractor's quality."""
    from pipeline.evaluation.extractors import small

    path = small.default_path()
    meta = small.fit(path, steps=80, seed=0, n_train=1536, log=None)
    return path, meta


@pytest.fixture(scope="session")
def ray_session():
    import socket

    import ray

    # Ray Train's placement-group cleaner finds its cluster with the state API, which scans for
    # "the" local Ray and fails on a host running several; workers inherit this address instead.
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    before = os.environ.get("RAY_API_SERVER_ADDRESS")
    os.environ["RAY_API_SERVER_ADDRESS"] = f"http://127.0.0.1:{port}"
    # 4 logical CPUs on 2 cores: Tune trials and their Train workers fit side by side.
    ray.init(num_cpus=4, include_dashboard=True, dashboard_port=port, logging_level="WARNING")
    # Only this cluster's processes need it: a subprocess starting its own Ray must not inherit it.
    os.environ.pop("RAY_API_SERVER_ADDRESS")
    if before is not None:
        os.environ["RAY_API_SERVER_ADDRESS"] = before
    yield ray
    ray.shutdown()


@pytest.fixture(scope="session")
def smoke_shards(ganforge_home) -> Path:
    """The smoke preset's built-in shards (written once per session)."""
    from jobs.train import builtin_shards
    from pipeline import config as C

    return builtin_shards(C.load("smoke"))


@pytest.fixture(scope="session")
def mlflow_server(tmp_path_factory):
    """A real `mlflow server` on 127.0.0.1 (the lean form from PLATFORM_NOTES); yields its URI.
    Own process group, so teardown stops the server and its worker together."""
    import signal
    import socket
    import subprocess
    import sys
    import time
    import urllib.request

    root = tmp_path_factory.mktemp("mlflow_server")
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    uri = f"http://127.0.0.1:{port}"
    log = open(root / "server.log", "wb")
    proc = subprocess.Popen(
        [str(Path(sys.executable).with_name("mlflow")), "server",
         "--backend-store-uri", f"sqlite:///{root / 'mlflow.db'}",
         "--artifacts-destination", str(root / "artifacts"),
         "--host", "127.0.0.1", "--port", str(port), "--workers", "1"],
        env={**os.environ, "MLFLOW_SERVER_ENABLE_JOB_EXECUTION": "false"},
        stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    try:
        deadline = time.monotonic() + 120
        while True:
            if proc.poll() is not None:
                raise RuntimeError(f"mlflow server exited with {proc.returncode}; see {root / 'server.log'}")
            try:
                with urllib.request.urlopen(f"{uri}/health", timeout=2) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError(f"mlflow server not healthy after 120 s; see {root / 'server.log'}")
            time.sleep(0.3)
        yield uri
    finally:
        try:
            os.killpg(proc.pid, signal.SIGTERM)
            proc.wait(timeout=15)
        except ProcessLookupError:
            pass
        except subprocess.TimeoutExpired:
            os.killpg(proc.pid, signal.SIGKILL)
            proc.wait()
        log.close()


@pytest.fixture
def one_torch_thread():
    """Tiny convolutions: a second oneDNN thread on 2 busy cores costs ~6x, never gains."""
    import torch

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(n)


@pytest.fixture(scope="session")
def tiny_shards16(tmp_path_factory) -> dict:
    """64 ShapeStack images at 16 px in 2 shards, as the engine's data dict (urls, counts)."""
    from pipeline.data import resolve_shards
    from pipeline.data.datasets import build_builtin

    out = tmp_path_factory.mktemp("tiny") / "shapestack-16"
    build_builtin("shapestack", out, resolution=16, n=64, shard_size=32, seed=0)
    return {"urls": resolve_shards(str(out))[0], "counts": None}


@pytest.fixture(scope="session")
def family_shards(smoke_shards, ganforge_home) -> dict:
    """Built-in shards by name at 16 px: the smoke shards as shapestack, and small sets of the
    translation layouts (shapepairs, shapeunpaired, shapestyles) and of captioned shapestack,
    96 samples in 6 shards each."""
    from pipeline.data.datasets import build_builtin

    out = {"shapestack": smoke_shards}
    for name in ("shapepairs", "shapeunpaired", "shapestyles", "shapecaptions"):
        out[name] = ganforge_home / "test-data" / f"{name}-16"
        build_builtin(name, out[name], resolution=16, n=96, shard_size=16, seed=5)
    return out
