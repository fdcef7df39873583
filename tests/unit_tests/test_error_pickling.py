"""The package's errors survive pickling, deep copies and a process pool, attributes included."""

from __future__ import annotations

import copy
import multiprocessing
import pickle
from concurrent.futures import ProcessPoolExecutor

import pytest

from langchain_moa import AggregatorFailedError, BudgetExceededError, ProposersFailedError
from langchain_moa.errors import MoAError, ProviderError, mask_exception
from langchain_moa.state import Proposal

FAILED = Proposal(
    layer=1, index=0, model="m1", text=None, usage=None, latency_s=0.1, error="ValueError: no"
)
ANSWERED = Proposal(layer=1, index=1, model="m2", text="yes", usage=None, latency_s=0.2)


def _errors() -> list[MoAError]:
    cause = mask_exception(RuntimeError("upstream broke"))
    aggregator = AggregatorFailedError(
        "agg", cause, [FAILED, ANSWERED], partial_text="half", failures=[("agg0", cause)]
    )
    return [
        ProposersFailedError(2, 2, [FAILED, ANSWERED]),
        aggregator,
        BudgetExceededError({"usd": None, "tokens": 900}, {"max_total_tokens": 100}),
        ProviderError("RateLimitError", "slow down", status_code=429, retry_after="3"),
    ]


def _same(restored: MoAError, original: MoAError) -> None:
    assert type(restored) is type(original)
    assert str(restored) == str(original)
    assert vars(restored) == vars(original)


@pytest.mark.parametrize("error", _errors(), ids=lambda e: type(e).__name__)
def test_errors_pickle_and_deep_copy_with_their_attributes(error: MoAError) -> None:
    _same(pickle.loads(pickle.dumps(error)), error)
    _same(copy.deepcopy(error), error)
    _same(copy.copy(error), error)


def _raise(position: int) -> None:
    raise _errors()[position]


@pytest.mark.timeout(120)
def test_errors_come_back_whole_through_a_process_pool() -> None:
    context = multiprocessing.get_context("spawn")
    originals = _errors()
    with ProcessPoolExecutor(max_workers=1, mp_context=context) as pool:
        futures = [pool.submit(_raise, i) for i in range(len(originals))]
        for future, original in zip(futures, originals, strict=True):
            raised = future.exception(timeout=90)
            assert raised is not None
            _same(raised, original)  # type: ignore[arg-type]
    proposers = futures[0].exception()
    assert isinstance(proposers, ProposersFailedError)
    assert [p.model for p in proposers.failures] == ["m1"]
