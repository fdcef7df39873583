"""Local OpenAI-compatible Chat Completions simulator for tests and development.

:class:`OpenAISimulator` serves ``/v1/chat/completions`` (plain and streaming,
tools, structured output, usage) and ``/v1/models`` over real HTTP on a
loopback port, answering deterministically, so that ``langchain_openai``'s
``ChatOpenAI`` works end to end without internet access. Per-model latency and
faults (errors, rate limits, random failures, hangs, malformed bodies, error
messages that echo the API key, null content, empty ``choices``, streams that
break off or stall after some tokens, missing ``finish_reason``) are set with
:class:`ModelBehavior`.

Example:
    ```python
    from langchain_openai import ChatOpenAI
    from langchain_moa.testing import ModelBehavior, OpenAISimulator

    with OpenAISimulator(behaviors={"slow": ModelBehavior(token_delay=0.05)}) as sim:
        llm = ChatOpenAI(base_url=sim.base_url, api_key="sim", model="m1")
        llm.invoke("What is MoA?").content  # 'm1 answers: What is MoA?'
        sim.set_behavior("m2", ModelBehavior(error_status=429, retry_after=1))
        sim.requests_for("m1")  # [RecordedRequest(model='m1', body={...}, ...)]
    ```

Answer formats (see :mod:`langchain_moa.testing.answers`):

* ``"{model} answers: {question}"``
* ``"{model} read {n} references [{w1}, {w2}, ...] and answers: {question}"``
  when a system message holds a ``Responses from models:`` reference block
* ``"{model} used {tool_name} -> {tool_result_text} and answers: {question}"``
  after a tool result

From the command line: ``moa-simulator --port 8765 --behaviors behaviors.json``
(or ``python -m langchain_moa.testing``). In pytest, add
``pytest_plugins = ["langchain_moa.testing.pytest_plugin"]`` to ``conftest.py``
and use the session-scoped ``openai_simulator`` fixture.
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from langchain_moa.testing.behavior import ModelBehavior

if TYPE_CHECKING:
    from langchain_moa.testing.server import OpenAISimulator, RecordedRequest

__all__ = ["ModelBehavior", "OpenAISimulator", "RecordedRequest"]


def __getattr__(name: str) -> Any:
    """Import the server lazily, so that importing the package stays cheap.

    Args:
        name: The attribute name.

    Returns:
        The attribute.

    Raises:
        AttributeError: If there is no such attribute.
    """
    if name in {"OpenAISimulator", "RecordedRequest"}:
        from langchain_moa.testing import server

        return getattr(server, name)
    msg = f"module {__name__!r} has no attribute {name!r}"
    raise AttributeError(msg)
