"""Every page on real data: the warehouse a real grid run through local Ray produced
(the session's `tiny_warehouse`), not a hand-made fixture."""

from __future__ import annotations

import pytest

from app.common import PAGES
from tests.app.test_pages import assert_clean, open_page


@pytest.mark.parametrize("page", [p.file for p in PAGES])
def test_page_renders_on_a_real_run(monkeypatch, tiny_warehouse, page):
    at = open_page(monkeypatch, tiny_warehouse, page)
    assert_clean(at, page)
