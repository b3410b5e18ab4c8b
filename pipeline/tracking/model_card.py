"""MODEL_CARD.md for a pulled generator: what it is, where it came from, how to sample it."""
from __future__ import annotations

import time
from pathlib import Path


def render_card(m: dict, mv=None, source: str = "", folder: Path | None = None) -> str:
    """`m`: the generator manifest; `mv`: its registry ModelVersion when pulled from models:/."""
    tags = dict(mv.tags) if mv is not None else {}
    title = f"{mv.name} v{mv.version}" if mv is not None else f"{m['family']} generator"
    inputs = m.get("inputs") or {}
    translator = any(v["kind"] == "SourceImage" for v in inputs.values())
    domains = next((v["names"] for v in inputs.values() if v["kind"] == "Domain"), None)
    cls = f"{m['num_classes']} classes" if m["num_classes"] else "unconditional"
    what = (f"an image-to-image translator: {m['resolution']} px RGB in and out"
            + (f", target domains {', '.join(domains)}" if domains else "")
            + f", weights after {m['step']} training steps") if translator else (
        f"generator: {m['resolution']} px RGB, inputs {', '.join(inputs or ['z'])}, {cls}, "
        f"EMA weights after {m['step']} training steps")
    lines = [f"# {title}", "", f"A ganforge **{m['family']}** {what}.", ""]
    if mv is not None:
        created = time.strftime("%Y-%m-%d %H:%M:%S UTC", time.gmtime(mv.creation_timestamp / 1000))
        aliases = ", ".join(mv.aliases or []) or "none"
        lines += [f"Pulled from `{source}`; registered {created}; aliases: {aliases}.", ""]
    lineage = {"config hash": m["config_hash"], "ganforge version": m["ganforge_version"],
               "git commit": tags.get("ganforge.git_commit", "unknown"),
               "data manifest sha256": tags.get("ganforge.data_sha256", "unknown"),
               "training run": tags.get("ganforge.run_id") or getattr(mv, "run_id", None) or "unknown",
               "weights sha256": m["files"]["weights.pt"]}
    lines += ["## Lineage", "", "| | |", "|---|---|"] + [f"| {k} | `{v}` |" for k, v in lineage.items()]
    metrics = {k: v for k, v in tags.items() if k.startswith("eval.")}
    lines += ["", "## Metrics", ""]
    if metrics:
        lines += ["| metric | value |", "|---|---|"] + [f"| {k[5:]} | {v} |" for k, v in sorted(metrics.items())]
    else:
        lines += ["No evaluation metrics were recorded for this version."]
    where = folder or "DIR"
    cls_flag = " --class 0" if m["num_classes"] else ""
    if translator:
        to = f" --to {domains[-1]}" if domains else ""
        lines += ["", "## Translating", "", "```",
                  f"ganforge translate {where} --input photos/ --out translated/{to}", "```", "",
                  "In Python (the same images give the same output):", "", "```python",
                  "from pipeline.families.generator import load_folder",
                  f"G = load_folder({str(where)!r})",
                  "out = G.translate(images)   # uint8 N x 3 x H x W in, uint8 N x 3 x R x R out", "```", ""]
        lines += _files()
        return "\n".join(lines)
    lines += ["", "## Sampling", "", "```",
              f"ganforge sample {where} --n 64 --seed 0{cls_flag} --truncation 0.7 --out grid.png", "```", "",
              "In Python (the same seed gives the same images):", "", "```python",
              "from pipeline.families.generator import load_folder",
              f"G = load_folder({str(where)!r})",
              "images = G.sample(16, seed=0)   # uint8, N x 3 x H x W", "```", ""] + _files()
    return "\n".join(lines)


def _files() -> list[str]:
    return ["## Files", "",
            "- `weights.pt`: the sample networks' weights (EMA where the family keeps one), one flat "
            "state dict (load with `torch.load(..., weights_only=True)`)",
            "- `config.yaml`: the resolved training config; its `model` section rebuilds the network",
            "- `ganforge_model.json`: family, config hash and the sha256 of each file (checked on load)",
            ""]
