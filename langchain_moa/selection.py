"""Reference selection: which k of a layer's proposals go on to the next layer.

Three strategies, each saying why it kept what it kept:

* ``"diverse"``: greedy max-min diversity over embeddings (as RMoA does): the
  most central proposal first, then each time the one farthest (in cosine
  distance) from those already kept.
* ``"judge"``: a cheap model reads the numbered proposals and names the k best
  (as SMoA's moderator does); its tokens and dollars count in the answer's.
* ``"first"``: the first k to finish; the rest of the layer is cancelled then,
  so it also bounds latency.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from typing import Literal

from langchain_core.messages import BaseMessage, HumanMessage, SystemMessage

SelectionStrategy = Literal["diverse", "judge", "first"]
"""How ``select_references`` chooses."""

Selection = tuple[list[int], dict[int, str]]
"""Positions kept (in the order given), and why each was kept."""

JUDGE_PROMPT = (
    "You are a moderator. Below are {n} numbered responses to the user's latest request. "
    "Pick the {k} best: the most accurate, helpful and complete. Reply with their numbers "
    "only, best first, separated by commas (for example: 2, 5, 1)."
)
"""The judge's instruction; ``{n}`` and ``{k}`` are filled in."""


def cosine(a: Sequence[float], b: Sequence[float]) -> float:
    """Cosine similarity of two vectors (0 when either is all zeros)."""
    dot = sum(x * y for x, y in zip(a, b, strict=False))
    norm = math.sqrt(sum(x * x for x in a)) * math.sqrt(sum(y * y for y in b))
    return dot / norm if norm else 0.0


def mean_pairwise_similarity(vectors: Sequence[Sequence[float]]) -> float:
    """Mean cosine similarity over every pair of ``vectors`` (1.0 for fewer than two)."""
    pairs = [
        cosine(vectors[i], vectors[j])
        for i in range(len(vectors))
        for j in range(i + 1, len(vectors))
    ]
    return sum(pairs) / len(pairs) if pairs else 1.0


def select_diverse(vectors: Sequence[Sequence[float]], k: int) -> Selection:
    """Greedy max-min diversity: the most central first, then the farthest from those kept.

    Args:
        vectors: One embedding per candidate.
        k: How many to keep.

    Returns:
        The positions kept, in candidate order, and why.
    """
    n = len(vectors)
    similarity = [[cosine(vectors[i], vectors[j]) for j in range(n)] for i in range(n)]
    central = max(range(n), key=lambda i: (sum(similarity[i]) - 1, -i))
    mean = (sum(similarity[central]) - 1) / max(n - 1, 1)
    kept = [central]
    reasons = {central: f"most central (mean similarity {mean:.3f})"}
    while len(kept) < min(k, n):
        rest = [i for i in range(n) if i not in kept]
        distance = {i: min(1 - similarity[i][j] for j in kept) for i in rest}
        best = max(rest, key=lambda i: (distance[i], -i))
        kept.append(best)
        reasons[best] = f"farthest from those kept (cosine distance {distance[best]:.3f})"
    return sorted(kept), reasons


def select_first(latencies: Sequence[float], k: int) -> Selection:
    """The ``k`` that finished first (shortest latency; ties in order)."""
    order = sorted(range(len(latencies)), key=lambda i: (latencies[i], i))[:k]
    reasons = {i: f"finished {rank + 1}. ({latencies[i]:.3f}s)" for rank, i in enumerate(order)}
    return sorted(order), reasons


def judge_messages(
    conversation: Sequence[BaseMessage], texts: Sequence[str], k: int
) -> list[BaseMessage]:
    """What the judge reads: the instruction, the user's request, the numbered proposals."""
    request = next(
        (m.text for m in reversed(conversation) if m.type == "human"), conversation[-1].text
    )
    listing = "\n\n".join(f"[{i}] {text}" for i, text in enumerate(texts, 1))
    return [
        SystemMessage(JUDGE_PROMPT.format(n=len(texts), k=k)),
        HumanMessage(f"Request:\n{request}\n\nResponses:\n{listing}"),
    ]


def parse_judgement(reply: str, n: int, k: int) -> list[int] | None:
    """The positions (from 0) the judge named, best first, or ``None`` if it named none.

    Numbers outside ``1..n`` and repeats are ignored; at most ``k`` are taken.
    """
    chosen: list[int] = []
    for number in re.findall(r"\d+", reply):
        position = int(number) - 1
        if 0 <= position < n and position not in chosen:
            chosen.append(position)
        if len(chosen) == k:
            break
    return chosen or None


def judged(reply: str, n: int, k: int) -> Selection | None:
    """The judge's choice as a selection, or ``None`` if its reply names no proposal."""
    chosen = parse_judgement(reply, n, k)
    if chosen is None:
        return None
    reasons = {position: f"judge ranked it {rank + 1}." for rank, position in enumerate(chosen)}
    return sorted(chosen), reasons
