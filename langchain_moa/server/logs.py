"""The log of ``moa serve``: its own loggers and uvicorn's, masked; the root logger untouched.

``langchain_moa`` (the server's statuses and masked errors) and uvicorn's
loggers write to standard error (the access log to standard output) at the
chosen level. The HTTP clients' loggers (``httpx``, ``httpcore``,
``openai``), which would log every upstream URL, are held at ``WARNING``.
Every record that reaches these handlers goes through
:class:`RedactingFilter`, so a key or a ``user:password@`` in a URL is
masked (``langchain_moa.errors.redact``) whatever logged it.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from uvicorn.config import LOGGING_CONFIG

from langchain_moa.errors import redact

_QUIET = ("httpx", "httpcore", "openai")


def _masked(value: Any) -> Any:
    return value if isinstance(value, (int, float)) else redact(str(value))


class RedactingFilter(logging.Filter):
    """Masks secrets in a record's message, arguments and traceback (never drops one)."""

    def filter(self, record: logging.LogRecord) -> bool:
        """Mask the record in place.

        Args:
            record: A log record.

        Returns:
            ``True``: the record is always kept.
        """
        if isinstance(record.msg, str):
            record.msg = redact(record.msg)
        if isinstance(record.args, Mapping):
            record.args = {key: _masked(value) for key, value in record.args.items()}
        elif isinstance(record.args, tuple):
            record.args = tuple(_masked(value) for value in record.args)
        if record.exc_info and not record.exc_text:
            record.exc_text = logging.Formatter().formatException(record.exc_info)
        if record.exc_text:
            record.exc_text = redact(record.exc_text)
        return True


def log_config(level: str) -> dict[str, Any]:
    """The ``logging.config.dictConfig`` of ``moa serve`` (also uvicorn's ``log_config``).

    Args:
        level: ``"info"``, ``"debug"`` ... for the server's and uvicorn's loggers.

    Returns:
        uvicorn's default configuration plus the filter, the ``langchain_moa``
        logger and the quiet HTTP clients' loggers.
    """
    level = level.upper()
    handlers = {
        name: {**handler, "filters": ["redact"]}
        for name, handler in LOGGING_CONFIG["handlers"].items()
    }
    loggers = {
        **LOGGING_CONFIG["loggers"],
        **{
            name: {"handlers": ["default"], "level": "WARNING", "propagate": False}
            for name in _QUIET
        },
        "langchain_moa": {"handlers": ["default"], "level": level, "propagate": False},
    }
    return {
        **LOGGING_CONFIG,
        "filters": {"redact": {"()": f"{__name__}.RedactingFilter"}},
        "handlers": handlers,
        "loggers": loggers,
    }
