"""`ganforge submit`: run the same `ganforge train` as a Ray Job on a cluster.

The order is the point: the config is validated here first, then the address and the token are
checked with one authenticated request, and only then is the project packaged and uploaded. So a
typo, a closed tunnel or a stale token costs a second, not an upload.
"""
from __future__ import annotations

import os
import shutil
import socket
import tempfile
import time
from pathlib import Path
from urllib.parse import urlparse

from pipeline import config as C

# Never shipped: environments, local results and data (shards are read from storage or URLs).
# Folder names count at the checkout's top only: pipeline/data/ is code, ./data is shards.
ROOT_EXCLUDES = (".venv", ".ganforge", "mlruns", "mlartifacts", "data", "shards", "ray_results",
                 "checkpoints", ".git")
ANYWHERE = ("*.tar", "__pycache__", "*.egg-info", ".pytest_cache")
# The same in gitignore syntax, for Ray's runtime_env (a leading / anchors at the top).
EXCLUDES = tuple(f"/{n}" for n in ROOT_EXCLUDES) + ANYWHERE
JOB_CONFIG = "ganforge_job.yaml"   # the resolved config, at the root of the shipped folder
PROJECT_ROOT = C.PRESET_DIR.parent.parent


class SubmitError(RuntimeError):
    """The cluster cannot take the job; the message names the address or the token source."""


def default_address() -> str | None:
    # The variable Ray's own `ray job` CLI reads.
    return os.environ.get("RAY_API_SERVER_ADDRESS")


def _token_source() -> str:
    if os.environ.get("RAY_AUTH_TOKEN"):
        return "$RAY_AUTH_TOKEN"
    if os.environ.get("RAY_AUTH_TOKEN_PATH"):
        return f"$RAY_AUTH_TOKEN_PATH ({os.environ['RAY_AUTH_TOKEN_PATH']})"
    return "~/.ray/auth_token"


def auth_headers() -> dict[str, str]:
    """The Authorization header from Ray's own token loader: $RAY_AUTH_TOKEN, the file named by
    $RAY_AUTH_TOKEN_PATH, or ~/.ray/auth_token. It is sent whether or not RAY_AUTH_MODE is set on
    this machine: the mode that matters is the cluster's."""
    from ray._raylet import AuthenticationTokenLoader
    from ray.exceptions import AuthenticationError

    try:
        return dict(AuthenticationTokenLoader.instance().get_token_for_http_header(ignore_auth_mode=True))
    except AuthenticationError as e:
        raise SubmitError(f"cannot read the Ray auth token from {_token_source()}: {e}") from None


def connect(address: str | None):
    """A JobSubmissionClient whose address answered and accepted our token."""
    from ray.exceptions import AuthenticationError
    from ray.job_submission import JobSubmissionClient

    address = address or default_address()
    if not address:
        raise SubmitError("no cluster address: pass --address http://HOST:8265 "
                          "(or set RAY_API_SERVER_ADDRESS)")
    if "://" not in address:
        address = f"http://{address}"
    u = urlparse(address)
    if u.scheme not in ("http", "https") or not u.hostname:
        raise SubmitError(f"--address {address!r}: expected http(s)://HOST:PORT of the Ray dashboard")
    # requests has no default timeout: a dropped tunnel would hang here instead of failing.
    try:
        socket.create_connection((u.hostname, u.port or (443 if u.scheme == "https" else 80)), timeout=5).close()
    except OSError as e:
        raise SubmitError(f"cannot reach the Ray dashboard at {address} ({e.strerror or e}); "
                          f"is the cluster up and the SSH tunnel / port-forward open?") from None
    headers = auth_headers()
    try:
        client = JobSubmissionClient(address, headers=headers)
        client.list_jobs()    # /api/version needs no token; this request does
    except AuthenticationError:
        what = f"the token from {_token_source()}" if headers else "no token (none found)"
        raise SubmitError(f"{address} refused {what}; get the cluster's token with "
                          f"`ray get-auth-token` on the head and set RAY_AUTH_TOKEN") from None
    except (ConnectionError, RuntimeError) as e:
        raise SubmitError(f"{address} is not a working Ray Jobs API: {e}") from None
    return client


def stage(cfg: C.Config, dest: Path, root: Path = PROJECT_ROOT) -> Path:
    """Copy the project (without EXCLUDES) to `dest` and write the resolved config beside it."""
    if not (root / "pyproject.toml").is_file():
        raise SubmitError(f"{root} is not a ganforge checkout; `ganforge submit` ships the project "
                          f"folder, so install it editable (pip install -e .)")
    anywhere = shutil.ignore_patterns(*ANYWHERE)

    def ignore(folder, names):
        top = set(ROOT_EXCLUDES) & set(names) if Path(folder) == root else set()
        return top | anywhere(folder, names)

    shutil.copytree(root, dest, ignore=ignore, dirs_exist_ok=True)
    (dest / JOB_CONFIG).write_text(C.dump_yaml(cfg))
    return dest


AGENT_WAIT_S = 60        # how long a just-started head's job agent may take to accept jobs


def submit(cfg: C.Config, address: str | None, *, verbose: bool = False) -> tuple[object, str]:
    """Validated config -> (client, job id). Nothing is uploaded unless `connect` succeeded.
    `verbose` runs the job's `ganforge train` with --verbose."""
    client = connect(address)
    with tempfile.TemporaryDirectory(prefix="ganforge-job-") as td:
        work = stage(cfg, Path(td) / "project")
        deadline = time.monotonic() + AGENT_WAIT_S
        while True:
            try:
                job_id = client.submit_job(
                    # The same command a person runs; the shipped folder is the job's working
                    # directory and first on its PYTHONPATH, so the job runs this checkout's code.
                    entrypoint=f"ganforge train {JOB_CONFIG}" + (" --verbose" if verbose else ""),
                    runtime_env={"working_dir": str(work), "excludes": list(EXCLUDES)},
                    metadata={"ganforge.preset": cfg.preset, "ganforge.config_hash": C.config_hash(cfg)})
                break
            except RuntimeError as e:
                # A head that has just started answers 500 "No available agent to submit job"
                # until its job agent registers (seconds; longer on a loaded machine).
                if "No available agent" not in str(e):
                    raise
                if time.monotonic() > deadline:
                    raise RuntimeError(f"{address or 'the cluster'}: its job agent did not come up "
                                       f"within {AGENT_WAIT_S} s (is the head still starting?)") from None
                time.sleep(2)
    return client, job_id


def notes(cfg: C.Config) -> list[str]:
    """What would stay on a cluster node instead of shared storage."""
    out = []
    if cfg.train.storage_path is None:
        out.append("train.storage_path is unset: checkpoints stay on the node that runs the job; "
                   "set train.storage_path=s3://BUCKET/prefix (or a shared path)")
    if cfg.tracking.uri is None:
        out.append("tracking.uri is unset: MLflow runs stay in a sqlite file on that node; "
                   "set tracking.uri=http://MLFLOW_HOST:5000")
    return out
