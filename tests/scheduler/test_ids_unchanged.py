"""Every example grid's trial ids and config hashes equal the ones recorded before the
trial-contract refactor (issue 25): a changed id would re-run every stored trial, or worse,
take a different configuration for a stored one. Re-record only on purpose, with
`python -m tests.fixtures.record_trial_ids`, and say so in the commit."""

from __future__ import annotations

import json

import pytest

from tests.fixtures.record_trial_ids import FILE, ROOT, grids, ids_of

RECORDED = json.loads(FILE.read_text())


def test_every_example_grid_is_recorded():
    assert sorted(RECORDED) == [str(g.relative_to(ROOT)) for g in grids()]


@pytest.mark.parametrize("grid", sorted(RECORDED))
def test_trial_ids_and_config_hashes_are_unchanged(grid):
    assert ids_of(ROOT / grid) == RECORDED[grid]
