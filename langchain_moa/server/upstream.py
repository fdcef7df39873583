"""Upstream addresses kept out of what clients receive.

Cost reasons (``genai-prices has no price for 'm' at http://10.0.0.5:8000/v1/``)
and provider errors (``Cannot connect to host 10.0.0.5:8000``) name the
upstream servers an ensemble calls. Those are the operator's business: the
server replaces every URL, ``host:port`` and IP address in error messages and
in the ``moa`` details with :data:`UPSTREAM`, unless
``ServerSettings(expose_upstream=True)``. Model output (the ``text`` of a
proposal or of the aggregator's call) is left as it is.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

UPSTREAM = "[upstream]"
"""What an upstream address is replaced with."""

_HOST = r"(?:\[[0-9A-Fa-f:.]+\]|(?:\d{1,3}\.){3}\d{1,3}|localhost|(?:[A-Za-z0-9-]+\.)+[A-Za-z]{2,})"
_ADDRESS = re.compile(
    r"(?P<url>\b[A-Za-z][A-Za-z0-9+.-]*://[^\s'\"<>]+)"
    rf"|(?<![\w./-]){_HOST}:\d{{1,5}}(?!\d)"
    rf"|\(['\"]{_HOST}['\"], \d{{1,5}}\)"  # a socket address: ('10.0.0.5', 8000)
    r"|(?<![\w.])(?:\d{1,3}\.){3}\d{1,3}(?!\.?\d)"
)
_TRAILING = ".,;:!?)]}"
_MODEL_OUTPUT = "text"


def _replace(match: re.Match[str]) -> str:
    url = match.group("url")
    if url is None:
        return UPSTREAM
    kept = url.rstrip(_TRAILING)
    return UPSTREAM + url[len(kept) :]


def hide_upstream(text: str) -> str:
    """``text`` with each URL, ``host:port`` and IP address replaced with ``[upstream]``."""
    return _ADDRESS.sub(_replace, text)


def hide_upstream_in(details: Any, key: str | None = None) -> Any:
    """A copy of JSON-ready ``details``, upstream addresses hidden.

    :func:`hide_upstream` is applied to every string but model output (the
    values of ``text`` fields).
    """
    if isinstance(details, str):
        return details if key == _MODEL_OUTPUT else hide_upstream(details)
    if isinstance(details, Mapping):
        return {name: hide_upstream_in(value, name) for name, value in details.items()}
    if isinstance(details, (list, tuple)):
        return [hide_upstream_in(value, key) for value in details]
    return details
