"""Fixtures of the integration tests."""

from collections.abc import Iterator

import pytest

from langchain_moa.testing import OpenAISimulator


@pytest.fixture
def keep_alive_simulator() -> Iterator[OpenAISimulator]:
    """A simulator that keeps connections open between requests, as providers do.

    A pooled connection belongs to the event loop that opened it, so this is
    what shows an HTTP client shared between loops. One per test: its base URL
    is new, and langchain_openai shares its HTTP clients by base URL.
    """
    with OpenAISimulator(keep_alive=True) as simulator:
        yield simulator
