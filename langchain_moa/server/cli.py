"""``moa serve``: serve ensembles over OpenAI's Chat Completions API with uvicorn.

The line-up, first match wins:

1. ``--config FILE``: the named ensembles of a TOML file
   (:mod:`langchain_moa.server.config`).
2. ``--preset NAME``: a published line-up (``together-moa``,
   ``together-moa-lite``, ``openai``), served under its name.
3. Otherwise the line-up ``moa`` would choose (``--base-url`` /
   ``OPENAI_BASE_URL``, ``TOGETHER_API_KEY``, ``OPENAI_API_KEY``; with none of
   them, or ``--simulate``, the bundled simulator, and the server says the
   answers are simulated), served as ``moa``.

Clients authenticate with a bearer key from ``--api-key`` or
``MOA_SERVER_API_KEYS``. Without keys the server only listens on a loopback
address, unless ``--insecure-no-auth``. With ``--workers N`` every worker
process builds the same ensembles from the line-ups' names and reads the
provider keys from its own environment; keys are never written anywhere.

Connections are guarded (:mod:`langchain_moa.server.connections`): deadlines
for a request's headers and body, an idle timeout, a bound on open
connections. The log (:mod:`langchain_moa.server.logs`) is the server's and
uvicorn's, masked; the root logger is left alone. ``Serving at ...`` is
printed once the socket accepts connections.
"""

from __future__ import annotations

import argparse
import functools
import json
import logging.config
import os
import signal
import socket
import sys
from collections.abc import Callable, Sequence
from contextlib import ExitStack
from dataclasses import asdict
from types import FrameType
from typing import Any

import uvicorn
from fastapi import FastAPI
from pydantic import ValidationError
from uvicorn.supervisors import Multiprocess

from langchain_moa.chat_model import MoAChatModel
from langchain_moa.cli import choose_lineup
from langchain_moa.cli_arguments import add_model_arguments
from langchain_moa.errors import redact
from langchain_moa.lineups import LineUp
from langchain_moa.presets import PRESETS, preset_lineup
from langchain_moa.server.app import create_app
from langchain_moa.server.auth import API_KEYS_ENV, check_bind, server_keys
from langchain_moa.server.config import load_config
from langchain_moa.server.connections import (
    HEADER_TIMEOUT_S,
    KEEP_ALIVE_S,
    LIMIT_CONCURRENCY,
    connection_options,
)
from langchain_moa.server.logs import log_config
from langchain_moa.server.settings import ServerSettings

SPEC_ENV = "MOA_SERVE_SPEC"
"""How the parent hands line-ups and settings (no keys) to worker processes."""

_DEFAULTS = ServerSettings()
_PROG = "moa serve"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        msg = f"must be an integer, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if value < 1:
        msg = f"must be at least 1, got {value}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        msg = f"must be a number of seconds, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not 0 < value < float("inf"):
        msg = f"must be a positive number of seconds, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def _seconds(text: str) -> float | None:
    return None if text.lower() in {"none", "0"} else _positive_seconds(text)


def build_parser() -> argparse.ArgumentParser:
    """The ``moa serve`` options."""
    parser = argparse.ArgumentParser(
        prog=_PROG,
        description=(
            "Serve Mixture-of-Agents ensembles over OpenAI's Chat Completions API "
            "(POST /v1/chat/completions, GET /v1/models, GET /health). Without --config "
            "or --preset it serves the line-up 'moa' would choose, as model 'moa'."
        ),
        epilog=(
            f"Client keys: --api-key (repeatable) or {API_KEYS_ENV} (comma-separated; "
            "preferred: a command line is visible to other users). Provider keys come "
            "only from the environment (TOGETHER_API_KEY, OPENAI_API_KEY, or the "
            "variables a config file names)."
        ),
    )
    source = parser.add_mutually_exclusive_group()
    source.add_argument("--config", metavar="FILE", help="a TOML file of named ensembles")
    source.add_argument("--preset", choices=PRESETS, help="a published line-up")
    parser.add_argument("--name", help="model id of a --preset or default line-up")
    parser.add_argument("--host", default="127.0.0.1", help="address (default %(default)s)")
    parser.add_argument(
        "--port", type=int, default=8000, help="port, 0 for any free one (default %(default)s)"
    )
    parser.add_argument(
        "--workers", type=_positive_int, default=1, help="worker processes (default 1)"
    )
    parser.add_argument(
        "--api-key", action="append", dest="api_keys", default=[], metavar="KEY",
        help="a key clients must send as 'Authorization: Bearer KEY' (repeatable)",
    )  # fmt: skip
    parser.add_argument(
        "--insecure-no-auth",
        action="store_true",
        help="allow listening on a non-loopback address without keys",
    )
    parser.add_argument(
        "--max-body-bytes", type=_positive_int, default=_DEFAULTS.max_body_bytes,
        help="largest request body (default %(default)s); larger: 413",
    )  # fmt: skip
    parser.add_argument(
        "--max-messages", type=_positive_int, default=_DEFAULTS.max_messages,
        help="most messages per request (default %(default)s); more: 413",
    )  # fmt: skip
    parser.add_argument(
        "--max-concurrency-per-key", type=_positive_int,
        default=_DEFAULTS.max_concurrency_per_key,
        help="requests in progress per key and worker (default %(default)s); more: 429",
    )  # fmt: skip
    parser.add_argument(
        "--request-timeout", type=_seconds, default=_DEFAULTS.request_timeout,
        help="seconds per request before 504, 'none' for no limit (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--body-timeout", type=_seconds, default=_DEFAULTS.body_timeout,
        help="seconds a request body may take to arrive before 408, 'none' for no limit "
        "(default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--header-timeout", type=_positive_seconds, default=HEADER_TIMEOUT_S,
        help="seconds a request's headers may take to arrive before the connection is "
        "closed (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--keep-alive-timeout", type=_positive_seconds, default=KEEP_ALIVE_S,
        help="seconds an idle kept-alive connection stays open (default %(default)s)",
    )  # fmt: skip
    parser.add_argument(
        "--limit-concurrency", type=_positive_int, default=LIMIT_CONCURRENCY,
        help="most open connections per worker (default %(default)s); more: 503",
    )  # fmt: skip
    parser.add_argument(
        "--no-moa-details",
        action="store_true",
        help="leave the 'moa' extension field (every proposal) out of responses",
    )
    parser.add_argument(
        "--expose-upstream",
        action="store_true",
        help="let upstream URLs and host:port through in responses (default: [upstream])",
    )
    parser.add_argument("--access-log", action="store_true", help="log every request line")
    parser.add_argument(
        "--log-level",
        default="info",
        choices=("critical", "error", "warning", "info", "debug"),
        help="server log level (default %(default)s)",
    )
    add_model_arguments(parser, layers_default=None)
    parser.add_argument("--base-url", help="an OpenAI-compatible endpoint (as in moa)")
    parser.add_argument("--simulate", action="store_true", help="serve the simulated line-up")
    return parser


def _settings(args: argparse.Namespace) -> ServerSettings:
    return ServerSettings(
        max_body_bytes=args.max_body_bytes,
        max_messages=args.max_messages,
        max_concurrency_per_key=args.max_concurrency_per_key,
        request_timeout=args.request_timeout,
        body_timeout=args.body_timeout,
        include_moa_details=not args.no_moa_details,
        expose_upstream=args.expose_upstream,
    )


def choose_lineups(args: argparse.Namespace, stack: ExitStack) -> list[LineUp]:
    """The line-ups to serve (see the module docstring).

    Args:
        args: The parsed options.
        stack: Owns the simulator, if one is started.

    Returns:
        The line-ups, each named as clients will ask for it.

    Raises:
        ValueError: A bad configuration file, an unknown preset, or a server
            whose models cannot be listed.
    """
    if args.config:
        return load_config(args.config)
    if args.preset:
        lineup = preset_lineup(
            args.preset,
            layers=args.layers,
            temperature=args.temperature,
            max_tokens=args.max_tokens,
        )
    else:
        if args.layers is None:
            args.layers = 3
        lineup = choose_lineup(args, stack)
    if args.name:
        lineup = LineUp(**{**lineup.__dict__, "name": args.name})
    return [lineup]


def build_ensembles(lineups: Sequence[LineUp]) -> dict[str, MoAChatModel]:
    """Build every line-up's ensemble, by name.

    Raises:
        ValueError: Two line-ups share a name, a key is missing, or an
            ensemble refuses a setting (the message names the line-up).
    """
    ensembles: dict[str, MoAChatModel] = {}
    for lineup in lineups:
        if lineup.name in ensembles:
            msg = f"two ensembles are named {lineup.name!r}"
            raise ValueError(msg)
        try:
            ensembles[lineup.name] = lineup.build()
        except ValidationError as error:
            details = "; ".join(
                f"{'.'.join(map(str, e['loc']))}: {e['msg']}".strip(": ")
                for e in error.errors(include_url=False, include_input=False)
            )
            msg = f"ensemble {lineup.name!r}: {details}"
            raise ValueError(msg) from None
        except ValueError as error:
            msg = f"ensemble {lineup.name!r}: {error}"
            raise ValueError(msg) from None
    return ensembles


def app_from_environment() -> FastAPI:
    """The app of one worker process, from the line-ups the parent put in ``MOA_SERVE_SPEC``.

    Returns:
        The app; provider keys are read from this process's environment.
    """
    spec = json.loads(os.environ[SPEC_ENV])
    lineups = [LineUp.from_dict(item) for item in spec["lineups"]]
    return create_app(
        build_ensembles(lineups),
        api_keys=server_keys(),
        settings=ServerSettings(**spec["settings"]),
    )


def _display(host: str) -> str:
    return f"[{host}]" if ":" in host else host


def _announce(lineups: Sequence[LineUp], url: str, args: argparse.Namespace, keys: bool) -> None:
    lines = []
    for lineup in lineups:
        names = ", ".join(spec.model for spec in lineup.proposers)
        lines.append(
            f"Ensemble {lineup.name!r}: {lineup.source or 'configured'}\n"
            f"  {names} -> {lineup.aggregator.model}, {lineup.layers} layers"
        )
        if lineup.simulated:
            lines.append("  The answers are SIMULATED: no provider is called.")
    auth = "clients must send a bearer key" if keys else "no authentication (loopback only)"
    workers = f"{args.workers} worker{'s' if args.workers > 1 else ''}"
    lines.append(f"Serving at {url} ({workers}; {auth}). Press Ctrl-C to stop.")
    sys.stdout.write(redact("\n".join(lines)) + "\n")
    sys.stdout.flush()


def _fail(message: str) -> int:
    sys.stderr.write(f"{_PROG}: error: {redact(' '.join(message.split()))}\n")
    return 2


class _Stopped(Exception):
    """SIGTERM, re-raised by uvicorn after its graceful shutdown."""


def _stopped(signum: int, frame: FrameType | None) -> None:
    raise _Stopped


class _Server(uvicorn.Server):
    """uvicorn's server, calling ``on_started`` once it accepts connections."""

    def __init__(self, config: uvicorn.Config, on_started: Callable[[], None]) -> None:
        super().__init__(config)
        self._on_started = on_started

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        """Start serving, then call ``on_started``."""
        await super().startup(sockets)
        if self.started:
            self._on_started()


def _run(
    config: uvicorn.Config, workers: int, sock: socket.socket, on_started: Callable[[], None]
) -> None:
    """Serve on the bound socket until SIGINT or SIGTERM, then shut down gracefully.

    ``on_started`` is called once the socket accepts connections: when the
    server has started, or, with workers, once the socket listens (the kernel
    queues connections until a worker takes them). uvicorn handles the
    signal, shuts down, then raises it again once its own handlers are gone:
    that second time it ends the run here, quietly.
    """
    previous = signal.signal(signal.SIGTERM, _stopped)
    try:
        if workers > 1:
            sock.listen(config.backlog)
            on_started()
            Multiprocess(config, sockets=[sock]).run()
        else:
            _Server(config, on_started).run(sockets=[sock])
    except (KeyboardInterrupt, _Stopped):
        pass
    finally:
        signal.signal(signal.SIGTERM, previous)
        sock.close()


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``moa serve`` until interrupted.

    Args:
        argv: The arguments after ``serve`` (default: ``sys.argv[1:]``).

    Returns:
        The exit status: 0 after a clean stop, 2 for a usage or configuration
        error (one ``moa serve: error: ...`` line).
    """
    args = build_parser().parse_args(argv)
    keys = server_keys(args.api_keys)
    try:
        check_bind(args.host, has_keys=bool(keys), insecure_no_auth=args.insecure_no_auth)
        settings = _settings(args)
    except ValueError as error:
        return _fail(str(error))
    logging.config.dictConfig(log_config(args.log_level))
    with ExitStack() as stack:
        try:
            lineups = choose_lineups(args, stack)
            ensembles = build_ensembles(lineups)
        except ValueError as error:
            return _fail(str(error))
        common: dict[str, Any] = {
            "host": args.host,
            "port": args.port,
            "log_level": args.log_level,
            "log_config": log_config(args.log_level),
            "access_log": args.access_log,
            "timeout_graceful_shutdown": 5,
            **connection_options(
                limit_concurrency=args.limit_concurrency,
                header_timeout=args.header_timeout,
                keep_alive_timeout=args.keep_alive_timeout,
            ),
        }
        if args.workers > 1:
            os.environ[SPEC_ENV] = json.dumps(
                {"lineups": [lineup.to_dict() for lineup in lineups], "settings": asdict(settings)}
            )
            if keys:
                os.environ[API_KEYS_ENV] = ",".join(keys)
            config = uvicorn.Config(
                f"{__name__}:app_from_environment", factory=True, workers=args.workers, **common
            )
        else:
            app = create_app(ensembles, api_keys=keys, settings=settings)
            config = uvicorn.Config(app, **common)
        try:
            sock = config.bind_socket()
        except SystemExit:
            return _fail(f"cannot listen on {args.host}:{args.port}")
        url = f"http://{_display(args.host)}:{sock.getsockname()[1]}/v1"
        announce = functools.partial(_announce, lineups, url, args, bool(keys))
        _run(config, args.workers, sock, announce)
    return 0


if __name__ == "__main__":
    sys.exit(main())
