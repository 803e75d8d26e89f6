"""The metric filter the integrations share (batchlab/integrations/session.py)."""

from __future__ import annotations

from batchlab.integrations.session import numbers


def test_only_numbers_are_metrics_never_strings_python_would_parse():
    # A Tune trial id of digits and "_" ("13215_00001") parses as a float in Python: it
    # was stored as a metric in some runs (those whose id had no letter), not in others.
    got = numbers({"trial_id": "13215_00001", "loss": 0.5, "step": 3, "done": True, "s": "2.5"})
    assert got == {"loss": 0.5, "step": 3.0}
