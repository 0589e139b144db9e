"""No password of a URL is printed or stored (issue: `http://alice:PASS@...` appeared in error lines, and `readl
fetch --url http://bob:PASS@...` printed it 4 times and wrote it to `.fetch/*.part.url`)."""

from __future__ import annotations

import logging

from typer.testing import CliRunner

from readl.cli import app
from readl.redact import RedactingFilter, redact


def test_redact_masks_the_user_info_of_every_url_and_nothing_else():
    text = "cannot reach http://alice:PASS@host:5000/api and s3://KEY:SECRET@bucket/x; mail bob@example.com"
    assert redact(text) == "cannot reach http://***@host:5000/api and s3://***@bucket/x; mail bob@example.com"
    assert redact("https://token@github.com/o/r.git") == "https://***@github.com/o/r.git"
    assert redact("sqlite:///mlruns.db") == "sqlite:///mlruns.db"
    record = logging.LogRecord(
        "readl", logging.WARNING, __file__, 1, "retrying %s (%d/%d)", ("http://u:pw@h/x", 2, 4), None
    )
    assert RedactingFilter().filter(record) and record.getMessage() == "retrying http://***@h/x (2/4)"


def test_fetch_prints_and_stores_no_password(tmp_path, monkeypatch):
    import readl.data.fetch as fetch

    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(fetch.time, "sleep", lambda s: None)  # the 3 retries of an unreachable host, at once
    url = "http://bob:PASS@127.0.0.1:9/toy.zip"  # port 9 (discard): connection refused
    result = CliRunner().invoke(app, ["fetch", "toyset", "--url", url, "--dest", "raw"])
    assert result.exit_code == 1 and "127.0.0.1:9" in result.output, result.output
    assert "PASS" not in result.output and "bob" not in result.output
    stored = [p for p in (tmp_path / "raw").rglob("*") if p.is_file()]
    assert stored and not [p for p in stored if b"PASS" in p.read_bytes()], stored  # the .part.url record too


def test_an_unreachable_tracking_server_is_named_without_its_password(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setenv("MLFLOW_TRACKING_URI", "http://alice:PASS@127.0.0.1:9")
    result = CliRunner().invoke(app, ["promote"])
    assert result.exit_code == 1 and "127.0.0.1:9" in result.output, result.output
    assert "PASS" not in result.output
