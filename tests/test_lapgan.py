"""LAPGAN's pyramid: stages train on the real coarse images (independent of each other), sample as
a chain, and the grid shows every stage. The 2-worker run, resume, registry and same-seed images
through every loader are in test_families.py."""
from __future__ import annotations

import pytest
import torch

from models.lapgan import Generator, LAPGANConfig, pyramid, up
from pipeline import config as C
from pipeline import families


def _cfg(**model):
    return C.from_dict({"model": {"name": "lapgan", "resolution": 16, "base": 4, "z_dim": 8,
                                  "g_channels": 8, "d_channels": 8, **model},
                        "data": {"resolution": 16}, "train": {"batch_size": 4}})


def test_sizes_pyramid_and_inputs():
    cfg = _cfg()
    assert cfg.model.sizes == [4, 8, 16]
    x = torch.rand(2, 3, 16, 16) * 2 - 1
    p = pyramid(x, cfg.model.sizes)
    assert [t.shape[-1] for t in p] == [4, 8, 16] and p[-1] is x
    torch.testing.assert_close(p[1], torch.nn.functional.avg_pool2d(x, 2))
    fam = families.of(cfg)
    assert {k: s.dim for k, s in fam.inputs().items()} == {"z": 8, "n1": 64, "n2": 256}


def test_training_stages_see_the_real_coarse_image_and_sampling_chains_them():
    torch.manual_seed(0)
    G = Generator(LAPGANConfig(resolution=16, base=4, z_dim=8, g_channels=8)).eval()
    z, noises = torch.randn(2, 8), [torch.randn(2, 1, 8, 8), torch.randn(2, 1, 16, 16)]
    coarse = [torch.rand(2, 3, 8, 8), torch.rand(2, 3, 16, 16)]
    trained = G(z, noises, coarse)
    # Stage 2 in training depends on its own coarse image only, not on stage 1's output.
    other = G(z, noises, [torch.rand(2, 3, 8, 8), coarse[1]])
    torch.testing.assert_close(other[2], trained[2])
    assert not torch.allclose(other[1], trained[1])
    # Sampling: stage k refines stage k-1's image, upsampled.
    chain = G(z, noises)
    torch.testing.assert_close(chain[0], trained[0])
    torch.testing.assert_close(chain[2], G(z, noises, [up(chain[0]), up(chain[1])])[2])
    assert [t.shape[-1] for t in chain] == [4, 8, 16] and all(t.abs().max() <= 1 for t in chain)


def test_grid_shows_every_stage_of_each_sample():
    fam = families.of(_cfg())
    nets = fam.build()
    images, nrow = fam.grid(nets, 9, seed=3, batch={})
    assert nrow == 3 and images.shape == (9, 3, 16, 16)
    from pipeline.families import sampling
    x = sampling.inputs(fam.inputs(), 0, 3, seed=3)
    nets["G"].eval()
    torch.testing.assert_close(images[2::3], fam.generate(nets, x))     # the last column is the sample


def test_bad_settings_name_their_key():
    with pytest.raises(C.ConfigError, match=r"^model\.base"):
        _cfg(base=16)
    with pytest.raises(C.ConfigError, match=r"^data\.resolution"):
        C.from_dict({"model": {"name": "lapgan", "resolution": 32}, "data": {"resolution": 16}})
    with pytest.raises(C.ConfigError, match=r"^aug\.kind"):
        C.from_dict({"model": {"name": "lapgan", "resolution": 16}, "data": {"resolution": 16},
                     "aug": {"kind": "diffaugment"}})
