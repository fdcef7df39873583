"""Different proposers per layer, and the compiled graph as a subgraph (offline)."""

from langchain_core.messages import HumanMessage
from langchain_openai import ChatOpenAI
from langgraph.graph import START, MessagesState, StateGraph

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator


def main() -> None:
    with OpenAISimulator() as sim:

        def chat(model: str) -> ChatOpenAI:
            return ChatOpenAI(base_url=sim.base_url, api_key="sim", model=model)

        llm = MoAChatModel(
            proposers=[[chat("small-1"), chat("small-2"), chat("small-3")], [chat("large-1")]],
            aggregator=chat("judge"),
        )
        print("layers:", llm.layers)
        builder = StateGraph(MessagesState)
        builder.add_node("moa", llm.graph)
        builder.add_edge(START, "moa")
        result = builder.compile().invoke({"messages": [HumanMessage("Name three prime numbers.")]})
        print(result["messages"][-1].content)


if __name__ == "__main__":
    main()
