"""The production tests' store, on SQLite and on a real PostgreSQL server (tests/store_fill.py adds inspections)."""

from __future__ import annotations

import pytest

from readl.production.store import Store


@pytest.fixture(params=["sqlite", "postgres"])
def store_url(request, tmp_path) -> str:
    if request.param == "postgres":
        return request.getfixturevalue("postgres_server").database()
    return f"sqlite:///{tmp_path / 'home' / 'production.db'}"


@pytest.fixture
def store(store_url) -> Store:
    return Store(store_url)
