"""Command-line options shared by ``moa`` and ``moa-generate``."""

from __future__ import annotations

import argparse

from langchain_moa.presets import PAPER_MAX_TOKENS, PAPER_TEMPERATURE


def add_model_arguments(parser: argparse.ArgumentParser, *, layers_default: int | None) -> None:
    """Add ``--layers``, ``--proposer``, ``--aggregator``, ``--temperature``, ``--max-tokens``.

    Args:
        parser: The command's parser.
        layers_default: Default of ``--layers`` (``None``: the line-up's).
    """
    default = f"default {layers_default}" if layers_default else "default: the line-up's"
    parser.add_argument(
        "--layers",
        type=int,
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
        type=float,
        default=PAPER_TEMPERATURE,
        help=f"sampling temperature of every call (default {PAPER_TEMPERATURE}, the paper's)",
    )
    parser.add_argument(
        "--max-tokens",
        type=int,
        default=PAPER_MAX_TOKENS,
        help=f"token limit of every call (default {PAPER_MAX_TOKENS}, the paper's)",
    )
