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
    assert "shard-000000.tar" in err and "DataError" in err
