"""The trial's contract, pure Python: what every way of training a trial shares.

A trial is trained by one of three drivers that differ only in how they step:

- lone (`workers/train.py`): one model, batchlab's loop;
- packed (`workers/pack.py` and `workers/pack_*.py`): many members vmapped as one stack;
- user loop (`workers/trial_api.py`): the user's own loop reporting through `batchlab.trial`.

What they share lives here, with no torch and no Ray imported (the scheduler, the app and
tests may import it cheaply):

- `state.TrialState`: the typed running state of one trial (replacing the dict of string
  keys each driver used to copy), its resume form (`as_saved` / `from_saved`, the
  checkpoint's `state` dict, unchanged on disk), and the epoch-end bookkeeping: divergence
  of the epoch's batch losses, validation (early stopping, best values, target error), the
  epoch's stop decision and plateau decay, probe and checkpoint decisions;
- `rows`: the rows a trial writes (epoch, step, layer rows and the summary of the `trials`
  row), built once from the state, their keys the warehouse schema's column names
  (`warehouse/schemas.py`; tests/workers/test_equivalence.py checks the names);
- `result.TrialResult`: everything a trial produced, handed to the warehouse.

The config stays `workers.config.TrialConfig` (identity in `workers/identity.py`). Why here,
in workers/: the workers are the only layer that runs a trial, and every other layer already
imports `workers.config`; a pure-Python package beside it keeps the import graph a tree.
"""

from workers.trial.result import TrialResult
from workers.trial.rows import SUMMARY_COLUMNS, epoch_row, layer_rows, step_rows, summary_row
from workers.trial.state import TrialState, first_divergent, is_divergent

__all__ = [
    "SUMMARY_COLUMNS",
    "TrialResult",
    "TrialState",
    "epoch_row",
    "first_divergent",
    "is_divergent",
    "layer_rows",
    "step_rows",
    "summary_row",
]
