"""The registry of published line-ups: one description, every way of using it."""

from __future__ import annotations

import pytest

from langchain_moa import lineups, presets
from langchain_moa.presets import REGISTRY, LineUpPreset


def test_the_registry_holds_the_published_line_ups() -> None:
    assert tuple(REGISTRY) == presets.PRESETS == ("together-moa", "together-moa-lite", "openai")
    assert all(isinstance(entry, LineUpPreset) for entry in REGISTRY.values())
    assert all(name == entry.name for name, entry in REGISTRY.items())
    moa, lite, openai = REGISTRY.values()
    assert (moa.layers, lite.layers, openai.layers) == (3, 2, 3)
    assert moa.proposers == lite.proposers == presets.PAPER_PROPOSERS
    assert (moa.aggregator, lite.aggregator) == (
        presets.MOA_AGGREGATOR,
        presets.MOA_LITE_AGGREGATOR,
    )
    assert (openai.proposers, openai.aggregator) == (
        presets.OPENAI_PROPOSERS,
        presets.OPENAI_AGGREGATOR,
    )
    assert openai.generator_name == "openai-moa"


def test_a_preset_describes_its_line_up_with_overrides() -> None:
    lineup = REGISTRY["together-moa"].lineup(
        name="mine", aggregator="agg", layers=4, temperature=0.2, max_tokens=64
    )
    assert (lineup.name, lineup.layers, lineup.aggregator.model) == ("mine", 4, "agg")
    assert [spec.model for spec in lineup.proposers] == list(presets.PAPER_PROPOSERS)
    assert (lineup.temperature, lineup.max_tokens) == (0.2, 64)
    assert lineup.aggregator.base_url == presets.TOGETHER_BASE_URL
    assert lineup.aggregator.api_key_env == "TOGETHER_API_KEY"
    assert lineup.aggregator.key_required
    assert lineup.source == "the together-moa line-up on Together"
    simulated = lineup.on_simulator("http://127.0.0.1:1/v1", source="simulated")
    assert simulated.simulated
    assert {spec.base_url for spec in (*simulated.proposers, simulated.aggregator)} == {
        "http://127.0.0.1:1/v1"
    }
    assert simulated.aggregator.api_key_env is None


# ChatOpenAI probes which socket options the system has (it opens no connection).
@pytest.mark.filterwarnings("ignore:A test tried to use socket.socket")
def test_a_preset_builds_its_ensemble_with_overrides(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("OPENAI_BASE_URL", raising=False)
    monkeypatch.setenv("OPENAI_API_KEY", "sk-test-secret")
    llm = REGISTRY["openai"].build(layers=2, temperature=0.3, timeout=5)
    assert llm.layers == 2
    assert llm.aggregator.model_name == presets.OPENAI_AGGREGATOR
    assert llm.aggregator.temperature == 0.3
    assert llm.aggregator.request_timeout == 5
    assert llm.aggregator.max_retries == 0
    monkeypatch.delenv("OPENAI_API_KEY")
    with pytest.raises(ValueError, match="no OpenAI API key: pass api_key= or set OPENAI_API_KEY"):
        presets.openai_moa()


def test_lookups_and_the_names_kept_in_lineups() -> None:
    assert presets.preset("openai") is REGISTRY["openai"]
    with pytest.raises(ValueError, match="unknown preset 'gpt-5'; choose one of together-moa"):
        presets.preset("gpt-5")
    assert presets.paper_preset(2) is REGISTRY["together-moa-lite"]
    assert presets.paper_preset(3) is presets.paper_preset(5) is REGISTRY["together-moa"]
    assert lineups.PRESETS is presets.PRESETS
    assert lineups.preset_lineup is presets.preset_lineup
    with pytest.raises(AttributeError):
        _ = lineups.no_such_name  # type: ignore[attr-defined]
