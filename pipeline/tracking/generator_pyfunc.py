"""MLflow "models from code" entry for a ganforge generator: MLflow copies this file into the
logged model and runs it on load, so no pickled Python object is stored or unpickled. It needs
the ganforge package importable (the network classes live in `models`).

`mlflow.pyfunc.load_model(uri).predict(...)` takes a table or dict with columns n, seed and
optional class, truncation, the family's codes (InfoGAN: cat0, cont0, ...) and prompt (text-to-
image models: the caption of the row's images), one request per row, and returns uint8 images
N x H x W x 3: the same bytes as `ganforge sample` for the seed.

A translator (pix2pix, CycleGAN, StarGAN) takes images instead: uint8 N x H x W x 3 (any size,
resized to the model's as `ganforge translate` does) and the optional param `to` (a target domain
name or index: `predict(images, params={"to": "filled"})`), and returns the translations, uint8
N x R x R x 3: the same bytes as `ganforge translate` for the same images.
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
        from pipeline.families.generator import load_folder

        # All artifacts sit in one folder; the manifest in it checks every file's sha256.
        self.G = load_folder(Path(context.artifacts["manifest"]).parent)

    def predict(self, context, model_input: pd.DataFrame, params=None) -> np.ndarray:
        if self.G.translates:
            return self._translate(model_input, params or {})
        out = []
        text = self.G.text_input
        fixable = [k for k in self.G.specs if k != "z"]        # the inputs' names; the columns':
        names = {"class": "cls", "prompt": text or "prompt"}
        public = {v: k for k, v in names.items()}
        for r in _rows(model_input):
            trunc = _opt(r.get("truncation"))
            fixed = {names.get(k, k): _opt(v) for k, v in r.items() if k not in ("n", "seed", "truncation")}
            unknown = [k for k, v in fixed.items() if v is not None and k not in fixable]
            if "cls" in unknown:
                raise ValueError(f"class: {fixed['cls']} given but the generator is unconditional")
            if unknown:
                raise ValueError(f"{unknown[0]}: not an input of this generator "
                                 f"(columns: {', '.join(public.get(k, k) for k in fixable) or 'none'})")
            imgs = self.G.sample(int(r.get("n", 1)), int(_opt(r.get("seed")) or 0),
                                 None if trunc is None else float(trunc), fixed)
            out.append(imgs.permute(0, 2, 3, 1).numpy())
        return np.concatenate(out)

    def _translate(self, model_input, params: dict) -> np.ndarray:
        import torch

        x = model_input.get("image") if isinstance(model_input, dict) else model_input
        x = np.asarray(x)
        if x.dtype != np.uint8 or x.ndim != 4 or x.shape[-1] != 3:
            raise ValueError(f"images: expected uint8 N x H x W x 3, got {x.dtype} {x.shape}")
        to = _opt(params.get("to"))
        fixed = None
        if to not in (None, ""):
            key = self.G.domain_input
            if key is None:
                raise ValueError(f"to: {to!r} given but this translator has one direction only")
            fixed = {key: to}
        y = self.G.translate(torch.from_numpy(np.ascontiguousarray(x)).permute(0, 3, 1, 2), fixed=fixed)
        return y.permute(0, 2, 3, 1).numpy()


mlflow.models.set_model(GeneratorModel())
