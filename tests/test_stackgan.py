"""StackGAN's two stages and conditioning augmentation. The 2-worker run, resume, registry and
same-seed images through every loader are in test_families.py."""
from __future__ import annotations

import pytest
import torch

from pipeline import config as C
from pipeline import families


def _cfg(**model):
    return C.from_dict({"model": {"name": "stackgan", "resolution": 32, "num_classes": 4, "z_dim": 8,
                                  "embed_dim": 8, "c_dim": 4, "g_channels": 8, "d_channels": 8, **model},
                        "data": {"resolution": 32}, "train": {"batch_size": 4}, "loss": {"kind": "hinge"}})


def test_stages_ca_and_an_end_to_end_g_loss():
    fam = families.of(_cfg())
    nets = fam.build()
    assert {k: type(s).__name__ for k, s in fam.inputs().items()} == {"z": "Latent", "eps": "Latent", "cls": "ClassLabel"}
    z, eps, y = torch.randn(4, 8), torch.randn(4, 4), torch.tensor([0, 1, 2, 3])
    (low, high), kl = nets["G"](z, eps, y)
    assert low.shape == (4, 3, 16, 16) and high.shape == (4, 3, 32, 32)
    # CA: c = mu + sigma * eps, and kl is KL(N(mu, sigma) || N(0, I)) per sample.
    G = nets["G"]
    mu, logvar = torch.nn.functional.leaky_relu(G.ca(G.embed(y)), 0.2).chunk(2, 1)
    q = torch.distributions.Normal(mu, (0.5 * logvar).exp())
    torch.testing.assert_close(kl, torch.distributions.kl_divergence(q, torch.distributions.Normal(0., 1.)).sum(1))
    # The G phase is end to end: stage II's adversarial loss reaches stage I's weights.
    from pipeline.families.spec import Ctx
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1, "cls": y}
    loss, stats = fam.loss(fam.phases()[1], nets, batch, Ctx(step=1, device=torch.device("cpu")))
    assert {"loss_g", "loss_g1", "loss_g2", "kl"} <= set(stats)
    g2 = torch.autograd.grad(_stage2_g_loss(fam, nets, batch), G.stage1.net[0].weight)[0]
    assert g2.abs().sum() > 0
    loss.backward()


def _stage2_g_loss(fam, nets, batch):
    """Stage II's G loss alone."""
    from pipeline.engine import losses
    x = fam.draw(4, torch.device("cpu"))
    (low, high), _ = nets["G"](x["z"], x["eps"], batch["cls"])
    return losses.g_loss("hinge", nets["D"].stages[1](high, batch["cls"]))


def test_grid_shows_both_stages_and_sampling_is_seeded():
    fam = families.of(_cfg())
    nets = fam.build()
    images, nrow = fam.grid(nets, 8, seed=2, batch={})
    assert nrow == 2 and images.shape == (8, 3, 32, 32)
    from pipeline.families import sampling
    a = sampling.sample(fam, {"G": nets["G"]}, 4, seed=5, fixed={"cls": 1})
    assert torch.equal(a, sampling.sample(fam, {"G": nets["G"]}, 4, seed=5, fixed={"cls": 1}))


def test_bad_settings_name_their_key():
    with pytest.raises(C.ConfigError, match=r"^model\.num_classes"):
        _cfg(num_classes=0)
    with pytest.raises(C.ConfigError, match=r"^model\.resolution"):
        _cfg(resolution=16)
    with pytest.raises(C.ConfigError, match=r"^loss\.gp_weight"):
        C.from_dict({"model": {"name": "stackgan"}, "data": {"resolution": 32}, "loss": {"gp_weight": 1}})


def test_text_condition_matching_aware_d_trains_the_word_encoder(tmp_path):
    """condition: text, as in the paper: the caption's embedding through CA; D's phase also sees
    reals with rolled captions and trains T; G's phase leaves T alone; a short local run
    checkpoints, and a prompt gives the same images from the checkpoint and a generator folder."""
    from pipeline.data import resolve_shards
    from pipeline.engine.context import checkpoints, train_local
    from pipeline.families import generator as GM
    from pipeline.families.spec import Ctx

    cfg = _cfg(condition="text", num_classes=0, word_dim=8, sent_dim=8)
    fam = families.of(cfg)
    nets = fam.build()
    assert set(nets) == {"G", "D", "T"} and fam.optimizer_groups()["D"][0] == ("D", "T")
    assert type(fam.inputs()["txt"]).__name__ == "Caption" and "cls" not in fam.fields
    batch = {"image": torch.rand(4, 3, 32, 32) * 2 - 1,
             "txt": ["red ring, green cross, blue dot", "red dot, green dot, blue dot", "", "a disk in red"]}
    ctx = Ctx(step=1, device=torch.device("cpu"))
    d_loss, _ = fam.loss(fam.phases()[0], nets, batch, ctx)
    d_loss.backward()
    assert nets["T"].embed.weight.grad.abs().sum() > 0
    nets["T"].zero_grad()
    g_loss, _ = fam.loss(fam.phases()[1], nets, batch, ctx)
    g_loss.backward()
    assert nets["T"].embed.weight.grad is None or nets["T"].embed.weight.grad.abs().sum() == 0

    run = C.from_dict({**C.to_dict(cfg), "data": {"resolution": 32, "loader_workers": 0, "shuffle_buffer": 0},
                       "train": {"batch_size": 4, "steps": 4, "log_every": 2, "checkpoint_every": 4, "sample_every": 0},
                       "scaling": {"num_workers": 1}})
    data = tmp_path / "caps32"
    from pipeline.data.datasets import build_builtin
    build_builtin("shapecaptions", data, resolution=32, n=32, shard_size=16, seed=1)
    train_local(run, {"urls": resolve_shards(str(data))[0], "counts": None}, tmp_path / "run", quiet=True)
    gen = GM.from_checkpoint(checkpoints(tmp_path / "run")[-1])
    want = gen.sample(3, seed=4, fixed={"txt": "red dot, green dot, blue dot"})
    GM.write_folder(gen, run, tmp_path / "g", step=4)
    assert torch.equal(GM.load_folder(tmp_path / "g").sample(3, seed=4, fixed={"txt": "red dot, green dot, blue dot"}), want)
    with pytest.raises(ValueError, match="'hexagon' never appeared"):
        gen.sample(1, fixed={"txt": "red hexagon"})
    with pytest.raises(C.ConfigError, match=r"^model\.num_classes"):
        _cfg(condition="text")            # num_classes 4 with a caption condition
