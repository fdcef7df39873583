"""MoA in LCEL: a prompt | llm | parser chain and a RAG chain over an in-memory store."""

from langchain_core.documents import Document
from langchain_core.embeddings import DeterministicFakeEmbedding
from langchain_core.output_parsers import StrOutputParser
from langchain_core.prompts import ChatPromptTemplate
from langchain_core.runnables import RunnablePassthrough
from langchain_core.vectorstores import InMemoryVectorStore

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator

DOCS = [
    "Rayleigh scattering makes short (blue) wavelengths scatter more than long ones.",
    "Mixture-of-Agents layers several LLMs; each layer reads the previous answers.",
    "LangGraph builds stateful, multi-actor applications as graphs.",
]


def main() -> None:
    with OpenAISimulator() as sim:
        llm = MoAChatModel(
            proposers=[sim.chat_model("p1"), sim.chat_model("p2"), sim.chat_model("p3")],
            aggregator=sim.chat_model("agg"),
            layers=2,
        )

        chain = (
            ChatPromptTemplate.from_messages(
                [("system", "You are a concise teacher."), ("human", "Explain {topic} simply.")]
            )
            | llm
            | StrOutputParser()
        )
        print("chain:", chain.invoke({"topic": "photosynthesis"}))

        # An offline stand-in embedding; use OpenAIEmbeddings (or any other) for real.
        store = InMemoryVectorStore(DeterministicFakeEmbedding(size=64))
        store.add_documents([Document(page_content=text) for text in DOCS])
        retriever = store.as_retriever(search_kwargs={"k": 2})
        prompt = ChatPromptTemplate.from_messages(
            [("human", "Answer from this context only:\n{context}\n\nQuestion: {question}")]
        )
        rag = (
            {
                "context": retriever | (lambda docs: "\n".join(d.page_content for d in docs)),
                "question": RunnablePassthrough(),
            }
            | prompt
            | llm
            | StrOutputParser()
        )
        print("rag:", rag.invoke("Why is the sky blue?"))


if __name__ == "__main__":
    main()
