"""``readl serve``: MLflow's model server (``mlflow models serve --env-manager local``) on readl's tracking store.

MLflow's own default store is ``mlflow.db``; readl writes ``$MLFLOW_TRACKING_URI``, else ``sqlite:///mlruns.db``
in the working directory (:func:`readl.tracking.tracking_uri`). The command resolves that store, makes a
relative sqlite path absolute (the server's workers may run elsewhere) and hands it to the server in
``MLFLOW_TRACKING_URI``, so ``models:/readl@champion`` resolves and no stray ``mlflow.db`` appears.
"""

from __future__ import annotations

import os
import shutil
import sys
from pathlib import Path

from readl.registry.load import registered_version, require_artifacts, require_store
from readl.tracking import RegistryError, mlflow_session, tracking_uri

__all__ = ["serve_command"]


def serve_command(
    model_uri: str, host: str = "127.0.0.1", port: int = 5001, workers: int = 1, uri: str | None = None
) -> tuple[list[str], dict[str, str]]:
    """The ``mlflow models serve`` command line and environment for ``model_uri``.

    Args:
        model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/ID/readl``.
        host, port: where the server listens; workers: uvicorn worker processes (each loads the model).
        uri: tracking URI (default :func:`readl.tracking.tracking_uri`).

    Returns:
        ``(argv, env)``: argv[0] is the ``mlflow`` executable of this environment; env is ``os.environ`` with
        ``MLFLOW_TRACKING_URI`` set to the resolved (absolute, for sqlite) store.

    Raises:
        RegistryError: the sqlite store does not exist (nothing is created), the version's artifacts are missing
            (:func:`readl.registry.load.require_artifacts`), or ``mlflow`` is not installed.
        AliasNotFoundError: the model, version or alias does not exist.
    """
    uri = uri or tracking_uri()
    if uri.startswith("sqlite:///") and not uri.startswith("sqlite:////"):  # relative: pin it to this folder
        uri = f"sqlite:///{Path(uri[len('sqlite:///') :]).resolve()}"
    require_store(uri)
    with mlflow_session(uri) as client:  # a moved project's store is relocated here (readl.tracking.relocate_store)
        version = registered_version(model_uri, uri)
        if version is not None:  # checked here: the server would die with a traceback on a missing model
            require_artifacts(client, model_uri[len("models:/") :].split("@")[0].split("/")[0], version)
    mlflow_bin = shutil.which("mlflow", path=str(Path(sys.executable).parent)) or shutil.which("mlflow")
    if mlflow_bin is None:
        raise RegistryError(
            "the `mlflow` command is not installed in this environment (pip install -c constraints.txt -e .)"
        )
    argv = [
        mlflow_bin,
        "models",
        "serve",
        "-m",
        model_uri,
        "--env-manager",
        "local",
        "-h",
        host,
        "-p",
        str(port),
        "-w",
        str(workers),
    ]
    return argv, {**os.environ, "MLFLOW_TRACKING_URI": uri}
