"""Evaluation across Ray Train ranks: 2 workers give the same values as one rank alone.

In-loop evaluation (curves and protocol tags in MLflow) is checked on the tracked run of test_registry_server.py.
"""
from __future__ import annotations

import uuid

import pytest
import torch

from pipeline import config as C
from pipeline import families
from pipeline.families import generator as GM

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def prepared(smoke_shards, ganforge_home, tmp_path_factory):
    from pipeline.evaluation import in_loop as evaluation
    from pipeline.data import resolve_shards

    cfg = C.load("smoke", ["eval.every=4", "eval.metrics=[fid,kid,coverage]", "eval.n_real=128",
                           "eval.n_fake=96", "eval.batch_size=16", "eval.kid_subsets=5",
                           "eval.kid_subset_size=32"])
    urls, manifest = resolve_shards(str(smoke_shards))
    prep = evaluation.prepare(cfg, urls, manifest, str(smoke_shards))
    torch.manual_seed(0)
    d = tmp_path_factory.mktemp("evalG")
    fam = families.of(cfg)
    torch.save(GM.Generator(fam, {"G": fam.build()["G"]}, cfg).state_dict(), d / "G.pt")
    return cfg, prep, str(d / "G.pt")


def _score(prepared, workers, tmp_path):
    import ray.train
    from ray.train.torch import TorchTrainer

    cfg, prep, weights = prepared
    from pipeline.evaluation.in_loop import eval_loop_per_worker

    trainer = TorchTrainer(
        eval_loop_per_worker, train_loop_config={"config": C.to_dict(cfg), "g_state": weights, "eval": prep},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 0.5}),
        run_config=ray.train.RunConfig(name=f"eval-{uuid.uuid4().hex[:6]}", storage_path=str(tmp_path)))
    return trainer.fit().return_value


def _score_in_process(prepared):
    """The same evaluation as one rank alone, in this process: no Ray, nothing gathered."""
    from pipeline.evaluation.in_loop import InLoopEval

    cfg, prep, weights = prepared
    fam = families.of(cfg)
    G = GM.Generator(fam, {"G": fam.build()["G"]}, cfg)
    G.load_flat(torch.load(weights, weights_only=True))
    ev = InLoopEval(cfg, prep, rank=0, world=1, device="cpu", gather=lambda obj: [obj])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # as a worker with <= 1 CPU runs: same kernels, same sums
    try:
        return ev.score(G)
    finally:
        torch.set_num_threads(threads)


def test_same_scores_with_one_and_two_workers(ray_session, prepared, tmp_path):
    # Two Ray Train ranks each score their slice of the samples and rank 0 combines them; one
    # rank alone (in this process: a Ray fit costs ~15 s here) must give the same numbers.
    one, two = _score_in_process(prepared), _score(prepared, 2, tmp_path)
    assert one.keys() == two.keys() == {"fid", "kid", "coverage"}
    for name in one:
        for key, v in one[name].items():
            assert two[name][key] == pytest.approx(v, rel=1e-5, abs=1e-8), (name, key)
    assert 1 <= one["coverage"]["coverage_modes"] <= 96 and 0 <= one["coverage"]["oracle_accuracy"] <= 1
