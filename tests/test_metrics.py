"""Metric core: each metric against an independent computation, the registry, exact combination
of per-rank partials, reference caching and protocol tags. No Ray here: the 1-vs-2-worker check
is the same combine() run on partials computed in one process."""
from __future__ import annotations

import numpy as np
import pytest
import scipy.linalg
import torch
import torch.nn as nn

from pipeline.evaluation import metrics
from pipeline.data.datasets import shapestack
from pipeline.evaluation.metrics import collect, reference
from pipeline.evaluation.metrics.coverage import class_accuracy, mode_coverage
from pipeline.evaluation.metrics.features import FeatureStats, Partial, combine, rank_slice
from pipeline.evaluation.metrics.fid import frechet_distance
from pipeline.evaluation.metrics.inception_score import inception_score
from pipeline.evaluation.metrics.kid import kernel_inception_distance, mmd2_unbiased
from pipeline.evaluation.metrics.precision_recall import knn_radii, precision_recall
from pipeline.evaluation.metrics.protocol import EvalConfig, Protocol


@pytest.fixture(autouse=True)
def one_thread():
    """On 2 shared cores, BLAS/OpenMP thread pools that wait on each other run 10x slower."""
    from threadpoolctl import threadpool_limits

    n = torch.get_num_threads()
    torch.set_num_threads(1)
    with threadpool_limits(1):
        yield
    torch.set_num_threads(n)


def _scipy_fid(mu1, s1, mu2, s2):
    """pytorch-fid's calculate_frechet_distance: scipy sqrtm in float64, eps offset if singular."""
    covmean = scipy.linalg.sqrtm(s1 @ s2)
    if not np.isfinite(covmean).all():
        off = np.eye(len(s1)) * 1e-6
        covmean = scipy.linalg.sqrtm((s1 + off) @ (s2 + off))
    d = mu1 - mu2
    return d @ d + np.trace(s1) + np.trace(s2) - 2 * np.trace(covmean.real)


def _feature_sets(n, d, seed):
    rng = np.random.default_rng(seed)
    a = np.abs(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.2)   # ReLU-like, correlated
    b = np.abs(rng.standard_normal((n, d)) @ rng.standard_normal((d, d)) * 0.25 + 0.1)
    return a, b


def _stats(x):
    return x.mean(0), np.cov(x, rowvar=False)


# ---------------------------------------------------------------- FID

@pytest.mark.parametrize("n,d", [(500, 32), (2000, 128), (100, 256), (40, 64)])  # last two: N < D
def test_fid_matches_scipy_sqrtm(n, d):
    a, b = _feature_sets(n, d, seed=n + d)
    ours, ref = frechet_distance(*_stats(a), *_stats(b)), _scipy_fid(*_stats(a), *_stats(b))
    assert ours == pytest.approx(ref, rel=1e-6)
    assert frechet_distance(*_stats(b), *_stats(a)) == pytest.approx(ours, rel=1e-9)


@pytest.mark.parametrize("n,d", [(500, 32), (100, 256)])
def test_fid_of_a_set_with_itself_is_zero(n, d):
    a, _ = _feature_sets(n, d, seed=1)
    assert abs(frechet_distance(*_stats(a), *_stats(a))) < 1e-6


def test_fid_of_gaussians_has_closed_form():
    # Diagonal covariances: FID = |dmu|^2 + sum (sqrt(s1) - sqrt(s2))^2.
    s1, s2 = np.array([1.0, 4.0, 9.0]), np.array([4.0, 4.0, 1.0])
    want = 3.0 + ((np.sqrt(s1) - np.sqrt(s2)) ** 2).sum()
    assert frechet_distance(np.zeros(3), np.diag(s1), np.ones(3), np.diag(s2)) == pytest.approx(want, rel=1e-12)


# ---------------------------------------------------------------- IS, KID, PR

@pytest.mark.parametrize("classes", [1, 10, 1000])
def test_inception_score_of_one_hot_equally_used_classes_is_class_count(classes):
    probs = np.eye(classes)[np.arange(10 * classes) % classes]
    mean, std = inception_score(probs, splits=10)
    assert mean == pytest.approx(classes, rel=1e-12) and std == pytest.approx(0, abs=1e-9)


def test_inception_score_of_uniform_predictions_is_one():
    assert inception_score(np.full((100, 7), 1 / 7), splits=5)[0] == pytest.approx(1.0)


def test_kid_matches_brute_force_double_loop():
    rng = np.random.default_rng(0)
    x, y = rng.standard_normal((20, 6)), rng.standard_normal((20, 6)) + 0.3
    k = lambda a, b: (a @ b / 6 + 1) ** 3  # noqa: E731
    m = len(x)
    xx = sum(k(x[i], x[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    yy = sum(k(y[i], y[j]) for i in range(m) for j in range(m) if i != j) / (m * (m - 1))
    xy = sum(k(x[i], y[j]) for i in range(m) for j in range(m)) / (m * m)
    brute = xx + yy - 2 * xy
    assert mmd2_unbiased(x, y) == pytest.approx(brute, rel=1e-10)
    # Subsets as large as the sets: every subset is a permutation, so the mean is exact, std 0.
    mean, std = kernel_inception_distance(x, y, subsets=5, subset_size=100)
    assert mean == pytest.approx(brute, rel=1e-10) and std == pytest.approx(0, abs=1e-12)


def test_kid_std_over_subsets_and_seed():
    rng = np.random.default_rng(1)
    x, y = rng.standard_normal((200, 8)), rng.standard_normal((200, 8))
    a = kernel_inception_distance(x, y, subsets=10, subset_size=50, seed=3)
    assert a == kernel_inception_distance(x, y, subsets=10, subset_size=50, seed=3)
    assert a[1] > 0 and abs(a[0]) < 0.05


def test_precision_recall_knn_radii_and_extremes():
    rng = np.random.default_rng(2)
    x = rng.standard_normal((50, 4))
    naive = np.array([np.sort(((x - p) ** 2).sum(1))[3] for p in x])   # [0] is the point itself
    np.testing.assert_allclose(knn_radii(x, 3), naive, rtol=1e-9, atol=1e-12)
    assert precision_recall(x, x, k=3) == (1.0, 1.0)
    assert precision_recall(x + 100, x, k=3) == (0.0, 0.0)
    # Fakes collapsed onto one real point: all precise, recall only around that point.
    p, r = precision_recall(np.repeat(x[:1], 20, 0), x, k=3)
    assert p == 1.0 and r < 0.2


# ---------------------------------------------------------------- coverage

def test_mode_coverage_single_mode_and_balanced():
    one = mode_coverage(np.tile([[3, 1, 4]], (500, 1)))
    assert one["modes"] == 1 and one["kl"] == pytest.approx(np.log(1000))
    all_modes = np.stack([np.arange(5000) // 100 % 10, np.arange(5000) // 10 % 10, np.arange(5000) % 10], 1)
    c = mode_coverage(all_modes)
    assert c["modes"] == 1000 and c["kl"] == pytest.approx(0, abs=1e-12)
    assert class_accuracy(all_modes, all_modes[:, 0]) == 1.0


@pytest.fixture(scope="module")
def real_10k():
    return shapestack.generate(10000, 16, seed=0)


def test_real_shapestack_coverage_through_the_oracle(real_10k):
    images, glyphs = real_10k
    read = shapestack.oracle(images)
    assert (read == glyphs).all()            # the oracle is exact on real data
    c = mode_coverage(read)
    # Every block of 1000 real images holds each mode once: full coverage, KL ~ 0.
    assert c["modes"] == 1000 and c["kl"] < 0.01


class _OneImageG(nn.Module):
    """A collapsed generator: the same shapestack image whatever z and y."""

    def __init__(self, resolution=16, num_classes=0):
        super().__init__()
        img = torch.from_numpy(shapestack.generate(1, resolution, seed=5)[0]).permute(0, 3, 1, 2)
        self.register_buffer("img", img.float() / 127.5 - 1)
        self.w = nn.Parameter(torch.zeros(()))
        self.z_dim, self.num_classes = 8, num_classes

    def forward(self, z, y=None):
        return self.img.expand(len(z), -1, -1, -1) + 0 * self.w


def test_generator_with_one_output_covers_one_mode():
    results, _ = collect.evaluate(_OneImageG(), ["coverage"], cfg=EvalConfig(n_fake=300),
                                  oracle=shapestack.oracle)
    assert results["coverage"]["coverage_modes"] == 1
    assert results["coverage"]["coverage_kl"] == pytest.approx(np.log(1000))


# ---------------------------------------------------------------- partials across ranks

@pytest.mark.parametrize("world", [1, 2, 3, 7])
def test_rank_slices_tile_the_range(world):
    for n in (0, 1, 10, 10000):
        slices = [rank_slice(n, r, world) for r in range(world)]
        assert [i for s in slices for i in s] == list(range(n))
        assert max(map(len, slices)) - min(map(len, slices)) <= 1


def test_feature_stats_merge_equals_one_pass():
    rng = np.random.default_rng(3)
    x = rng.standard_normal((301, 5)) * 3 + 100    # large mean: the naive formula would cancel
    acc = FeatureStats()
    for lo, hi in ((0, 1), (1, 100), (100, 100), (100, 301)):
        acc = acc.update(x[lo:hi])
    np.testing.assert_allclose(acc.mean, x.mean(0), rtol=1e-13)
    np.testing.assert_allclose(acc.cov, np.cov(x, rowvar=False), rtol=1e-10)


def test_latents_depend_only_on_seed_and_index():
    full = collect.latents(0, 1000, 12, seed=4)
    np.testing.assert_array_equal(collect.latents(300, 700, 12, seed=4), full[300:700])
    assert not torch.equal(collect.latents(0, 10, 12, seed=5), full[:10])
    t = collect.latents(0, 500, 12, seed=4, truncation=0.5)
    assert t.abs().max() <= 0.5 and t.shape == (500, 12)
    assert collect.latents(5, 5, 12).shape == (0, 12)


class _TinyExtractor:
    """Deterministic random-projection features and 10-way logits (stands in for a network)."""
    name, sha256, resize, standard = "test-projection", "0" * 64, "none", False

    def __init__(self):
        g = torch.Generator().manual_seed(0)
        self.w, self.v = torch.randn(3 * 16 * 16, 24, generator=g), torch.randn(24, 10, generator=g)

    def both(self, images):
        f = torch.tanh(images.flatten(1) @ self.w / 16)
        return f, f @ self.v


class _CondG(nn.Module):
    def __init__(self):
        super().__init__()
        torch.manual_seed(0)
        self.z_dim, self.num_classes = 8, 10
        self.fc, self.emb = nn.Linear(8, 3 * 16 * 16), nn.Embedding(10, 3 * 16 * 16)

    def forward(self, z, y):
        return torch.tanh(self.fc(z) + self.emb(y)).view(-1, 3, 16, 16)


@pytest.fixture(scope="module")
def real_ref():
    images, glyphs = shapestack.generate(400, 16, seed=1)
    batches = [(torch.from_numpy(images[i:i + 64]).permute(0, 3, 1, 2), torch.from_numpy(glyphs[i:i + 64, 0]))
               for i in range(0, 400, 64)]
    part = collect.real_partial(batches, _TinyExtractor(), keep={"features", "labels"})
    return reference.from_partial(part, source="test", extractor=_TinyExtractor(), resolution=16)


def test_two_partials_combine_to_the_one_process_result(real_ref):
    names = metrics.list_metrics()
    cfg = EvalConfig(n_fake=250, batch_size=32, kid_subsets=5, kid_subset_size=100)
    G, ex, keep = _CondG(), _TinyExtractor(), metrics.fake_keep(names)
    one, fake1 = collect.evaluate(G, names, extractor=ex, ref=real_ref, cfg=cfg, oracle=shapestack.oracle)
    # "Rank 1" computes its slice first; rank 0's gather returns both partials in rank order.
    s1 = rank_slice(cfg.n_fake, 1, 2)
    p1 = collect.fake_partial(G, ex, s1.start, s1.stop, keep=keep, batch_size=cfg.batch_size,
                              oracle=shapestack.oracle)
    two, fake2 = collect.evaluate(G, names, extractor=ex, ref=real_ref, cfg=cfg, oracle=shapestack.oracle,
                                  rank=0, world=2, gather=lambda p: [p, p1])
    assert collect.evaluate(G, names, extractor=ex, cfg=cfg, oracle=shapestack.oracle, rank=1, world=2,
                            gather=lambda p: [p]) == (None, None)
    assert fake1.n == fake2.n == 250
    np.testing.assert_array_equal(fake1.labels, fake2.labels)
    for name in names:
        assert one[name].keys() == two[name].keys()
        for k in one[name]:
            assert two[name][k] == pytest.approx(one[name][k], rel=1e-5, abs=1e-8), (name, k)
    assert set(one["fid_per_class"]) >= {"fid_class_0", "fid_class_9", "fid_per_class_mean"}
    assert 0 <= one["coverage"]["oracle_accuracy"] <= 1


def test_combine_rejects_gaps_and_ignores_empty_partials():
    a, b = Partial(start=0), Partial(start=10)
    a.add(5, np.ones((5, 2)), keep={"features"})
    b.add(5, np.ones((5, 2)), keep={"features"})
    with pytest.raises(ValueError, match="do not tile"):
        combine([a, b])
    assert combine([a, Partial(start=5)]).n == 5


# ---------------------------------------------------------------- registry

def test_registry_lists_every_metric_and_each_runs(real_ref):
    names = metrics.list_metrics()
    assert set(names) >= {"fid", "fid_per_class", "is", "kid", "pr", "coverage"}
    cfg = EvalConfig(n_fake=120, kid_subsets=3, kid_subset_size=50)
    for name in names:   # each one alone: collection keeps exactly what it declares
        results, _ = collect.evaluate(_CondG(), [name], extractor=_TinyExtractor(), ref=real_ref, cfg=cfg,
                                      oracle=shapestack.oracle)
        assert results[name] and all(np.isfinite(v) for v in results[name].values()), name


def test_registry_errors_name_the_problem(real_ref):
    with pytest.raises(KeyError, match="unknown metric 'fdi'"):
        metrics.compute("fdi", Partial())
    with pytest.raises(ValueError, match="needs reference statistics"):
        metrics.compute("fid", Partial())
    with pytest.raises(ValueError, match="needs features"):
        metrics.compute("kid", Partial(), real_ref)


# ---------------------------------------------------------------- reference cache and protocol

def test_reference_stats_cached_atomically_and_verified(real_ref, tmp_path):
    def must_not_run():
        raise AssertionError("cached statistics were recomputed")
        yield

    images, glyphs = shapestack.generate(100, 16, seed=2)
    batches = [(torch.from_numpy(images).permute(0, 3, 1, 2), torch.from_numpy(glyphs[:, 0]))]
    kw = dict(manifest_sha="m" * 64, resolution=16, source="unit-test")
    ref = reference.reference_stats(iter(batches), _TinyExtractor(), **kw)
    assert ref.path == reference.cache_path("m" * 64, "0" * 64, 16) and ref.path.is_file()
    again = reference.reference_stats(must_not_run(), _TinyExtractor(), **kw)
    assert again.sha256 == ref.sha256 and again.n == 100
    np.testing.assert_array_equal(again.sigma, ref.sigma)
    assert not list(ref.path.parent.glob(".*.tmp"))
    # Tampered contents are refused.
    p = reference.save(real_ref, tmp_path / "r.npz")
    with np.load(p) as z:
        arrays = dict(z)
    arrays["mean"] = arrays["mean"] + 1
    np.savez(p, **arrays)
    with pytest.raises(ValueError, match="do not match their recorded sha256"):
        reference.load(p)


def test_shard_batches_slices_tile_the_dataset(tmp_path):
    from pipeline.data.shards import write_shards

    m = write_shards(shapestack.samples(50, 16, 3), tmp_path, resolution=16, classes=shapestack.CLASSES,
                     source="t", shard_size=16)
    urls, counts = [str(tmp_path / s["name"]) for s in m["shards"]], [s["count"] for s in m["shards"]]
    whole = torch.cat([b for b, _ in reference.shard_batches(urls, 16, batch_size=7)])
    assert len(whole) == 50
    np.testing.assert_array_equal(whole.permute(0, 2, 3, 1).numpy(), shapestack.generate(50, 16, 3)[0])
    for c in (counts, None):
        parts = [torch.cat([b for b, _ in reference.shard_batches(urls, 16, start=s.start, stop=s.stop, counts=c)])
                 for s in (rank_slice(50, r, 3) for r in range(3))]
        assert torch.equal(torch.cat(parts), whole)


def test_protocol_tags_and_metric_keys(real_ref):
    p = Protocol.of(_TinyExtractor(), real_ref, n_fake=250, truncation=None, ema=True, seed=0)
    tags = p.tags()
    assert set(tags) == {"eval.extractor", "eval.extractor_sha256", "eval.standard", "eval.n_real",
                         "eval.n_fake", "eval.resize", "eval.ref_stats_source", "eval.ref_stats_sha256",
                         "eval.truncation", "eval.ema", "eval.seed"}
    assert tags["eval.n_real"] == "400" and tags["eval.ref_stats_sha256"] == real_ref.sha256
    assert tags["eval.ema"] == "true" and tags["eval.truncation"] == "none"
    res = {"fid": {"fid": 1.0}, "coverage": {"coverage_modes": 3.0}}
    assert metrics.metric_keys(res, "x-small", standard=False) == {"eval/x-small/fid": 1.0, "eval/coverage_modes": 3.0}
    assert metrics.metric_keys(res, "inception", standard=True) == {"eval/fid": 1.0, "eval/coverage_modes": 3.0}
