"""Model registry against the local sqlite store: register, load, promote, pull, sample, errors.

Checkpoints are made without Ray (random smoke-preset weights) and logged into an MLflow run as
"checkpoint/", the way jobs/train.py does; the real-server and real-training flow is in
test_registry_server.py.
"""
from __future__ import annotations

import json
import os
import time
import types
import uuid
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import pytest
import torch
import yaml
from mlflow.tracking import MlflowClient

import models
from jobs.cli import main as ganforge_main
from pipeline.engine import checkpoint
from pipeline.tracking import registry, runs as tracking
from pipeline import families
from pipeline.families import sampling
from pipeline.families.spec import ClassLabel, Latent
from pipeline import config as C
from pipeline.families import generator as GM


def make_checkpoint(out: Path, *overrides: str, seed: int = 0, step: int = 3) -> C.Config:
    cfg = C.load("smoke", list(overrides))
    torch.manual_seed(seed)
    G = models.build(cfg.model)["G"]
    checkpoint.save({"G_ema": G.state_dict(), "config": C.to_dict(cfg), "step": step}, out)
    return cfg


def make_run(uri: str, cfg: C.Config, ckpt: Path | None, tags: dict | None = None) -> str:
    run_id = tracking.start_run(cfg, f"reg-test-{uuid.uuid4().hex[:6]}", uri, tags=tags)
    if ckpt is not None:
        tracking.RankZeroLogger(uri, run_id).artifacts(str(ckpt), "checkpoint")
    tracking.end_run(uri, run_id, ok=True)
    return run_id


@pytest.fixture
def cli(capsys):
    """Run a registry command in-process; returns (exit code, stdout, stderr of that call only)."""
    def run(*argv: str):
        capsys.readouterr()
        rc = ganforge_main(list(argv))
        out, err = capsys.readouterr()
        return types.SimpleNamespace(rc=rc, out=out, err=err.strip())
    return run


@pytest.fixture(scope="module")
def reg(tmp_path_factory):
    """One registered conditional generator (@champion) with lineage and an eval metric."""
    tmp = tmp_path_factory.mktemp("registry")
    uri = tracking.tracking_uri()
    cfg = make_checkpoint(tmp / "ckpt")
    run_id = make_run(uri, cfg, tmp / "ckpt", tags={"ganforge.data_sha256": "d" * 64,
                                                    "eval.fid.protocol": "n=1000 vs train shards"})
    tracking.RankZeroLogger(uri, run_id).metrics({"fid": 12.5, "loss_d": 1.0, "eval/small-cnn/kid_mean": 0.25},
                                                 step=3)
    name = f"reg-{uuid.uuid4().hex[:8]}"
    mv = registry.register_run(run_id, name=name, alias="champion")
    return types.SimpleNamespace(uri=uri, run_id=run_id, mv=mv, name=name, ckpt=tmp / "ckpt",
                                 champion=f"models:/{name}@champion", cfg=cfg)


@pytest.fixture
def env_uri(reg, monkeypatch):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", reg.uri)
    return reg.uri


def fails(r, *needles: str) -> None:
    """Exit status 1 and exactly one stderr line that contains every needle."""
    assert r.rc == 1 and r.err.count("\n") == 0 and r.err.startswith("ganforge "), r.err
    for n in needles:
        assert n in r.err, r.err


# ---------------------------------------------------------------- register, load

def test_register_run_tags_lineage(reg):
    t = reg.mv.tags
    assert reg.mv.aliases == ["champion"] and reg.mv.run_id == reg.run_id
    assert t["ganforge.family"] == "dcgan" and t["ganforge.step"] == "3"
    assert t["ganforge.config_hash"] == C.config_hash(reg.cfg)
    assert t["ganforge.version"] == GM.ganforge_version() != "unknown"
    assert t["ganforge.data_sha256"] == "d" * 64
    assert len(t["ganforge.git_commit"]) == 40 or t["ganforge.git_commit"] == "unknown"
    cfg_file = mlflow.artifacts.download_artifacts(t["ganforge.config_artifact"], tracking_uri=reg.uri)
    assert C.config_hash(C.from_dict(yaml.safe_load(Path(cfg_file).read_text()))) == t["ganforge.config_hash"]
    assert t["eval.fid"] == "12.5" and t["eval.fid.protocol"] == "n=1000 vs train shards"
    assert t["eval.small-cnn/kid_mean"] == "0.25" and "eval.loss_d" not in t
    assert len(t["ganforge.weights_sha256"]) == 64


def test_pyfunc_and_pytorch_flavors_load_with_standard_calls(reg, env_uri):
    G = registry.load_generator(reg.champion)
    assert type(G.nets["G"]).__name__ == "Generator" and not G.nets["G"].training
    info = mlflow.models.get_model_info(reg.champion)
    assert info.signature.inputs.input_names() == ["n", "seed", "class", "truncation"]
    assert info.saved_input_example_info is not None and set(info.flavors) == {"python_function", "pytorch"}

    pf = mlflow.pyfunc.load_model(reg.champion)
    out = pf.predict({"n": 5, "seed": 7})
    assert out.dtype == np.uint8 and out.shape == (5, 16, 16, 3)
    assert np.array_equal(out, G.sample(5, seed=7).permute(0, 2, 3, 1).numpy())
    both = pf.predict(pd.DataFrame([{"n": 2, "seed": 1, "class": 4, "truncation": 0.5}, {"n": 3, "seed": 2}]))
    assert both.shape == (5, 16, 16, 3)
    assert np.array_equal(both[:2], G.sample(2, 1, truncation=0.5, fixed={"cls": 4}).permute(0, 2, 3, 1).numpy())

    module = mlflow.pytorch.load_model(reg.champion)
    z, y = torch.randn(3, G.specs["z"].dim), torch.tensor([0, 5, 9])
    with torch.no_grad():
        assert torch.allclose(module(z, y), G.nets["G"](z, y), atol=1e-5)


def test_unconditional_default_name_and_class_rules(tmp_path, env_uri, cli):
    cfg = make_checkpoint(tmp_path / "ckpt", "model.num_classes=0", seed=1)
    run_id = make_run(env_uri, cfg, tmp_path / "ckpt")
    mv = registry.register_checkpoint(tmp_path / "ckpt", tracking_uri=env_uri, run_id=run_id, lineage={})
    assert mv.name == "ganforge-dcgan" and mv.tags["ganforge.num_classes"] == "0"
    assert "ganforge.data_sha256" not in mv.tags          # lineage={} adds nothing from the run
    uri = f"models:/ganforge-dcgan/{mv.version}"
    assert mlflow.pyfunc.load_model(uri).predict({"n": 2, "seed": 0}).shape == (2, 16, 16, 3)
    fails(cli("sample", uri, "--n", "4", "--class", "1", "--out", str(tmp_path / "g.png")), "class: 1", "unconditional")
    assert not (tmp_path / "g.png").exists()


# ---------------------------------------------------------------- sampling

def test_sampling_is_seeded_and_truncated():
    specs = {"z": Latent(16), "cls": ClassLabel(10)}
    z1, z2 = (sampling.inputs(specs, 0, 64, seed=3)["z"] for _ in range(2))
    assert torch.equal(z1, z2) and not torch.equal(z1, sampling.inputs(specs, 0, 64, seed=4)["z"])
    zt = sampling.inputs(specs, 0, 256, seed=3, truncation=0.5)["z"]
    assert zt.abs().max() <= 0.5 and zt.std() > 0.2          # resampled, not clamped
    assert torch.equal(zt, sampling.inputs(specs, 0, 256, seed=3, truncation=0.5)["z"])
    assert torch.equal(sampling.inputs(specs, 300, 400, seed=3)["z"], sampling.inputs(specs, 0, 400, seed=3)["z"][300:])
    assert sampling.inputs(specs, 0, 12)["cls"].tolist() == [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0, 1]
    assert sampling.inputs(specs, 0, 3, fixed={"cls": 7})["cls"].tolist() == [7, 7, 7]
    with pytest.raises(ValueError, match=r"cls: 10 not an integer in \[0, 9\]"):
        sampling.inputs(specs, 0, 3, fixed={"cls": 10})
    with pytest.raises(ValueError, match="not an input of this generator"):
        sampling.inputs({"z": Latent(4)}, 0, 3, fixed={"cls": 1})
    with pytest.raises(ValueError, match="truncation"):
        sampling.inputs(specs, 0, 3, truncation=0)
    cfg = C.load("smoke")
    fam = families.of(cfg)
    gen = GM.Generator(fam, {"G": fam.build()["G"]}, cfg)
    torch.manual_seed(123)                     # the global RNG state must not matter
    a = gen.sample(9, seed=5, truncation=0.7)
    torch.manual_seed(456)
    assert a.dtype == torch.uint8 and torch.equal(a, gen.sample(9, seed=5, truncation=0.7))


SMALL = {"biggan": {"ch": 8}, "biggan_deep": {"ch": 8}, "progan": {"channel_max": 16},
         "infogan": {"num_classes": 0}, "bigan": {"num_classes": 0, "stochastic": True},
         "vaegan": {"num_classes": 0}, "lapgan": {"num_classes": 0, "g_channels": 8, "d_channels": 8},
         "stackgan": {"g_channels": 8, "d_channels": 8},
         "gan_int_cls": {"num_classes": 0, "g_channels": 8, "d_channels": 8, "sent_dim": 16, "proj_dim": 16},
         "stylegan2": {"z_dim": 32, "w_dim": 32, "mapping_layers": 2, "channel_base": 256, "channel_max": 16}}
TRANSLATORS = {"pix2pix": {}, "cyclegan": {"domains": ["x", "y"]}, "stargan": {"domains": ["a", "b", "c"]}}


@pytest.mark.parametrize("family", families.names())
def test_every_family_round_trips_through_a_generator_folder(family, tmp_path):
    model = ({"g_channels": 8, "d_channels": 8, **TRANSLATORS[family]} if family in TRANSLATORS
             else {"num_classes": 3, **SMALL.get(family, {})})
    cfg = C.from_dict({"model": {"name": family, "resolution": 32, **model}, "data": {"resolution": 32}})
    fam = families.of(cfg)
    built = fam.build()
    gen = GM.Generator(fam, {n: built[n] for n in fam.sample_nets}, cfg)
    m = GM.write_folder(gen, cfg, tmp_path, step=5)
    assert m["family"] == family and m["resolution"] == 32 and m["num_classes"] == gen.num_classes
    G2 = GM.load_folder(tmp_path)
    if family in TRANSLATORS:
        _translator_round_trip(fam, gen, G2, tmp_path)
        return
    assert type(G2.nets["G"]) is type(gen.nets["G"]) and not G2.nets["G"].training
    fixed = {"cls": 2} if gen.num_classes else {}
    assert torch.equal(G2.sample(4, seed=1, fixed=fixed), gen.sample(4, seed=1, fixed=fixed))
    # Truncation (|z| cut-off, or StyleGAN2's psi in w space) survives the folder and acts.
    cut = G2.sample(4, seed=1, fixed=fixed, truncation=0.5)
    assert torch.equal(cut, gen.sample(4, seed=1, fixed=fixed, truncation=0.5))
    assert not torch.equal(cut, G2.sample(4, seed=1, fixed=fixed))
    GM.export_pt2(G2, tmp_path / "g.pt2")       # the `pytorch` flavor of every family
    x = sampling.inputs(G2.specs, 0, 3)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(str(tmp_path / "g.pt2")).module()(*x.values()),
                              fam.generate(G2.nets, x), atol=1e-4)


def _translator_round_trip(fam, gen, G2, tmp_path):
    assert G2.translates and set(G2.nets) == set(fam.sample_nets)
    x = torch.randint(0, 256, (3, 3, 40, 40), dtype=torch.uint8)         # resized to 32 px inside
    want = gen.translate(x)
    assert want.shape == (3, 3, 32, 32) and torch.equal(G2.translate(x), want)
    if G2.domains:
        to = {k: G2.domains[0] for k in G2.specs if k != "image"}
        assert torch.equal(G2.translate(x, fixed=to), gen.translate(x, fixed=to))
    with pytest.raises(ValueError, match="translates images"):
        G2.sample(2)
    GM.export_pt2(G2, tmp_path / "g.pt2")
    probe = sampling.probe(G2.specs, 3)
    with torch.no_grad():
        assert torch.allclose(torch.export.load(str(tmp_path / "g.pt2")).module()(*probe.values()),
                              fam.generate(G2.nets, probe), atol=1e-4)


# ---------------------------------------------------------------- pull, sample

def test_pull_then_sample_folder_equals_uri(reg, env_uri, tmp_path, cli):
    d = tmp_path / "pulled"
    assert cli("pull", reg.champion, "--out", str(d)).rc == 0
    assert sorted(os.listdir(d)) == ["MODEL_CARD.md", "config.yaml", "ganforge_model.json", "weights.pt"]
    assert [p.name for p in tmp_path.iterdir()] == ["pulled"]          # no temp folder left
    card = (d / "MODEL_CARD.md").read_text()
    for s in (f"# {reg.name} v{reg.mv.version}", "champion", C.config_hash(reg.cfg), "d" * 64,
              "| fid | 12.5 |", "ganforge sample"):
        assert s in card, s
    assert json.loads((d / "ganforge_model.json").read_text())["family"] == "dcgan"

    assert cli("sample", str(d), "--n", "16", "--seed", "4", "--out", str(tmp_path / "a.png"), "--individual").rc == 0
    assert cli("sample", reg.champion, "--n", "16", "--seed", "4", "--out", str(tmp_path / "b.png")).rc == 0
    assert cli("sample", str(d), "--n", "16", "--seed", "5", "--out", str(tmp_path / "c.png")).rc == 0
    assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()
    assert (tmp_path / "a.png").read_bytes() != (tmp_path / "c.png").read_bytes()
    assert len(list((tmp_path / "a").glob("*.png"))) == 16

    fails(cli("pull", reg.champion, "--out", str(d)), str(d), "already exists")   # never overwrites


# ---------------------------------------------------------------- promote, list

def test_promote_list_and_remove_alias(reg, env_uri, tmp_path, cli):
    v2 = registry.register_checkpoint(reg.ckpt, tracking_uri=env_uri, run_id=reg.run_id, name=reg.name,
                                      lineage={"ganforge.run_id": reg.run_id})
    v1, v2 = str(reg.mv.version), str(v2.version)      # sqlite gives ints, REST gives strings
    assert int(v2) == int(v1) + 1
    assert cli("promote", reg.name, v2, "--alias", "champion").rc == 0
    rows = {r["version"]: r for r in registry.list_versions(reg.name)}
    assert rows[v2]["aliases"] == ["champion"] and rows[v1]["aliases"] == []
    assert rows[v1]["metrics"] == {"eval.fid": "12.5", "eval.fid.protocol": "n=1000 vs train shards",
                                   "eval.small-cnn/kid_mean": "0.25"}
    assert abs(rows[v2]["created"] / 1000 - time.time()) < 600
    out = cli("models", reg.name).out
    assert "ALIASES" in out and "fid=12.5" in out and "champion" in out
    assert reg.name in cli("models").out

    assert cli("promote", reg.name, "--alias", "champion", "--remove").rc == 0
    assert all(not r["aliases"] for r in registry.list_versions(reg.name))
    fails(cli("promote", reg.name, "--alias", "champion", "--remove"), f"models:/{reg.name}@champion", "no alias")
    fails(cli("promote", reg.name, "99", "--alias", "champion"), "no version 99", f"versions: {v1}, {v2}")
    assert cli("promote", reg.name, v1, "--alias", "champion").rc == 0   # restore for others


# ---------------------------------------------------------------- errors

@pytest.mark.parametrize("uri, needles", [
    ("models:/nope-{u}@champion", ["models:/nope-{u}@champion", "no registered model 'nope-{u}'", "ganforge models"]),
    ("models:/{name}@staging", ["models:/{name}@staging", "no alias 'staging'", "aliases: champion", "ganforge promote"]),
    ("models:/{name}/42", ["models:/{name}/42", "no version 42", "ganforge models {name}"]),
    ("runs:/{run}/checkpoint", ["runs:/{run}/checkpoint", "not a ganforge generator", "ganforge_model.json"]),
    ("runs:/0123abcd/generator", ["runs:/0123abcd/generator", "cannot download"]),
    ("no/such/folder", ["no/such/folder", "no such folder"]),
])
def test_bad_sources_fail_in_one_line_without_partial_output(reg, env_uri, tmp_path, cli, uri, needles):
    fill = dict(u=uuid.uuid4().hex[:6], name=reg.name, run=reg.run_id)
    uri = uri.format(**fill)
    fails(cli("pull", uri, "--out", str(tmp_path / "out")), *[n.format(**fill) for n in needles])
    assert list(tmp_path.iterdir()) == []
    assert cli("sample", uri, "--out", str(tmp_path / "g.png")).rc == 1
    assert list(tmp_path.iterdir()) == []


def test_registered_non_ganforge_model_is_named(reg, env_uri, cli, tmp_path):
    client = MlflowClient(env_uri)
    name = f"plain-{uuid.uuid4().hex[:6]}"
    client.create_registered_model(name)
    client.create_model_version(name, client.get_run(reg.run_id).info.artifact_uri + "/checkpoint",
                                run_id=reg.run_id)
    fails(cli("pull", f"models:/{name}/1", "--out", str(tmp_path / "o")), f"models:/{name}/1", "not a ganforge generator")


def test_register_errors_name_the_run(reg, env_uri, cli):
    fails(cli("register", "feedface0123"), "run feedface0123", "not found")
    bare = make_run(env_uri, reg.cfg, None)
    fails(cli("register", bare), f"run {bare}", "no checkpoint/ artifact", "tracking.log_checkpoint")


def test_unreachable_server_fails_fast(monkeypatch, tmp_path, cli):
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://127.0.0.1:9")
    for argv in (["models"], ["pull", "models:/x@champion", "--out", str(tmp_path / "o")], ["register", "abc"]):
        t = time.monotonic()
        fails(cli(*argv), "cannot reach tracking server at http://127.0.0.1:9")
        assert time.monotonic() - t < 15
    assert list(tmp_path.iterdir()) == []


def test_registry_uri_is_honoured(env_uri, monkeypatch, cli):
    monkeypatch.setenv("MLFLOW_REGISTRY_URI", "http://127.0.0.1:9")
    fails(cli("models"), "cannot reach registry server at http://127.0.0.1:9", "MLFLOW_REGISTRY_URI")


# ---------------------------------------------------------------- integrity

def _stored_model_dir(reg, client) -> Path:
    """The registered version's artifact folder in the local (file://) store."""
    source = client.get_model_version(reg.name, reg.mv.version).source       # models:/m-...
    loc = client.get_logged_model(source.split("/", 1)[1].lstrip("/")).artifact_location
    return Path(loc.removeprefix("file://"))


def test_tampered_weights_are_refused_everywhere(reg, env_uri, tmp_path, cli):
    d = tmp_path / "pulled"
    registry.pull(reg.champion, d)
    data = bytearray((d / "weights.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (d / "weights.pt").write_bytes(bytes(data))
    fails(cli("sample", str(d), "--out", str(tmp_path / "g.png")), str(d / "weights.pt"), "sha256", "pull the model again")
    assert not (tmp_path / "g.png").exists()

    stored = _stored_model_dir(reg, MlflowClient(env_uri)) / "artifacts"
    saved = {f: (stored / f).read_bytes() for f in ("weights.pt", "ganforge_model.json")}
    try:
        (stored / "weights.pt").write_bytes(bytes(data))        # altered in the artifact store
        fails(cli("sample", reg.champion, "--out", str(tmp_path / "g.png")), "weights.pt", "sha256", "does not match")
        with pytest.raises(Exception, match="sha256"):
            mlflow.pyfunc.load_model(reg.champion)
        # Rewriting the manifest to match does not help: the registry holds its own sha256.
        m = json.loads(saved["ganforge_model.json"])
        m["files"]["weights.pt"] = checkpoint.sha256_file(stored / "weights.pt")
        (stored / "ganforge_model.json").write_text(json.dumps(m))
        fails(cli("pull", reg.champion, "--out", str(tmp_path / "o")), reg.champion, "registry logged", "register it again")
        assert not (tmp_path / "o").exists() and not (tmp_path / "g.png").exists()
    finally:
        for f, b in saved.items():
            (stored / f).write_bytes(b)
    assert registry.load_generator(reg.champion) is not None


class Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_payload_in_weights_is_refused_not_executed(tmp_path, monkeypatch, cli):
    monkeypatch.chdir(tmp_path)
    cfg = C.load("smoke")
    fam = families.of(cfg)
    gen = GM.Generator(fam, {"G": fam.build()["G"]}, cfg)
    d = tmp_path / "evil"
    GM.write_folder(gen, cfg, d, step=1)
    torch.save({**gen.state_dict(), "x": Payload()}, d / "weights.pt")
    m = json.loads((d / "ganforge_model.json").read_text())
    m["files"]["weights.pt"] = checkpoint.sha256_file(d / "weights.pt")   # the attacker fixed the hash
    (d / "ganforge_model.json").write_text(json.dumps(m))
    with pytest.raises(GM.GeneratorError, match="refused to load"):
        GM.load_folder(d)
    fails(cli("sample", str(d), "--out", str(tmp_path / "g.png")), str(d / "weights.pt"), "refused to load")
    assert not (tmp_path / "PWNED").exists() and not (tmp_path / "g.png").exists()


PORTABLE = r"""
import json, site, sys
# No site processing (-S): the editable install's .pth finder never runs, and the checkout is
# not on sys.path; the venv's packages (mlflow, torch) are added as plain folders.
sys.path += [p for p in json.loads(sys.argv[2])]
try:
    import pipeline  # noqa: F401
    raise SystemExit("the ganforge checkout is importable; the test proves nothing")
except ImportError:
    pass
import mlflow, numpy as np
m = mlflow.pyfunc.load_model(sys.argv[1])
out = m.predict({"n": 3, "seed": 4, "class": 2.0})
import pipeline
assert "/code/pipeline" in pipeline.__file__, pipeline.__file__     # the code shipped with the model
np.save(sys.argv[3], out)
"""


def test_registered_model_loads_where_ganforge_cannot_be_imported(reg, env_uri, tmp_path):
    import site
    import subprocess
    import sys

    model = Path(mlflow.artifacts.download_artifacts(reg.champion, dst_path=str(tmp_path / "model")))
    names = [ln.split("==")[0] for ln in (model / "requirements.txt").read_text().split()]
    assert (model / "code" / "pipeline" / "families" / "generator.py").is_file()
    assert "ganforge" not in names and {"mlflow", "torch", "numpy", "pyyaml"} <= set(names)
    out = subprocess.run([sys.executable, "-S", "-c", PORTABLE, reg.champion, json.dumps(site.getsitepackages()),
                          str(tmp_path / "out.npy")], cwd=tmp_path, capture_output=True, text=True, timeout=240,
                         env={**os.environ, "MLFLOW_TRACKING_URI": env_uri, "PYTHONPATH": ""})
    assert out.returncode == 0, out.stderr[-2000:]
    want = registry.load_generator(reg.champion).sample(3, seed=4, fixed={"cls": 2})
    assert np.array_equal(np.load(tmp_path / "out.npy"), want.permute(0, 2, 3, 1).numpy())
