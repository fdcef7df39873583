"""Quickstart: a 3-layer MoA over HTTP against the local simulator (offline).

Run: ``python examples/quickstart.py``. For real models, build the proposers and
the aggregator with ``ChatOpenAI(model=..., base_url=..., max_retries=0)`` instead
of ``sim.chat_model(...)`` (which also sets ``max_retries=0``): the ensemble
retries transient failures itself, and inner retries would multiply with its own.
"""

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator


def main() -> None:
    with OpenAISimulator() as sim:
        llm = MoAChatModel(
            proposers=[
                sim.chat_model("proposer-a"),
                sim.chat_model("proposer-b"),
                sim.chat_model("proposer-c"),
            ],
            aggregator=sim.chat_model("aggregator"),
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
