"""The served model decodes image bytes with the project decoder: a 16-bit PNG sent as bytes gives the same
answer, score and anomaly map as the same file given by path, and the same score as ``readl predict``."""

from __future__ import annotations

import json
from types import SimpleNamespace

import numpy as np
import pandas as pd
import yaml
from PIL import Image
from typer.testing import CliRunner

PARAMS = {"model": {"base": "tiny", "image_size": 112, "max_new_tokens": 8, "batch_size": 1}}


def _png16(sample_dir, path):
    """A 16-bit grayscale PNG (values 0..65535) made from a bundled 8-bit image: clipping it to 8 bits gives a
    nearly white image, the project decoder scales it back to the original."""
    grey = np.asarray(Image.open(sample_dir / "mvtec_ad/grid/test/bent/000.png").convert("L"), dtype=np.uint16)
    Image.fromarray(grey * 257).save(path)  # mode I;16
    assert Image.open(path).mode.startswith("I")
    return path


def test_served_16bit_png_bytes_match_readl_predict(tiny_dir, sample_dir, tmp_path, monkeypatch):
    from readl.cli import app
    from readl.registry.pyfunc import ReadlModel

    monkeypatch.chdir(tmp_path)
    png = _png16(sample_dir, tmp_path / "deep.png")
    (tmp_path / "params.yaml").write_text(yaml.safe_dump(PARAMS))
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    thresholds = tmp_path / "thresholds.json"
    thresholds.write_text(
        json.dumps({"tau_t": {"value": 0.4}, "tau_i": {"value": 0.5}, "decision": {"value": 0.25, "rule": "f1_max"}})
    )
    served = ReadlModel()
    served.load_context(
        SimpleNamespace(
            artifacts={"params": str(tmp_path / "params.json"), "thresholds": str(thresholds)},
            model_config={"device": "cpu", "path_root": str(tmp_path)},
        )
    )
    by_bytes = served.predict(None, pd.DataFrame({"image": [png.read_bytes()]})).iloc[0]
    by_path = served.predict(None, pd.DataFrame({"path": [str(png)]})).iloc[0]
    assert by_bytes["error"] == "" and by_path["error"] == ""
    assert by_bytes["answer"] == by_path["answer"] and by_bytes["score"] == by_path["score"]
    np.testing.assert_array_equal(np.asarray(by_bytes["map_grid"]), np.asarray(by_path["map_grid"]))
    assert by_bytes["anomaly_map"] == by_path["anomaly_map"]

    out = CliRunner().invoke(
        app,
        [
            "predict",
            str(png),
            "--model",
            "tiny",
            "--adapter",
            "none",
            "--thresholds",
            str(thresholds),
            "--params",
            "params.yaml",
            "--out",
            "out",
            "--no-annotate",
        ],
    )
    assert out.exit_code == 0, out.output
    record = json.loads((tmp_path / "out" / "deep.json").read_text())
    assert record["score"] == round(float(by_bytes["score"]), 6) and record["answer"] == by_bytes["answer"]
    assert record["decision"] == by_bytes["decision"]


def test_served_paths_are_off_by_default_and_never_leave_their_root(tmp_path, monkeypatch):
    """Issue (read what should not be read): a `path` row read ANY server file and echoed its first bytes."""
    from readl.registry.pyfunc import ReadlModel

    monkeypatch.delenv("READL_SERVE_PATH_ROOT", raising=False)
    secret = tmp_path / "secret.txt"
    secret.write_text("root:x:0:0:root:/root:/bin/bash")
    allowed = tmp_path / "images"
    allowed.mkdir()
    (allowed / "link.png").symlink_to(secret)  # a link out of the root is outside it
    served = ReadlModel()  # the input step only: no model is needed to refuse
    frame = pd.DataFrame(
        {
            "path": [
                "/etc/passwd",
                str(secret),
                str(tmp_path / "missing.png"),
                str(allowed / "link.png"),
                str(allowed / ".." / "secret.txt"),
            ]
        }
    )
    images, errors = served._images(frame)
    assert images == [None] * 5 and all("'path' column is off" in e for e in errors)
    served.path_root = allowed.resolve()
    images, errors = served._images(frame)
    assert images == [None] * 5
    assert len({e.split(": ", 1)[1] for e in errors}) == 1 and "outside the folder" in errors[0], errors  # one message
    assert not any("root:" in e or "secret" in e for e in errors)  # no content, no name echoed
    (allowed / "notes.png").write_text("root:x:0:0")
    _, errors = served._images(pd.DataFrame({"path": [str(allowed / "notes.png")]}))
    assert "not a readable image" in errors[0] and "root:" not in errors[0]


def test_a_request_is_bounded_in_rows_and_stops_once_past_its_timeout(tiny_dir, sample_dir, tmp_path, monkeypatch):
    """Issue (load): a 40-row request ran past the server's 60 s timeout (504) and the server kept computing for
    minutes. Rows per request are bounded, and a request past its timeout does no more batches."""
    import pytest
    from mlflow.exceptions import MlflowException

    from readl.registry.pyfunc import ReadlModel

    monkeypatch.chdir(tmp_path)
    (tmp_path / "params.json").write_text(json.dumps(PARAMS))
    img = (sample_dir / "mvtec_ad/grid/test/broken/000.png").read_bytes()

    def served(**config):
        model = ReadlModel()
        model.load_context(
            SimpleNamespace(
                artifacts={"params": str(tmp_path / "params.json")}, model_config={"device": "cpu", **config}
            )
        )
        return model

    bounded = served(max_rows=2)
    with pytest.raises(MlflowException, match="3 rows in one request; this server takes at most 2"):
        bounded.predict(None, pd.DataFrame({"image": [img] * 3}))
    assert bounded.predict(None, pd.DataFrame({"image": [img] * 2}))["error"].tolist() == ["", ""]

    late = served(timeout=1e-9)  # as if the request had waited past the server's timeout
    calls = []
    real = late.predictor.predict
    late.predictor.predict = lambda ims: calls.append(len(ims)) or real(ims)
    out = late.predict(None, pd.DataFrame({"image": [img] * 2}))
    assert calls == [] and all("ran past the server's" in e for e in out["error"]), out["error"].tolist()


def test_every_concurrent_request_reaches_the_model_when_it_arrives():
    """Issue: MLflow's scoring server runs requests with ``asyncio.to_thread`` (the loop's default executor,
    min(32, cores + 4) threads); request 7 on 2 cores waited there unseen, its deadline started late and its rows were
    predicted after its client had the 504. After ``load_context`` (``admit_every_request``), 40 requests all start."""
    import asyncio
    import threading

    from mlflow.pyfunc import scoring_server

    from readl.registry.pyfunc import admit_every_request

    original = scoring_server.asyncio
    try:
        assert admit_every_request()  # as load_context does in the server process

        async def started_at_once(n: int) -> int:
            started, gate = [], threading.Event()

            def request() -> None:
                started.append(1)
                gate.wait(10)

            tasks = [asyncio.create_task(scoring_server.asyncio.to_thread(request)) for _ in range(n)]
            for _ in range(100):
                if len(started) == n:
                    break
                await asyncio.sleep(0.02)
            seen = len(started)
            gate.set()
            await asyncio.gather(*tasks)
            return seen

        assert asyncio.run(started_at_once(40)) == 40
        assert scoring_server.asyncio.TimeoutError is asyncio.TimeoutError  # the rest of asyncio unchanged
    finally:
        scoring_server.asyncio = original
