"""Row lists of a resume state as columns (workers/resume_rows.py): the same rows back,
exactly, through torch.save / torch.load(weights_only=True)."""

from __future__ import annotations

import io
import math

import torch

from workers.resume_rows import compact_rows, expand_rows


def _round_trip(st: dict) -> dict:
    buf = io.BytesIO()
    torch.save({"state": compact_rows(st)}, buf)
    return expand_rows(torch.load(io.BytesIO(buf.getvalue()), weights_only=True)["state"])


def test_rows_come_back_exactly():
    steps = [
        {"step": i + 1, "epoch": i // 3 + 1, "lr": 0.1 / (i + 1), "update_norm": math.nan if i == 2 else 1 / 3**i,
         "grad_norm": 1e300 * (i + 1), "batch_loss": -0.0}
        for i in range(7)
    ]  # fmt: skip
    layers = [{"layer": f"l{i}", "dist_from_init": float(i), "numel": 10 * i} for i in range(3)]
    mixed = [{"a": 1, "b": None}, {"a": 2.5, "b": "x"}, {"a": True, "b": None}]
    st = {"epoch": 3, "best_val": math.inf, "steps": steps, "layers": layers, "epochs": mixed,
          "probes": [], "metrics": [{"k": 1}]}  # fmt: skip
    back = _round_trip(st)
    assert back.keys() == st.keys()
    for key in ("steps", "layers", "epochs", "metrics"):
        assert len(back[key]) == len(st[key])
        for got, want in zip(back[key], st[key], strict=True):
            assert list(got) == list(want)  # same keys, same order
            for k in want:
                g, w = got[k], want[k]
                assert type(g) is type(w), (key, k, g, w)
                assert (g == w) or (isinstance(w, float) and math.isnan(w) and math.isnan(g))
    assert math.copysign(1.0, back["steps"][0]["batch_loss"]) == -1.0  # -0.0 kept
    # a uniform list is stored as columns (tensors), not as one object per value
    packed = compact_rows(st)["steps"]
    assert all(isinstance(c, torch.Tensor) for c in packed["columns"])


def test_a_state_saved_before_loads_as_it_is():
    st = {"epoch": 1, "steps": [{"step": 1, "lr": 0.1}, {"step": 2, "lr": 0.1}]}
    assert expand_rows(st) == st
