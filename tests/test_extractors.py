"""Feature extractors: the FID InceptionV3's architecture and weight loading (random weights, no
download), the small shapestack extractor's fit/load, and the evaluate/fit-extractor commands."""
from __future__ import annotations

import json
import re

import numpy as np
import pytest
import torch
from torchvision.models import inception as tv

from pipeline.engine.checkpoint import sha256_file
from pipeline.evaluation.extractors import inception, load_extractor, small


@pytest.fixture(autouse=True)
def one_thread():
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


@pytest.fixture(scope="module")
def random_inception_weights(tmp_path_factory):
    """A state dict shaped like pt_inception-2015-12-05-6726825d.pth, random values, saved under
    that file name; BN statistics randomised too so that they matter."""
    torch.manual_seed(0)
    net = inception.FIDInceptionV3().net
    state = {k: (torch.rand_like(v) + 0.5 if "running_var" in k else torch.randn_like(v) * 0.1)
             if v.is_floating_point() else v for k, v in net.state_dict().items()}
    path = tmp_path_factory.mktemp("weights") / inception.WEIGHTS_FILE
    torch.save(state, path)
    return path


def test_inception_state_dict_matches_the_fid_weights_layout():
    # pytorch-fid loads its file into torchvision's Inception3(num_classes=1008, aux_logits=False)
    # with patched blocks of the same parameters: the keys and shapes must be exactly those.
    want = tv.Inception3(num_classes=1008, aux_logits=False, init_weights=False).state_dict()
    got = inception.FIDInceptionV3().net.state_dict()
    assert {k: v.shape for k, v in got.items()} == {k: v.shape for k, v in want.items()}


def test_inception_loads_weights_from_file_or_folder(random_inception_weights):
    ex = load_extractor("inception", weights=str(random_inception_weights.parent))
    assert ex.standard and ex.name == inception.NAME and ex.resize == "bilinear-299"
    assert ex.sha256 == sha256_file(random_inception_weights)
    f, logits = ex.both(torch.rand(2, 3, 16, 16) * 2 - 1)
    assert f.shape == (2, 2048) and logits.shape == (2, 1008) and (f >= 0).all()


def test_inception_matches_pytorch_fid(random_inception_weights, monkeypatch):
    """Same weights in pytorch-fid's InceptionV3 (its loader patched to return them: no download)
    give the same pool3 features: the TF pooling patches and the resize are the same."""
    import pytorch_fid.inception as pf
    state = torch.load(random_inception_weights, weights_only=True)
    monkeypatch.setattr(pf, "load_state_dict_from_url", lambda *a, **k: state)
    theirs = pf.InceptionV3([3], resize_input=True, normalize_input=True).eval()
    ours = inception.load(str(random_inception_weights))
    x01 = torch.rand(2, 3, 24, 24)
    with torch.no_grad():
        want = theirs(x01)[0].flatten(1)
    np.testing.assert_allclose(ours.features(x01 * 2 - 1).numpy(), want.numpy(), rtol=1e-4, atol=1e-5)


def test_missing_inception_weights_error_says_where_to_put_them(tmp_path, monkeypatch):
    monkeypatch.setenv("TORCH_HOME", str(tmp_path / "torch"))
    with pytest.raises(inception.InceptionWeightsMissing) as e:
        load_extractor("inception")
    msg = str(e.value)
    home_cache = inception.cache_dirs()[0] / inception.WEIGHTS_FILE
    assert str(home_cache) in msg and inception.WEIGHTS_URL in msg
    assert str(tmp_path / "torch" / "hub" / "checkpoints" / inception.WEIGHTS_FILE) in msg
    with pytest.raises(inception.InceptionWeightsMissing, match=re.escape(str(tmp_path / "nope.pth"))):
        load_extractor("inception", weights=str(tmp_path / "nope.pth"))


def test_random_inception_is_never_standard():
    ex = load_extractor("inception-random")
    assert not ex.standard and ex.sha256 == "random" and "RANDOM" in ex.name


@pytest.fixture(scope="module")
def small_weights(small_extractor):
    return small_extractor        # conftest: fitted once per session, 80 steps


def test_small_extractor_fit_writes_weights_and_metadata(small_weights):
    path, meta = small_weights
    assert json.loads(path.with_suffix(".json").read_text()) == meta
    assert meta["sha256"] == sha256_file(path) and meta["name"] == "ganforge-small-shapestack"
    assert meta["glyph_accuracy"] > 0.8          # 80 steps; the default 400 reach ~0.9999


def test_small_extractor_features_logits_and_batch_independence(small_weights):
    from pipeline.data.datasets import shapestack

    ex = load_extractor(str(small_weights[0]))
    assert ex.name == small.NAME and not ex.standard and ex.sha256 == small_weights[1]["sha256"]
    images, glyphs = shapestack.generate(64, 32, seed=9)
    x = torch.from_numpy(images).permute(0, 3, 1, 2).float() / 127.5 - 1
    f, logp = ex.both(x)
    assert f.shape == (64, small.FEATURES) and logp.shape == (64, 1000)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(64))     # a distribution over triples
    read = logp.argmax(1).numpy()
    assert (read == shapestack.mode_index(glyphs)).mean() > 0.5
    # A sample's features do not depend on the rest of its batch (ranks batch differently).
    torch.testing.assert_close(ex.features(x[5:9]), f[5:9], rtol=1e-5, atol=1e-5)
    # Any resolution is resized to 32 px.
    assert ex.features(torch.nn.functional.interpolate(x[:2], size=64)).shape == (2, small.FEATURES)


def test_small_animals_extractor_reads_the_animal_and_is_told_apart_by_its_weights(tmp_path):
    # 60 steps on 1,536 silhouettes: well above chance (0.1) on the held-out 1,000. Loaded from
    # a bare path, the head says which network it is; FID on animals must not use the glyph reader.
    from pipeline.data.datasets import animals

    path = tmp_path / "a.pt"
    meta = small.fit(path, steps=60, n_train=1536, log=None, data="animals")
    assert meta["name"] == "ganforge-small-animals" and meta["glyph_accuracy"] > 0.4
    ex = load_extractor(str(path))
    assert ex.name == "ganforge-small-animals" and ex.sha256 == meta["sha256"]
    images, labels = animals.load()
    x = torch.from_numpy(images[:32]).float()[:, None].expand(-1, 3, -1, -1) / 127.5 - 1
    f, logp = ex.both(x)
    assert f.shape == (32, small.FEATURES) and logp.shape == (32, 10)
    torch.testing.assert_close(logp.exp().sum(1), torch.ones(32))
    with pytest.raises(FileNotFoundError, match="ganforge fit-extractor --data animals"):
        small.load(tmp_path / "none.pt", data="animals")


def test_small_extractor_missing_weights_names_the_command(tmp_path):
    with pytest.raises(FileNotFoundError, match="ganforge fit-extractor"):
        small.load(tmp_path / "none.pt")
    with pytest.raises(ValueError, match="unknown extractor"):
        load_extractor("vgg")


# ---------------------------------------------------------------- commands

@pytest.fixture(scope="module")
def checkpoint_and_shards(tmp_path_factory):
    import models
    from pipeline.engine import checkpoint
    from pipeline import config as C
    from pipeline.data.datasets import shapestack
    from pipeline.data.shards import write_shards

    root = tmp_path_factory.mktemp("evalcli")
    cfg = C.load("smoke")
    nets = models.build(cfg.model)
    ckpt = checkpoint.save({"step": 8, "G": nets["G"].state_dict(), "G_ema": nets["G"].state_dict(),
                            "config": C.to_dict(cfg)}, root / "ckpt")
    write_shards(shapestack.samples(300, 16, 0), root / "shards", resolution=16, classes=shapestack.CLASSES,
                 source="test", shard_size=100)
    return ckpt, root / "shards"


def test_fit_extractor_command(tmp_path, capsys, monkeypatch):
    from jobs import cli

    real = small._data
    monkeypatch.setattr(small, "_data", lambda n, seed, data: real(min(n, 384), seed, data))  # wiring, not accuracy

    assert cli.main(["fit-extractor", "--out", str(tmp_path / "x.pt"), "--steps", "5"]) == 0
    assert "ganforge-small-shapestack" in capsys.readouterr().out and (tmp_path / "x.json").is_file()
    assert cli.main(["fit-extractor", "--data", "animals", "--out", str(tmp_path / "a.pt"), "--steps", "5"]) == 0
    out = capsys.readouterr().out
    assert "ganforge-small-animals" in out and "held-out animal accuracy" in out


def test_evaluate_command_on_a_checkpoint_folder(checkpoint_and_shards, small_weights, capsys):
    from jobs import cli

    ckpt, shards = checkpoint_and_shards
    rc = cli.main(["evaluate", str(ckpt), "--metrics", "fid,kid,is,coverage", "--n", "200",
                   "--data", str(shards), "--extractor", str(small_weights[0]), "--device", "cpu"])
    out = capsys.readouterr().out
    assert rc == 0
    for key in ("eval/ganforge-small-shapestack/fid", "eval/ganforge-small-shapestack/kid_mean",
                "eval/ganforge-small-shapestack/is_mean", "eval/coverage_modes", "eval/oracle_accuracy",
                "eval.extractor_sha256 = " + small_weights[1]["sha256"], "eval.n_real = 300",
                "eval.n_fake = 200", "not comparable with standard"):
        assert key in out, key


@pytest.mark.slow
def test_evaluate_run_id_logs_scores_and_protocol(checkpoint_and_shards, small_weights, tmp_path, monkeypatch, capsys):
    import uuid

    from mlflow.tracking import MlflowClient

    from jobs import cli
    from pipeline.tracking import runs as tracking

    ckpt, shards = checkpoint_and_shards
    # The session's default store: a new sqlite file costs ~4 s of schema migrations here.
    uri = tracking.tracking_uri()
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    # The command itself keeps MLflow's artifact download bar off the terminal (another command in
    # this process may have set the variable already).
    monkeypatch.delenv("MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR", raising=False)
    client = MlflowClient(uri)
    exp = client.create_experiment(f"evaltest-{uuid.uuid4().hex[:6]}", artifact_location=(tmp_path / "art").as_uri())
    run_id = client.create_run(exp).info.run_id
    client.log_artifacts(run_id, str(ckpt), artifact_path="checkpoint")
    rc = cli.main(["evaluate", run_id, "--metrics", "fid,coverage", "--n", "100", "--data", str(shards),
                   "--extractor", str(small_weights[0]), "--device", "cpu", "--log"])
    out = capsys.readouterr()
    assert rc == 0 and f"logged to MLflow run {run_id}" in out.out
    assert "Downloading artifacts" not in out.err
    run = client.get_run(run_id)
    assert "eval/ganforge-small-shapestack/fid" in run.data.metrics and "eval/coverage_modes" in run.data.metrics
    assert client.get_metric_history(run_id, "eval/coverage_modes")[0].step == 8
    assert run.data.tags["eval.extractor"] == "ganforge-small-shapestack" and run.data.tags["eval.n_fake"] == "100"
    assert [f.path.split("/")[0] for f in client.list_artifacts(run_id, "refstats")] == ["refstats"]


def test_evaluate_registered_generator_folder(checkpoint_and_shards, small_weights, tmp_path, capsys):
    """A folder as `ganforge pull` writes it goes through pipeline.tracking.registry (sha256-checked)."""
    pytest.importorskip("pipeline.tracking.registry")
    from jobs import cli, eval_cli
    from pipeline.families import generator as GM

    ckpt, shards = checkpoint_and_shards
    G = GM.from_checkpoint(ckpt)
    cfg = G.cfg
    GM.write_folder(G, cfg, tmp_path / "gen", step=8)
    t = eval_cli.load_generator(str(tmp_path / "gen"))
    assert t.step == 8 and t.cfg == cfg and t.version is None
    assert cli.main(["evaluate", str(tmp_path / "gen"), "--metrics", "coverage", "--n", "50",
                     "--device", "cpu"]) == 0
    assert "eval/coverage_modes" in capsys.readouterr().out


def test_in_loop_eval_fits_the_animals_extractor_it_is_given_when_missing(tmp_path):
    from pipeline import config as C
    from pipeline.evaluation.in_loop import _extractor_weights

    weights = tmp_path / "animals.pt"
    cfg = C.load("quickstart", ["data.builtin=animals", "eval.every=100", "eval.metrics=[fid]",
                                "eval.extractor=small-animals", f"eval.inception_weights={weights}"])
    assert _extractor_weights(cfg) == str(weights)
    assert load_extractor(cfg.eval.extractor, weights=str(weights)).name == "ganforge-small-animals"
