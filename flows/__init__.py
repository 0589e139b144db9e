"""Prefect flows of readl: ``retrain`` (scheduled, work pool ``cpu``) and ``train-on-gpu`` (work pool ``gpu``); see
prefect.yaml."""

import contextlib
import os


def without_telemetry() -> contextlib.AbstractContextManager:
    """The settings a flow's ``main()`` runs under: Prefect's server analytics off, because the ephemeral server
    of a run without ``PREFECT_API_URL`` would report telemetry (an ERROR line offline). An explicit
    ``PREFECT_SERVER_ANALYTICS_ENABLED`` in the environment wins (Prefect reads it itself)."""
    if "PREFECT_SERVER_ANALYTICS_ENABLED" in os.environ:
        return contextlib.nullcontext()
    from prefect.settings import PREFECT_SERVER_ANALYTICS_ENABLED, temporary_settings

    return temporary_settings({PREFECT_SERVER_ANALYTICS_ENABLED: False})
