"""Shared helpers of the integration tests: a tiny data set and the warehouse's rows."""

from __future__ import annotations

from typing import Any

import pytest
import torch

from warehouse.db import connect


@pytest.fixture
def blobs() -> tuple[torch.Tensor, torch.Tensor]:
    """64 examples of 4 features in 2 classes (seeded)."""
    g = torch.Generator().manual_seed(0)
    y = torch.randint(0, 2, (64,), generator=g)
    x = torch.randn(64, 4, generator=g) + 2.0 * y[:, None].float()
    return x, y


def rows(root: Any, sql: str) -> list[dict[str, Any]]:
    """Rows of a query on the warehouse views under `root`."""
    con = connect(str(root))
    cur = con.execute(sql)
    names = [d[0] for d in cur.description]
    return [dict(zip(names, r, strict=True)) for r in cur.fetchall()]
