"""`ganforge submit` fails fast and ships the right files; storage_path URIs; no Ray cluster needed."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys

import pytest

from jobs import cli
from jobs import submit as S
from pipeline.engine import checkpoint
from pipeline.tracking import storage
from pipeline import config as C


def _closed_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_invalid_config_fails_before_the_network(capsys):
    # The address is closed too: the config error must come first and name the key.
    rc = cli.main(["submit", "smoke", "train.batch_size=0", "--address", f"http://127.0.0.1:{_closed_port()}"])
    err = capsys.readouterr().err
    assert rc == 2 and "train.batch_size" in err and "cannot reach" not in err


def test_unreachable_address_is_one_clear_line(capsys):
    url = f"http://127.0.0.1:{_closed_port()}"
    rc = cli.main(["submit", "smoke", "--address", url])
    err = capsys.readouterr().err.strip().splitlines()
    assert rc == 1 and len(err) == 1 and f"cannot reach the Ray dashboard at {url}" in err[0]


def test_address_is_required_and_checked(capsys, monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    assert cli.main(["jobs", "list"]) == 1
    assert "no cluster address" in capsys.readouterr().err
    assert cli.main(["jobs", "list", "--address", "ftp://h:1"]) == 1
    assert "expected http(s)://HOST:PORT" in capsys.readouterr().err


def test_token_is_read_by_rays_own_loader(tmp_path):
    # A fresh process: Ray's loader caches the token it found first.
    tok = tmp_path / "tok"
    tok.write_text("abc123")
    env = {k: v for k, v in os.environ.items() if k not in ("RAY_AUTH_TOKEN", "RAY_AUTH_MODE")}
    code = "import json; from jobs.submit import auth_headers; print(json.dumps(auth_headers()))"
    out = subprocess.run([sys.executable, "-c", code], env={**env, "RAY_AUTH_TOKEN_PATH": str(tok)},
                         capture_output=True, text=True, check=True).stdout
    assert json.loads(out.strip().splitlines()[-1]) == {"authorization": "Bearer abc123"}


def test_stage_ships_the_project_without_data_and_with_the_resolved_config(tmp_path):
    root = tmp_path / "proj"
    for rel in ["pyproject.toml", "jobs/cli.py", "pipeline/data/stream.py", "jobs/configs/smoke.yaml",
                ".venv/bin/python", ".git/HEAD", "data/x.tar", "shards/s.tar", "mlruns/0/m",
                "ray_results/r/x", "checkpoints/c/state.pt", "big.tar", ".ganforge/mlflow.db",
                "pipeline/__pycache__/a.pyc"]:
        (root / rel).parent.mkdir(parents=True, exist_ok=True)
        (root / rel).write_text("x")
    cfg = C.load("smoke", ["train.steps=3"])
    dest = S.stage(cfg, tmp_path / "out", root=root)
    shipped = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    assert shipped == [S.JOB_CONFIG, "jobs/cli.py", "jobs/configs/smoke.yaml", "pipeline/data/stream.py",
                       "pyproject.toml"]
    assert C.to_dict(C.load(str(dest / S.JOB_CONFIG))) == C.to_dict(cfg)


def test_stage_refuses_a_folder_that_is_not_a_checkout(tmp_path):
    with pytest.raises(S.SubmitError, match="not a ganforge checkout"):
        S.stage(C.load("smoke"), tmp_path / "out", root=tmp_path)


@pytest.mark.parametrize("value, problem", [
    ("ftp://host/x", "scheme 'ftp'"), ("s3://", "names no bucket"), ("file://rel/x", "absolute file://"),
])
def test_storage_path_schemes_are_checked_in_the_config(value, problem):
    with pytest.raises(C.ConfigError, match=f"train.storage_path: .*{problem}"):
        C.load("smoke", [f"train.storage_path={value}"])


def test_storage_path_normalizing():
    assert storage.normalize("s3://bucket/runs/") == "s3://bucket/runs"
    assert storage.normalize("gs://b/p") == "gs://b/p"
    assert storage.normalize("rel/dir") == os.path.abspath("rel/dir")
    assert storage.join("s3://b/p", "run", "x.json") == "s3://b/p/run/x.json"


def test_best_checkpoint_goes_to_a_uri_through_pyarrow(tmp_path):
    # The object-store path of _keep_best, on a file:// URI: meta.json last, loadable, and the
    # next run reads the best score back through the same filesystem layer.
    from pipeline.engine.best import best_so_far as _best_so_far, keep_best as _keep_best

    run = (tmp_path / "run").as_uri()
    state = lambda: {"step": 7, "G": {}, "D": {}}  # noqa: E731
    assert _best_so_far(run) == float("inf")
    assert _keep_best({"eval/fid": 3.0}, float("inf"), "fid", state, run) == 3.0
    assert _keep_best({"eval/fid": 5.0}, 3.0, "fid", state, run) == 3.0    # worse: kept
    assert checkpoint.load(tmp_path / "run" / "best_checkpoint")["step"] == 7
    assert _best_so_far(run) == 3.0
    assert not [p for p in (tmp_path / "run" / "best_checkpoint").iterdir() if p.name.endswith(".tmp")]
