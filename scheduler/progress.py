"""The `batchlab run` progress bar, in trial-epochs: running trials advance it epoch by epoch
(read from the live area, warehouse/live.py), so a pack whose members finish together
does not make it jump, and a trial that stops early takes its unrun epochs off the total.
The postfix counts trials (done, running, failed, diverged) and shows the running packs'
epochs."""

from __future__ import annotations

import time
from collections.abc import Sequence
from typing import Any

from warehouse import live
from warehouse.layout import Layout
from workers.config import TrialConfig

POLL_S = 2.0


class EpochBar:
    def __init__(
        self,
        layout: Layout,
        experiment: str,
        trials: Sequence[TrialConfig],
        *,
        enabled: bool,
        out: Any,
    ):
        from tqdm import tqdm

        self.layout, self.experiment = layout, experiment
        self.max = {t.trial_id: t.max_epochs for t in trials}
        self.done: dict[str, int] = {}
        self.seen: dict[str, int] = {}
        self.running: dict[str, dict[str, Any]] = {}
        self.counts = {"completed": 0, "diverged": 0, "failed": 0}
        self._run = live.active_run(layout, experiment)
        self._last = 0.0
        self.bar = tqdm(
            total=sum(self.max.values()),
            unit="epoch",
            disable=not enabled,
            file=out,
            dynamic_ncols=True,
            smoothing=0.1,
        )

    def _n(self) -> int:
        return sum(self.done.values()) + sum(e for t, e in self.seen.items() if t not in self.done)

    def _total(self) -> int:
        return sum(self.done.values()) + sum(m for t, m in self.max.items() if t not in self.done)

    def _redraw(self) -> None:
        n, total = self._n(), self._total()
        self.bar.total = total
        if n > self.bar.n:
            self.bar.update(n - self.bar.n)
        packs: dict[str, int] = {}
        for s in self.running.values():
            if s.get("pack_id"):
                packs[s["pack_id"]] = s.get("epoch", 0)
        post = {
            "done": self.counts["completed"],
            "running": len(self.running),
            "failed": self.counts["failed"],
            "diverged": self.counts["diverged"],
        }
        if packs:
            post["packs"] = ",".join(f"e{e}" for e in sorted(packs.values()))
        self.bar.set_postfix(post, refresh=False)
        self.bar.refresh()

    def poll(self, force: bool = False) -> None:
        """Read the live statuses (at most every POLL_S seconds unless `force`)."""
        now = time.monotonic()
        if not force and now - self._last < POLL_S:
            return
        self._last = now
        try:
            statuses = live.trial_statuses(self.layout, self.experiment)
        except OSError:
            return
        self.running = {}
        for s in statuses:
            tid = s.get("trial_id")
            if tid in self.max and tid not in self.done:
                self.seen[tid] = max(self.seen.get(tid, 0), int(s.get("epoch") or 0))
                if s.get("state") == "running":
                    self.running[tid] = s
        self._redraw()

    def finished(self, rec: dict[str, Any]) -> None:
        """A trial's final record from its task (status, epochs_run)."""
        tid = rec["trial_id"]
        status = rec.get("status", "failed")
        self.counts[status] = self.counts.get(status, 0) + 1
        epochs = rec.get("epochs_run")
        if epochs is None:
            epochs = self.seen.get(tid, 0)
        self.done[tid] = min(int(epochs), self.max.get(tid, int(epochs)))
        if self._run is not None:
            self._run.mark(tid, status)
        self.running.pop(tid, None)
        self._redraw()

    def close(self) -> None:
        self.bar.close()
