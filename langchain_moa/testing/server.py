"""A local OpenAI-compatible Chat Completions server for tests and development.

:class:`OpenAISimulator` runs an aiohttp server on its own event loop in a
background daemon thread and answers ``POST /v1/chat/completions`` (plain and
server-sent-event streaming) and ``GET /v1/models`` deterministically, so that
``ChatOpenAI(base_url=sim.base_url, api_key="sim", model="m1")`` works end to
end without any network access. The answers are described in
:mod:`langchain_moa.testing.answers`; per-model latency and faults are set with
:class:`~langchain_moa.testing.behavior.ModelBehavior`.

The simulator only ever listens on a loopback address. It never logs or stores
request headers (in particular ``Authorization``); the ``echo_key`` knob only
echoes the caller's key into the error body of that same request.

This module gathers the simulator's public names; each part has a module of
its own:

* :mod:`~langchain_moa.testing.simulator`: :class:`OpenAISimulator`, the
  thread, the event loop and the public API.
* :mod:`~langchain_moa.testing.handlers`: the aiohttp app and its handlers.
* :mod:`~langchain_moa.testing.faults`: what a ``ModelBehavior`` does to a
  request (the fault plan, the answer's shape).
* :mod:`~langchain_moa.testing.simulator_state`: behaviours, recorded
  requests and load, shared under one lock.
* :mod:`~langchain_moa.testing.simulator_cli`: the ``moa-simulator`` command.
"""

from __future__ import annotations

from langchain_moa.testing.simulator import OpenAISimulator
from langchain_moa.testing.simulator_cli import main
from langchain_moa.testing.simulator_state import DEFAULT_MODELS, RecordedRequest

__all__ = ["DEFAULT_MODELS", "OpenAISimulator", "RecordedRequest", "main"]

if __name__ == "__main__":
    raise SystemExit(main())
