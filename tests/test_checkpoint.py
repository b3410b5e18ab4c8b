import json
import random

import numpy as np
import pytest
import torch

from pipeline.engine import checkpoint


def _state():
    return {"step": 7, "G": {"w": torch.randn(3)}, "rng": checkpoint.rng_state(), "pos": {"raw": [1, 2]}}


def test_roundtrip_and_rng(tmp_path):
    torch.manual_seed(3); np.random.seed(3); random.seed(3)
    s = _state()
    checkpoint.save(s, tmp_path)
    a = (torch.rand(2), np.random.rand(), random.random())
    back = checkpoint.load(tmp_path)
    assert back["step"] == 7 and torch.equal(back["G"]["w"], s["G"]["w"])
    checkpoint.set_rng_state(back["rng"])
    b = (torch.rand(2), np.random.rand(), random.random())
    assert torch.equal(a[0], b[0]) and a[1:] == b[1:]
    assert json.loads((tmp_path / "meta.json").read_text())["step"] == 7


def test_unfinished_write_is_refused(tmp_path):
    checkpoint.save(_state(), tmp_path)
    (tmp_path / "meta.json").unlink()          # crash before the final rename
    with pytest.raises(checkpoint.CheckpointError, match="not a complete"):
        checkpoint.load(tmp_path)


def test_corrupt_state_is_refused(tmp_path):
    checkpoint.save(_state(), tmp_path)
    data = bytearray((tmp_path / "state.pt").read_bytes())
    data[len(data) // 2] ^= 0xFF
    (tmp_path / "state.pt").write_bytes(bytes(data))
    with pytest.raises(checkpoint.CheckpointError, match="sha256"):
        checkpoint.load(tmp_path)


class Payload:
    def __reduce__(self):
        return (exec, ("import pathlib; pathlib.Path('PWNED').write_text('x')",))


def test_pickle_payload_is_refused_not_executed(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    d = tmp_path / "ck"
    d.mkdir()
    torch.save({"step": 1, "evil": Payload()}, d / "state.pt")
    (d / "meta.json").write_text(json.dumps({"step": 1, "sha256": checkpoint.sha256_file(d / "state.pt")}))
    with pytest.raises(checkpoint.CheckpointError, match="refused"):
        checkpoint.load(d)
    assert not (tmp_path / "PWNED").exists()


def test_local_resume_skips_a_corrupt_newest_checkpoint_and_names_both(tmp_path, capsys):
    from pipeline.engine.context import LocalContext

    class Cfg:   # what LocalContext reads of a config
        class train:
            keep_checkpoints = 3
    run = tmp_path / "run"
    for step in (2, 4):
        checkpoint.save({"step": step}, run / f"checkpoint_{step:07d}")
    state = run / "checkpoint_0000004" / checkpoint.STATE
    state.write_bytes(state.read_bytes()[:-8] + b"\x00" * 8)
    with LocalContext(Cfg, run).restore() as s:
        assert s["step"] == 2
    err = capsys.readouterr().err
    assert "checkpoint_0000004 failed its integrity check" in err and "checkpoint_0000002" in err
    older = run / "checkpoint_0000002" / checkpoint.STATE
    older.write_bytes(b"garbage")
    with pytest.raises(checkpoint.CheckpointError) as e:
        with LocalContext(Cfg, run).restore():
            pass
    msg = str(e.value)
    assert "no intact checkpoint" in msg and "checkpoint_0000004" in msg and "checkpoint_0000002" in msg
    assert "--resume-from" in msg
