"""Load a registered readl model (``models:/readl@champion``, ``models:/readl/3``, ``runs:/ID/readl``)."""

from __future__ import annotations

from pathlib import Path

from readl.tracking import (
    AliasNotFoundError,
    ArtifactStoreError,
    RegistryError,
    artifact_errors,
    call,
    mlflow_session,
    tracking_uri,
)

__all__ = ["is_registry_uri", "load_registered", "registered_version", "require_artifacts", "require_store"]


def require_store(uri: str) -> None:
    """Reading a registry must not create one: a ``sqlite:///`` store whose file is missing is an error.

    Raises:
        RegistryError: the sqlite file does not exist (message: where it was looked for and the fix).
    """
    if uri.startswith("sqlite:///"):
        path = Path(uri[len("sqlite:///") :])
        if not path.is_file():
            raise RegistryError(
                f"no MLflow registry at {uri} ({path.resolve()} does not exist); run this from the project folder "
                f"(where `readl register` wrote mlruns.db), or set MLFLOW_TRACKING_URI to your tracking server"
            )


def registered_version(model_uri: str, uri: str | None = None) -> str | None:
    """The version number behind ``models:/NAME@ALIAS`` or ``models:/NAME/VERSION`` (None for ``runs:/``)."""
    import mlflow

    if not model_uri.startswith("models:/"):
        return None
    ref = model_uri[len("models:/") :].strip("/")
    if "@" in ref:
        name, alias = ref.split("@", 1)
        client = mlflow.MlflowClient(uri or tracking_uri())
        return str(call(lambda: client.get_model_version_by_alias(name, alias), f"read alias {alias!r}").version)
    return ref.rsplit("/", 1)[1] if "/" in ref else None


def require_artifacts(client, name: str, version: str) -> None:
    """A version whose files are gone is never promoted or served: its artifacts must hold an ``MLmodel``.

    Args:
        client: an ``MlflowClient`` inside :func:`readl.tracking.mlflow_session` (MLflow's registry URI set).
        name, version: the registered model version.

    Raises:
        RegistryError: no ``MLmodel`` at the version's artifact location (the message names it and the fix).
    """
    from mlflow.artifacts import list_artifacts

    where = call(lambda: client.get_model_version_download_uri(name, version), f"read version {version}")
    with artifact_errors(f"list the artifacts of {name} version {version}", tracking_uri()):
        files = {Path(f.path).name for f in list_artifacts(artifact_uri=f"models:/{name}/{version}") or []}
    if "MLmodel" not in files:
        raise RegistryError(
            f"{name} version {version}: its artifacts are missing at {where} (deleted, "
            f"or the store was moved without its mlruns/ folder); register it again (`readl register`) or point "
            f"the alias at a version that loads"
        )


def is_registry_uri(model: str | None) -> bool:
    """True for MLflow model URIs (``models:/...``, ``runs:/...``)."""
    return bool(model) and str(model).startswith(("models:/", "runs:/"))


def load_registered(
    model_uri: str, device: str | None = None, max_new_tokens: int | None = None, uri: str | None = None
):
    """Download a registered model's artifacts and load it (base model + adapter + thresholds + params).

    Args:
        model_uri: ``models:/NAME@ALIAS``, ``models:/NAME/VERSION`` or ``runs:/RUN_ID/readl``.
        device: ``cpu``, ``cuda`` ... (default ``$READL_DEVICE``, else CUDA when available).
        max_new_tokens: override the logged ``model.max_new_tokens``.
        uri: tracking URI (default :func:`readl.tracking.tracking_uri`).

    Returns:
        The loaded :class:`readl.registry.pyfunc.ReadlModel` (``.predictor``, ``.localization``,
        ``.thresholds_path``, ``.batch_size``, ``.predict(dataframe)``, ``.registered`` = ``"URI (version V)"``,
        ``.base`` = the version's ``base_model`` tag, e.g. ``"tiny + warmup"``).

    Raises:
        RegistryError: the default sqlite store (``mlruns.db``) does not exist here (nothing is created).
        AliasNotFoundError: the model, version or alias does not exist.
        TrackingUnavailableError: the tracking server is unreachable.
        ArtifactStoreError: the artifacts could not be downloaded (S3 / artifact proxy).
    """
    import mlflow.pyfunc
    from mlflow.exceptions import MlflowException

    uri = uri or tracking_uri()
    require_store(uri)
    with mlflow_session(uri):
        config = {k: v for k, v in {"device": device, "max_new_tokens": max_new_tokens}.items() if v is not None}

        def load():
            with artifact_errors(f"download {model_uri}", uri):
                return mlflow.pyfunc.load_model(model_uri, model_config=config or None)

        try:
            pyfunc = call(load, f"load {model_uri}", uri, attempts=3)
        except MlflowException as exc:
            if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "NOT_FOUND", "INVALID_PARAMETER_VALUE"):
                raise AliasNotFoundError(
                    f"{model_uri}: not found at {uri} ({str(exc).splitlines()[0]}); check the "
                    f"name and alias (`readl register` sets 'challenger', `readl promote` "
                    f"'champion')"
                ) from exc
            raise
        model = pyfunc.unwrap_python_model()
        if not hasattr(model, "predictor"):
            raise ArtifactStoreError(f"{model_uri} is not a readl model (python model {type(model).__name__})")
        version = registered_version(model_uri, uri)
        model.registered = f"{model_uri} (version {version})" if version else model_uri
        return model
