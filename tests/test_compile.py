"""train.compile: the engine's phases through torch.compile (inductor, the real CPU backend) give
the losses eager mode gives, with a double-backward penalty on the eager path, and checkpoints
that do not know the networks were compiled."""
from __future__ import annotations

import pytest
import torch

from pipeline import config as C
from pipeline.engine import loop
from pipeline.engine.checkpoint import load
from pipeline.engine.context import checkpoints, train_local


def _cfg(compile_mode: str, **extra):
    return C.load("smoke", [f"train.compile={compile_mode}", "train.steps=4", "train.log_every=1",
                            "train.checkpoint_every=4", "train.sample_every=0", "train.batch_size=4",
                            "data.loader_workers=0", "data.shuffle_buffer=0", "scaling.num_workers=1",
                            "tracking.samples=4", *(f"{k}={v}" for k, v in extra.items())])


def test_compiled_steps_give_eager_losses(tiny_shards16, tmp_path, one_torch_thread):
    from torch._dynamo.utils import counters

    torch._dynamo.reset()
    counters.clear()
    # WGAN-GP's penalty differentiates D twice: under compile it must take the eager D.
    extra = {"loss.gp_weight": 1.0}
    _, eager = train_local(_cfg("off", **extra), tiny_shards16, tmp_path / "eager", quiet=True)
    assert counters["stats"]["unique_graphs"] == 0
    _, comp = train_local(_cfg("default", **extra), tiny_shards16, tmp_path / "compiled", quiet=True)
    assert counters["stats"]["unique_graphs"] >= 2          # G and D did go through Dynamo
    assert [r["step"] for r in comp.reports] == [1, 2, 3, 4]
    for want, got in zip(eager.reports, comp.reports):
        for k in ("loss_d", "loss_g", "gp", "d_real", "d_fake"):
            assert got[k] == pytest.approx(want[k], rel=1e-3, abs=1e-4), (want["step"], k)
    # The checkpoint holds the bare networks' state: it loads wherever eager code runs.
    a, b = (load(checkpoints(tmp_path / d)[-1]) for d in ("eager", "compiled"))
    for net in ("G", "D"):
        assert a["nets"][net].keys() == b["nets"][net].keys()
        assert not any("_orig_mod" in k for k in b["nets"][net])
        for k, v in a["nets"][net].items():
            torch.testing.assert_close(b["nets"][net][k], v, rtol=1e-3, atol=1e-4)


def test_compile_mode_and_wrapping():
    cpu, gpu = torch.device("cpu"), torch.device("cuda")
    assert loop.compile_mode(_cfg("auto"), cpu) is None
    assert loop.compile_mode(_cfg("auto"), gpu) == "default"
    assert loop.compile_mode(_cfg("off"), gpu) is None and loop.compile_mode(_cfg("false"), gpu) is None
    assert loop.compile_mode(_cfg("true"), cpu) == "default"
    assert loop.compile_mode(_cfg("max-autotune-no-cudagraphs"), cpu) == "max-autotune-no-cudagraphs"
    with pytest.raises(C.ConfigError, match=r"^train\.compile: must be one of .*max-autotune-no-cudagraphs"):
        _cfg("fast")

    class Ctx:
        def wrap(self, m):
            return m

    trained, frozen = torch.nn.Linear(2, 2), torch.nn.Linear(2, 2).requires_grad_(False)
    out = loop.wrap(Ctx(), {"G": trained, "G_ema": frozen}, "default")
    assert out["G_ema"] is frozen and out["G"]._orig_mod is trained
    from pipeline.families.spec import eager, unwrap
    assert eager(out["G"]) is trained and unwrap(out["G"]) is trained and eager(trained) is trained


def test_style_mixing_takes_a_tensor_cutoff():
    """One graph for every cutoff: the mask with a 0-d tensor equals the old slice-and-concat."""
    from models.stylegan2 import StyleGAN2Config, build

    G = build(StyleGAN2Config(resolution=16, z_dim=8, w_dim=8, mapping_layers=2, channel_base=64,
                              channel_max=16))["G"]
    z, z2 = torch.randn(3, 8), torch.randn(3, 8)
    w, w2 = G.mapping(z), G.mapping(z2)
    for cut in range(1, G.num_ws):
        want = torch.cat([w[:, None].expand(-1, cut, -1), w2[:, None].expand(-1, G.num_ws - cut, -1)], 1)
        torch.testing.assert_close(G.ws(z, z2=z2, cutoff=torch.tensor(cut)), want)
        torch.testing.assert_close(G.ws(z, z2=z2, cutoff=cut), want)


@pytest.mark.parametrize("setting", ["auto", "default"])
def test_a_compiler_failure_falls_back_under_auto_and_names_the_way_out_otherwise(
        setting, tiny_shards16, tmp_path, one_torch_thread, monkeypatch):
    """A real inductor failure (PyTorch's own test hook makes the C++ of every relu kernel fail to
    compile): under auto the run notes it and trains on eagerly to its last step; under an explicit
    mode it stops with an error naming train.compile=off. auto compiles only on a GPU, so the test
    lets it compile here."""
    import torch._inductor.config as ic

    torch._dynamo.reset()
    monkeypatch.setattr(loop, "compile_mode", lambda cfg, device: "default")
    cfg = _cfg(setting)
    with ic.patch({"cpp.inject_relu_bug_TESTING_ONLY": "compile_error", "fx_graph_cache": False}):
        if setting == "default":
            with pytest.raises(RuntimeError, match=r"torch\.compile \(default\) failed at step 1: .*"
                                                   r"train\.compile=off trains eagerly"):
                train_local(cfg, tiny_shards16, tmp_path, quiet=True)
            return
        _, ctx = train_local(cfg, tiny_shards16, tmp_path, quiet=True)
    assert [r["step"] for r in ctx.reports] == [1, 2, 3, 4]
    assert all(r["loss_d"] == r["loss_d"] for r in ctx.reports)      # finite, not NaN
    assert any("torch.compile failed at step 1" in n and "training on eagerly" in n for n in ctx.notes)
