"""Command-line options shared by ``moa`` and ``moa-generate``."""

from __future__ import annotations

import argparse

from langchain_moa.presets import PAPER_MAX_TOKENS, PAPER_TEMPERATURE


def _number(text: str, kind: type[int] | type[float], minimum: float, why: str = "") -> float:
    """Parse ``text`` as a ``kind`` of at least ``minimum``, for an option's ``type``.

    Args:
        text: The option's value as given.
        kind: ``int`` or ``float``.
        minimum: The smallest value allowed.
        why: Said after the minimum in the error message.

    Returns:
        The value.

    Raises:
        argparse.ArgumentTypeError: Not a number of that kind, or too small;
            argparse reports it as ``prog: error: argument --option: ...``.
    """
    try:
        value = kind(text)
    except ValueError:
        msg = f"must be {'an integer' if kind is int else 'a number'}, got {text!r}"
        raise argparse.ArgumentTypeError(msg) from None
    if not value >= minimum:
        msg = f"must be at least {minimum}{why}, got {text}"
        raise argparse.ArgumentTypeError(msg)
    return value


def layer_count(text: str) -> int:
    """Parse ``--layers``: an integer of at least 2."""
    return int(_number(text, int, 2, " (one proposer layer and the aggregator)"))


def token_limit(text: str) -> int:
    """Parse ``--max-tokens``: a positive integer."""
    return int(_number(text, int, 1))


def temperature(text: str) -> float:
    """Parse ``--temperature``: a number of at least 0."""
    return _number(text, float, 0)


def add_model_arguments(parser: argparse.ArgumentParser, *, layers_default: int | None) -> None:
    """Add ``--layers``, ``--proposer``, ``--aggregator``, ``--temperature``, ``--max-tokens``.

    Args:
        parser: The command's parser.
        layers_default: Default of ``--layers`` (``None``: the line-up's).
    """
    default = f"default {layers_default}" if layers_default else "default: the line-up's"
    parser.add_argument(
        "--layers",
        type=layer_count,
        default=layers_default,
        help=f"all layers, the aggregator's included: 3 = MoA, 2 = MoA-Lite ({default})",
    )
    parser.add_argument(
        "--proposer",
        action="append",
        dest="proposers",
        metavar="MODEL",
        help="a proposer model name (repeat for several); default: the line-up's",
    )
    parser.add_argument("--aggregator", metavar="MODEL", help="the aggregator model name")
    parser.add_argument(
        "--temperature",
        type=temperature,
        default=PAPER_TEMPERATURE,
        help=f"sampling temperature of every call (default {PAPER_TEMPERATURE}, the paper's)",
    )
    parser.add_argument(
        "--max-tokens",
        type=token_limit,
        default=PAPER_MAX_TOKENS,
        help=f"token limit of every call (default {PAPER_MAX_TOKENS}, the paper's)",
    )
