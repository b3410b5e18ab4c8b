"""The `ganforge` command line (click): one group, one error policy, k=v overrides anywhere.

Exit codes: 0 ok, 2 usage or config error, 1 runtime failure, 130 Ctrl-C; a failure is one
stderr line `ganforge COMMAND: message`. Nothing here trains: --dry-run, or the launchers
(run_training, run_study, submit) replaced by recorders.
"""
from __future__ import annotations

import subprocess
import sys
import types
from pathlib import Path

import pytest
import yaml

from jobs import cli
from jobs.train import TrainingError
from pipeline import config as C
from pipeline.data.errors import DataError
from pipeline.engine.checkpoint import CheckpointError
from pipeline.families.generator import GeneratorError

ROOT = Path(__file__).resolve().parents[1]
COMMANDS = ["train", "quickstart", "shards", "register", "promote", "models", "pull", "sample", "translate", "encode",
            "fit-extractor", "evaluate", "tune", "submit", "jobs"]


def run(capsys, *argv: str):
    """`ganforge ARGV` in this process -> (exit code, stdout, stderr lines)."""
    capsys.readouterr()
    rc = cli.main(list(argv))
    out, err = capsys.readouterr()
    return types.SimpleNamespace(rc=rc, out=out, err=err.strip().splitlines())


def one_line(r, prefix: str, *needles: str) -> str:
    assert len(r.err) == 1, r.err
    line = r.err[0]
    assert line.startswith(prefix), line
    for n in needles:
        assert n in line, line
    return line


# --- help ---------------------------------------------------------------------------------------

def test_help_lists_every_command_on_one_line(capsys):
    r = run(capsys, "--help")
    assert r.rc == 0
    listing = r.out.split("Commands:")[1].strip().splitlines()
    assert [ln.split()[0] for ln in listing] == COMMANDS      # one line each, in this order
    assert all(len(ln.split(maxsplit=1)) == 2 for ln in listing)


@pytest.mark.parametrize("command", COMMANDS)
def test_each_command_has_help(capsys, command):
    r = run(capsys, command, "--help")
    assert r.rc == 0 and f"Usage: ganforge {command}" in r.out


def test_verbose_flag_on_the_launchers(capsys):
    for command in ("train", "quickstart", "tune", "submit"):
        out = run(capsys, command, "-h").out
        assert "-v, --verbose" in out and "Ray's own log lines" in out, command


def test_help_and_dry_run_import_neither_ray_nor_mlflow():
    code = ("import sys; from jobs import cli\n"
            "assert cli.main(['--help']) == 0\n"
            "assert 'torch' not in sys.modules, 'help imported torch'\n"
            "assert cli.main(['train', 'smoke', '--dry-run', 'train.steps=6']) == 0\n"
            "heavy = [m for m in ('ray', 'mlflow') if m in sys.modules]\n"
            "assert not heavy, heavy\n")
    p = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr


# --- usage errors: 2 ----------------------------------------------------------------------------

@pytest.mark.parametrize("argv, where, needle", [
    (["train", "--nope"], "ganforge train: ", "--nope"),                      # unknown option
    (["train", "smoke", "--dry-run", "--nope"], "ganforge train: ", "--nope"),
    (["train"], "ganforge train: ", "CONFIG"),                                # missing argument
    (["sample", "/x"], "ganforge sample: ", "--out"),                         # missing required option
    (["sample", "/x", "--out", "g.png", "--n", "many"], "ganforge sample: ", "--n"),   # bad type
    (["tune", "smoke", "--space", "smoke_gp", "--scheduler", "fifo"], "ganforge tune: ", "fifo"),
    (["jobs", "restart"], "ganforge jobs: ", "restart"),                      # bad choice
    (["jobs", "status"], "ganforge jobs: ", "JOB_ID"),                        # before any network
    (["nosuch"], "ganforge: ", "nosuch"),                                     # unknown command
    (["shards", "--out", "x"], "ganforge shards: ", "--from-folder"),         # neither source
    (["shards", "--out", "x", "--builtin", "digits", "--from-folder", "d"], "ganforge shards: ", "--builtin"),
    (["tune"], "ganforge tune: ", "--space"),
    (["tune", "--resume", "s1", "smoke"], "ganforge tune: ", "--resume"),
    (["submit", "smoke", "--no-wait", "--follow"], "ganforge submit: ", "--no-wait"),
    (["promote", "m", "--alias", "champion"], "ganforge promote: ", "VERSION"),
])
def test_usage_errors_exit_2_in_one_line(capsys, argv, where, needle):
    r = run(capsys, *argv)
    assert r.rc == 2, (r.rc, r.err)
    one_line(r, where, needle)


def test_bare_ganforge_shows_help_and_exits_2(capsys):
    r = run(capsys)
    assert r.rc == 2 and "Commands:" in "\n".join(r.err)


# --- config errors: 2 ---------------------------------------------------------------------------

def test_config_error_from_train(capsys):
    r = run(capsys, "train", "smoke", "--dry-run", "train.nope=1")
    assert r.rc == 2
    one_line(r, "ganforge train: config error: train.nope: unknown key (")


def test_positional_that_is_not_an_override(capsys):
    r = run(capsys, "train", "smoke", "--dry-run", "x")
    assert r.rc == 2
    one_line(r, "ganforge train: config error: ", "override 'x': expected key=value")


def test_config_error_from_tune_space(capsys):
    r = run(capsys, "tune", "smoke", "--space", "nosuch", "--dry-run")
    assert r.rc == 2
    one_line(r, "ganforge tune: config error: ", "nosuch")


def test_config_error_from_submit_before_the_network(capsys):
    r = run(capsys, "submit", "smoke", "--address", "http://127.0.0.1:9", "train.batch_size=0")
    assert r.rc == 2
    one_line(r, "ganforge submit: config error: train.batch_size")


def test_config_error_from_quickstart(capsys):
    r = run(capsys, "quickstart", "--dry-run", "model.name=nosuch")
    assert r.rc == 2
    one_line(r, "ganforge quickstart: config error: model.name")


# --- runtime errors: 1 --------------------------------------------------------------------------

def test_sample_missing_folder(capsys, tmp_path):
    r = run(capsys, "sample", "/nonexistent/dir", "--out", str(tmp_path / "g.png"))
    assert r.rc == 1
    one_line(r, "ganforge sample: ", "/nonexistent/dir")
    assert not (tmp_path / "g.png").exists()


def test_evaluate_missing_target(capsys):
    r = run(capsys, "evaluate", "/no/such", "--device", "cpu")
    assert r.rc == 1
    one_line(r, "ganforge evaluate: /no/such: ")


def test_missing_shards_name_the_file(capsys, tmp_path, monkeypatch):
    from jobs import train

    monkeypatch.setattr(train, "_init_ray", lambda *a: pytest.fail("reached Ray"))
    r = run(capsys, "train", "smoke", f"data.shards={tmp_path}/shard-{{000000..000001}}.tar")
    assert r.rc == 1
    one_line(r, "ganforge train: ", "shard-000000.tar")


# --- overrides anywhere on the line -------------------------------------------------------------

def _dumped(r) -> C.Config:
    assert r.rc == 0, r.err
    return C.from_dict(yaml.safe_load(r.out))


@pytest.mark.parametrize("argv", [
    ["train", "smoke", "train.steps=6", "--dry-run"],
    ["train", "smoke", "--dry-run", "train.steps=6"],
    ["train", "--dry-run", "smoke", "train.steps=6"],
    ["train", "smoke", "--device", "cpu", "--dry-run", "train.steps=6"],
])
def test_train_overrides_before_or_after_options(capsys, argv):
    assert _dumped(run(capsys, *argv)).train.steps == 6


def test_local_and_address_with_overrides_after(capsys, tmp_path):
    cfg = _dumped(run(capsys, "train", "smoke", "--local", str(tmp_path / "run"), "--dry-run",
                      "train.steps=6", "--address", "ray://head:10001", "loss.kind=hinge"))
    assert (cfg.train.steps, cfg.loss.kind, cfg.scaling.address) == (6, "hinge", "ray://head:10001")
    assert not (tmp_path / "run").exists()                       # --dry-run wrote nothing


def test_quickstart_overrides_after_options(capsys):
    cfg = _dumped(run(capsys, "quickstart", "--dry-run", "train.steps=7"))
    assert cfg.train.steps == 7 and cfg.preset == "quickstart"


def test_tune_overrides_after_options(capsys):
    r = run(capsys, "tune", "smoke", "--space", "smoke_gp", "train.steps=12", "--dry-run")
    assert r.rc == 0 and "12 steps" in r.out, r.err
    r = run(capsys, "tune", "smoke", "--space", "smoke_gp", "--dry-run", "train.steps=14", "--trials", "2")
    assert r.rc == 0 and "14 steps" in r.out and "2 sample(s)" in r.out, r.err


# --- --verbose is wired to the launchers --------------------------------------------------------

@pytest.fixture
def launch(monkeypatch):
    """Replace run_training / run_study / submit with recorders; returns the calls."""
    from jobs import submit as S
    from jobs import train, tune

    calls = []

    def run_training(cfg, *, resume_from=None, verbose=False):
        calls.append(("train", cfg, verbose))
        return None

    def run_study(study, *, resume=False, verbose=False):
        calls.append(("tune", study, verbose))
        return types.SimpleNamespace(best=True)

    def submit(cfg, address, *, verbose=False):
        calls.append(("submit", cfg, verbose))
        return types.SimpleNamespace(get_address=lambda: "http://h:8265"), "job-1"

    monkeypatch.setattr(train, "run_training", run_training)
    monkeypatch.setattr(cli, "_print_summary", lambda s: None)
    monkeypatch.setattr(tune, "run_study", run_study)
    monkeypatch.setattr(tune, "format_result", lambda res: "done")
    monkeypatch.setattr(tune.Study, "load", staticmethod(lambda name: types.SimpleNamespace(
        name=name, config={"scaling": {}})))
    monkeypatch.setattr(S, "submit", submit)
    return calls


@pytest.mark.parametrize("flag, want", [([], False), (["--verbose"], True), (["-v"], True)])
def test_verbose_reaches_run_training(capsys, launch, flag, want):
    assert run(capsys, "train", "smoke", *flag, "train.steps=3").rc == 0
    assert run(capsys, "quickstart", "train.steps=4", *flag).rc == 0
    (k1, cfg1, v1), (k2, cfg2, v2) = launch
    assert (k1, cfg1.train.steps, v1) == ("train", 3, want)
    assert (k2, cfg2.train.steps, cfg2.preset, v2) == ("train", 4, "quickstart", want)


def test_verbose_reaches_run_study(capsys, launch, monkeypatch):
    from jobs import tune

    monkeypatch.setattr(tune, "new_study", lambda config, overrides, **kw: types.SimpleNamespace(
        config=config, overrides=overrides, kw=kw))
    monkeypatch.setattr(tune, "describe", lambda study: "study")
    assert run(capsys, "tune", "smoke", "--space", "smoke_gp", "-v", "train.steps=5").rc == 0
    assert run(capsys, "tune", "--resume", "s1", "--verbose").rc == 0
    assert run(capsys, "tune", "--resume", "s1").rc == 0
    (_, study, v1), (_, resumed, v2), (_, _, v3) = launch
    assert study.overrides == ["train.steps=5"] and study.kw["space"] == "smoke_gp"
    assert resumed.name == "s1" and (v1, v2, v3) == (True, True, False)


def test_verbose_reaches_submit(capsys, launch):
    r = run(capsys, "submit", "smoke", "--no-wait", "-v", "train.steps=9")
    assert r.rc == 0 and "submitted job job-1" in r.out, r.err
    assert [(k, cfg.train.steps, v) for k, cfg, v in launch] == [("submit", 9, True)]


def test_submitted_job_runs_train_with_verbose(monkeypatch, tmp_path):
    from jobs import submit as S

    seen = {}

    class Client:
        def submit_job(self, **kw):
            seen.update(kw)
            return "job-2"

    monkeypatch.setattr(S, "connect", lambda address: Client())
    monkeypatch.setattr(S, "stage", lambda cfg, dest: dest)
    cfg = C.load("smoke")
    assert S.submit(cfg, None, verbose=True)[1] == "job-2"
    assert seen["entrypoint"] == f"ganforge train {S.JOB_CONFIG} --verbose"
    S.submit(cfg, None)
    assert seen["entrypoint"] == f"ganforge train {S.JOB_CONFIG}"


# --- the one error policy -----------------------------------------------------------------------

def _raising(monkeypatch, exc: BaseException) -> None:
    from jobs import train

    def run_training(cfg, **kw):
        raise exc
    monkeypatch.setattr(train, "run_training", run_training)


@pytest.mark.parametrize("exc, code, line", [
    (TrainingError("run r1 failed (boom); MLflow run abc"), 1,
     "ganforge train: run r1 failed (boom); MLflow run abc"),
    (DataError("shard s.tar: no samples"), 1, "ganforge train: shard s.tar: no samples"),
    (CheckpointError("ckpt/: no state.pt"), 1, "ganforge train: ckpt/: no state.pt"),
    (GeneratorError("gen/: not a generator"), 1, "ganforge train: gen/: not a generator"),
    (FileNotFoundError("/data/x: no such file"), 1, "ganforge train: /data/x: no such file"),
    (RuntimeError("first\nsecond"), 1, "ganforge train: first; second"),        # still one line
    (ValueError("bad value"), 1, "ganforge train: bad value"),
    (C.ConfigError("train.steps: must be >= 1"), 2,
     "ganforge train: config error: train.steps: must be >= 1"),
], ids=lambda v: type(v).__name__ if isinstance(v, BaseException) else None)
def test_runtime_and_config_errors_from_a_command(capsys, monkeypatch, exc, code, line):
    _raising(monkeypatch, exc)
    r = run(capsys, "train", "smoke", "train.steps=2")
    assert r.rc == code and r.err == [line]


def test_mlflow_error_first_line_only(capsys, monkeypatch):
    from mlflow.exceptions import MlflowException

    _raising(monkeypatch, MlflowException("x" * 400 + "\nresponse body ..."))
    r = run(capsys, "train", "smoke")
    assert r.rc == 1 and r.err == ["ganforge train: MLflow: " + "x" * 300]


def test_ctrl_c_exits_130(capsys, monkeypatch):
    _raising(monkeypatch, KeyboardInterrupt())
    assert run(capsys, "train", "smoke").rc == 130


def test_a_bug_keeps_its_traceback(monkeypatch):
    _raising(monkeypatch, ZeroDivisionError("division by zero"))
    with pytest.raises(ZeroDivisionError):
        cli.main(["train", "smoke"])


def test_console_script_exit_codes():
    exe = Path(sys.executable).with_name("ganforge")
    if not exe.exists():
        pytest.skip("no installed ganforge console script")
    p = subprocess.run([str(exe), "train", "--nope"], capture_output=True, text=True, timeout=120)
    err = p.stderr.strip().splitlines()
    assert p.returncode == 2 and len(err) == 1, p.stderr
    assert err[0].startswith("ganforge train: ") and "--nope" in err[0]
    p = subprocess.run([str(exe), "train", "smoke", "--dry-run", "train.steps=6"], capture_output=True,
                       text=True, timeout=120)
    assert p.returncode == 0 and "steps: 6" in p.stdout
