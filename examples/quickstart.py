"""Quickstart: a 3-layer MoA over HTTP against the local simulator (offline).

Run: ``python examples/quickstart.py``. Swap the simulator's base URL for a real
OpenAI-compatible endpoint (and real model names) to use real models.
"""

from langchain_openai import ChatOpenAI

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator


def main() -> None:
    with OpenAISimulator() as sim:

        def chat(model: str) -> ChatOpenAI:
            return ChatOpenAI(base_url=sim.base_url, api_key="sim", model=model, stream_usage=True)

        llm = MoAChatModel(
            proposers=[chat("proposer-a"), chat("proposer-b"), chat("proposer-c")],
            aggregator=chat("aggregator"),
            layers=3,
        )
        answer = llm.invoke("Why is the sky blue?")
        print(answer.content)
        print("usage:", answer.usage_metadata)
        for layer in answer.response_metadata["proposals"]:
            for proposal in layer:
                print(f"  layer {proposal['layer']} {proposal['model']}: {proposal['latency_s']}s")
        print("streamed:", "".join(str(c.content) for c in llm.stream("What is MoA?")))


if __name__ == "__main__":
    main()
