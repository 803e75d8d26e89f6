"""The cost of batchlab's trial API per epoch, against the plain script it replaces.

Same run, same machine, alternating: `examples/custom/plain_train.py` (a plain PyTorch loop:
MLP 20-64-64-4 on 1,600 synthetic examples, batch 32, SGD) and the same loop as a batchlab
trainable (`examples/custom/train.py`, run by `workers.train.run_trial` in this process, as
a Ray task runs it), (a) without checkpoints and (b) with a resume checkpoint written to a
local storage root every epoch, plus batchlab's measurements (distance from init per epoch
and per layer, the metrics row). Each variant's wall time for `--epochs` epochs, median of
`--repeats`; the overhead per epoch is (batchlab - plain) / epochs. Also prints the lines
changed between the two scripts (difflib).

    python benchmarks/trial_api_overhead.py [--epochs 30] [--repeats 5] [--json out.json]
"""

from __future__ import annotations

import argparse
import difflib
import json
import platform
import statistics
import sys
import tempfile
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
CUSTOM = ROOT / "examples" / "custom"
sys.path[:0] = [str(ROOT), str(CUSTOM)]


def changed_lines() -> dict[str, int]:
    """Lines of plain_train.main vs train.main: kept, removed, added (difflib, code only)."""

    def body(path: Path, start: str) -> list[str]:
        lines = path.read_text().splitlines()
        i = next(k for k, s in enumerate(lines) if s.startswith(start))
        out = [lines[i].strip()]
        for s in lines[i + 1 :]:
            code = s.split("#", 1)[0].rstrip()
            if code and not code[0].isspace():
                break  # the function ended
            if code.strip():
                out.append(code.strip())
        return out

    a = body(CUSTOM / "plain_train.py", "def main(")
    b = body(CUSTOM / "train.py", "def main(")
    sm = difflib.SequenceMatcher(a=a, b=b, autojunk=False)
    kept = sum(m.size for m in sm.get_matching_blocks())
    return {
        "plain_lines": len(a),
        "batchlab_lines": len(b),
        "kept": kept,
        "removed": len(a) - kept,
        "added": len(b) - kept,
    }


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--epochs", type=int, default=30)
    ap.add_argument("--repeats", type=int, default=5)
    ap.add_argument("--json", default=None)
    args = ap.parse_args()

    import torch

    torch.set_num_threads(1)
    import plain_train

    from warehouse.layout import Layout
    from workers.checkpoint_io import TrialCheckpoints
    from workers.config import TrialConfig
    from workers.train import run_trial
    from workers.user import use_code_dir

    use_code_dir(str(CUSTOM))
    cfg = TrialConfig.model_validate(
        {
            "trainable": "./train.py:main",
            "model": {"factory": "./nets.py:mlp", "kwargs": {"width": 64}},
            "dataset": {"loader": "./data.py:blobs", "kwargs": {"n": 2000}},
            "batch_size": 32,
            "lr": 0.05,
            "max_epochs": args.epochs,
            "measure": {"checkpoints": False},
        }
    )
    tmp = tempfile.mkdtemp(prefix="trial-api-")
    layout = Layout.open(tmp)

    def plain() -> None:
        plain_train.main(max_epochs=args.epochs, log=lambda *a: None)

    def batchlab_api() -> None:
        r = run_trial(cfg)
        assert r.status == "completed", r.error

    counter = iter(range(10**6))

    def batchlab_ckpt() -> None:
        ck = TrialCheckpoints(layout, "bench", f"t{next(counter)}")
        r = run_trial(cfg, checkpoints=ck)
        assert r.status == "completed", r.error

    variants = {"plain": plain, "batchlab": batchlab_api, "batchlab_checkpoints": batchlab_ckpt}
    for fn in variants.values():  # warm-up: imports, the loader cache, allocator
        fn()
    times: dict[str, list[float]] = {k: [] for k in variants}
    for _ in range(args.repeats):
        for name, fn in variants.items():
            t0 = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - t0)
    med = {k: statistics.median(v) for k, v in times.items()}
    out = {
        "benchmark": "trial_api_overhead",
        "epochs": args.epochs,
        "repeats": args.repeats,
        "machine": f"{platform.machine()} {platform.processor() or ''}".strip(),
        "torch_threads": 1,
        "seconds": times,
        "median_s": med,
        "per_epoch_ms": {k: 1000 * v / args.epochs for k, v in med.items()},
        "overhead_per_epoch_ms": {
            k: 1000 * (med[k] - med["plain"]) / args.epochs
            for k in ("batchlab", "batchlab_checkpoints")
        },
        "ratio_to_plain": {k: med[k] / med["plain"] for k in med},
        "changed_lines": changed_lines(),
    }
    try:
        import os

        out["load_avg_1m"] = os.getloadavg()[0]
    except OSError:
        pass
    print(json.dumps(out, indent=2))
    if args.json:
        Path(args.json).write_text(json.dumps(out, indent=2) + "\n")


if __name__ == "__main__":
    main()
