"""Benchmark output generation for AlpacaEval 2.0 and MT-Bench (``moa-generate``).

* ``instructions``: reading instruction sets as jobs.
* ``outputs``: the evaluators' output files, written so that runs resume.
* ``runner``: answering jobs concurrently (``agenerate``).
* ``cli``: the ``moa-generate`` command (``main``).
"""

from langchain_moa.generation.outputs import MixedGeneratorsError
from langchain_moa.generation.runner import GenerationReport, agenerate

__all__ = ["GenerationReport", "MixedGeneratorsError", "agenerate"]
