"""BigGAN and BigGAN-deep: paper structure, spectral norm, orthogonal regularization, one training
iteration through the pipeline's phase functions, and the CPU run of the throughput benchmark."""
import copy

import pytest
import torch

import models
from models.biggan import G_MULT
from models.layers import SelfAttention
from pipeline import families
from pipeline.engine import ema, regularizers
from phases import d_step, g_step
from pipeline.config import ConfigError, from_dict

FAMILIES = ["biggan", "biggan_deep"]


def _nets(name, **kw):
    kw = {"resolution": 32, "ch": 8, "num_classes": 10, **kw}
    return models.build(models.config_class(name)(**kw))


@pytest.mark.parametrize("name", FAMILIES)
def test_attention_and_shapes_at_64px(name):
    torch.manual_seed(0)
    n = _nets(name, resolution=64, ch=4, z_dim=100, attn_resolution=16)
    G, D = n["G"], n["D"]
    assert sum(isinstance(m, SelfAttention) for m in G.modules()) == 1
    assert sum(isinstance(m, SelfAttention) for m in D.modules()) == 1
    z, y = torch.randn(2, G.z_dim), torch.tensor([1, 7])
    x = G(z, y)
    assert x.shape == (2, 3, 64, 64)
    D(x, y).sum().backward()
    assert G.attn.gamma.grad is not None and D.attn.gamma.grad is not None


def test_self_attention_matches_the_sagan_formula():
    torch.manual_seed(0)
    att = SelfAttention(16)
    torch.nn.init.ones_(att.gamma)
    x = torch.randn(2, 16, 8, 8)
    # BigGAN-PyTorch's Attention.forward, written with bmm.
    theta = att.theta(x).flatten(2)
    phi = torch.nn.functional.max_pool2d(att.phi(x), 2).flatten(2)
    g = torch.nn.functional.max_pool2d(att.g(x), 2).flatten(2)
    beta = torch.softmax(theta.transpose(1, 2) @ phi, -1)
    want = x + att.o((g @ beta.transpose(1, 2)).view(2, 8, 8, 8))
    assert torch.allclose(att(x), want, atol=1e-5)
    assert torch.allclose(att(x.contiguous(memory_format=torch.channels_last)), want, atol=1e-5)


def test_hierarchical_latents_and_shared_embedding():
    G = _nets("biggan", z_dim=120, shared_dim=16)["G"]
    assert G.chunk == 120 // len(G_MULT[32])        # input layer + 3 blocks: 30 each
    for block in G.blocks:                           # every CBN sees [shared embedding, own chunk]
        assert block.bn1.gain.in_features == 16 + 30
    G.eval()
    z, y = torch.randn(2, 120), torch.tensor([3, 3])
    base = G(z, y)
    for k in range(4):                               # each chunk reaches the image
        z2 = z.clone()
        z2[:, 30 * k:30 * (k + 1)] += 1
        assert not torch.allclose(G(z2, y), base)
    assert not torch.allclose(G(z, torch.tensor([4, 4])), base)


def test_deep_bottleneck_blocks_two_per_resolution():
    n = _nets("biggan_deep", resolution=128, ch=8, attn_resolution=64)
    G, D = n["G"], n["D"]
    assert len(G.blocks) == 2 * (len(G_MULT[128]) - 1) and len(D.blocks) == 2 * 5
    b = G.blocks[1]                                  # 16ch -> 16ch up: 1x1 to a quarter width
    assert b.conv1.weight.shape[:2] == (32, 128) and b.conv4.weight.shape[:2] == (128, 32)
    assert D.blocks[0].extra.weight.shape[0] == 16 - 8   # skip concatenates the new channels
    assert G.blocks[0].bn1.gain.in_features == G.z_dim + 128   # the whole z, not a chunk


@pytest.mark.parametrize("name", FAMILIES)
def test_spectral_norm_top_singular_value_is_one(name):
    torch.manual_seed(0)
    n = _nets(name, attn_resolution=16)
    sn = [m for net in n.values() for m in net.modules() if hasattr(m, "parametrizations")]
    assert any(isinstance(m, torch.nn.Embedding) for m in sn)
    with torch.no_grad():
        # Move the weights off their orthogonal init (where the estimate is exact at once): a new
        # top direction twice as strong as the rest, plus noise, for the power iteration to find.
        for m in sn:
            raw = m.parametrizations.weight.original
            w = raw.flatten(1)
            u, v = torch.randn(w.shape[0]), torch.randn(w.shape[1])
            spike = torch.outer(u / u.norm(), v / v.norm()) * torch.linalg.matrix_norm(w, ord=2)
            raw.add_((spike + 0.1 * w.std() * torch.randn_like(w)).view_as(raw))
    z, y = torch.randn(4, n["G"].z_dim), torch.randint(0, 10, (4,))
    with torch.no_grad():
        for _ in range(20):                          # one power iteration per training forward
            n["D"](n["G"](z, y), y)
    for m in sn:
        m.eval()
        raw = torch.linalg.matrix_norm(m.parametrizations.weight.original.flatten(1), ord=2)
        sigma = torch.linalg.matrix_norm(m.weight.detach().flatten(1), ord=2)
        assert raw > 1.05 and abs(sigma.item() - 1) < 1e-2, (m, sigma, raw)


def test_orthogonal_regularizer_matches_definition():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Conv2d(3, 5, 3), torch.nn.Linear(4, 9),
                              torch.nn.Embedding(7, 3))
    want = 0
    for w in (net[0].weight.flatten(1), net[1].weight):      # wide and tall; embedding skipped
        off = (w @ w.T) * (1 - torch.eye(w.shape[0]))
        want = want + off.square().sum()
    got = regularizers.orthogonal(net)
    assert got.item() == pytest.approx(want.item(), rel=1e-5)
    got.backward()
    w = net[0].weight.flatten(1)                     # d/dW = 4 ((W W^T) * (1 - I)) W
    grad = 4 * ((w @ w.T) * (1 - torch.eye(5))) @ w
    assert torch.allclose(net[0].weight.grad.flatten(1), grad.detach(), atol=1e-5)
    assert net[2].weight.grad is None
    q = torch.nn.Linear(6, 4)
    torch.nn.init.orthogonal_(q.weight)
    assert regularizers.orthogonal(q).item() < 1e-10


@pytest.mark.parametrize("name", FAMILIES)
def test_hinge_iteration_with_ema_through_pipeline_steps(name):
    torch.manual_seed(0)
    n = _nets(name)
    G, D = n["G"], n["D"]
    G_ema = copy.deepcopy(G).eval().requires_grad_(False)
    fam = families.get(name)(from_dict({"model": {"name": name, "resolution": 32, "num_classes": 10},
                                        "data": {"resolution": 32}, "loss": {"kind": "hinge"}}))
    opt_g = torch.optim.Adam(G.parameters(), 1e-4, betas=(0.0, 0.999))
    opt_d = torch.optim.Adam(D.parameters(), 4e-4, betas=(0.0, 0.999))
    real, y = torch.rand(4, 3, 32, 32) * 2 - 1, torch.randint(0, 10, (4,))
    stats = d_step(fam, n, opt_d, real, y)
    stats.update(g_step(fam, n, opt_g, 4, y))
    ema.update(G_ema, G, 0.999)
    assert all(torch.isfinite(v) for v in stats.values())
    assert G_ema(torch.randn(2, G.z_dim), y[:2]).shape == (2, 3, 32, 32)


@pytest.mark.parametrize("model, msg", [
    ({"resolution": 48}, "model.resolution"),
    ({"attn_resolution": 128}, "model.attn_resolution"),
    ({"resolution": 256}, "model.z_dim"),           # 120 does not split into 7 chunks
    ({"truncation": 0.0}, "model.truncation"),
])
def test_config_errors_name_the_key(model, msg):
    with pytest.raises(ConfigError, match=msg):
        from_dict({"model": {"name": "biggan", **model}, "data": {"resolution": 128}})


def test_presets_load():
    from pipeline.config import load
    for preset, name in [("biggan128", "biggan"), ("biggan32", "biggan")]:
        cfg = load(preset)
        assert models.family_of(cfg.model) == name and cfg.loss.kind == "hinge"
    assert load("biggan128").model.g_width == 96
