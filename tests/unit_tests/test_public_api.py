"""The public API is small and stable: what ``langchain_moa`` exports."""

import langchain_moa


def test_all_lists_the_public_api_and_every_name_exists() -> None:
    assert sorted(langchain_moa.__all__) == sorted(
        [
            "DEFAULT_AGGREGATOR_PROMPT",
            "PROGRESS_EVENT",
            "AggregationStrategy",
            "Agreement",
            "AggregatorFailedError",
            "BudgetExceededError",
            "MoAChatModel",
            "MoAError",
            "Proposal",
            "ProposersFailedError",
            "Rank",
            "ReferenceFormat",
            "Sequential",
            "Staircase",
            "Synthesize",
            "__version__",
        ]
    )
    for name in langchain_moa.__all__:
        assert hasattr(langchain_moa, name), name
