"""The langchain-tests standard unit suite for MoAChatModel."""

from __future__ import annotations

from typing import Any

from langchain_core.language_models import BaseChatModel
from langchain_tests.unit_tests import ChatModelUnitTests

from langchain_moa import MoAChatModel
from tests.unit_tests.fakes import RecordingChatModel


class TestMoAChatModelStandard(ChatModelUnitTests):
    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return MoAChatModel

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "proposers": [RecordingChatModel(name="a"), RecordingChatModel(name="b")],
            "aggregator": RecordingChatModel(name="agg"),
            "layers": 3,
        }

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # An ensemble has no API key or client timeout of its own: those belong
        # to the inner models (per-proposer limits are proposer_timeout and
        # layer_deadline). temperature, max_tokens, stop and max_retries are
        # the ensemble's own fields.
        params = super().standard_chat_model_params
        for key in ("api_key", "timeout"):
            params.pop(key, None)
        return params

    @property
    def supports_model_override(self) -> bool:
        return False
