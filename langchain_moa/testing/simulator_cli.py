"""``moa-simulator``: run the OpenAI simulator from the command line until interrupted.

It prints the base URL on standard output and serves until Ctrl-C or SIGTERM;
``--behaviors FILE`` sets per-model behaviours from a JSON object.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import signal
import sys
import threading
from collections.abc import Sequence
from pathlib import Path
from types import FrameType

from langchain_moa.testing.behavior import ModelBehavior
from langchain_moa.testing.simulator import OpenAISimulator

__all__ = ["main"]


def _load_behaviors(path: str) -> dict[str, ModelBehavior]:
    data = json.loads(Path(path).read_text(encoding="utf-8"))
    if not isinstance(data, dict):
        msg = "the behaviors file must hold a JSON object: model name -> knobs"
        raise TypeError(msg)
    return {str(model): ModelBehavior.from_dict(knobs) for model, knobs in data.items()}


def _build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="moa-simulator",
        description=(
            "Run a local OpenAI-compatible Chat Completions simulator "
            "(deterministic answers, per-model latency and faults). It prints "
            "its base URL and serves until interrupted (Ctrl-C)."
        ),
        epilog=(
            'Example behaviors file: {"slow": {"first_token_latency": 0.5}, '
            '"flaky": {"failure_rate": 0.3, "seed": 1}, '
            '"limited": {"error_status": 429, "retry_after": 2}}'
        ),
    )
    parser.add_argument(
        "--host",
        default="127.0.0.1",
        help="loopback address to listen on (default: %(default)s)",
    )
    parser.add_argument(
        "--port",
        type=int,
        default=8765,
        help="TCP port, 0 for any free port (default: %(default)s)",
    )
    parser.add_argument(
        "--behaviors",
        metavar="FILE",
        help="JSON file with an object mapping model names to behaviour knobs",
    )
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Run the simulator from the command line until interrupted.

    Args:
        argv: The arguments (default: ``sys.argv[1:]``).

    Returns:
        The exit status.
    """
    parser = _build_parser()
    args = parser.parse_args(argv)
    behaviors: dict[str, ModelBehavior] = {}
    if args.behaviors:
        try:
            behaviors = _load_behaviors(args.behaviors)
        except (OSError, ValueError, TypeError) as exc:
            parser.error(f"--behaviors {args.behaviors}: {exc}")
    try:
        simulator = OpenAISimulator(
            host=args.host,
            port=args.port,
            behaviors=behaviors,
            record_requests=False,
        )
    except ValueError as exc:
        parser.error(str(exc))
    stop = threading.Event()

    def _on_signal(signum: int, frame: FrameType | None) -> None:
        stop.set()

    previous = None
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGTERM, _on_signal)
    try:
        simulator.start()
    except OSError as exc:
        sys.stderr.write(f"moa-simulator: cannot listen on {args.host}:{args.port}: {exc}\n")
        return 1
    try:
        with simulator:
            sys.stdout.write(f"{simulator.base_url}\n")
            sys.stdout.flush()
            sys.stderr.write(
                "OpenAI simulator running; press Ctrl-C to stop.\n"
                f"  e.g. ChatOpenAI(base_url={simulator.base_url!r}, "
                'api_key="sim", model="m1")\n'
            )
            sys.stderr.flush()
            with contextlib.suppress(KeyboardInterrupt):
                while not stop.wait(0.5):
                    pass
    finally:
        if previous is not None:
            signal.signal(signal.SIGTERM, previous)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
