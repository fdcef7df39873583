"""The paper's aggregate-and-synthesize prompt, written out once for every test.

Wang et al., 2024, "Mixture-of-Agents Enhances Large Language Model
Capabilities", Table 1, as the reference implementation sends it. Tests check
the product's prompt against this copy, never against the product's own
constant (``langchain_moa.prompts.DEFAULT_AGGREGATOR_PROMPT``), so a changed
word fails them.
"""

PAPER_PROMPT = (
    "You have been provided with a set of responses from various open-source models "
    "to the latest user query. Your task is to synthesize these responses into a "
    "single, high-quality response. It is crucial to critically evaluate the "
    "information provided in these responses, recognizing that some of it may be "
    "biased or incorrect. Your response should not simply replicate the given answers "
    "but should offer a refined, accurate, and comprehensive reply to the instruction. "
    "Ensure your response is well-structured, coherent, and adheres to the highest "
    "standards of accuracy and reliability.\n\nResponses from models:"
)

PAPER_PROMPT_WORDS = len(PAPER_PROMPT.split())
"""The prompt's length in simulator tokens (the simulator counts whitespace-separated words)."""
