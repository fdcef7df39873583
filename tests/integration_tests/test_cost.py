"""Cost in dollars: per proposal, per aggregation and in total, over HTTP (issue 15)."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
from genai_prices import Usage, calc_price
from langchain_core.language_models import GenericFakeChatModel
from langchain_core.language_models.base import LangSmithParams
from langchain_core.messages import AIMessage
from langchain_openai import ChatOpenAI

from langchain_moa import MoAChatModel
from langchain_moa.cost import INSTALL_COST_EXTRA, pricing, public_prices
from langchain_moa.experiments import compare
from langchain_moa.testing import OpenAISimulator
from tests.simulated_usage import aggregator_usage, proposer_usage

ROOT = Path(__file__).resolve().parents[2]
PRICES = {
    "cocost-p0": {"input": 1.0, "output": 2.0},
    "cocost-p1": {"input": 3.0, "output": 4.0},
    "cocost-agg": {"input": 5.0, "output": 10.0},
}


def chat(sim: OpenAISimulator, model: str) -> ChatOpenAI:
    return ChatOpenAI(base_url=sim.base_url, api_key="sim-key", model=model, max_retries=0)


def team(sim: OpenAISimulator, tag: str, layers: int = 2, **fields: object) -> MoAChatModel:
    return MoAChatModel(
        proposers=[chat(sim, f"{tag}-p0"), chat(sim, f"{tag}-p1")],
        aggregator=chat(sim, f"{tag}-agg"),
        layers=layers,
        **fields,
    )


def expected(usage: dict, price: dict) -> float:
    return (usage["input_tokens"] * price["input"] + usage["output_tokens"] * price["output"]) / 1e6


def moa_lite_cost(tag: str, question: str, prices: dict) -> float:
    """Dollars of a two-proposer MoA-Lite run, from the simulator's word counts."""
    proposers = sum(expected(proposer_usage(question), prices[f"{tag}-p{i}"]) for i in (0, 1))
    return proposers + expected(aggregator_usage(question, 2), prices[f"{tag}-agg"])


def test_every_call_and_the_total_have_a_cost(openai_simulator: OpenAISimulator) -> None:
    result = team(openai_simulator, "cocost", layers=3, prices=PRICES).invoke(
        "Why is the sky blue?"
    )
    meta = result.response_metadata
    total = 0.0
    for layer in meta["proposals"]:
        for record in layer:
            cost = expected(record["usage"], PRICES[record["model"]])
            assert record["cost_usd"] == pytest.approx(cost)
            total += cost
    aggregator = meta["aggregator"]
    assert aggregator["cost_usd"] == pytest.approx(
        expected(aggregator["usage"], PRICES["cocost-agg"])
    )
    total += aggregator["cost_usd"]
    assert meta["cost"]["total_usd"] == pytest.approx(total)
    assert meta["cost"]["missing_prices"] == []


async def test_an_unknown_price_is_none_and_named(openai_simulator: OpenAISimulator) -> None:
    prices = {"counk-p0": PRICES["cocost-p0"], "counk-agg": PRICES["cocost-agg"]}
    result = await team(openai_simulator, "counk", prices=prices).ainvoke("q")
    meta = result.response_metadata
    by_model = {r["model"]: r["cost_usd"] for r in meta["proposals"][0]}
    assert by_model["counk-p1"] is None
    # "q" in, "counk-p0 answers: q" out; the aggregator reads both proposals.
    assert by_model["counk-p0"] == pytest.approx((1 * 1.0 + 3 * 2.0) / 1e6)
    assert meta["aggregator"]["cost_usd"] == pytest.approx(
        expected(aggregator_usage("q", 2), PRICES["cocost-agg"])
    )
    assert meta["cost"]["total_usd"] is None
    assert meta["cost"]["missing_prices"] == ["counk-p1"]
    # The simulator's URL is no known provider: the reason says so and asks for a price.
    assert "prices=" in meta["cost"]["reasons"]["counk-p1"]


def test_streaming_carries_the_cost_on_the_last_chunk(openai_simulator: OpenAISimulator) -> None:
    chunks = list(
        team(openai_simulator, "cocst", prices={"cocst-p0": PRICES["cocost-p0"]}).stream("q")
    )
    final = chunks[-1].response_metadata
    assert final["cost"]["missing_prices"] == ["cocst-agg", "cocst-p1"]
    assert final["proposals"][0][0]["cost_usd"] == pytest.approx((1 * 1.0 + 3 * 2.0) / 1e6)


class PricedFake(GenericFakeChatModel):
    """A fake that reports OpenAI's gpt-4o-mini as its provider and model."""

    def _get_ls_params(self, stop: list[str] | None = None, **kwargs: object) -> LangSmithParams:
        return LangSmithParams(ls_provider="openai", ls_model_name="gpt-4o-mini")


def fake(answers: int) -> PricedFake:
    usage = {"input_tokens": 1000, "output_tokens": 500, "total_tokens": 1500}
    return PricedFake(messages=iter([AIMessage("a", usage_metadata=usage)] * answers))


def test_known_models_are_priced_from_genai_prices() -> None:
    official = calc_price(
        Usage(input_tokens=1000, output_tokens=500), "gpt-4o-mini", provider_id="openai"
    )
    llm = MoAChatModel(proposers=[fake(1)], aggregator=fake(1), layers=2)
    meta = llm.invoke("q").response_metadata
    assert meta["proposals"][0][0]["cost_usd"] == pytest.approx(float(official.total_price))
    assert meta["cost"]["total_usd"] == pytest.approx(2 * float(official.total_price))
    # The provider comes from the base URL when the model has one.
    together = ChatOpenAI(
        model="meta-llama/Llama-3-70b-chat-hf", api_key="k", base_url="https://api.together.xyz/v1"
    )
    assert pricing(together).source == "genai-prices"
    gpt_4o = calc_price(Usage(input_tokens=10**6), "gpt-4o", provider_id="openai")
    assert pricing(ChatOpenAI(model="gpt-4o", api_key="k")).rates.input == pytest.approx(
        float(gpt_4o.total_price)
    )
    # The user's table wins over the database.
    own = pricing(ChatOpenAI(model="gpt-4o", api_key="k"), {"gpt-4o": {"input": 9, "output": 9}})
    assert (own.source, own.rates.input) == ("prices", 9)
    table = public_prices(["gpt-4o-mini"], "openai")
    assert table["gpt-4o-mini"]["input"] == pytest.approx(
        float(
            calc_price(Usage(input_tokens=10**6), "gpt-4o-mini", provider_id="openai").total_price
        )
    )


def test_bad_price_tables_are_refused(openai_simulator: OpenAISimulator) -> None:
    for prices in ({"m": {"input": 1}}, {"m": {"input": -1, "output": 1}}, {"m": 3}):
        with pytest.raises(ValueError, match="prices"):
            team(openai_simulator, "cobad", prices=prices)


def test_without_genai_prices_cost_is_none_with_the_install_hint(
    openai_simulator: OpenAISimulator,
) -> None:
    code = textwrap.dedent(
        f"""
        import sys

        class _Blocker:
            def find_spec(self, name, path=None, target=None):
                if name.split(".")[0] == "genai_prices":
                    raise ImportError("No module named 'genai_prices'", name="genai_prices")
                return None

        sys.meta_path.insert(0, _Blocker())
        from langchain_openai import ChatOpenAI
        from langchain_moa import MoAChatModel

        def chat(name):
            return ChatOpenAI(base_url="{openai_simulator.base_url}", api_key="k", model=name,
                              max_retries=0)

        llm = MoAChatModel(proposers=[chat("conogp-p0"), chat("conogp-p1")],
                           aggregator=chat("conogp-agg"), layers=2,
                           prices={{"conogp-agg": {{"input": 1, "output": 1}}}})
        meta = llm.invoke("q").response_metadata
        print(meta["cost"]["total_usd"], meta["cost"]["missing_prices"])
        print(meta["cost"]["reasons"]["conogp-p0"])
        print(meta["aggregator"]["cost_usd"] * 1e6)
        """
    )
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT), *sys.path])}
    done = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    *lines, aggregator_micro_usd = done.stdout.splitlines()
    assert lines == ["None ['conogp-p0', 'conogp-p1']", INSTALL_COST_EXTRA]
    # $1 per million tokens either way: the aggregator's tokens, in micro-dollars.
    assert float(aggregator_micro_usd) == pytest.approx(aggregator_usage("q", 2)["total_tokens"])


def test_the_moa_command_shows_the_cost(openai_simulator: OpenAISimulator) -> None:
    env = {
        key: value
        for key, value in os.environ.items()
        if key not in {"OPENAI_API_KEY", "OPENAI_BASE_URL", "TOGETHER_API_KEY"}
    }
    env["PYTHONPATH"] = os.pathsep.join([str(ROOT), *sys.path])
    done = subprocess.run(
        [
            sys.executable,
            "-m",
            "langchain_moa",
            "--simulate",
            "--no-progress",
            "--layers",
            "2",
            "q",
        ],
        capture_output=True,
        text=True,
        timeout=90,
        env=env,
        check=False,
    )
    assert done.returncode == 0, done.stderr[-2000:]
    # Simulated models have no price: the command says so instead of guessing.
    assert "cost unknown: no price for" in " ".join(done.stdout.split())


def test_compare_reports_cost_per_configuration(openai_simulator: OpenAISimulator) -> None:
    priced = team(openai_simulator, "cocost", prices=PRICES)
    unpriced = team(openai_simulator, "cocmpu")
    dataset = [{"inputs": {"question": "Why is the sky blue?"}}, {"inputs": {"question": "Why?"}}]
    result = compare({"priced": priced, "unpriced": unpriced}, dataset, [], upload=False)
    row = result.row("priced")
    assert [e.cost_usd for e in row.examples] == [
        pytest.approx(moa_lite_cost("cocost", item["inputs"]["question"], PRICES))
        for item in dataset
    ]
    assert row.cost_usd == pytest.approx(sum(e.cost_usd for e in row.examples))
    assert result.row("unpriced").cost_usd is None
