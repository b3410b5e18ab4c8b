"""Every registered family through the engine: 2 Ray Train workers, checkpoint, resume, register,
pull, and the same seed's images from the folder, the registry URI and the pyfunc model; the
local context with Ray and MLflow unimportable gives one Ray worker's losses; evaluation across
the 2 ranks gives the scores of one rank alone.

All families share one Ray Train fit per worker count, and the 2-rank evaluation rides on the
2-worker one: process start-up, not steps, is what costs on 2 cores (~20 s a fit).
"""
from __future__ import annotations

import dataclasses
import json
import os
import shutil
import subprocess
import sys
import uuid
from pathlib import Path

import numpy as np
import pytest
import torch

from pipeline import config as C
from pipeline import families

# Tiny networks per family (BASE, where the family's config has the key, and these); every one
# trains 4 steps on the smoke shards. A new family needs no line here unless BASE does not fit it.
SMALL = {
    "dcgan": {"num_classes": 10},
    "acgan": {"num_classes": 10},
    "biggan": {"resolution": 32, "ch": 8, "num_classes": 10},
    "biggan_deep": {"resolution": 32, "ch": 8, "num_classes": 10},
    "progan": {"channel_max": 8, "phase_images": [8, 8, 8], "phase_batch": [4, 4, 4]},
    "stylegan2": {"w_dim": 16, "mapping_layers": 2, "channel_base": 128, "channel_max": 8},
    "pix2pix": {"d_layers": 2},
    "cyclegan": {"d_layers": 2, "domains": ["outline", "filled"], "pool_size": 6},
    "stargan": {"d_layers": 2},
    "bigan": {"e_channels": 8, "joint_hidden": 16, "stochastic": True, "recon_weight": 0.5},
    "vaegan": {"e_channels": 8, "pixel_weight": 0.5},
    "lapgan": {"base": 4, "noise_channels": 2},
    "stackgan": {"resolution": 32, "num_classes": 10, "embed_dim": 8, "c_dim": 4},
    "gan_int_cls": {"num_classes": 0, "word_dim": 8, "sent_dim": 8, "proj_dim": 8},
}
# Translators train on their own built-in layout (pairs, or cls = domain), text-to-image on
# captioned shapestack; 16 px.
BUILTIN = {"pix2pix": "shapepairs", "cyclegan": "shapeunpaired", "stargan": "shapestyles",
           "gan_int_cls": "shapecaptions"}
LOSS = {"progan": {"kind": "wasserstein", "gp_weight": 10.0, "drift_weight": 1e-3},
        "pix2pix": {"kind": "nonsaturating"}, "cyclegan": {"kind": "least_squares"},
        "stargan": {"kind": "wasserstein"}}
BASE = {"resolution": 16, "z_dim": 16, "g_channels": 8, "d_channels": 8, "d_norm": "none",
        "spectral_norm": True}


def family_config(name: str, steps: int, workers: int) -> dict:
    m = {**SMALL.get(name, {})}
    keys = {f.name for f in dataclasses.fields(families.config_class(name))}
    m.update({k: v for k, v in BASE.items() if k in keys and k not in m})
    if name.startswith("biggan"):
        m.pop("z_dim", None)
    res = m.get("resolution", 16)
    data = {"builtin": BUILTIN[name]} if name in BUILTIN else {}
    return {"model": {"name": name, **m}, "loss": LOSS.get(name, {"kind": "hinge"}), "optim": {"ema_decay": 0.9},
            "data": {"resolution": res, "loader_workers": 0, "shuffle_buffer": 16, **data},
            "train": {"steps": steps, "batch_size": 4, "log_every": 2, "checkpoint_every": 2,
                      "sample_every": 0, "seed": 3},
            # pyfunc only: test_registry checks every family's torch.export, here it would
            # repeat ~3 s per family on 2 cores
            "tracking": {"samples": 4, "export_pt2": False}, "scaling": {"num_workers": workers}}


def test_registry_covers_ported_and_new_families():
    assert {"dcgan", "biggan", "biggan_deep", "progan", "acgan"} <= set(families.names())
    for name in families.names():          # every family builds from the tiny config the fits use
        fam = families.of(C.from_dict(family_config(name, 4, 2)))
        nets = fam.build()
        assert set(fam.sample_nets) <= set(nets) and set(fam.ema) <= set(nets)
        assert {n for names, _ in fam.optimizer_groups().values() for n in names} <= set(nets)


def _multi_family_loop(loop_config: dict) -> dict:
    """A Ray Train worker running every family twice: to step 2, then resumed to step 4 from the
    checkpoint the first run wrote (Ray Train's report still gets every checkpoint)."""
    from pipeline.engine import loop
    from pipeline.engine.checkpoint import load
    from pipeline.engine.ray_context import RayContext

    class FamilyContext(RayContext):
        """Ray Train's context, checkpoints also kept per family on the test's disk."""

        def __init__(self, folder):
            import ray.train
            import ray.train.torch
            c = ray.train.get_context()
            self.rank, self.world = c.get_world_rank(), c.get_world_size()
            self.device, self.run_dir = ray.train.torch.get_device(), str(folder)
            self.tracker, self.folder, self.seen = _NullTracker(), Path(folder), []

        def restore(self):
            import contextlib
            have = sorted(self.folder.glob("checkpoint_*"))
            return contextlib.nullcontext(load(have[-1]) if have else None)

        def progress(self, total, start):
            return None

        def report(self, metrics, checkpoint_dir):
            if checkpoint_dir is not None:
                kept = self.folder / f"checkpoint_{int(metrics['step']):03d}"
                shutil.copytree(checkpoint_dir, kept)
                (kept / "report.json").write_text(json.dumps(metrics))
            self.seen.append(int(metrics["step"]))
            super().report(metrics, checkpoint_dir)

    out = {}
    for name, runs in loop_config["families"].items():
        steps = []
        data = {"urls": loop_config["shard_urls"][BUILTIN.get(name, "shapestack")], "counts": None}
        for cfg_dict in runs:
            cfg = C.from_dict(cfg_dict)
            ctx = FamilyContext(Path(loop_config["root"]) / name)
            loop.run(cfg, ctx, data)
            steps.append(ctx.seen)
        out[name] = steps
    if loop_config.get("eval"):            # every rank scores its slice; rank 0 returns the gathered scores
        from pipeline.evaluation.in_loop import eval_loop_per_worker
        out["eval"] = eval_loop_per_worker(loop_config["eval"])
    return out


class _NullTracker:
    def metrics(self, values, step):
        pass

    def grid(self, images, step, nrow=None):
        return ""


def _fit(ray_session, tmp_path, shards, workers: int, runs_per_family, evaluate: dict | None = None) -> dict:
    import ray.train
    from ray.train.torch import TorchTrainer

    from pipeline.data import resolve_shards

    urls = {k: resolve_shards(str(v))[0] for k, v in shards.items()}
    ray.cloudpickle.register_pickle_by_value(sys.modules[__name__])   # workers lack tests/ on their path
    root = tmp_path / f"fams-{workers}"
    for name in families.names():
        (root / name).mkdir(parents=True)
    trainer = TorchTrainer(
        _multi_family_loop,
        train_loop_config={"shard_urls": urls, "root": str(root),
                           "families": {n: runs_per_family(n) for n in families.names()}, "eval": evaluate},
        scaling_config=ray.train.ScalingConfig(num_workers=workers, resources_per_worker={"CPU": 1}),
        run_config=ray.train.RunConfig(name=f"fams-{uuid.uuid4().hex[:6]}", storage_path=str(tmp_path / "ray"),
                                       failure_config=ray.train.FailureConfig(max_failures=0)))
    return trainer.fit().return_value, root


def _uri_of(mv):
    return f"models:/{mv.name}/{mv.version}"


@pytest.fixture(scope="module")
def eval_prepared(smoke_shards, ganforge_home, tmp_path_factory):
    """The smoke config with in-loop evaluation, its prepared real statistics and a fixed random
    G's weights: what both the 2-rank and the one-rank evaluation score."""
    from pipeline.data import resolve_shards
    from pipeline.evaluation import in_loop as evaluation
    from pipeline.families import generator as GM

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


@pytest.fixture(scope="module")
def two_worker_fit(ray_session, family_shards, tmp_path_factory, eval_prepared):
    """Every family to step 2, then resumed to step 4, on 2 Ray Train workers; then the 2 ranks
    score eval_prepared's generator. Returns (the worker's results, the checkpoints' root)."""
    cfg, prep, weights = eval_prepared
    return _fit(ray_session, tmp_path_factory.mktemp("fit2"), family_shards, 2,
                lambda n: [C.to_dict(C.from_dict(family_config(n, s, 2))) for s in (2, 4)],
                evaluate={"config": C.to_dict(cfg), "g_state": weights, "eval": prep})


@pytest.mark.slow
def test_every_family_trains_resumes_registers_and_samples_identically(two_worker_fit, tmp_path, monkeypatch):
    import mlflow

    from pipeline.families import generator as GM
    from pipeline.tracking import registry
    from pipeline.tracking import runs as tracking

    seen, root = two_worker_fit
    uri = tracking.tracking_uri()      # the session's store: a new sqlite file costs ~4 s of migrations
    monkeypatch.setenv("MLFLOW_TRACKING_URI", uri)
    for name in families.names():
        assert seen[name] == [[2], [4]], name          # the second run resumed after step 2
        ckpt = root / name / "checkpoint_004"
        state = torch.load(ckpt / "state.pt", weights_only=True)
        cfg = C.from_dict(state["config"])
        fam = families.of(cfg)
        assert state["step"] == 4 and set(state["nets"]) == set(fam.build()) and set(state["ema"]) == set(fam.ema)
        assert len(state["data_positions"]) == 2 and len(state["rng"]) == 2
        run_id = tracking.start_run(cfg, f"fam-{name}", uri)
        mv = registry.register_checkpoint(ckpt, tracking_uri=uri, run_id=run_id, lineage={})
        pulled = registry.pull(_uri_of(mv), tmp_path / f"pulled-{name}")
        gen = GM.load_folder(pulled)
        model = mlflow.pyfunc.load_model(_uri_of(mv))
        flavors = mlflow.models.get_model_info(_uri_of(mv)).flavors
        assert "python_function" in flavors and "pytorch" not in flavors      # tracking.export_pt2=false
        if gen.translates:
            _check_translator(name, gen, mv, ckpt, model, tmp_path)
            continue
        fixed = {"cls": 3} if gen.num_classes else {}
        want = gen.sample(6, seed=11, truncation=0.8, fixed=fixed)
        assert torch.equal(registry.load_generator(_uri_of(mv)).sample(6, seed=11, truncation=0.8, fixed=fixed), want)
        assert torch.equal(GM.from_checkpoint(ckpt).sample(6, seed=11, truncation=0.8, fixed=fixed), want)
        row = {"n": 6, "seed": 11, "truncation": 0.8, **({"class": 3.0} if fixed else {})}   # a double column (see the signature)
        got = model.predict(row)
        assert np.array_equal(got, want.permute(0, 2, 3, 1).numpy()), name
        assert want.float().std() > 0                   # not a blank image
        if gen.encodes:
            _check_encoder(name, gen, mv, ckpt, tmp_path)
        if gen.text_input:
            _check_prompt(name, gen, mv, ckpt, model, tmp_path)


def _check_prompt(name, gen, mv, ckpt, model, tmp_path):
    """A prompt gives the same images from the pulled folder, the registry URI, the checkpoint,
    the pyfunc model's prompt column and `ganforge sample --prompt`; another prompt, others."""
    from PIL import Image

    from pipeline import text
    from pipeline.data.captions import WORDS
    from pipeline.families import generator as GM
    from pipeline.tracking import registry

    key, T = gen.text_input, gen.nets.get("T")
    spec = gen.specs[key]
    # Words rank 0 read in its 4 steps (the trained encoder refuses others, test_textgan.py).
    seen = [w for w in WORDS if T is None or bool(T.seen[text.word_id(w, spec.buckets)])]
    prompt, other = f"red {seen[0]}, green {seen[-1]}, blue {seen[0]}", f"red {seen[-1]}, green {seen[0]}, blue {seen[-1]}"
    want = gen.sample(6, seed=11, fixed={key: prompt})
    # 4 steps in, a caption moves G's output by less than a uint8 level: compare the floats
    assert not torch.equal(gen.batch(0, 6, seed=11, fixed={key: other})[0],
                           gen.batch(0, 6, seed=11, fixed={key: prompt})[0]), name
    for loaded in (registry.load_generator(_uri_of(mv)), GM.from_checkpoint(ckpt)):
        assert torch.equal(loaded.sample(6, seed=11, fixed={key: prompt}), want), name
    got = model.predict({"n": 6, "seed": 11, "prompt": prompt})
    assert np.array_equal(got, want.permute(0, 2, 3, 1).numpy()), name
    from jobs import cli

    out = tmp_path / f"prompt-{name}.png"
    assert cli.main(["sample", _uri_of(mv), "--prompt", prompt, "--n", "6", "--seed", "11", "--out", str(out),
                     "--individual"]) == 0, name
    for i in range(6):
        png = np.asarray(Image.open(out.with_suffix("") / f"{i:04d}.png"))
        assert np.array_equal(png, want[i].permute(1, 2, 0).numpy()), (name, i)


def _check_translator(name, gen, mv, ckpt, model, tmp_path):
    """The same input gives the same translation from the pulled folder, the registry URI, the
    checkpoint, the pyfunc model and `ganforge translate` (PNG files in, PNG files out)."""
    from PIL import Image

    from pipeline.data.datasets import shapepairs
    from pipeline.families import generator as GM
    from pipeline.families.spec import Domain
    from pipeline.tracking import registry

    src, _ = shapepairs.generate(4, 16, 9, "outline")
    x = torch.from_numpy(src).permute(0, 3, 1, 2).contiguous()
    to = {"cyclegan": "outline", "stargan": "inverted"}.get(name)    # B -> A; a named StarGAN domain
    key = next((k for k, s in gen.specs.items() if isinstance(s, Domain)), None)
    fixed = None if to is None else {key: to}
    want = gen.translate(x, fixed=fixed)
    assert want.shape == (4, 3, 16, 16) and want.float().std() > 0, name
    assert torch.equal(registry.load_generator(_uri_of(mv)).translate(x, fixed=fixed), want), name
    assert torch.equal(GM.from_checkpoint(ckpt).translate(x, fixed=fixed), want), name
    got = model.predict(src, params={"to": to} if to else None)
    assert np.array_equal(got, want.permute(0, 2, 3, 1).numpy()), name
    if to is not None:          # another target, another image
        assert not torch.equal(gen.translate(x, fixed={key: "filled"}), want), name
    inp, out = tmp_path / f"in-{name}", tmp_path / f"out-{name}"
    inp.mkdir()
    for i, img in enumerate(src):
        Image.fromarray(img).save(inp / f"{i}.png")
    from jobs import cli       # the command line in this process (a subprocess adds ~8 s of imports)

    args = ["translate", _uri_of(mv), "--input", str(inp), "--out", str(out)]
    assert cli.main(args + (["--to", to] if to else [])) == 0, name
    for i in range(4):
        png = np.asarray(Image.open(out / f"{i}.png"))
        assert np.array_equal(png, want[i].permute(1, 2, 0).numpy()), (name, i)


def _check_encoder(name, gen, mv, ckpt, tmp_path):
    """The same images give the same latents and reconstructions from the pulled folder, the
    registry URI, the checkpoint and `ganforge encode` (PNG files in; latents.npz and PNGs out),
    and the reconstruction is G's image of those latents."""
    from PIL import Image

    from pipeline.data.datasets import shapestack
    from pipeline.families import generator as GM
    from pipeline.tracking import registry

    src, _ = shapestack.generate(4, 16, 9)
    x = torch.from_numpy(src).permute(0, 3, 1, 2).contiguous()
    z, rec = gen.reconstruct(x)
    assert z.shape == (4, gen.specs["z"].dim) and rec.shape == (4, 3, 16, 16), name
    assert torch.equal(gen.sample_latents(z), rec), name
    for other in (registry.load_generator(_uri_of(mv)), GM.from_checkpoint(ckpt)):
        z2, rec2 = other.reconstruct(x)
        assert torch.equal(z2, z) and torch.equal(rec2, rec), name
    inp, out = tmp_path / f"in-{name}", tmp_path / f"out-{name}"
    inp.mkdir()
    for i, img in enumerate(src):
        Image.fromarray(img).save(inp / f"{i}.png")
    (inp / "broken.png").write_bytes(b"not a png")     # named on stderr and skipped
    from jobs import cli

    assert cli.main(["encode", _uri_of(mv), "--input", str(inp), "--out", str(out)]) == 0, name
    saved = np.load(out / "latents.npz")
    assert list(saved["names"]) == [f"{i}.png" for i in range(4)], name
    assert np.array_equal(saved["z"], z.numpy()), name
    for i in range(4):
        assert np.array_equal(np.asarray(Image.open(out / f"{i}.png")), rec[i].permute(1, 2, 0).numpy()), (name, i)


def _score_in_process(prepared):
    """The same evaluation as one rank alone, in this process: no Ray, nothing gathered."""
    from pipeline.evaluation.in_loop import InLoopEval
    from pipeline.families import generator as GM

    cfg, prep, weights = prepared
    fam = families.of(cfg)
    G = GM.Generator(fam, {"G": fam.build()["G"]}, cfg)
    G.load_flat(torch.load(weights, weights_only=True))
    ev = InLoopEval(cfg, prep, rank=0, world=1, device="cpu", gather=lambda obj: [obj])
    threads = torch.get_num_threads()
    torch.set_num_threads(1)           # as a worker with 1 CPU runs: same kernels, same sums
    try:
        return ev.score(G)
    finally:
        torch.set_num_threads(threads)


@pytest.mark.slow
def test_two_ranks_score_a_generator_as_one_rank_alone(two_worker_fit, eval_prepared):
    # Two Ray Train ranks each score their slice of the samples and rank 0 combines them; one
    # rank alone (in this process) must give the same numbers.
    one, two = _score_in_process(eval_prepared), two_worker_fit[0]["eval"]
    assert one.keys() == two.keys() == {"fid", "kid", "coverage"}
    for name in one:
        for key, v in one[name].items():
            assert two[name][key] == pytest.approx(v, rel=1e-5, abs=1e-8), (name, key)
    assert 1 <= one["coverage"]["coverage_modes"] <= 96 and 0 <= one["coverage"]["oracle_accuracy"] <= 1


LOCAL_SCRIPT = r"""
import json, sys
class Block:                     # Ray and MLflow cannot be imported in this process
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in ("ray", "mlflow"):
            raise ImportError(f"{name} is blocked in this test")
sys.meta_path.insert(0, Block())
from pipeline import config as C
from pipeline.data import resolve_shards
from pipeline.engine.context import train_local
cfgs, shards, out = json.loads(sys.argv[1]), json.loads(sys.argv[2]), sys.argv[3]
result = {}
for name, d in cfgs.items():
    cfg = C.from_dict(d)
    urls, _ = resolve_shards(shards[cfg.data.builtin])
    _, ctx = train_local(cfg, {"urls": urls, "counts": None}, f"{out}/{name}", quiet=True)
    result[name] = ctx.reports
assert "ray" not in sys.modules and "mlflow" not in sys.modules
print("RESULT " + json.dumps(result))
"""


@pytest.mark.slow
def test_local_context_without_ray_or_mlflow_matches_one_ray_worker(ray_session, family_shards, tmp_path):
    cfgs = {n: C.to_dict(C.from_dict(family_config(n, 4, 1))) for n in families.names()}
    env = {**os.environ, "OMP_NUM_THREADS": "1"}        # a 1-CPU Ray worker runs one thread
    shards = json.dumps({k: str(v) for k, v in family_shards.items()})
    out = subprocess.run([sys.executable, "-c", LOCAL_SCRIPT, json.dumps(cfgs), shards,
                          str(tmp_path / "local")], capture_output=True, text=True, env=env, timeout=300)
    assert out.returncode == 0, out.stderr[-3000:]
    local = json.loads(out.stdout.split("RESULT ", 1)[1])
    assert (tmp_path / "local" / "dcgan" / "metrics.jsonl").is_file()
    assert sorted(p.name for p in (tmp_path / "local" / "dcgan").glob("checkpoint_*")) == [
        "checkpoint_0000002", "checkpoint_0000004"]
    seen, _ = _fit(ray_session, tmp_path, family_shards, 1, lambda n: [cfgs[n]])
    del seen
    ray_reports = _ray_reports(tmp_path)
    for name in families.names():
        loc = {r["step"]: r for r in local[name]}
        ray = {r["step"]: r for r in ray_reports[name]}
        assert sorted(loc) == sorted(ray) == [2, 4], name
        for step in (2, 4):
            for k in ("loss_d", "loss_g"):
                assert ray[step][k] == pytest.approx(loc[step][k], rel=1e-4, abs=1e-5), (name, step, k)


def _ray_reports(tmp_path) -> dict:
    """Each family's reported metrics from the 1-worker fit, read from the checkpoints it kept."""
    out = {}
    for d in (tmp_path / "fams-1").iterdir():
        out[d.name] = [json.loads((c / "report.json").read_text()) for c in sorted(d.glob("checkpoint_*"))]
    return out
