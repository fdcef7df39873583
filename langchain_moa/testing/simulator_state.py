"""What the simulator knows between requests: behaviours, recorded requests, load.

:class:`SimulatorState` is shared by the :class:`~langchain_moa.testing.server.OpenAISimulator`
the caller holds and the HTTP handlers on the simulator's own thread, so every
access goes through one lock. Headers are never recorded.
"""

from __future__ import annotations

import copy
import threading
from collections.abc import Iterator, Mapping
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from langchain_moa.testing.behavior import ModelBehavior
from langchain_moa.testing.faults import FaultPlan, ModelState, plan_request

__all__ = ["DEFAULT_MODELS", "RecordedRequest", "SimulatorState"]

DEFAULT_MODELS: tuple[str, ...] = ("sim-model", "m1", "m2", "m3", "aggregator")
"""Model ids always listed by ``GET /v1/models`` (any name is accepted)."""


@dataclass(frozen=True)
class RecordedRequest:
    """A request received by ``POST /v1/chat/completions``.

    Only requests whose body is a JSON object are recorded (invalid ones
    included). Headers are never recorded.

    Attributes:
        model: The ``model`` of the body (``""`` when missing or not a string).
        body: The decoded JSON body.
        time: ``time.monotonic()`` when the request was received.
    """

    model: str
    body: dict[str, Any]
    time: float


def _as_behavior(value: ModelBehavior | Mapping[str, Any]) -> ModelBehavior:
    if isinstance(value, ModelBehavior):
        return value
    return ModelBehavior.from_dict(value)


class SimulatorState:
    """Behaviours by model, recorded requests and requests in flight, thread-safe.

    Args:
        record_requests: Whether :meth:`record` keeps requests.
    """

    def __init__(self, *, record_requests: bool = True) -> None:
        self._record = record_requests
        self._lock = threading.Lock()
        self._states: dict[str, ModelState] = {}
        self._requests: list[RecordedRequest] = []
        self._in_flight = 0
        self._peak_in_flight = 0

    # -- behaviours ----------------------------------------------------------

    def set_behavior(self, model: str, behavior: ModelBehavior | Mapping[str, Any] | None) -> None:
        """Set (or with ``None`` remove) the behaviour of a model, its counters afresh.

        Raises:
            TypeError: ``model`` is not a string.
        """
        if not isinstance(model, str):
            msg = f"model must be a string, got {model!r}"
            raise TypeError(msg)
        if behavior is None:
            with self._lock:
                self._states.pop(model, None)
            return
        state = ModelState.fresh(_as_behavior(behavior))
        with self._lock:
            self._states[model] = state

    @property
    def behaviors(self) -> dict[str, ModelBehavior]:
        """A copy of the configured behaviours, by model name."""
        with self._lock:
            return {model: state.behavior for model, state in self._states.items()}

    def listed_models(self) -> list[str]:
        """The models ``GET /v1/models`` lists: the defaults, then the configured ones."""
        with self._lock:
            configured = list(self._states)
        return list(dict.fromkeys([*DEFAULT_MODELS, *configured]))

    def plan(self, model: str) -> FaultPlan:
        """Count a request of ``model`` and decide whether it fails (see ``plan_request``)."""
        with self._lock:
            return plan_request(self._states.get(model), model)

    # -- recorded requests ---------------------------------------------------

    def record(self, body: dict[str, Any], received: float) -> None:
        """Keep a copy of a request body (unless recording is off).

        Args:
            body: The decoded JSON body.
            received: ``time.monotonic()`` when it arrived.
        """
        if not self._record:
            return
        model = body.get("model")
        recorded = RecordedRequest(
            model=model if isinstance(model, str) else "",
            body=copy.deepcopy(body),
            time=received,
        )
        with self._lock:
            self._requests.append(recorded)

    @property
    def requests(self) -> list[RecordedRequest]:
        """A copy of the recorded requests, oldest first."""
        with self._lock:
            return list(self._requests)

    def requests_for(self, model: str) -> list[RecordedRequest]:
        """The recorded requests of one model, oldest first."""
        with self._lock:
            return [request for request in self._requests if request.model == model]

    def clear_requests(self) -> None:
        """Forget the recorded requests."""
        with self._lock:
            self._requests.clear()

    # -- load ----------------------------------------------------------------

    @contextmanager
    def in_progress(self) -> Iterator[None]:
        """Count a chat-completion request as in flight while the block runs."""
        with self._lock:
            self._in_flight += 1
            self._peak_in_flight = max(self._peak_in_flight, self._in_flight)
        try:
            yield
        finally:
            with self._lock:
                self._in_flight -= 1

    @property
    def in_flight(self) -> int:
        """Chat-completion requests in progress now."""
        with self._lock:
            return self._in_flight

    @property
    def peak_in_flight(self) -> int:
        """Most chat-completion requests in progress at once since the last reset."""
        with self._lock:
            return self._peak_in_flight

    def reset_peak_in_flight(self) -> None:
        """Start counting ``peak_in_flight`` afresh."""
        with self._lock:
            self._peak_in_flight = self._in_flight
