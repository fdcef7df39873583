"""The langchain-tests standard integration suite for MoAChatModel, over HTTP."""

from __future__ import annotations

from typing import Any

import pytest
from langchain_core.language_models import BaseChatModel
from langchain_openai import ChatOpenAI
from langchain_tests.integration_tests import ChatModelIntegrationTests

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator


class TestMoAChatModelOverHTTP(ChatModelIntegrationTests):
    base_url: str = ""

    @pytest.fixture(autouse=True)
    def _simulator(self, openai_simulator: OpenAISimulator) -> None:
        type(self).base_url = openai_simulator.base_url

    @property
    def chat_model_class(self) -> type[BaseChatModel]:
        return MoAChatModel

    def _chat(self, model: str) -> ChatOpenAI:
        return ChatOpenAI(
            base_url=self.base_url, api_key="sim", model=model, max_retries=0, stream_usage=True
        )

    @property
    def chat_model_params(self) -> dict[str, Any]:
        return {
            "proposers": [self._chat("std-p0"), self._chat("std-p1")],
            "aggregator": self._chat("std-agg"),
            "layers": 2,
        }

    @property
    def standard_chat_model_params(self) -> dict[str, Any]:
        # A client timeout belongs to the inner ChatOpenAI models (per-proposer
        # limits are proposer_timeout and layer_deadline).
        params = super().standard_chat_model_params
        params.pop("timeout", None)
        return params

    @property
    def supports_model_override(self) -> bool:
        return False

    @property
    def supports_json_mode(self) -> bool:
        return True

    @property
    def supports_image_inputs(self) -> bool:
        return False

    @property
    def supports_image_urls(self) -> bool:
        return False

    @property
    def supports_pdf_inputs(self) -> bool:
        return False

    @property
    def supports_audio_inputs(self) -> bool:
        return False

    @property
    def supports_image_tool_message(self) -> bool:
        return False

    @property
    def supports_pdf_tool_message(self) -> bool:
        return False

    @property
    def supports_anthropic_inputs(self) -> bool:
        return False
