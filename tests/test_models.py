"""Every registered family: builds from its default config, right shapes, trainable."""
import dataclasses

import pytest
import torch

import models


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("num_classes", [0, 10])
def test_family_forward_backward(name, num_classes):
    cls = models.config_class(name)
    fields = {f.name for f in dataclasses.fields(cls)}
    kw = {"num_classes": num_classes} if "num_classes" in fields else {}
    if "resolution" in fields:
        kw["resolution"] = 32
    cfg = cls(**kw)
    nets = models.build(cfg)
    G, D = nets["G"], nets["D"]
    assert G.z_dim > 0 and G.num_classes == num_classes
    z = torch.randn(4, G.z_dim)
    y = torch.randint(0, 10, (4,)) if num_classes else None
    x = G(z, y)
    assert x.shape == (4, 3, 32, 32)
    assert x.min() >= -1 and x.max() <= 1
    out = D(x, y)
    assert out.shape == (4,)
    out.mean().backward()
    assert all(p.grad is not None for p in G.parameters() if p.requires_grad)
    assert models.family_of(cfg) == name


def test_conditional_models_need_labels():
    nets = models.build(models.config_class("dcgan")(num_classes=10))
    with pytest.raises(ValueError, match="labels"):
        nets["G"](torch.randn(2, nets["G"].z_dim))


def test_registry_rejects_duplicates():
    with pytest.raises(ValueError, match="twice"):
        models.register("dcgan", object)(lambda c: {})


def test_spectral_norm_bounds_top_singular_value():
    cfg = models.config_class("dcgan")(resolution=32, spectral_norm=True, d_norm="none")
    torch.manual_seed(0)
    D = models.build(cfg)["D"]
    x = torch.randn(8, 3, 32, 32)
    with torch.no_grad():
        for _ in range(200):     # one power iteration per training-mode forward
            D(x)
    D.eval()
    for m in D.modules():
        if hasattr(m, "parametrizations") and isinstance(m, torch.nn.Conv2d):
            w = m.weight.detach().flatten(1)
            sigma = torch.linalg.matrix_norm(w, ord=2)
            assert abs(sigma.item() - 1) < 1e-2, sigma
