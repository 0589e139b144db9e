"""readl.tracking: connect() changes no process state; mlflow_session() scopes it (issue 13, item 3)."""

from __future__ import annotations

import os

import pytest

from readl.tracking import HTTP_ENV_DEFAULTS, connect, mlflow_session

MLFLOW_VARS = (*HTTP_ENV_DEFAULTS, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


@pytest.fixture
def clean_mlflow(monkeypatch):
    import mlflow

    for k in MLFLOW_VARS:
        monkeypatch.delenv(k, raising=False)
    before = (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    yield mlflow
    mlflow.set_tracking_uri(None)
    mlflow.set_registry_uri(None)
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == before


def test_connect_returns_a_client_and_leaves_environ_and_mlflow_uris_alone(tmp_path, clean_mlflow):
    mlflow = clean_mlflow
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    env, uris = dict(os.environ), (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    client = connect(uri)
    assert client.search_experiments(max_results=1)  # the store exists (ensure_store) and answers
    assert dict(os.environ) == env
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == uris != (uri, uri)


def test_mlflow_session_sets_uris_and_retry_defaults_for_the_block_only(tmp_path, clean_mlflow, monkeypatch):
    mlflow = clean_mlflow
    uri = f"sqlite:///{tmp_path / 'mlruns.db'}"
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "9")  # a user's own setting wins
    env, uris = dict(os.environ), (mlflow.get_tracking_uri(), mlflow.get_registry_uri())
    with mlflow_session(uri) as client:
        assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == (uri, uri)
        assert os.environ["MLFLOW_HTTP_REQUEST_MAX_RETRIES"] == "9"
        assert (
            os.environ["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"] == HTTP_ENV_DEFAULTS["MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR"]
        )
        assert client.search_experiments(max_results=1)
    assert dict(os.environ) == env
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == uris
    with pytest.raises(RuntimeError, match="inside"), mlflow_session(uri):
        raise RuntimeError("inside")
    assert dict(os.environ) == env  # restored on an error too
    assert (mlflow.get_tracking_uri(), mlflow.get_registry_uri()) == uris


def test_relocation_is_checked_once_per_store_and_again_when_the_file_is_replaced(tmp_path, clean_mlflow, monkeypatch):
    import shutil

    import readl.tracking as tracking

    checked = []
    real = tracking.relocate_store
    monkeypatch.setattr(tracking, "relocate_store", lambda db: checked.append(db) or real(db))
    db = tmp_path / "mlruns.db"
    uri = f"sqlite:///{db}"
    connect(uri)
    connect(uri)
    assert checked == [db]  # the second connect skips the check
    shutil.copy(db, tmp_path / "other.db")
    (tmp_path / "other.db").replace(db)  # another store file at the same path: a new inode
    connect(uri)
    assert checked == [db, db]
