"""MLflow "models from code" entry for a ganforge generator: MLflow copies this file into the
logged model and runs it on load, so no pickled Python object is stored or unpickled. It needs
the ganforge package importable (the network classes live in `models`).

`mlflow.pyfunc.load_model(uri).predict(...)` takes a table or dict with columns n, seed and
optional class, truncation (one request per row) and returns uint8 images N x H x W x 3.
"""
from __future__ import annotations

import math
from pathlib import Path

import mlflow
import numpy as np
import pandas as pd


def _opt(v):
    """Optional column value: missing or NaN -> None."""
    if v is None or (isinstance(v, float) and math.isnan(v)):
        return None
    return v


def _rows(model_input) -> list[dict]:
    if isinstance(model_input, dict):
        model_input = [model_input]
    if hasattr(model_input, "to_dict"):          # pandas DataFrame
        model_input = model_input.to_dict(orient="records")
    return [dict(r) for r in model_input]


class GeneratorModel(mlflow.pyfunc.PythonModel):
    def load_context(self, context):
        from pipeline.tracking.generator_model import load_folder

        # All artifacts sit in one folder; the manifest in it checks every file's sha256.
        self.G = load_folder(Path(context.artifacts["manifest"]).parent)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        from pipeline.families.sampling import sample

        out = []
        for r in _rows(model_input):
            cls, trunc = _opt(r.get("class")), _opt(r.get("truncation"))
            if cls is not None and float(cls) != int(cls):
                raise ValueError(f"class: {cls} is not a whole number")
            imgs = sample(self.G, int(r.get("n", 1)), int(_opt(r.get("seed")) or 0),
                          None if cls is None else int(cls), None if trunc is None else float(trunc))
            out.append(imgs.permute(0, 2, 3, 1).numpy())
        return np.concatenate(out)


mlflow.models.set_model(GeneratorModel())
