"""Connecting to MLflow: the tracking URI, a reachability probe, retries of transient failures, clear errors.

Tracking URI: ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db`` in the working directory (README
"Training on GPUs"). Every readl module that talks to MLflow takes it from :func:`tracking_uri`.

Artifacts on S3: with ``mlflow server --artifacts-destination s3://...`` the server writes to S3 (its own
environment holds ``MLFLOW_S3_ENDPOINT_URL`` and the AWS keys); with an ``s3://`` artifact root and
``--no-serve-artifacts`` (or a local tracking store), this process writes through boto3 and reads the same
variables. Credentials come only from the environment / AWS config, never from readl's arguments.

First use of a sqlite store: MLflow creates and migrates the schema of a new database from whichever process
opens it first, without a lock between processes, so concurrent first users collide ("duplicate column name",
"_alembic_tmp_runs already exists"). :func:`ensure_store` creates the store once, under an exclusive ``fcntl``
lock on ``<database>.lock`` beside it, before anything else touches it; :func:`connect` calls it.

Process state: :func:`connect` returns a client and changes nothing else; :func:`mlflow_session` sets MLflow's
global URIs and the HTTP retry defaults for one block (MLflow's fluent API needs them) and restores them.

Transient = the server or the database is briefly unavailable: connection refused/reset, timeouts, HTTP
5xx/429, sqlite "database is locked", a unique-constraint race on the next model version number (MLflow
picks MAX+1), S3 throttling / 5xx. Those are retried with jittered exponential backoff; everything else
(bad name, missing alias, access denied) raises at once.
"""

from __future__ import annotations

import contextlib
import logging
import os
import random
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

__all__ = [
    "DEFAULT_TRACKING_URI",
    "RegistryError",
    "TrackingUnavailableError",
    "AliasNotFoundError",
    "ArtifactStoreError",
    "HTTP_ENV_DEFAULTS",
    "tracking_uri",
    "ensure_store",
    "connect",
    "mlflow_session",
    "is_transient",
    "with_retries",
    "artifact_errors",
    "call",
    "describe",
]

DEFAULT_TRACKING_URI = "sqlite:///mlruns.db"
log = logging.getLogger(__name__)
T = TypeVar("T")

_TRANSIENT_TEXT = (
    "database is locked",
    "database table is locked",
    "integrityerror",
    "unique constraint failed",
    "duplicate key value",
    "deadlock",
    "connection refused",
    "connection reset",
    "connection aborted",
    "remotedisconnected",
    "max retries exceeded",
    "timed out",
    "timeout",
    "temporarily unavailable",
    "too many 500 error responses",
    "too many 502 error responses",
    "too many 503 error responses",
    "too many 504 error responses",
    "service unavailable",
    "bad gateway",
    "slowdown",
    "throttl",
)
_TRANSIENT_CODES = {
    "TEMPORARILY_UNAVAILABLE",
    "REQUEST_LIMIT_EXCEEDED",
    "RESOURCE_EXHAUSTED",
}  # INTERNAL_ERROR: by text


class RegistryError(RuntimeError):
    """A registry / tracking operation failed; the message names the URI or object and the fix."""


class TrackingUnavailableError(RegistryError):
    """The MLflow tracking server did not answer (after retries)."""


class AliasNotFoundError(RegistryError):
    """A registered model or one of its aliases (``challenger``, ``champion``) does not exist."""


class ArtifactStoreError(RegistryError):
    """Writing or reading model artifacts (S3 or the server's artifact proxy) failed."""


def tracking_uri() -> str:
    """``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db`` (relative to the working directory)."""
    return os.environ.get("MLFLOW_TRACKING_URI") or DEFAULT_TRACKING_URI


def _sqlite_path(uri: str) -> Path | None:
    """The database file of a ``sqlite:///`` URI (None for other stores and in-memory databases)."""
    if not uri.startswith("sqlite:"):
        return None
    from sqlalchemy.engine import make_url

    database = make_url(uri).database
    return Path(database) if database and database != ":memory:" else None


def ensure_store(uri: str | None = None) -> None:
    """Create (schema + migrations) a sqlite tracking / registry store once, under an inter-process lock.

    Does nothing for other URIs (servers and other databases initialise themselves). The lock is an
    exclusive ``fcntl.flock`` on ``<database>.lock``, held while this process opens the tracking and the
    registry store (MLflow creates missing tables then; an existing store is only checked). The database's
    folder is created when missing.

    Args:
        uri: tracking URI; default :func:`tracking_uri`.

    Raises:
        RegistryError: the database does not exist and cannot be created (message names the file).
    """
    import fcntl

    uri = uri or tracking_uri()
    db = _sqlite_path(uri)
    if db is None:
        return
    from mlflow.tracking import MlflowClient

    try:
        db.parent.mkdir(parents=True, exist_ok=True)
        lock = open(db.with_name(db.name + ".lock"), "a")  # noqa: SIM115 (closed below: releases the lock)
    except OSError as exc:
        if db.is_file():  # a read-only folder with an existing store: nothing to create
            log.debug("no lock file beside %s (%s): using the existing store", db, exc)
            return
        raise RegistryError(
            f"cannot create the MLflow sqlite store {db} ({exc}); check the folder's "
            f"permissions or set MLFLOW_TRACKING_URI"
        ) from exc
    with lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        client = MlflowClient(tracking_uri=uri, registry_uri=uri)
        client.search_experiments(max_results=1)  # opens (creates, migrates) the tracking store
        client.search_registered_models(max_results=1)  # and the model registry store
        key = _store_key(db)
        if key not in _RELOCATION_CHECKED:
            relocate_store(db)
            _RELOCATION_CHECKED.add(key)


# Stores :func:`relocate_store` has checked in this process, keyed by resolved path plus device and inode: a moved
# project (new path) or a store file replaced by another (a rename gives a new inode) is checked again.
_RELOCATION_CHECKED: set[tuple[str, int, int]] = set()


def _store_key(db: Path) -> tuple[str, int, int]:
    st = db.stat()
    return str(db.resolve()), st.st_dev, st.st_ino


# MLflow stores every local artifact location as an absolute path (it resolves ./mlruns at creation): these
# columns hold them. A project folder copied (cp -a) or moved (mv) would write into, or look in, the old folder.
LOCATION_COLUMNS = {
    "experiments": ("artifact_location",),
    "runs": ("artifact_uri",),
    "logged_models": ("artifact_location",),
    "model_versions": ("source", "storage_location"),
}


def relocate_store(db: Path) -> int:
    """Point a moved or copied project's sqlite store at its own artifacts: readl's convention is ``mlruns/``
    beside ``mlruns.db`` (MLflow's default ``./mlruns`` with the store in the project folder). When the store's
    locations name ``<OLD>/mlruns/...`` and ``<db folder>/mlruns`` exists (it travelled with the store), every
    such prefix in :data:`LOCATION_COLUMNS` becomes ``<db folder>/mlruns/`` (plain paths and ``file://`` URIs),
    in one transaction. Locations elsewhere (S3, a server's artifact proxy, another folder without a copy here)
    are left as they are.

    Args:
        db: the sqlite database file (exists; called under :func:`ensure_store`'s lock).

    Returns:
        The number of rewritten cells (0: nothing moved).
    """
    import sqlite3

    here = db.resolve().parent / "mlruns"
    if not here.is_dir():
        return 0
    with contextlib.closing(sqlite3.connect(db)) as con:
        rows = con.execute("SELECT artifact_location FROM experiments").fetchall()
        old = {_mlruns_root(loc) for (loc,) in rows} - {None, str(here)}
        if not old:
            return 0
        changed = 0
        with con:  # one transaction: all or nothing
            for root in old:
                for prefix in (root, "file://" + root):
                    new = str(here) if not prefix.startswith("file://") else "file://" + str(here)
                    for table, columns in LOCATION_COLUMNS.items():
                        for col in columns:
                            cur = con.execute(
                                f"UPDATE {table} SET {col} = ? || substr({col}, ?) "
                                f"WHERE {col} = ? OR substr({col}, 1, ?) = ?",
                                (new, len(prefix) + 1, prefix, len(prefix) + 1, prefix + "/"),
                            )
                            changed += cur.rowcount
    log.info("MLflow store %s was moved or copied: %d artifact locations now under %s", db, changed, here)
    return changed


def _mlruns_root(location: str | None) -> str | None:
    """``/a/b/mlruns`` for ``/a/b/mlruns/1`` or ``file:///a/b/mlruns/1`` (an experiment's location), else None."""
    if not location:
        return None
    path = location[len("file://") :] if location.startswith("file://") else location
    head, _, exp_id = path.rstrip("/").rpartition("/")
    return head if head.endswith("/mlruns") and exp_id.isdigit() and path.startswith("/") else None


def _probe_http(uri: str, timeout: float) -> None:
    with urllib.request.urlopen(uri.rstrip("/") + "/health", timeout=timeout) as resp:  # noqa: S310 (http/https only)
        resp.read()


# MLflow's HTTP retries lowered (3 tries, backoff factor 1) so that a server that goes away mid-way fails in
# seconds, not minutes; no artifact progress bars. Applied by :func:`mlflow_session` where not set by the user.
HTTP_ENV_DEFAULTS = {
    "MLFLOW_HTTP_REQUEST_MAX_RETRIES": "3",
    "MLFLOW_HTTP_REQUEST_BACKOFF_FACTOR": "1",
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
}


def connect(uri: str | None = None, attempts: int = 3, base_delay: float = 1.0, timeout: float = 5.0):
    """Check that the tracking server answers and return a client for it. Changes no process-wide state.

    For ``http(s)://`` URIs, ``GET <uri>/health`` is tried ``attempts`` times (delays ``base_delay * 2**i``
    seconds, jittered); a sqlite store is created once (:func:`ensure_store`). ``os.environ`` and MLflow's
    global tracking / registry URIs are left as they are: code that needs them (MLflow's fluent API such as
    ``mlflow.start_run`` or ``mlflow.pyfunc.load_model("models:/...")``) runs inside :func:`mlflow_session`.

    Args:
        uri: tracking URI; default :func:`tracking_uri`.
        attempts: probe attempts (>= 1).
        base_delay: first retry delay, seconds.
        timeout: per-probe timeout, seconds.

    Returns:
        An ``mlflow.MlflowClient`` for ``uri`` (tracking and registry).

    Raises:
        TrackingUnavailableError: the server did not answer; the message names the URI.
    """
    import mlflow

    uri = uri or tracking_uri()
    if uri.startswith(("http://", "https://")):
        last: Exception | None = None
        for i in range(max(1, attempts)):
            try:
                _probe_http(uri, timeout)
                last = None
                break
            except urllib.error.HTTPError as exc:  # it answers, e.g. 401/403 behind an auth proxy
                if exc.code < 500:
                    last = None
                    break
                last = exc
            except (OSError, ValueError) as exc:  # URLError, refused, DNS, timeout
                last = exc
            if i + 1 < attempts:
                time.sleep(base_delay * 2**i * random.uniform(0.5, 1.5))
        if last is not None:
            raise TrackingUnavailableError(
                f"MLflow tracking server {uri} is unreachable after {attempts} attempts ({last}). Start it "
                f"(`mlflow server --backend-store-uri ... --artifacts-destination s3://...`) or set "
                f"MLFLOW_TRACKING_URI to a reachable server (default {DEFAULT_TRACKING_URI})."
            )
    ensure_store(uri)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


@contextlib.contextmanager
def mlflow_session(uri: str | None = None, **probe: Any) -> Iterator[Any]:
    """:func:`connect`, then for the duration of the block: MLflow's global tracking and registry URI = ``uri``
    and :data:`HTTP_ENV_DEFAULTS` in ``os.environ`` (each only where the variable is unset). Both are restored
    on exit, also on an error, so the caller's process state is what it was before.

    Args:
        uri: tracking URI; default :func:`tracking_uri`.
        **probe: ``attempts``, ``base_delay``, ``timeout`` of :func:`connect`.

    Yields:
        The ``mlflow.MlflowClient`` of :func:`connect`.

    Raises:
        TrackingUnavailableError: the server did not answer.
    """
    import mlflow
    from mlflow.tracking import _tracking_service
    from mlflow.tracking._model_registry import utils as _registry_utils

    uri = uri or tracking_uri()
    client = connect(uri, **probe)
    # MLflow's set_*_uri also export MLFLOW_TRACKING_URI / MLFLOW_REGISTRY_URI (for subprocesses): saved too
    saved_env = {k: os.environ.get(k) for k in (*HTTP_ENV_DEFAULTS, "MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    # the URIs set by mlflow.set_*_uri before (None = never set: MLflow reads the environment / its default)
    old_tracking = getattr(_tracking_service.utils, "_tracking_uri", None)
    old_registry = getattr(_registry_utils, "_registry_uri", None)
    try:
        os.environ.update({k: v for k, v in HTTP_ENV_DEFAULTS.items() if k not in os.environ})
        mlflow.set_tracking_uri(uri)
        mlflow.set_registry_uri(uri)
        yield client
    finally:
        mlflow.set_tracking_uri(old_tracking)
        mlflow.set_registry_uri(old_registry)
        for k, v in saved_env.items():
            if v is None:
                os.environ.pop(k, None)
            else:
                os.environ[k] = v


def is_transient(exc: BaseException) -> bool:
    """True for failures worth retrying (see the module docstring)."""
    if isinstance(exc, (TrackingUnavailableError, ConnectionError, TimeoutError)):
        return True
    if isinstance(exc, (AliasNotFoundError,)):
        return False
    code = getattr(exc, "error_code", None)
    if code in _TRANSIENT_CODES:
        return True
    response = getattr(exc, "response", None)  # botocore ClientError
    if isinstance(response, dict):
        err = response.get("Error", {})
        status = response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
        if status >= 500 or status == 429 or str(err.get("Code", "")) in ("SlowDown", "Throttling", "RequestTimeout"):
            return True
    name = type(exc).__name__
    if name in (
        "EndpointConnectionError",
        "ConnectTimeoutError",
        "ReadTimeoutError",
        "ConnectionClosedError",
        "ConnectionError",
        "OperationalError",
    ):
        return True
    text = f"{name} {exc}".lower()
    return any(t in text for t in _TRANSIENT_TEXT)


def with_retries(
    fn: Callable[[], T],
    what: str,
    attempts: int = 6,
    base_delay: float = 0.25,
    max_delay: float = 8.0,
    retry_if: Callable[[BaseException], bool] = is_transient,
) -> T:
    """Call ``fn()``; on a transient failure sleep ``base_delay * 2**i`` (x0.5-1.5 jitter, at most ``max_delay``
    seconds) and try again, ``attempts`` calls in total.

    Raises:
        The last exception, unchanged, when attempts are exhausted or the failure is not transient.
    """
    for i in range(attempts):
        try:
            return fn()
        except Exception as exc:
            if i + 1 >= attempts or not retry_if(exc):
                raise
            delay = min(max_delay, base_delay * 2**i) * random.uniform(0.5, 1.5)
            log.warning(
                "%s: transient failure (%s: %s); retry %d/%d in %.1f s",
                what,
                type(exc).__name__,
                str(exc).splitlines()[0][:300] if str(exc) else "",
                i + 1,
                attempts - 1,
                delay,
            )
    raise AssertionError("unreachable")


def _s3_endpoint() -> str:
    return os.environ.get("MLFLOW_S3_ENDPOINT_URL") or "AWS S3 (no MLFLOW_S3_ENDPOINT_URL set)"


class artifact_errors:  # noqa: N801 (used as a context manager)
    """Context manager: turn S3 / artifact-proxy failures into :class:`ArtifactStoreError` with a fix.

    Args:
        what: the operation, e.g. ``"log model to run 1234"``.
        uri: the tracking URI (named in messages about the artifact proxy).
    """

    def __init__(self, what: str, uri: str):
        self.what, self.uri = what, uri

    def __enter__(self):
        return self

    def __exit__(self, exc_type, exc, tb) -> bool:
        if exc is None or isinstance(exc, RegistryError) or not isinstance(exc, Exception):
            return False
        name = type(exc).__name__
        module = type(exc).__module__ or ""
        text = str(exc)
        if name == "NoCredentialsError":
            raise ArtifactStoreError(
                f"{self.what}: no AWS credentials for the S3 artifact store ({_s3_endpoint()}): set "
                f"AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment."
            ) from exc
        if module.startswith(("botocore", "boto3", "s3transfer")):
            response = getattr(exc, "response", None) or {}
            code = str(response.get("Error", {}).get("Code", "")) if isinstance(response, dict) else ""
            denied = ("AccessDenied", "InvalidAccessKeyId", "SignatureDoesNotMatch", "Forbidden", "(403)")
            hint = (
                "check AWS_ACCESS_KEY_ID / AWS_SECRET_ACCESS_KEY (or AWS_PROFILE) in the environment and the "
                "bucket policy"
                if code in denied or any(d in text for d in denied)
                else "check MLFLOW_S3_ENDPOINT_URL, that the S3 server is up and the bucket exists"
            )
            err = ArtifactStoreError(
                f"{self.what}: S3 artifact store error at {_s3_endpoint()}: {name}: {text}; {hint}."
            )
            err.transient = is_transient(exc)  # type: ignore[attr-defined]
            raise err from exc
        if (
            "mlflow-artifacts" in text
            or "/api/2.0/mlflow-artifacts" in text
            or ("artifact" in text.lower() and "500" in text)
        ):
            err = ArtifactStoreError(
                f"{self.what}: the tracking server {self.uri} failed to store/serve the artifacts ({name}: "
                f"{text.splitlines()[0][:500]}). Check the server's log and its artifact destination "
                f"(S3 endpoint MLFLOW_S3_ENDPOINT_URL and AWS credentials in the server's environment)."
            )
            err.transient = is_transient(exc)  # type: ignore[attr-defined]
            raise err from exc
        return False


def call(fn: Callable[[], T], what: str, uri: str | None = None, attempts: int = 6) -> T:
    """:func:`with_retries` plus readable errors: connection failures name the tracking URI.

    Raises:
        TrackingUnavailableError: the server stopped answering (retries exhausted).
        RegistryError / mlflow.exceptions.MlflowException: other failures.
    """
    uri = uri or tracking_uri()

    def retry_if(exc: BaseException) -> bool:
        return bool(getattr(exc, "transient", False)) or is_transient(exc)

    try:
        return with_retries(fn, what, attempts=attempts, retry_if=retry_if)
    except RegistryError:
        raise
    except Exception as exc:
        text = f"{type(exc).__name__} {exc}".lower()
        if any(
            t in text
            for t in (
                "connection refused",
                "max retries exceeded",
                "connectionerror",
                "failed to establish",
                "name or service not known",
            )
        ):
            raise TrackingUnavailableError(
                f"{what}: MLflow tracking server {uri} stopped answering ({type(exc).__name__}: "
                f"{str(exc).splitlines()[0][:300]}); check that it is running and MLFLOW_TRACKING_URI."
            ) from exc
        raise


def describe(obj: Any) -> str:
    """Short text of an exception for logs and tables."""
    return f"{type(obj).__name__}: {str(obj).splitlines()[0][:300]}" if str(obj) else type(obj).__name__
