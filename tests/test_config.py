import dataclasses

import pytest

from jobs import cli
from pipeline import config as C


@pytest.mark.parametrize("preset", ["smoke", "quickstart", "dcgan64", "wgangp32"])
def test_presets_load_and_roundtrip(preset):
    cfg = C.load(preset)
    again = C.from_dict(C.to_dict(cfg))
    assert again == cfg
    assert C.config_hash(again) == C.config_hash(cfg)


def test_overrides_apply_with_types():
    cfg = C.load("smoke", ["train.steps=77", "loss.gp_weight=10", "optim.betas=[0.1, 0.2]",
                           "model.num_classes=0", "train.run_name=abc"])
    assert cfg.train.steps == 77
    assert cfg.loss.gp_weight == 10.0 and isinstance(cfg.loss.gp_weight, float)
    assert cfg.optim.betas == (0.1, 0.2)
    assert cfg.model.num_classes == 0
    assert cfg.train.run_name == "abc"
    with pytest.raises(dataclasses.FrozenInstanceError):
        cfg.train.steps = 1


@pytest.mark.parametrize("override, key", [
    ("train.stepz=3", "train.stepz"),            # unknown key
    ("model.width=3", "model.width"),            # unknown model key
    ("bogus.x=1", "bogus"),                      # unknown section
    ("train.steps=abc", "train.steps"),          # wrong type
    ("train.steps=1.5", "train.steps"),          # float for int
    ("scaling.use_gpu=yes please", "scaling.use_gpu"),
    ("train.steps=0", "train.steps"),            # out of range
    ("optim.ema_decay=1.5", "optim.ema_decay"),
    ("optim.ema_rampup=0", "optim.ema_rampup"),
    ("loss.kind=softmax", "loss.kind"),          # not one of the choices
    ("model.resolution=48", "model.resolution"),  # model's own range check
    ("data.resolution=64", "data.resolution"),   # disagrees with the model
    ("model.name=nosuch", "model.name"),
    ("optim.betas=[0.5]", "optim.betas"),
])
def test_bad_values_name_the_key(override, key):
    with pytest.raises(C.ConfigError) as e:
        C.load("smoke", [override])
    assert str(e.value).startswith(key), str(e.value)


def test_override_syntax_error():
    with pytest.raises(C.ConfigError, match="key=value"):
        C.load("smoke", ["train.steps"])


def test_cli_dry_run_prints_resolved_config(capsys):
    assert cli.main(["train", "smoke", "train.steps=5", "--dry-run"]) == 0
    out = capsys.readouterr().out
    assert "steps: 5" in out and "name: dcgan" in out
    # The printed YAML is itself a valid config.
    import yaml
    assert C.from_dict(yaml.safe_load(out)).train.steps == 5


def _ray_must_not_start(monkeypatch):
    """Fail the test if the CLI gets as far as starting or joining Ray (another test's session Ray
    may already be up, so `ray.is_initialized()` cannot tell)."""
    from jobs import train

    def boom(*a, **k):
        raise AssertionError("the CLI reached Ray before rejecting its input")
    monkeypatch.setattr(train, "_init_ray", boom)


def test_cli_config_error_exits_2_before_ray(capsys, monkeypatch):
    _ray_must_not_start(monkeypatch)
    assert cli.main(["train", "smoke", "train.nope=1"]) == 2
    assert "train.nope" in capsys.readouterr().err


def test_flatten():
    flat = C.flatten(C.to_dict(C.load("smoke")))
    assert flat["model.name"] == "dcgan" and flat["train.steps"] == 8


def test_cli_missing_shards_fail_before_ray(capsys, tmp_path, monkeypatch):
    _ray_must_not_start(monkeypatch)
    missing = tmp_path / "nope" / "shard-{000000..000003}.tar"
    assert cli.main(["train", "smoke", f"data.shards={missing}"]) == 1
    err = capsys.readouterr().err
    assert "shard-000000.tar" in err and err.startswith("ganforge train: ")


def test_all_presets_load_and_roundtrip():
    for p in sorted(C.PRESET_DIR.glob("*.yaml")):
        cfg = C.load(p.stem)
        assert C.from_dict(C.to_dict(cfg)) == cfg, p.stem


def test_ints_become_floats_and_lists_tuples():
    d = C.to_dict(C.load("smoke"))
    d["scaling"]["cpus_per_worker"] = 3
    d["optim"]["betas"] = [0, 0.5]
    d["eval"]["metrics"] = ["fid"]
    cfg = C.from_dict(d)
    assert cfg.scaling.cpus_per_worker == 3.0 and type(cfg.scaling.cpus_per_worker) is float
    assert cfg.optim.betas == (0.0, 0.5) and all(type(b) is float for b in cfg.optim.betas)
    assert cfg.eval.metrics == ("fid",)
    assert C.from_dict(C.to_dict(cfg)) == cfg


@pytest.mark.parametrize("override, message", [
    ("train.run_name=2024-01-01", "train.run_name: expected plain data"),   # a YAML date
    ("eval.metrics=[fid, 2024-01-01]", "eval.metrics[1]: expected plain data"),
    ("optim=3", "optim: expected a mapping, got 3"),
    ("train=[1, 2]", "train: expected a mapping, got [1, 2]"),
    ("train.steps=abc", "train.steps: expected an integer, got 'abc'"),
    ("train.steps=3.0", "train.steps: expected an integer, got 3.0"),
    ("loss.gp_weight=true", "loss.gp_weight: expected a number, got True"),
    ("train.inject_failure_at=x", "train.inject_failure_at: expected an integer (or null), got 'x'"),
    ("loss.kind=softmax", "loss.kind: must be one of ['minimax', 'nonsaturating', 'hinge', "
                          "'wasserstein', 'least_squares'], got 'softmax'"),
    ("optim.betas=[0.5]", "optim.betas: expected 2 items, got 1"),
    ("optim.betas=[0.5, x]", "optim.betas[1]: expected a number, got 'x'"),
    ("train.stepz=3", "train.stepz: unknown key (known: batch_size, checkpoint_every, "),
    ("train.steps=0", "train.steps: must be >= 1"),          # a section's own check, unprefixed
    ("model.resolution=48", "model.resolution: 48 must be"),  # the model config's, prefixed
])
def test_error_messages(override, message):
    with pytest.raises(C.ConfigError) as e:
        C.load("smoke", [override])
    assert str(e.value).startswith(message), str(e.value)


def test_unknown_key_reported_before_other_errors():
    with pytest.raises(C.ConfigError, match=r"^train\.stepz: unknown key"):
        C.load("smoke", ["train.steps=abc", "train.stepz=1"])


def test_models_import_without_pydantic():
    # The model configs are plain stdlib dataclasses; only pipeline.config knows pydantic.
    import subprocess
    import sys
    from pathlib import Path
    code = ("import sys, models, models.dcgan, models.biggan, models.biggan_deep, models.progan; "
            "assert 'pydantic' not in sys.modules, 'models imported pydantic'")
    root = Path(C.__file__).resolve().parents[2]
    subprocess.run([sys.executable, "-c", code], check=True, cwd=root)


def test_builtin_names_are_the_datasets_and_the_cli_choice():
    # One list: data.builtin's type, `ganforge shards --builtin` and the dataset registry.
    from pipeline.data.datasets import BUILTIN

    assert C.BUILTIN_NAMES == tuple(BUILTIN)
    choice = next(p for p in cli.ganforge.commands["shards"].params if p.name == "builtin").type.choices
    assert tuple(choice) == tuple(BUILTIN)
    with pytest.raises(C.ConfigError, match="data.builtin"):
        C.load("quickstart", ["data.builtin=mnist"])
