"""Different proposers per layer (small models first, a large one second), offline."""

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator


def main() -> None:
    with OpenAISimulator() as sim:
        llm = MoAChatModel(
            proposers=[
                [sim.chat_model("small-1"), sim.chat_model("small-2"), sim.chat_model("small-3")],
                [sim.chat_model("large-1")],
            ],
            aggregator=sim.chat_model("judge"),
        )
        print("layers:", llm.layers)
        print(llm.invoke("Name three prime numbers.").content)


if __name__ == "__main__":
    main()
