"""`batchlab import tensorboard DIR`: TensorBoard event files, read with the `tensorboard`
package's own event reader (no TensorFlow, no torch).

A run is a folder under DIR holding `events.out.tfevents.*` files; each run is a trial.
Scalars are read in full (no reservoir sampling); the TensorBoard step of a scalar is the
epoch (0-based steps are shifted to batchlab's 1-based epochs). Hyperparameters come from
the hparams plugin (`SummaryWriter.add_hparams`, which writes them into a sub-folder of the
run: merged into its parent run) and from `key=value` parts of the run's path (e.g.
`bs=32,lr=0.1/` or `batch_size=32_lr=0.1`). Epoch times are the differences of the events'
wall times (the first from the run's first event), so they include evaluation.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

from warehouse.importers import SourceTrial, timestamp
from warehouse.importers.reading import ImportError_, inside

_KV = re.compile(r"([A-Za-z][A-Za-z0-9_.]*?)=([^,/=]+?)(?=,|_[A-Za-z][A-Za-z0-9_.]*=|/|$)")


def _event_dirs(root: Path) -> list[Path]:
    """Run folders: those holding event files. An event file that is a link out of `root`
    is an error (the reader reads every event file of a folder: it cannot skip one)."""
    real = root.resolve()
    out = set()
    for p in root.rglob("events.out.tfevents.*"):
        if not inside(p, real):
            raise ImportError_(
                f"{p}: a link out of the imported folder {real}; links out of it are not "
                "followed (copy the file in, or move the link aside)"
            )
        if p.is_file():
            out.add(p.parent)
    return sorted(out)


def _load(d: Path):
    from tensorboard.backend.event_processing import event_accumulator as ea

    acc = ea.EventAccumulator(str(d), size_guidance={ea.SCALARS: 0, ea.TENSORS: 0})
    acc.Reload()
    return acc


def _hparams(acc) -> dict[str, Any]:
    from tensorboard.plugins.hparams import plugin_data_pb2

    out: dict[str, Any] = {}
    try:
        contents = acc.PluginTagToContent("hparams")
    except KeyError:  # a run without hyperparameters
        return out
    for content in contents.values():
        data = plugin_data_pb2.HParamsPluginData.FromString(content)
        if data.HasField("session_start_info"):
            for k, v in data.session_start_info.hparams.items():
                kind = v.WhichOneof("kind")
                out[k] = getattr(v, kind) if kind else None
    return out


def _scalars(acc) -> dict[str, list]:
    """tag -> [(wall_time, step, value)] for classic scalars and scalar tensors."""
    tags = acc.Tags()
    out = {t: [(e.wall_time, e.step, e.value) for e in acc.Scalars(t)] for t in tags["scalars"]}
    for t in tags.get("tensors", []):
        if t.startswith("_hparams_"):
            continue
        try:
            import numpy as np
            from tensorboard.util import tensor_util

            vals = []
            for e in acc.Tensors(t):
                arr = tensor_util.make_ndarray(e.tensor_proto)
                if arr.size == 1 and np.issubdtype(arr.dtype, np.number):
                    vals.append((e.wall_time, e.step, float(arr.reshape(()))))
            if vals:
                out.setdefault(t, vals)
        except Exception:  # a non-scalar tensor: not a metric
            continue
    return out


def read(path: str | Path) -> list[SourceTrial]:
    """Every TensorBoard run under `path`."""
    root = Path(path)
    if not root.is_dir():
        raise ImportError_(f"{root}: not a directory (give a TensorBoard log folder)")
    dirs = _event_dirs(root)
    loaded = {d: _load(d) for d in dirs}
    hp = {d: _hparams(a) for d, a in loaded.items()}
    # add_hparams' sub-folder: its hyperparameters belong to the run above it.
    merged = set()
    for d in dirs:
        if hp[d] and d.parent in loaded and d.parent != d:
            hp[d.parent] = {**hp[d], **hp[d.parent]}
            merged.add(d)
    trials = []
    for d in dirs:
        if d in merged:
            continue
        acc = loaded[d]
        rel = d.relative_to(root).as_posix() if d != root else "."
        params = {k: v for k, v in _KV.findall(rel)}
        params.update(hp[d])
        series = _scalars(acc)
        by_step: dict[int, dict[str, Any]] = {}
        wall: dict[int, float] = {}
        for tag, points in series.items():
            for w, step, v in points:
                by_step.setdefault(step, {})[tag] = v
                wall[step] = max(wall.get(step, w), w)
        try:
            start = acc.FirstEventTimestamp()
        except ValueError:
            start = min(wall.values(), default=None)
        epochs, prev = [], start
        for step in sorted(by_step):
            row = {"epoch": step, **by_step[step]}
            if prev is not None:
                row["epoch_time_s"] = wall[step] - prev
                row["elapsed_s"] = wall[step] - start
            prev = wall[step]
            epochs.append(row)
        info = {
            "started_at": timestamp(start),
            "finished_at": timestamp(max(wall.values())) if wall else None,
            "wall_time_s": (max(wall.values()) - start) if wall and start is not None else None,
        }
        info["file"] = str(d)
        trials.append(SourceTrial(f"{root.resolve().name}/{rel}", params, epochs, info))
    return trials


def default_experiment(path: str | Path) -> str:
    return Path(path).resolve().name
