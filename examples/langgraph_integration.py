"""MoA in LangGraph: as the chat model of a node, and its compiled graph as a subgraph."""

from langchain_core.messages import HumanMessage
from langgraph.graph import START, MessagesState, StateGraph

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator


def main() -> None:
    with OpenAISimulator() as sim:
        llm = MoAChatModel(
            proposers=[sim.chat_model("p1"), sim.chat_model("p2")],
            aggregator=sim.chat_model("agg"),
            layers=2,
        )

        # 1. A node that calls the ensemble like any chat model.
        def answer(state: MessagesState) -> dict:
            return {"messages": [llm.invoke(state["messages"])]}

        as_node = StateGraph(MessagesState)
        as_node.add_node("answer", answer)
        as_node.add_edge(START, "answer")
        result = as_node.compile().invoke({"messages": [HumanMessage("What is LangGraph?")]})
        print("node:", result["messages"][-1].content)

        # 2. The ensemble's own graph embedded as a subgraph (it appends its answer
        #    to the shared `messages` channel).
        as_subgraph = StateGraph(MessagesState)
        as_subgraph.add_node("moa", llm.graph)
        as_subgraph.add_edge(START, "moa")
        result = as_subgraph.compile().invoke({"messages": [HumanMessage("What is a subgraph?")]})
        print("subgraph:", result["messages"][-1].content)


if __name__ == "__main__":
    main()
