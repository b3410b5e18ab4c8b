"""Full training state <-> a checkpoint folder, written atomically and verified on load.

Layout: `state.pt` (tensors and plain Python only, so it loads with `weights_only=True`: no
pickle code runs) and `meta.json` (step, sha256 of state.pt, config). meta.json is written last
by rename, so a folder without a valid meta.json is an unfinished write and is refused.
Ray Train only registers a checkpoint folder after `report` has copied it whole, so the run's
"latest" never points at a partial one.
"""
from __future__ import annotations

import hashlib
import json
import os
import random
from pathlib import Path

import numpy as np
import torch

STATE, META = "state.pt", "meta.json"


class CheckpointError(RuntimeError):
    pass


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def _atomic_write(path: Path, write) -> None:
    tmp = path.with_name(path.name + ".tmp")
    with open(tmp, "wb") as f:
        write(f)
        f.flush()
        os.fsync(f.fileno())
    os.replace(tmp, path)


def save(state: dict, directory: str | Path, meta: dict | None = None) -> Path:
    d = Path(directory)
    d.mkdir(parents=True, exist_ok=True)
    _atomic_write(d / STATE, lambda f: torch.save(state, f))
    info = {"step": int(state.get("step", 0)), "sha256": sha256_file(d / STATE), **(meta or {})}
    _atomic_write(d / META, lambda f: f.write(json.dumps(info, indent=1).encode()))
    return d


def load(directory: str | Path, map_location="cpu") -> dict:
    d = Path(directory)
    if not (d / META).is_file() or not (d / STATE).is_file():
        raise CheckpointError(f"{d}: not a complete ganforge checkpoint (needs {STATE} and {META})")
    meta = json.loads((d / META).read_text())
    actual = sha256_file(d / STATE)
    if actual != meta.get("sha256"):
        raise CheckpointError(f"{d / STATE}: sha256 {actual[:12]}... does not match {META} "
                              f"({str(meta.get('sha256'))[:12]}...); the file is corrupt or was altered")
    try:
        return torch.load(d / STATE, map_location=map_location, weights_only=True)
    except Exception as e:  # weights_only refuses pickled code: report it, never execute it
        raise CheckpointError(f"{d / STATE}: refused to load ({type(e).__name__}: {e})") from None


# RNG states as tensors and ints only, so that weights_only loading accepts them.

def rng_state() -> dict:
    kind, keys, pos, has_gauss, gauss = np.random.get_state()
    version, mt, py_gauss = random.getstate()
    out = {"torch": torch.get_rng_state(),
           "numpy": {"keys": torch.from_numpy(keys.astype(np.int64)), "pos": int(pos),
                     "has_gauss": int(has_gauss), "gauss": float(gauss)},
           "python": {"version": version, "mt": list(mt), "gauss": py_gauss}}
    if torch.cuda.is_available():
        out["cuda"] = torch.cuda.get_rng_state_all()
    return out


def set_rng_state(s: dict) -> None:
    torch.set_rng_state(s["torch"])
    n = s["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"],
                         n["has_gauss"], n["gauss"]))
    p = s["python"]
    random.setstate((p["version"], tuple(p["mt"]), p["gauss"]))
    if "cuda" in s and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(s["cuda"])


# Training state by name: networks, their EMA copies, optimizers and the family's own state, so
# any family's checkpoint has the same shape. Format 1 (before families) held one G/D pair.
FORMAT = 2


def pack(*, step: int, images_seen: int, nets: dict, emas: dict, opts: dict, family_state: dict,
         data_positions, rng, config: dict) -> dict:
    unwrap = lambda m: getattr(m, "module", m)  # noqa: E731
    return {"format": FORMAT, "step": step, "images_seen": images_seen,
            "nets": {k: unwrap(m).state_dict() for k, m in nets.items()},
            "ema": {k: m.state_dict() for k, m in emas.items()},
            "optim": {k: o.state_dict() for k, o in opts.items()},
            "family": family_state, "data_positions": data_positions, "rng": rng, "config": config}


def unpack(state: dict, where: str = "checkpoint") -> dict:
    """A loaded state in the current format; format 1 (G, D, G_ema, opt_g, opt_d) converts."""
    fmt = state.get("format", 1)
    if fmt == FORMAT:
        return state
    old = {"G": "nets", "D": "nets", "G_ema": "ema", "opt_g": "optim", "opt_d": "optim"}
    if fmt == 1 and set(old) & set(state):
        out = {k: v for k, v in state.items() if k not in old}
        out.update(format=FORMAT, nets={}, ema={}, optim={}, family={})
        for k, section in old.items():
            if k in state:
                out[section][{"G_ema": "G", "opt_g": "G", "opt_d": "D"}.get(k, k)] = state[k]
        return out
    raise CheckpointError(f"{where}: checkpoint format {fmt!r} with keys {sorted(state)[:8]} is not one "
                          f"this ganforge reads (format 1 or {FORMAT}); resume it with the ganforge "
                          "version that wrote it, or start a new run")


def load_newest_intact(candidates: list, open_dir, map_location="cpu", warn=print) -> dict | None:
    """The newest candidate that passes its integrity check. `candidates` are newest first;
    `open_dir(c)` is a context manager yielding a local folder for candidate c. A corrupt one is
    skipped with a warning naming it and the one used instead; none intact raises one error that
    lists them all and says how to start from a chosen one."""
    bad, name = [], lambda c: getattr(c, "path", c)   # a Ray Checkpoint or a folder
    for c in candidates:
        try:
            with open_dir(c) as d:
                state = load(d, map_location=map_location)
        except CheckpointError as e:
            bad.append((name(c), str(e)))
            continue
        for b, why in bad:
            warn(f"checkpoint {b} failed its integrity check ({why.split(': ', 1)[-1][:160]}); "
                 f"resuming from the newest intact one, {name(c)}")
        return state
    if bad:
        listed = "; ".join(f"{b} ({why.split(': ', 1)[-1][:120]})" for b, why in bad)
        raise CheckpointError(f"no intact checkpoint to resume from: {listed}. Start a new run "
                              "(another train.run_name), or start from a folder you trust with "
                              "--resume-from CKPT_DIR")
    return None
