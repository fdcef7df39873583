"""Clear errors for optional dependencies that are not installed."""

from __future__ import annotations


def missing_extra(extra: str, error: ImportError) -> ImportError:
    """The error to raise when ``extra``'s dependency ``error.name`` is missing.

    Args:
        extra: The package extra that brings the dependency (``"cli"``, ...).
        error: The original import error.

    Returns:
        An ``ImportError`` naming the ``pip install`` to run.
    """
    return ImportError(
        f"{error.name or 'a dependency'} is not installed; this part of langchain-moa needs "
        f"the [{extra}] extra: pip install 'langchain-moa[{extra}]'"
    )
