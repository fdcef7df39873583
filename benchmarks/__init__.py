"""Benchmarks of ``MoAChatModel`` against the local OpenAI simulator.

Run them all with ``python -m benchmarks`` (see ``benchmarks/README.md``).
"""
