"""Who may call the server: bearer keys, compared in constant time, and bind checks."""

from __future__ import annotations

import hmac
import ipaddress
import os
import re
from collections.abc import Iterable, Mapping

API_KEYS_ENV = "MOA_SERVER_API_KEYS"
"""Environment variable with the server's keys, separated by commas or whitespace."""

ANONYMOUS = "anonymous"
"""The caller of a server without keys (one concurrency budget for all)."""


def server_keys(given: Iterable[str] = (), environ: Mapping[str, str] | None = None) -> list[str]:
    """The server's API keys: ``given`` (``--api-key``) and ``MOA_SERVER_API_KEYS``.

    Args:
        given: Keys from the command line or the caller.
        environ: The environment (default: ``os.environ``).

    Returns:
        Every distinct non-empty key, in order.
    """
    environ = os.environ if environ is None else environ
    from_env = re.split(r"[\s,]+", environ.get(API_KEYS_ENV, ""))
    keys = [key.strip() for key in [*given, *from_env]]
    return list(dict.fromkeys(key for key in keys if key))


def bearer_token(authorization: str | None) -> str | None:
    """The token of an ``Authorization: Bearer <token>`` header, if there is one."""
    if not authorization:
        return None
    scheme, _, token = authorization.strip().partition(" ")
    token = token.strip()
    return token if scheme.lower() == "bearer" and token else None


class KeyChecker:
    """Checks a request's bearer key against the server's keys.

    Every key is compared with ``hmac.compare_digest`` and the loop never
    stops early, so the time taken tells nothing about which key, or how much
    of one, matched. Callers are named by the position of their key
    (``key-1``, ``key-2`` ...), never by the key.

    Args:
        keys: The accepted keys; none: every request is let in as
            :data:`ANONYMOUS`.
    """

    def __init__(self, keys: Iterable[str]) -> None:
        self._keys = tuple(key.encode() for key in keys)

    @property
    def enabled(self) -> bool:
        """Whether requests need a key."""
        return bool(self._keys)

    def caller(self, authorization: str | None) -> str | None:
        """Name the caller of a request by its ``Authorization`` header.

        Args:
            authorization: The header's value, if any.

        Returns:
            ``key-N`` for the N-th key, :data:`ANONYMOUS` when the server has
            no keys, ``None`` when the key is missing or wrong.
        """
        if not self._keys:
            return ANONYMOUS
        token = (bearer_token(authorization) or "").encode()
        found = 0
        for position, key in enumerate(self._keys, start=1):
            if hmac.compare_digest(token, key) and not found:
                found = position
        return f"key-{found}" if found else None


def is_loopback(host: str) -> bool:
    """Whether ``host`` is ``localhost`` or a loopback address (127.0.0.0/8, ::1)."""
    if host.lower() == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


def check_bind(host: str, *, has_keys: bool, insecure_no_auth: bool) -> None:
    """Refuse to listen beyond loopback without keys.

    Args:
        host: The address to listen on.
        has_keys: Whether the server has API keys.
        insecure_no_auth: The operator's explicit consent to serve without keys.

    Raises:
        ValueError: ``host`` is not loopback, there are no keys and no consent.
    """
    if has_keys or insecure_no_auth or is_loopback(host):
        return
    msg = (
        f"refusing to listen on {host} without API keys: anyone who can reach it could spend "
        "your provider credits. Give keys with --api-key or MOA_SERVER_API_KEYS, or pass "
        "--insecure-no-auth if that is really what you want"
    )
    raise ValueError(msg)
