"""An agent whose model is an ensemble: it calls a tool and answers from its result.

Needs the `langchain` package (`pip install -e ".[agents]"`).
"""

from langchain.agents import create_agent
from langchain_core.tools import tool

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator


@tool
def get_weather(city: str) -> str:
    """Get the current weather in a city."""
    return f"sunny and 21 degrees in {city}"


def main() -> None:
    with OpenAISimulator() as sim:
        llm = MoAChatModel(
            proposers=[sim.chat_model("p1"), sim.chat_model("p2")],
            aggregator=sim.chat_model("agg"),
            layers=2,
        )
        agent = create_agent(llm, tools=[get_weather])
        result = agent.invoke(
            {"messages": [("user", "What is the weather in 'Paris'? Use get_weather.")]}
        )
        for message in result["messages"]:
            calls = getattr(message, "tool_calls", None)
            print(f"{message.type}: {message.content or ''}{' ' + str(calls) if calls else ''}")


if __name__ == "__main__":
    main()
