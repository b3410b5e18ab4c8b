"""MLflow model registry for trained generators: register, promote, list, resolve, pull, load.

`models:/NAME@ALIAS` is the one handle. A version is the EMA generator of one run, logged into
that run as an MLflow model (pyfunc from code + torch.export pt2; see model_logging.py), with its
lineage in version tags (ganforge.*, eval.*), so `ganforge models` needs no downloads. Loading
goes through pipeline.families.generator.load_folder: sha256 checks, then weights_only=True.
"""
from __future__ import annotations

import contextlib
import io
import os
import re
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

import mlflow
import yaml
from mlflow.entities.model_registry import ModelVersion
from mlflow.exceptions import MlflowException
from mlflow.tracking import MlflowClient
from mlflow.tracking._tracking_service.utils import _use_tracking_uri

from pipeline import families
from pipeline.engine import checkpoint
from pipeline.tracking import runs as tracking
from pipeline.families import generator as GM
from pipeline.tracking.model_card import render_card
from pipeline.tracking.model_logging import log_generator

# Run metrics copied to version tags: the evaluator's "eval/..." keys (pipeline/metrics), and
# bare names of the usual scores from older or hand-logged runs.
EVAL_METRIC = re.compile(r"^(eval[./].+|(fid|kid|is|inception_score|coverage|density|precision|recall)"
                         r"([._/].*)?)$", re.I)
MODELS_URI = re.compile(r"^models:/(?P<name>[^/@]+)(?:@(?P<alias>[^/]+)|/(?P<version>\d+))?/?$")


class RegistryError(GM.GeneratorError):
    """One-line, user-facing: names the model, version, alias, run or server, and what to do."""


# ---------------------------------------------------------------- servers

def _check_reachable(uri: str, role: str) -> None:
    if not uri.startswith(("http://", "https://")):
        return
    import requests
    try:   # one quick probe instead of MLflow's minutes of retries against a dead port
        requests.get(uri.rstrip("/") + "/health", timeout=5)
    except requests.RequestException:
        var = "MLFLOW_TRACKING_URI" if role == "tracking" else "MLFLOW_REGISTRY_URI"
        raise RegistryError(f"cannot reach {role} server at {uri} (start `mlflow server` there, "
                            f"or point {var} elsewhere)") from None


@contextlib.contextmanager
def session(tracking_uri: str | None = None):
    """A client for the tracking URI (config, then $MLFLOW_TRACKING_URI, then local sqlite) and
    its registry ($MLFLOW_REGISTRY_URI or the same). MLflow's fluent calls inside see it too."""
    uri = tracking_uri or tracking.tracking_uri()
    _check_reachable(uri, "tracking")
    if os.environ.get("MLFLOW_REGISTRY_URI", uri) != uri:
        _check_reachable(os.environ["MLFLOW_REGISTRY_URI"], "registry")
    # Model.log and register_model read MLflow's global URI: set it for this block only, with
    # the private helper MLflow itself uses. Its restore unsets $MLFLOW_TRACKING_URI when no URI
    # had been set in code, so put the caller's variable back too.
    env = os.environ.get("MLFLOW_TRACKING_URI")
    try:
        with _use_tracking_uri(uri):
            yield MlflowClient(uri)
    finally:
        if env is not None:
            os.environ["MLFLOW_TRACKING_URI"] = env


def _missing(e: MlflowException) -> bool:
    return e.error_code in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND") or "not found" in str(e).lower()


# ---------------------------------------------------------------- lineage

def git_commit() -> str:
    root = Path(__file__).resolve().parents[2]
    try:
        out = subprocess.run(["git", "-C", str(root), "rev-parse", "HEAD"], capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() if out.returncode == 0 and out.stdout.strip() else "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def run_lineage(client: MlflowClient, run_id: str) -> dict[str, str]:
    """Version tags taken from the training run: data, code, latest eval metrics + protocol."""
    run = client.get_run(run_id)
    tags = run.data.tags
    out = {"ganforge.run_id": run_id,
           "ganforge.data_sha256": tags.get("ganforge.data_sha256") or "unknown",
           "ganforge.git_commit": (tags.get("ganforge.git_commit")
                                   or tags.get("mlflow.source.git.commit") or git_commit())}
    if any(a.path == "resolved_config.yaml" for a in client.list_artifacts(run_id)):
        out["ganforge.config_artifact"] = f"runs:/{run_id}/resolved_config.yaml"
    for k, v in run.data.metrics.items():       # latest value of each evaluation metric
        if EVAL_METRIC.match(k):
            out["eval." + re.sub(r"^eval[./]", "", k)] = f"{v:.6g}"
    out.update({k: v for k, v in tags.items() if k.startswith("eval.")})   # how they were computed
    return out


# ---------------------------------------------------------------- register

def register_checkpoint(ckpt_dir: str | Path, *, tracking_uri: str | None = None, run_id: str,
                        name: str | None = None, alias: str | None = None,
                        lineage: dict | None = None) -> ModelVersion:
    """Log the checkpoint's EMA generator into run `run_id` and register it as a new version of
    `name` (default ganforge-FAMILY). `lineage` adds tags; None reads them from the run."""
    state = checkpoint.load(ckpt_dir)
    if "config" not in state:
        raise RegistryError(f"{ckpt_dir}: checkpoint has no config; it was not written by ganforge training")
    gen = GM.from_state(state)          # the family's sample networks, EMA copies where kept
    cfg = gen.cfg
    name = name or f"ganforge-{families.name_of(cfg.model)}"
    with session(tracking_uri) as client:
        model_uri, m = log_generator(client, gen, cfg, step=gen.step, run_id=run_id)
        tags = {"ganforge.family": m["family"], "ganforge.config_hash": m["config_hash"],
                "ganforge.version": m["ganforge_version"], "ganforge.step": str(m["step"]),
                "ganforge.weights_sha256": m["files"][GM.WEIGHTS], "ganforge.resolution": str(m["resolution"]),
                "ganforge.num_classes": str(m["num_classes"]),
                **(run_lineage(client, run_id) if lineage is None else lineage)}
        # register_model prints "Registered model ... already exists" and "Created version ..."
        # straight to stderr; callers print the version they got. Anything else it says passes.
        with contextlib.redirect_stderr(io.StringIO()) as said:
            mv = mlflow.register_model(model_uri, name, tags={k: str(v) for k, v in tags.items()})
        for line in said.getvalue().splitlines():
            if line.strip() and not line.startswith(("Registered model", "Created version", "Successfully registered")):
                print(line, file=sys.stderr)
        if alias:
            client.set_registered_model_alias(name, alias, mv.version)
        return client.get_model_version(name, mv.version)


def register_run(run_id: str, name: str | None = None, alias: str | None = None,
                 tracking_uri: str | None = None) -> ModelVersion:
    """Register the generator in run `run_id`'s logged "checkpoint/" artifact."""
    with session(tracking_uri) as client, tempfile.TemporaryDirectory() as td:
        try:
            client.get_run(run_id)
        except MlflowException as e:
            if _missing(e):
                raise RegistryError(f"run {run_id}: not found at {mlflow.get_tracking_uri()} "
                                    "(check the id in the training summary or the MLflow UI)") from None
            raise
        if not any(a.path == "checkpoint/meta.json" for a in client.list_artifacts(run_id, "checkpoint")):
            raise RegistryError(f"run {run_id}: has no checkpoint/ artifact "
                                "(train with tracking.log_checkpoint=true)")
        ckpt = client.download_artifacts(run_id, "checkpoint", td)
        return register_checkpoint(ckpt, tracking_uri=mlflow.get_tracking_uri(), run_id=run_id,
                                   name=name, alias=alias, lineage=run_lineage(client, run_id))


# ---------------------------------------------------------------- promote, list

def _registered(client: MlflowClient, name: str, what: str | None = None):
    try:
        return client.get_registered_model(name)
    except MlflowException as e:
        if _missing(e):
            raise RegistryError(f"{what or name}: no registered model {name!r} (see `ganforge models`)") from None
        raise


def _versions(client: MlflowClient, name: str) -> list[ModelVersion]:
    return sorted(client.search_model_versions(f"name='{name}'"), key=lambda v: int(v.version))


def _version(client: MlflowClient, name: str, version: str | int, what: str | None = None) -> ModelVersion:
    _registered(client, name, what)
    try:
        return client.get_model_version(name, str(version))
    except MlflowException as e:
        if _missing(e):
            have = ", ".join(str(v.version) for v in _versions(client, name)) or "none"
            raise RegistryError(f"{what or name}: {name!r} has no version {version} (versions: {have}; "
                                f"see `ganforge models {name}`)") from None
        raise


def promote(name: str, version: str | int, alias: str, tracking_uri: str | None = None) -> ModelVersion:
    """Point `alias` (e.g. champion) at `version`; an alias names one version at a time."""
    with session(tracking_uri) as client:
        _version(client, name, version)
        client.set_registered_model_alias(name, alias, str(version))
        return client.get_model_version(name, str(version))


def remove_alias(name: str, alias: str, tracking_uri: str | None = None) -> None:
    with session(tracking_uri) as client:
        if alias not in _registered(client, name).aliases:
            raise RegistryError(f"models:/{name}@{alias}: no alias {alias!r} on {name!r} "
                                f"(see `ganforge models {name}`)")
        client.delete_registered_model_alias(name, alias)


def list_versions(name: str | None = None, tracking_uri: str | None = None) -> list[dict]:
    """One row per version: name, version, aliases, step, eval.* metrics, created (ms), run."""
    with session(tracking_uri) as client:
        names = [name] if name else sorted(m.name for m in client.search_registered_models())
        rows = []
        for n in names:
            by_version: dict[str, list[str]] = {}
            for a, v in _registered(client, n).aliases.items():   # search results omit aliases
                by_version.setdefault(str(v), []).append(a)
            for v in _versions(client, n):
                rows.append({"name": n, "version": str(v.version), "aliases": sorted(by_version.get(str(v.version), [])),
                             "step": v.tags.get("ganforge.step", ""), "created": v.creation_timestamp,
                             "metrics": {k: t for k, t in v.tags.items() if k.startswith("eval.")},
                             "run_id": v.run_id or ""})
        return rows


# ---------------------------------------------------------------- resolve, pull, load

def resolve(uri: str, client: MlflowClient) -> ModelVersion | None:
    """models:/NAME@ALIAS or models:/NAME/VERSION -> its version; other URIs -> None."""
    m = MODELS_URI.match(uri)
    if not m or (m["name"].startswith("m-") and not (m["alias"] or m["version"])):
        return None                               # runs:/..., a logged model id, a plain URI
    name = m["name"]
    if m["version"]:
        return _version(client, name, m["version"], uri)
    if not m["alias"]:
        raise RegistryError(f"{uri}: give an alias or a version, e.g. models:/{name}@champion or models:/{name}/1")
    rm = _registered(client, name, uri)
    if m["alias"] not in rm.aliases:
        have = ", ".join(sorted(rm.aliases)) or "none"
        raise RegistryError(f"{uri}: {name!r} has no alias {m['alias']!r} (aliases: {have}; set it with "
                            f"`ganforge promote {name} VERSION --alias {m['alias']}`)")
    return client.get_model_version(name, rm.aliases[m["alias"]])


def _generator_folder(local: Path, what: str) -> Path:
    if (local / GM.MANIFEST).is_file():
        return local
    spec = yaml.safe_load((local / "MLmodel").read_text()) if (local / "MLmodel").is_file() else {}
    art = (spec.get("flavors", {}).get("python_function", {}).get("artifacts") or {}).get("manifest")
    if not art:
        raise RegistryError(f"{what}: not a ganforge generator (no {GM.MANIFEST}); "
                            "register a run with `ganforge register RUN_ID` and use its models:/ URI")
    return (local / art["path"]).parent


@contextlib.contextmanager
def fetched(source: str | Path, tracking_uri: str | None = None, into: Path | None = None):
    """Yield (generator folder, ModelVersion or None) for a folder or a models:/ or runs:/ URI.
    Downloads go to `into` (or a temp folder removed afterwards)."""
    if Path(source).is_dir():
        yield _generator_folder(Path(source), str(source)), None
        return
    source = str(source)
    if not re.match(r"^[a-z][a-z0-9+.-]*:/", source):
        raise RegistryError(f"{source}: no such folder, and not a models:/ or runs:/ URI")
    with session(tracking_uri) as client, tempfile.TemporaryDirectory() as td:
        mv = resolve(source, client)
        try:
            local = mlflow.artifacts.download_artifacts(
                artifact_uri=f"models:/{mv.name}/{mv.version}" if mv else source, dst_path=str(into or td))
        except MlflowException as e:
            raise RegistryError(f"{source}: cannot download ({str(e).splitlines()[0][:200]}); check the "
                                "URI: models:/NAME@ALIAS (see `ganforge models`) or runs:/RUN_ID/generator") from None
        folder = _generator_folder(Path(local), source)
        want = mv.tags.get("ganforge.weights_sha256") if mv else None
        got = GM.read_manifest(folder, source)["files"].get(GM.WEIGHTS)
        if want and got != want:
            raise RegistryError(f"{source}: {GM.MANIFEST} lists weights sha256 {str(got)[:12]}... but the "
                                f"registry logged {want[:12]}...; the model was altered, register it again")
        yield folder, mv


def load_generator(source: str | Path, device: str = "cpu", tracking_uri: str | None = None) -> GM.Generator:
    """The one loader: a Generator from a models:/ or runs:/ URI, a pulled generator folder or a
    training checkpoint folder, sha256-checked and loaded with weights_only=True."""
    if Path(source).is_dir() and (Path(source) / checkpoint.META).is_file():
        return GM.from_checkpoint(source, device)
    with fetched(source, tracking_uri) as (folder, _):
        return GM.load_folder(folder, device, what=str(source))


def pull(source: str, out: str | Path, tracking_uri: str | None = None) -> Path:
    """Download weights, config, manifest and MODEL_CARD.md into `out`, which appears whole or
    not at all (built in a hidden sibling folder, then renamed)."""
    out = Path(out).resolve()
    if out.exists():
        raise RegistryError(f"{out}: already exists; choose another --out or remove it")
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.parent / f".{out.name}.partial-{os.getpid()}"
    try:
        with fetched(source, tracking_uri, into=tmp / "download") as (folder, mv):
            GM.load_folder(folder, what=source)       # checks hashes and weights_only loading
            stage = tmp / "out"
            stage.mkdir()
            for f in (GM.WEIGHTS, GM.CONFIG, GM.MANIFEST):
                shutil.copy2(folder / f, stage / f)
            (stage / "MODEL_CARD.md").write_text(render_card(GM.read_manifest(stage), mv, source, out))
        stage.rename(out)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return out
