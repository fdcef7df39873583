"""Pytest plugin providing the ``openai_simulator`` fixture.

Enable it in a ``conftest.py``::

    pytest_plugins = ["langchain_moa.testing.pytest_plugin"]

Then::

    def test_hello(openai_simulator):
        llm = ChatOpenAI(base_url=openai_simulator.base_url, api_key="sim", model="m1")
        assert llm.invoke("Hi").content == "m1 answers: Hi"

The fixture is session-scoped: one simulator serves the whole run and its
behaviours and recorded requests are not reset between tests, so tests that set
behaviours should use model names of their own.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from langchain_moa.testing.server import OpenAISimulator


@pytest.fixture(scope="session")
def openai_simulator() -> Iterator[OpenAISimulator]:
    """Yield a started :class:`OpenAISimulator` on a free loopback port.

    Yields:
        The simulator, stopped at the end of the session.
    """
    with OpenAISimulator() as simulator:
        yield simulator
