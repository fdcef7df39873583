"""Structured extraction: free-text proposals, a schema-constrained final answer."""

from pydantic import BaseModel, Field

from langchain_moa import MoAChatModel
from langchain_moa.testing import OpenAISimulator


class Person(BaseModel):
    """A person mentioned in the text."""

    name: str = Field(description="The person's full name")
    age: int = Field(description="Age in years")


def main() -> None:
    with OpenAISimulator() as sim:
        llm = MoAChatModel(
            proposers=[sim.chat_model("p1"), sim.chat_model("p2")],
            aggregator=sim.chat_model("agg"),
            layers=2,
        )
        for method in ("function_calling", "json_schema"):
            extractor = llm.with_structured_output(Person, method=method, include_raw=True)
            out = extractor.invoke(
                "Extract the person: 'Ada Lovelace, aged 36, wrote the first program.'"
            )
            proposals = out["raw"].response_metadata["proposals"][0]
            print(f"{method}: {out['parsed']!r}; proposals read: {len(proposals)}")


if __name__ == "__main__":
    main()
