"""Queries of readl's versions in the MLflow registry: the versions readl registered, aliases, ``challenger``."""

from __future__ import annotations

from readl.registry.fingerprints import FINGERPRINT_TAG
from readl.tracking import AliasNotFoundError, call, tracking_uri

__all__ = ["readl_versions", "require_alias", "sync_challenger"]


def readl_versions(client, name: str) -> list:
    """All versions of ``name`` registered by readl (with a fingerprint tag), lowest version first."""
    from mlflow.exceptions import MlflowException

    try:
        versions = call(lambda: client.search_model_versions(f"name='{name}'"), f"search versions of {name!r}")
    except MlflowException as exc:
        if getattr(exc, "error_code", "") == "RESOURCE_DOES_NOT_EXIST":
            return []
        raise
    return sorted((v for v in versions if FINGERPRINT_TAG in (v.tags or {})), key=lambda v: int(v.version))


def matching_versions(client, name: str, run_id: str, fp: str) -> list:
    return [v for v in readl_versions(client, name) if v.run_id == run_id and v.tags.get(FINGERPRINT_TAG) == fp]


def alias_version(client, name: str, alias: str) -> str | None:
    from mlflow.exceptions import MlflowException

    try:
        return str(call(lambda: client.get_model_version_by_alias(name, alias), f"read alias {alias!r}").version)
    except MlflowException as exc:
        if getattr(exc, "error_code", "") in ("RESOURCE_DOES_NOT_EXIST", "INVALID_PARAMETER_VALUE", "NOT_FOUND"):
            return None
        raise


def sync_challenger(client, name: str, alias: str = "challenger", rounds: int = 10) -> str | None:
    """Point ``alias`` at the newest readl version of ``name`` and re-check until it holds.

    Returns:
        The version the alias points at (None when the model has no readl version).
    """
    from mlflow.exceptions import MlflowException

    current = None
    for _ in range(rounds):
        versions = readl_versions(client, name)
        if not versions:
            return None
        newest = versions[-1].version
        current = alias_version(client, name, alias)
        if current == str(newest):
            return current
        try:
            call(lambda: client.set_registered_model_alias(name, alias, newest), f"set alias {alias!r} -> {newest}")
        except MlflowException as exc:  # a concurrent twin deleted its duplicate version meanwhile: look again
            if getattr(exc, "error_code", "") != "RESOURCE_DOES_NOT_EXIST":
                raise
    return current


def require_alias(client, name: str, alias: str) -> str:
    """The version ``alias`` points at.

    Raises:
        AliasNotFoundError: the model or the alias does not exist (message lists the versions).
    """
    version = alias_version(client, name, alias)
    if version is None:
        versions = [v.version for v in readl_versions(client, name)]
        what = f"versions {', '.join(map(str, versions))}" if versions else "no readl versions"
        raise AliasNotFoundError(
            f"registered model {name!r} has no alias {alias!r} at {tracking_uri()} ({what}); "
            f"run `readl register` first" + (" (it sets 'challenger')" if alias == "challenger" else "")
        )
    return version
