"""The order of a user loop's epochs and which rows belong to them (workers/trial_api.py).

`trial.log_epoch(1)`, `(3)`, `(2)` used to lose epoch 3 and the step rows logged before it;
logging an epoch twice stored half of its step rows; nothing said so (issue 24). Here:
`epoch_problem` says why an epoch cannot be logged (refused loudly by the trial API), and
`file_rows` gives the step and metric rows logged since the last epoch to the epoch being
logged, replacing older rows only when a resumed attempt goes back.
"""

from __future__ import annotations

from typing import Any

Rows = list[dict[str, Any]]


def epoch_problem(epoch: Any, last: int, max_epochs: int, may_go_back: bool) -> str | None:
    """Why `epoch` cannot follow the last logged epoch `last`, or None. It must be an int
    >= 1, at most max_epochs, and after `last` unless `may_go_back` (the first epoch a
    resumed attempt logs: a loop that restarts from an older state or from scratch)."""
    if isinstance(epoch, bool) or not isinstance(epoch, int) or epoch < 1:
        return f"trial.log_epoch: epoch={epoch!r}; expected an int >= 1"
    if epoch > max_epochs:
        return (
            f"trial.log_epoch: epoch={epoch} is beyond max_epochs={max_epochs} (the grid's "
            "budget); stop at trial.max_epochs"
        )
    if epoch <= last and not may_go_back:
        return (
            f"trial.log_epoch: epoch={epoch} after epoch {last}; epochs must increase (log "
            f"each epoch once, in order: {last + 1} comes next). Rows are replaced only by "
            "the first epoch a resumed attempt logs"
        )
    return None


def first_after(rows: Rows, epoch: int) -> int:
    """Index of the first row labelled after `epoch` (rows of the epoch in progress)."""
    return next((i for i, r in enumerate(rows) if r["epoch"] > epoch), len(rows))


def file_rows(rows: Rows, pending: int, epoch: int, replace: bool) -> Rows:
    """`rows` with those from index `pending` on (logged since the last epoch) labelled
    `epoch`; with `replace`, older rows of `epoch` and later are dropped (a resumed attempt
    re-running them). No row logged since the last epoch is ever dropped."""
    new = rows[pending:]
    for r in new:
        r["epoch"] = epoch
    old = rows[:pending]
    if replace:
        old = [r for r in old if r["epoch"] < epoch]
    return old + new
