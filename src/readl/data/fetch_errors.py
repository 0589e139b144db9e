"""The errors of ``readl fetch`` (messages say why and what to do)."""

from __future__ import annotations

__all__ = ["ChecksumError", "FetchError", "ManualDownloadRequired", "UnknownSourceError"]


class FetchError(RuntimeError):
    """A download that cannot proceed (bad URL, HTTP error, archive format); message says why."""


class ManualDownloadRequired(FetchError):
    """The benchmark has no direct public download: the message explains where and how."""

    exit_code = 2  # `readl fetch`: a step for the user (download by hand), not a failure of the command


class UnknownSourceError(KeyError, ValueError):
    """``readl fetch NAME`` with a name that is not in :data:`SOURCES` and no ``--url`` (a usage error)."""

    def __str__(self) -> str:
        return str(self.args[0]) if self.args else ""


class ChecksumError(FetchError):
    """The downloaded archive's SHA-256 differs from the expected one (download deleted)."""
