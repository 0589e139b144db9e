"""The MLflow pyfunc model of readl: base model reference + LoRA adapter + calibrated thresholds + params.

Artifacts logged with the model (``mlflow.pyfunc.log_model(artifacts=...)``):

- ``params``: ``params.json``, the whole ``params.yaml`` as JSON; ``model.base`` names the base model
  (``tiny`` = the local tiny kit, rebuilt on first load; an HF id such as ``Qwen/Qwen2.5-VL-7B-Instruct`` is
  loaded from the hub / HF cache: the multi-GB base weights are not copied into the registry);
  ``model`` and ``localization`` drive inference.
- ``adapter``: the PEFT LoRA folder (absent when the model was registered without training);
- ``thresholds``: ``thresholds.json`` from ``readl calibrate`` (tau_t, tau_i);
- ``metrics``: ``metrics.json`` from ``readl evaluate`` (for reference; the version tags carry it too).

Input (one row per image; JSON over ``mlflow models serve``: ``{"dataframe_split": {"columns": ["image"],
"data": [["<base64 of the image file>"]]}}``):

| column | type | meaning |
|---|---|---|
| ``image`` | string, optional | the encoded image file (PNG, JPEG ...) as base64 text or a ``data:`` URL (in-process: the raw bytes too) |
| ``path`` | string, optional | an image file on the server, only under the folder the operator allows (``$READL_SERVE_PATH_ROOT`` or ``model_config={"path_root": ...}``); refused otherwise (the default), without saying whether it exists |

Every request shape MLflow serves gives one output row per input row (``dataframe_split``, ``dataframe_records``,
``instances`` / ``inputs`` of ``{"image": ...}`` objects), rows may mix ``image`` and ``path`` (``null`` in the other),
and an unreadable row is an ``error`` row. ``image`` is a string column, not MLflow's ``binary``: MLflow would
base64-decode every cell before ``predict`` runs, so one ``null`` or a ``data:`` URL failed the whole request and
``instances`` passed the base64 text on undecoded. A request with neither column is refused (HTTP 400 naming them):
MLflow drops unknown columns, and their rows with them.

Output (one row per input row; JSON: ``{"predictions": [{...}, ...]}``):

| column | type | meaning |
|---|---|---|
| ``answer`` | string | ``"Yes"`` / ``"No"``, ``null`` when the completion had no parsable answer (as ``readl predict``) |
| ``score`` | double | anomaly score P(Yes) in [0, 1]; ``null`` for an error row |
| ``decision`` | string | ``"anomalous"`` / ``"normal"``: score >= ``threshold`` (also for a malformed answer: the evaluate image score, readl.evaluation.decision); ``null`` for an error row |
| ``threshold`` | double | the decision threshold used (``thresholds.json`` ``decision.value``; 0.5 when it has none) |
| ``reasoning`` | string | the reasoning chain (inside ``<think>``) |
| ``format_ok`` | boolean | the completion followed ``<think>..</think><answer>..</answer>`` |
| ``anomaly_map`` | string | base64 of a 16-bit grayscale PNG, the ReAL map at the input image's size (H x W); pixel value ``v`` means ``v / 65535 * map_max``; decode with :func:`decode_map` |
| ``map_max`` | double | the map's maximum (0 for an empty map) |
| ``map_grid`` | array<array<double>> | the map on the image-token grid (15 x 15 at 420 px), exact values |
| ``error`` | string | ``""``, or why this row has no result (unreadable image); other rows are unaffected |

Over ``mlflow models serve`` (``readl serve``) every value is valid JSON: missing numbers are ``null``, never NaN.
``predict`` carries type hints (a ``pandas.DataFrame`` in, one out) and the model is logged with its signature
and an input example (one small PNG), so MLflow has nothing to warn about on logging or loading.
"""  # noqa: E501 (its tables)

from __future__ import annotations

import base64
import io
import json
import logging
import os
import threading
import time
from pathlib import Path
from typing import Any

import mlflow.pyfunc
import numpy as np
import pandas as pd  # the predict type hints (MLflow reads them when the model is logged)

__all__ = [
    "ReadlModel",
    "signature",
    "input_example",
    "encode_map",
    "decode_map",
    "OUTPUT_COLUMNS",
    "MODEL_CONFIG",
    "MAX_ROWS",
]

log = logging.getLogger(__name__)
MODEL_CONFIG = {"device": "", "max_new_tokens": 0}  # logged defaults; "" / 0 = automatic / params
MAX_ROWS = 16
"""Rows one request may hold by default: about 25 s of work with the tiny model on 2 CPU cores, inside the
scoring server's 60 s timeout (``benchmarks/serve_load.py``)."""
OUTPUT_COLUMNS = [
    "answer",
    "score",
    "decision",
    "threshold",
    "reasoning",
    "format_ok",
    "anomaly_map",
    "map_max",
    "map_grid",
    "error",
]


def signature():
    """The model signature (see the module docstring): ``mlflow.models.ModelSignature``."""
    from mlflow.models import ModelSignature
    from mlflow.types.schema import Array, ColSpec, DataType, Schema

    inputs = Schema(
        [ColSpec(DataType.string, "image", required=False), ColSpec(DataType.string, "path", required=False)]
    )
    outputs = Schema(
        [
            ColSpec(DataType.string, "answer", required=False),
            ColSpec(DataType.double, "score", required=False),
            ColSpec(DataType.string, "decision", required=False),
            ColSpec(DataType.double, "threshold"),
            ColSpec(DataType.string, "reasoning"),
            ColSpec(DataType.boolean, "format_ok"),
            ColSpec(DataType.string, "anomaly_map"),
            ColSpec(DataType.double, "map_max"),
            ColSpec(Array(Array(DataType.double)), "map_grid"),
            ColSpec(DataType.string, "error"),
        ]
    )
    return ModelSignature(inputs=inputs, outputs=outputs)


def input_example() -> pd.DataFrame:
    """The logged input example: one row, ``image`` = a 28 x 28 grey PNG file, base64 (``path`` absent)."""
    from PIL import Image

    buf = io.BytesIO()
    Image.new("RGB", (28, 28), (128, 128, 128)).save(buf, format="PNG")
    return pd.DataFrame({"image": [base64.b64encode(buf.getvalue()).decode("ascii")]})


def encode_map(full: np.ndarray) -> tuple[str, float]:
    """``(H, W)`` float map -> (base64 16-bit grayscale PNG, map maximum). Negative values clip to 0."""
    from PIL import Image

    full = np.clip(np.nan_to_num(np.asarray(full, dtype=np.float64)), 0, None)
    top = float(full.max()) if full.size else 0.0
    q = np.zeros(full.shape, np.uint16) if top <= 0 else np.round(full / top * 65535).astype(np.uint16)
    buf = io.BytesIO()
    Image.fromarray(q).save(buf, format="PNG")
    return base64.b64encode(buf.getvalue()).decode("ascii"), top


def decode_map(png_b64: str, map_max: float) -> np.ndarray:
    """Inverse of :func:`encode_map`: ``(H, W)`` float32 map (quantisation step ``map_max / 65535``)."""
    from PIL import Image

    with Image.open(io.BytesIO(base64.b64decode(png_b64))) as im:
        q = np.asarray(im, dtype=np.float64)
    return (q / 65535.0 * float(map_max)).astype(np.float32)


def _image_bytes(data: Any) -> bytes:
    """The bytes of the ``image`` column: raw bytes, or base64 text (a string column, or a ``data:`` URL)."""
    if isinstance(data, str):
        data = base64.b64decode(data.split(",", 1)[1] if data.startswith("data:") else data, validate=False)
    return bytes(data)


def _present(v: Any) -> bool:
    if v is None:
        return False
    if isinstance(v, float) and v != v:
        return False
    return not (isinstance(v, (str, bytes, bytearray)) and len(v) == 0)


SERVE_THREADS = 256  # requests a server worker admits at once (each waits for the one prediction at a time)


def admit_every_request() -> bool:
    """Let every request reach :meth:`ReadlModel.predict` when it arrives, so its deadline starts then.

    MLflow's scoring server runs each request with ``asyncio.to_thread``: the event loop's default executor,
    min(32, cores + 4) threads (6 on 2 cores). The 7th concurrent request waited there unseen; its deadline began
    only when a thread took it, after its client already had the 504, and its rows were predicted for nobody
    (issue: 11.9 CPU-s of work after the last answer at 100 concurrent requests). Here the scoring server module's
    ``asyncio`` is given a ``to_thread`` on a :data:`SERVE_THREADS`-thread executor (the event loop does not exist
    yet when the model loads, so its default executor cannot be replaced); a waiting thread holds only its decoded
    request (at most ``max_rows`` images). Pinned by ``test_every_concurrent_request_reaches_the_model...``.

    Returns:
        True when the scoring server is loaded in this process (and now admits every request), else False.
    """
    import sys

    server = sys.modules.get("mlflow.pyfunc.scoring_server")
    if server is None:
        return False
    if not isinstance(server.asyncio, _WideAsyncio):
        server.asyncio = _WideAsyncio()
        log.info("serve: up to %d concurrent requests admitted at arrival", SERVE_THREADS)
    return True


class _WideAsyncio:
    """``asyncio`` for the scoring server: the same module, but ``to_thread`` on its own wide executor."""

    def __init__(self) -> None:
        import asyncio
        from concurrent.futures import ThreadPoolExecutor

        self._asyncio = asyncio
        self._executor = ThreadPoolExecutor(max_workers=SERVE_THREADS, thread_name_prefix="readl-request")

    def __getattr__(self, name: str):
        return getattr(self._asyncio, name)

    async def to_thread(self, func, /, *args, **kwargs):
        import contextvars
        import functools

        call = functools.partial(contextvars.copy_context().run, func, *args, **kwargs)
        return await self._asyncio.get_running_loop().run_in_executor(self._executor, call)


class ReadlModel(mlflow.pyfunc.PythonModel):
    """readl as an MLflow pyfunc model (see the module docstring for artifacts, input and output).

    After :meth:`load_context`: ``predictor`` (:class:`readl.model.inference.Predictor`), ``params``
    (:class:`readl.config.Params` as logged), ``localization`` (its ``LocalizationConfig``), ``taus``,
    ``thresholds_path`` (local ``thresholds.json`` or None), ``batch_size``.

    ``model_config`` (``mlflow.pyfunc.load_model(uri, model_config={...})``): ``device`` (``cpu``, ``cuda``
    ...; default ``$READL_DEVICE``, else CUDA when available), ``max_new_tokens`` (default the logged
    ``model.max_new_tokens``), ``path_root`` (default ``$READL_SERVE_PATH_ROOT``; unset: the ``path`` column is
    refused, so a client can read no file of the server), ``max_rows`` (default ``$READL_SERVE_MAX_ROWS``, else
    :data:`MAX_ROWS`), ``timeout`` (seconds; default ``$MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT``, else 60).

    Load bounds: a request holds at most ``max_rows`` rows (more: HTTP 400); requests are predicted one at a time
    per server worker (on a CPU, concurrent ones only slow each other down); and a request that has run, waiting
    included, past ``timeout`` (when the server has already answered its client 504) stops before its next batch,
    its remaining rows error rows. So no work outlives its request by more than one batch.
    """

    path_root: Path | None = None  # the one folder `path` rows may read (symlinks resolved); None = paths off
    max_rows: int = 0  # set by load_context (MAX_ROWS unless configured)
    timeout: float = 60.0

    def load_context(self, context) -> None:
        from readl.config import Params
        from readl.evaluation.decision import read_decision
        from readl.predictor import build_predictor, resolve_taus

        arts = context.artifacts
        raw = json.loads(Path(arts["params"]).read_text())
        self.params = Params.model_validate({k: raw[k] for k in ("model", "localization") if k in raw})
        self.localization = self.params.localization
        adapter = arts.get("adapter")
        self.adapter = adapter if adapter and (Path(adapter) / "adapter_config.json").is_file() else None
        self.thresholds_path = arts.get("thresholds")
        self.taus = resolve_taus(self.localization, self.thresholds_path)
        self.decision = read_decision(self.thresholds_path)
        cfg = dict(getattr(context, "model_config", None) or {})
        device = cfg.get("device") or os.environ.get("READL_DEVICE") or None
        base = arts.get("base_model") or self.params.model.base  # the warm-started model (readl warmup) when logged
        # what the records name: the version's `base_model` tag ("tiny + warmup"), not a download folder
        self.base = f"{self.params.model.base} + warmup" if arts.get("base_model") else self.params.model.base
        self.batch_size = self.params.model.batch_size
        root = cfg.get("path_root") or os.environ.get("READL_SERVE_PATH_ROOT")
        self.path_root = Path(os.path.realpath(root)) if root else None
        self.max_rows = int(cfg.get("max_rows") or os.environ.get("READL_SERVE_MAX_ROWS") or MAX_ROWS)
        self.timeout = float(cfg.get("timeout") or os.environ.get("MLFLOW_SCORING_SERVER_REQUEST_TIMEOUT") or 60)
        self._one_at_a_time = threading.Lock()
        admit_every_request()
        self.predictor = build_predictor(
            self.params, base, self.adapter, device=device, max_new_tokens=int(cfg.get("max_new_tokens") or 0) or None
        )

    def _images(self, frame):
        from readl.data.images import BadImageError
        from readl.predictor import open_image

        images, errors = [], []
        for i in range(len(frame)):
            row = frame.iloc[i]
            img = row.get("image") if "image" in frame.columns else None
            path = row.get("path") if "path" in frame.columns else None
            try:
                if _present(img):  # the project decoder, as `readl predict` (16-bit, truncation guard ...)
                    images.append(open_image(f"row {i}", data=_image_bytes(img)))
                elif _present(path):
                    images.append(self._open_path(i, str(path)))
                else:
                    raise ValueError("row has neither 'image' (the file, base64) nor 'path'")
                errors.append("")
            except (BadImageError, ValueError, TypeError) as exc:
                images.append(None)
                errors.append(str(exc) if isinstance(exc, BadImageError) else f"row {i}: {exc}")
        return images, errors

    def _open_path(self, i: int, path: str):
        """The image at ``path`` if it lies under :attr:`path_root`; every refusal says nothing about the file (its
        existence, type or first bytes).

        Raises:
            ValueError: paths are off, ``path`` is outside the root, or not a readable image there.
        """
        from readl.data.images import BadImageError
        from readl.predictor import open_image

        if self.path_root is None:
            raise ValueError(
                "the 'path' column is off on this server: send the image file's bytes in 'image' (the "
                "operator may allow one folder with READL_SERVE_PATH_ROOT)"
            )
        real = Path(os.path.realpath(path))
        if real != self.path_root and self.path_root not in real.parents:
            raise ValueError("'path' is outside the folder this server may read")
        try:
            return open_image(str(real))
        except BadImageError:
            raise ValueError("'path' is not a readable image in the folder this server may read") from None

    def predict(self, context, model_input: pd.DataFrame, params: dict | None = None) -> pd.DataFrame:
        """Predict every row (see the module docstring); returns a ``pandas.DataFrame`` of OUTPUT_COLUMNS.

        Raises:
            mlflow.exceptions.MlflowException: (HTTP 400) neither an ``image`` nor a ``path`` column, or more than
                ``max_rows`` rows.
        """
        from mlflow.exceptions import MlflowException

        start = time.monotonic()
        frame = model_input if isinstance(model_input, pd.DataFrame) else pd.DataFrame(model_input)
        if not {"image", "path"} & set(frame.columns):  # MLflow dropped the unknown columns, and the rows with them
            raise MlflowException.invalid_parameter_value(
                "the request has neither an 'image' column (the image file, base64 or a data: URL) nor a 'path' "
                'column: send {"dataframe_split": {"columns": ["image"], "data": [["<base64>"]]}}'
            )
        if len(frame) > self.max_rows:
            raise MlflowException.invalid_parameter_value(
                f"{len(frame)} rows in one request; this server takes at most {self.max_rows} (READL_SERVE_MAX_ROWS): "
                "split the request"
            )
        with self._one_at_a_time:
            return self._predict(frame, start)

    def _predict(self, frame: pd.DataFrame, start: float) -> pd.DataFrame:
        """:meth:`predict` of a checked frame; ``start``: when the request reached this worker (time.monotonic)."""
        from readl.evaluation.decision import decide, image_score
        from readl.localization.anomaly_map import upsample
        from readl.predictor import localize

        images, errors = self._images(frame)
        t = float(self.decision["value"])
        rows: list[dict] = [
            {
                "answer": None,
                "score": None,
                "decision": None,
                "threshold": t,
                "reasoning": "",
                "format_ok": False,
                "anomaly_map": "",
                "map_max": 0.0,
                "map_grid": [],
                "error": e,
            }
            for e in errors
        ]
        ok = [i for i, im in enumerate(images) if im is not None]
        for first in range(0, len(ok), self.batch_size):
            idx = ok[first : first + self.batch_size]
            if time.monotonic() - start > self.timeout:  # the client has had its 504: do no more work for it
                for i in ok[first:]:
                    rows[i]["error"] = f"row {i}: not predicted, the request ran past the server's {self.timeout:g} s"
                break
            for i, pred in zip(idx, self.predictor.predict([images[i] for i in idx])):
                real = localize(pred, self.localization, self.taus)
                png, top = encode_map(upsample(real.map, pred.image_size))
                score = image_score(pred.score, pred.parsed.answer is None, self.decision["malformed"])
                rows[i].update(
                    answer=pred.parsed.answer,
                    score=float(pred.score),
                    decision=decide(score, t),
                    reasoning=pred.parsed.reasoning,
                    format_ok=bool(pred.parsed.format_ok),
                    anomaly_map=png,
                    map_max=top,
                    map_grid=np.asarray(real.map, dtype=np.float64).tolist(),
                )
        for r in rows:
            if r["error"]:
                log.error("%s", r["error"])
        # object columns keep None as None (JSON null); a float column would turn it into NaN (invalid JSON)
        return pd.DataFrame({c: pd.Series([r[c] for r in rows], dtype=object) for c in OUTPUT_COLUMNS})
