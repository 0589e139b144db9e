"""Credentials never printed or stored: the user-info part of a URL (``scheme://user:password@host``) masked.

Applied where a URL can reach a person or a file: every ``readl`` error line and log record (:mod:`readl.cli`),
the download record of ``readl fetch`` (``.part.url`` keeps a digest of the URL, never the URL), and the run
records that name the tracking URI (``train_run.json``, ``registered.json``).
"""

from __future__ import annotations

import logging
import re

__all__ = ["redact", "RedactingFilter"]

_USERINFO = re.compile(r"(?P<scheme>\b[a-zA-Z][a-zA-Z0-9+.-]*://)(?P<userinfo>[^/@\s'\"]+)@")


def redact(text: str) -> str:
    """``text`` with every URL's user-info replaced by ``***``: ``http://bob:PW@h/x`` -> ``http://***@h/x``.

    Only the part between ``scheme://`` and the first ``@`` of a host is touched; anything else is unchanged.
    """
    return _USERINFO.sub(lambda m: f"{m['scheme']}***@", str(text))


class RedactingFilter(logging.Filter):
    """A logging filter that redacts each record's formatted message (args merged first), in place."""

    def filter(self, record: logging.LogRecord) -> bool:
        message = record.getMessage()
        clean = redact(message)
        if clean != message:
            record.msg, record.args = clean, None
        return True
