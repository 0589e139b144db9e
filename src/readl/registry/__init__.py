"""MLflow registry for readl: the pyfunc model, registration, aliases and the promotion gate.

Submodules (the MLflow connection itself is the base service :mod:`readl.tracking`, which training uses too):
:mod:`~readl.registry.pyfunc` (the model: input/output contract), :mod:`~readl.registry.registration`
(``readl register``), :mod:`~readl.registry.gate` (``readl promote``), :mod:`~readl.registry.load`
(``readl predict --model models:/readl@champion``). Importing this package does not import MLflow or torch.
"""

from __future__ import annotations

from readl.tracking import (
    DEFAULT_TRACKING_URI,
    AliasNotFoundError,
    ArtifactStoreError,
    RegistryError,
    TrackingUnavailableError,
    connect,
    tracking_uri,
)

__all__ = [
    "DEFAULT_TRACKING_URI",
    "RegistryError",
    "TrackingUnavailableError",
    "AliasNotFoundError",
    "ArtifactStoreError",
    "tracking_uri",
    "connect",
    "register",
    "promote",
    "load_registered",
    "is_registry_uri",
]


def __getattr__(name: str):  # lazy: keep `import readl.registry` light
    if name == "register":
        from readl.registry.registration import register

        return register
    if name == "promote":
        from readl.registry.gate import promote

        return promote
    if name in ("load_registered", "is_registry_uri"):
        from readl.registry import load

        return getattr(load, name)
    raise AttributeError(name)
