"""`ganforge submit` against a real Ray head started here with token auth, then stopped (only it)."""
from __future__ import annotations

import os
import secrets
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import pytest
import requests
import yaml

from pipeline.engine import checkpoint
from pipeline import config as C
from proc_session import stop_session

pytestmark = pytest.mark.slow
BIN = Path(sys.executable).parent


def _free_ports(n: int) -> list[int]:
    socks = [socket.socket() for _ in range(n)]
    try:
        for s in socks:
            s.bind(("127.0.0.1", 0))
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _client_env(token_file: Path) -> dict:
    env = {**os.environ, "RAY_AUTH_TOKEN_PATH": str(token_file), "PATH": f"{BIN}:{os.environ['PATH']}"}
    for k in ("RAY_AUTH_TOKEN", "RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_API_SERVER_ADDRESS"):
        env.pop(k, None)
    return env


@pytest.fixture(scope="module")
def ray_head(tmp_path_factory):
    """`ray start --head --block` on 127.0.0.1 with token auth, its own temp dir and free ports,
    in its own session; yields (dashboard URL, token file, workdir)."""
    work = tmp_path_factory.mktemp("head")
    token = work / "token"
    token.write_text(secrets.token_hex(32))
    ray_tmp = tempfile.mkdtemp(prefix="rhd", dir="/tmp")   # short: socket paths must stay < 107 chars
    gcs, dash, client, agent = _free_ports(4)
    # The job's driver inherits this env: it finds `ganforge` on PATH (as on a cluster node where
    # it is installed) and writes under this GANFORGE_HOME, never the test session's.
    env = {**_client_env(token), "RAY_AUTH_MODE": "token", "RAY_TMPDIR": ray_tmp,
           "GANFORGE_HOME": str(work / "home")}
    log = open(work / "head.log", "wb")
    proc = subprocess.Popen(
        [str(BIN / "ray"), "start", "--head", "--block", "--node-ip-address", "127.0.0.1",
         "--port", str(gcs), "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
         "--include-dashboard", "true", "--ray-client-server-port", str(client),
         "--dashboard-agent-listen-port", str(agent), "--num-cpus", "2", "--disable-usage-stats"],
        env=env, stdout=log, stderr=subprocess.STDOUT, start_new_session=True)
    url = f"http://127.0.0.1:{dash}"
    try:
        auth = {"Authorization": f"Bearer {token.read_text()}"}
        deadline = time.monotonic() + 120
        while True:
            assert proc.poll() is None, (work / "head.log").read_text()[-3000:]
            try:
                if requests.get(f"{url}/api/jobs/", headers=auth, timeout=2).status_code == 200:
                    break
            except requests.RequestException:
                pass
            assert time.monotonic() < deadline, "Ray head not ready after 120 s"
            time.sleep(0.5)
        yield url, token, work
    finally:
        left = stop_session(proc, grace_s=5)   # a throwaway head: no need for a slow clean exit
        log.close()
        shutil.rmtree(ray_tmp, ignore_errors=True)
        assert left == [], f"processes of the started head still alive: {left}"


def _ganforge(*args, env, timeout=400):
    return subprocess.run([str(BIN / "ganforge"), *args], env=env, capture_output=True, text=True,
                          timeout=timeout)


def test_jobs_api_refuses_requests_without_the_right_token(ray_head):
    url, token, _ = ray_head
    assert requests.get(f"{url}/api/jobs/", timeout=10).status_code == 401
    assert requests.get(f"{url}/api/jobs/", headers={"Authorization": "Bearer nope"}, timeout=10).status_code == 403


def test_submit_with_a_wrong_token_fails_before_upload(ray_head, tmp_path):
    url, token, _ = ray_head
    wrong = tmp_path / "wrong"
    wrong.write_text("0" * 64)
    auth = {"Authorization": f"Bearer {token.read_text()}"}
    before = requests.get(f"{url}/api/jobs/", headers=auth, timeout=10).json()
    r = _ganforge("submit", "smoke", "--address", url, env=_client_env(wrong), timeout=120)
    assert r.returncode == 1
    assert "refused the token from $RAY_AUTH_TOKEN_PATH" in r.stderr and url in r.stderr
    assert "Uploading package" not in r.stderr + r.stdout
    assert requests.get(f"{url}/api/jobs/", headers=auth, timeout=10).json() == before


def test_submit_follows_a_job_to_succeeded(ray_head, smoke_shards):
    url, token, work = ray_head
    env = _client_env(token)
    store = work / "results"
    # Shards by absolute path: the "cluster" shares this machine's disk (on a real one: URLs).
    over = [f"data.shards={smoke_shards}", "train.steps=4", "train.checkpoint_every=4", "train.log_every=2", "train.sample_every=0",
            "scaling.num_workers=1", "tracking.register=false", "tracking.log_checkpoint=false",
            "train.run_name=submitted", f"train.storage_path={store}",
            f"tracking.uri=sqlite:///{work / 'mlflow.db'}"]
    r = _ganforge("submit", "smoke", *over, "--address", url, "--follow", env=env)
    out = r.stdout + r.stderr
    assert r.returncode == 0, out[-4000:]
    job_id = next(ln.split()[-1] for ln in r.stdout.splitlines() if ln.startswith("submitted job "))
    assert f"job {job_id}: SUCCEEDED" in r.stdout
    # The job trained exactly the submitted config, from the shipped copy of the project.
    saved = yaml.safe_load((store / "submitted" / "resolved_config.yaml").read_text())
    assert saved == C.to_dict(C.load("smoke", over))
    assert checkpoint.load(next((store / "submitted").glob("checkpoint_2*")))["step"] == 4

    st = _ganforge("jobs", "status", job_id, "--address", url, env=env, timeout=120)
    assert st.returncode == 0 and f"{job_id}: SUCCEEDED" in st.stdout
    logs = _ganforge("jobs", "logs", job_id, "--address", url, env=env, timeout=120)
    assert "run submitted: 4 steps" in logs.stdout
    ls = _ganforge("jobs", "list", "--address", url, env=env, timeout=120)
    assert job_id in ls.stdout and "ganforge train ganforge_job.yaml" in ls.stdout
