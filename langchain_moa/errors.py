"""Exceptions raised by Mixture-of-Agents runs, and the masking of secrets.

Provider errors often echo what was sent: an API key in the message, the
``Authorization`` header in a request, the key again in the response body.
:func:`redact` masks such secrets in a text, :func:`describe_error` gives a
one-line masked description of an exception, and :func:`mask_exception` turns
an exception and its whole ``__cause__``/``__context__`` chain into
:class:`ProviderError` copies that hold masked text only, so that they can be
attached to (and printed with) this package's own errors.
"""

from __future__ import annotations

import base64
import binascii
import re
import traceback
from collections.abc import Callable, Sequence
from typing import Any

from langchain_moa.state import Proposal

REDACTED = "[REDACTED]"
"""What a masked secret is replaced with."""

_Replacement = str | Callable[[re.Match[str]], str]

_NOT_MASKED = rf"(?!{re.escape(REDACTED)})"
"""Guard so that masking an already masked text changes nothing."""

_ALNUM_BEFORE = r"(?<![A-Za-z0-9])"
"""A key may be glued to a word by ``_``, ``-``, ``=``, ``:`` ... but not by a letter."""


def _basic_credentials(match: re.Match[str]) -> str:
    """Mask ``Basic <base64>`` only when it decodes to printable ``user:password``."""
    token = match.group("token")
    padded = token + "=" * (-len(token) % 4)
    try:
        decoded = base64.b64decode(padded, validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError, ValueError):
        return match.group(0)
    if ":" in decoded and decoded.isprintable():
        return f"{match.group('scheme')} {REDACTED}"
    return match.group(0)


# Each row: a compiled pattern and its replacement. Rows run in order, the ones
# that keep some context (a header or parameter name) first. Decisions:
# * Context rules mask any value after ``Authorization:``/``api_key=``-like names.
# * Vendor prefixes (``sk-``, ``ghp_``, ``hf_``, ``AIza`` ...) are masked even when
#   glued to a word by ``_``/``-``/``=`` (``apikey_sk-...``), never after a letter
#   (``task-force``, ``desk-lamp`` stay).
# * A run of 32 or more hex digits is masked (bare 32/64-hex keys; hashes and git
#   SHAs are masked too, which is accepted), except OpenAI request ids
#   (``req_<hex>``), which are useful for support. A UUID (8-4-4-4-12) is
#   never masked: none of its runs is long enough.
# * A 32+ character alphanumeric run mixing digits, lower and upper case is
#   masked (prefix-less random keys); ordinary words and identifiers are not.
_SECRET_PATTERNS: tuple[tuple[re.Pattern[str], _Replacement], ...] = (
    # Authorization / Proxy-Authorization header value: keep the scheme.
    (
        re.compile(
            r"(?i)(?<![A-Za-z0-9-])(?P<head>(?:proxy-)?authorization[\"']?\s*[:=]\s*[\"']?"
            rf"(?!(?:[A-Za-z]+\s+)?{re.escape(REDACTED)})(?:[A-Za-z]+\s+)?)[^\s\"',;}}]+"
        ),
        rf"\g<head>{REDACTED}",
    ),
    # api_key=..., "access_token": "...", password: ..., x-api-key: ...
    (
        re.compile(
            rf"(?i){_ALNUM_BEFORE}(?P<head>(?:x-)?(?:(?:api|access|auth|secret|private|client"
            r"|refresh|session)[_-]?(?:key|token|secret)|apikey|password|passwd)"
            rf"[\"']?\s*[:=]\s*[\"']?){_NOT_MASKED}[^\s\"',;&)}}\]]{{4,}}"
        ),
        rf"\g<head>{REDACTED}",
    ),
    # Bare names: token=..., key=..., secret=..., and "token": "..." in JSON.
    (
        re.compile(
            r"(?i)(?<![A-Za-z0-9_-])(?P<head>(?:token|key|secret|pwd|passphrase)\s*=\s*[\"']?"
            r"|[\"'](?:token|key|secret|pwd|passphrase)[\"']\s*:\s*[\"'])"
            rf"{_NOT_MASKED}[^\s\"',;&)}}\]]{{4,}}"
        ),
        rf"\g<head>{REDACTED}",
    ),
    # Credentials in a URL: scheme://user:password@host.
    (re.compile(r"(?<=://)(?P<user>[^/\s:@]+):[^/\s@]+@"), rf"\g<user>:{REDACTED}@"),
    # Basic <base64 of user:password>, outside a header too.
    (
        re.compile(
            r"(?i)(?<![A-Za-z0-9])(?P<scheme>basic)\s+(?P<token>[A-Za-z0-9+/]{6,}={0,2})"
            r"(?![A-Za-z0-9+/=])"
        ),
        _basic_credentials,
    ),
    # Bearer <token> (a JWT, an opaque token); 8+ characters, so "bearer of" stays.
    (re.compile(r"(?i)\b(?P<scheme>bearer)\s+[A-Za-z0-9._~+/=\-]{8,}"), rf"\g<scheme> {REDACTED}"),
    # Vendor-prefixed keys: OpenAI/Anthropic/DeepSeek sk-, Stripe-like pk-/rk-,
    # Together tgp_, Groq gsk_, xAI xai-, Perplexity pplx-, NVIDIA nvapi-, Cerebras csk-.
    (
        re.compile(
            rf"{_ALNUM_BEFORE}(?:sk|pk|rk|tgp|gsk|xai|pplx|nvapi|csk)[-_][A-Za-z0-9_\-*]{{6,}}"
        ),
        REDACTED,
    ),
    # GitHub tokens: ghp_/gho_/ghu_/ghs_/ghr_ and fine-grained github_pat_.
    (
        re.compile(rf"{_ALNUM_BEFORE}(?:gh[pousr]_[A-Za-z0-9]{{20,}}|github_pat_\w{{20,}})"),
        REDACTED,
    ),
    # Hugging Face tokens.
    (re.compile(rf"{_ALNUM_BEFORE}hf_[A-Za-z0-9]{{20,}}"), REDACTED),
    # Google API keys.
    (re.compile(rf"{_ALNUM_BEFORE}AIza[0-9A-Za-z_\-]{{30,}}"), REDACTED),
    # Bare hex keys: 32+ hex digits (not an OpenAI request id).
    (re.compile(r"(?<![0-9A-Fa-f])(?<!req_)(?<!req-)[0-9A-Fa-f]{32,}(?![0-9A-Fa-f])"), REDACTED),
    # Prefix-less random keys: 32+ alphanumerics with a digit, a lower and an upper case.
    (
        re.compile(
            rf"{_ALNUM_BEFORE}(?=[A-Za-z0-9]*[0-9])(?=[A-Za-z0-9]*[a-z])(?=[A-Za-z0-9]*[A-Z])"
            r"[A-Za-z0-9]{32,}(?![A-Za-z0-9])"
        ),
        REDACTED,
    ),
)


def redact(text: str) -> str:
    """Mask substrings of ``text`` that look like API keys, tokens or passwords.

    See the table ``_SECRET_PATTERNS`` for what is masked and why. Masking is
    idempotent: ``redact(redact(t)) == redact(t)``.

    Args:
        text: Any text, typically an error message.

    Returns:
        The text with each secret replaced by :data:`REDACTED` (a header or
        parameter name before the secret is kept).
    """
    for pattern, replacement in _SECRET_PATTERNS:
        text = pattern.sub(replacement, text)
    return text


def _message(error: BaseException) -> str:
    """``str(error)`` stripped, or a placeholder if the exception cannot print."""
    try:
        return str(error).strip()
    except Exception:
        return "<unprintable message>"


def describe_error(error: BaseException) -> str:
    """Return ``"ErrorType: message"`` for ``error``, with secrets masked.

    A :class:`ProviderError` is described by its original type and message, so
    that masking an error does not change its description.
    """
    if isinstance(error, ProviderError):
        return str(error)
    message = _message(error)
    name = type(error).__name__
    return redact(f"{name}: {message}" if message else name)


class MoAError(Exception):
    """Base class of the errors raised by a Mixture-of-Agents run.

    Every subclass pickles and deep-copies with its attributes (a process pool
    hands it back whole), whatever its ``__init__`` takes.
    """

    def __reduce__(self) -> tuple[Any, ...]:
        return (_rebuild_error, (type(self), self.args), dict(vars(self)))


def _rebuild_error(cls: type[MoAError], args: tuple[Any, ...]) -> MoAError:
    """Unpickle a :class:`MoAError` without calling its ``__init__`` (the state follows)."""
    error = cls.__new__(cls)
    Exception.__init__(error, *args)
    return error


class ProviderError(MoAError):
    """A masked copy of an exception (typically a provider SDK's error).

    It holds text and numbers only, never a reference to the original
    exception, its request, response or body, so it can be kept, printed,
    logged or traced without leaking a key. See :func:`mask_exception`.

    Attributes:
        type_name: Name of the original exception's class (``"AuthenticationError"``).
        message: The original message, secrets masked.
        status_code: The HTTP status of the original error, if it had one.
        retry_after: The server's ``Retry-After`` header value, if it sent one.
        request_id: The provider's request id (``x-request-id``), if known.
    """

    def __init__(
        self,
        type_name: str,
        message: str,
        *,
        status_code: int | None = None,
        retry_after: str | None = None,
        request_id: str | None = None,
    ) -> None:
        self.type_name = type_name
        self.message = message
        self.status_code = status_code
        self.retry_after = retry_after
        self.request_id = request_id
        super().__init__(self._text())

    def _text(self) -> str:
        return f"{self.type_name}: {self.message}" if self.message else self.type_name

    def __str__(self) -> str:
        return self._text()


def _response_of(error: BaseException) -> Any:
    try:
        return getattr(error, "response", None)
    except Exception:
        return None


def _status_code(error: BaseException) -> int | None:
    """The HTTP status of ``error`` or of its ``response``, if any."""
    for candidate in (error, _response_of(error)):
        try:
            code = getattr(candidate, "status_code", None)
        except Exception:
            code = None
        if isinstance(code, int) and not isinstance(code, bool):
            return code
    return None


def _header(error: BaseException, name: str) -> str | None:
    """A header of ``error.response``, as text, if present."""
    try:
        headers = getattr(_response_of(error), "headers", None)
        value = headers.get(name) if headers is not None else None
    except Exception:
        return None
    return redact(value) if isinstance(value, str) and value else None


def _request_id(error: BaseException) -> str | None:
    try:
        value = getattr(error, "request_id", None)
    except Exception:
        value = None
    if isinstance(value, str) and value:
        return redact(value)
    return _header(error, "x-request-id")


def _masked_copy(error: BaseException) -> ProviderError:
    """A :class:`ProviderError` with the masked facts of ``error`` (no links yet)."""
    if isinstance(error, ProviderError):
        copy = ProviderError(
            error.type_name,
            redact(error.message),
            status_code=error.status_code,
            retry_after=error.retry_after,
            request_id=error.request_id,
        )
    else:
        copy = ProviderError(
            type(error).__name__,
            redact(_message(error)),
            status_code=_status_code(error),
            retry_after=_header(error, "retry-after"),
            request_id=_request_id(error),
        )
    notes = [redact(note) for note in _notes(error)]
    if notes:
        copy.__notes__ = notes  # what ``add_note`` (Python 3.11+) would do
    return copy


def _notes(error: BaseException) -> list[str]:
    """The original's notes (PEP 678) and, as a last note, its traceback, as text."""
    notes = [str(note) for note in getattr(error, "__notes__", None) or ()]
    if error.__traceback__ is not None and not isinstance(error, ProviderError):
        frames = "".join(traceback.format_list(traceback.extract_tb(error.__traceback__)))
        notes.append(
            f"Original traceback of {type(error).__name__} (most recent call last):\n"
            f"{frames.rstrip()}"
        )
    return notes


def _chain(error: BaseException) -> list[BaseException]:
    """Every exception reachable through ``__cause__``/``__context__``, once each."""
    seen: dict[int, BaseException] = {}
    pending = [error]
    while pending:
        current = pending.pop()
        if id(current) in seen:
            continue
        seen[id(current)] = current
        pending.extend(e for e in (current.__cause__, current.__context__) if e is not None)
    return list(seen.values())


def mask_exception(error: BaseException) -> BaseException:
    """Return a masked copy of ``error`` and of its whole exception chain.

    Every exception reachable through ``__cause__`` and ``__context__``
    (cycles included) becomes a :class:`ProviderError` carrying its type name,
    its message with secrets masked (:func:`redact`), its HTTP status code,
    ``Retry-After`` and request id if it had them, its notes, and its
    traceback as masked text (a note). The copies are linked like the
    originals (``__suppress_context__`` included) and hold no reference to
    any original exception, so ``traceback.format_exception`` of the result
    shows no secret that :func:`redact` recognizes.

    Args:
        error: The exception to mask, typically one raised by a provider SDK.

    Returns:
        The masked copy of ``error``, fit to be the ``__cause__`` of this
        package's errors.
    """
    originals = _chain(error)
    copies = {id(original): _masked_copy(original) for original in originals}
    for original in originals:
        copy = copies[id(original)]
        if original.__cause__ is not None:
            copy.__cause__ = copies[id(original.__cause__)]
        if original.__context__ is not None:
            copy.__context__ = copies[id(original.__context__)]
        copy.__suppress_context__ = original.__suppress_context__
    return copies[id(error)]


class ProposersFailedError(MoAError):
    """Too few proposers of a layer answered for the run to go on.

    Attributes:
        layer: The proposer layer (from 1) that fell short.
        required: How many successful answers the layer needed.
        proposals: Every proposal of that layer, failed ones included, so no
            answer or cause is lost (their ``error`` texts are masked).
    """

    def __init__(self, layer: int, required: int, proposals: Sequence[Proposal]) -> None:
        self.layer = layer
        self.required = required
        self.proposals = list(proposals)
        failures = [p for p in self.proposals if not p.ok]
        ok = len(self.proposals) - len(failures)
        causes = "; ".join(f"{p.model} (#{p.index}): {p.error}" for p in failures)
        super().__init__(
            redact(
                f"layer {layer}: {ok} of {len(self.proposals)} proposers answered, "
                f"{required} needed. Failures: {causes}"
            )
        )

    @property
    def failures(self) -> list[Proposal]:
        """The proposals of the layer that failed."""
        return [p for p in self.proposals if not p.ok]


class AggregatorFailedError(MoAError):
    """The aggregator failed; the proposals it would have read are attached.

    Attributes:
        model: Name of the (last) aggregator model that failed.
        proposals: Every proposal of every layer.
        partial_text: The part of the answer already streamed, if any.
        failures: ``"model: error"`` of every aggregator tried, in order.
    """

    def __init__(
        self,
        model: str,
        cause: BaseException,
        proposals: Sequence[Proposal],
        *,
        partial_text: str | None = None,
        failures: Sequence[tuple[str, BaseException]] = (),
    ) -> None:
        self.model = model
        self.proposals = list(proposals)
        self.partial_text = partial_text
        self.failures = [f"{label}: {describe_error(error)}" for label, error in failures]
        message = f"aggregator {model} failed: {describe_error(cause)}"
        if partial_text is not None:
            message += (
                f" (after {len(partial_text)} characters of the answer had already been "
                "streamed; they are in .partial_text)"
            )
        earlier = self.failures[:-1]
        if earlier:
            message += f"; before it: {'; '.join(earlier)}"
        super().__init__(redact(message))
