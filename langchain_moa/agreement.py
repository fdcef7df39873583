"""Early stop: skip the remaining proposer layers when a layer's answers agree."""

from __future__ import annotations

import math
from dataclasses import dataclass

from langchain_core.embeddings import Embeddings


@dataclass(frozen=True)
class Agreement:
    """Stop adding proposer layers once a layer's kept proposals agree.

    Agreement is the mean pairwise cosine similarity of the proposals'
    embeddings; at or above ``threshold`` the remaining proposer layers are
    skipped and the aggregator reads that layer's answers. It needs at least
    two answers to compare.

    Attributes:
        threshold: Mean pairwise cosine similarity that counts as agreement
            (from -1 to 1; 0.9 and above is a close paraphrase for most models).
        embeddings: Any LangChain ``Embeddings``.
    """

    threshold: float
    embeddings: Embeddings

    def __post_init__(self) -> None:
        """Check the threshold and the embeddings.

        Raises:
            ValueError: The threshold is not a number from -1 to 1.
            TypeError: ``embeddings`` is not a LangChain ``Embeddings``.
        """
        value = self.threshold
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            msg = f"Agreement threshold must be a number from -1 to 1, got {value!r}"
            raise ValueError(msg)
        if not math.isfinite(value) or not -1 <= value <= 1:
            msg = f"Agreement threshold must be a number from -1 to 1, got {value!r}"
            raise ValueError(msg)
        if not isinstance(self.embeddings, Embeddings):
            kind = type(self.embeddings).__name__
            msg = f"Agreement embeddings must be a LangChain Embeddings, got {kind}"
            raise TypeError(msg)
