"""The production tests' store (empty; tests/store_fill.py adds inspections)."""

from __future__ import annotations

import pytest

from readl.production.store import Store


@pytest.fixture
def store(tmp_path) -> Store:
    return Store(f"sqlite:///{tmp_path / 'home' / 'production.db'}")
