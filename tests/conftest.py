"""Shared fixtures: the local OpenAI-compatible simulator (loopback only)."""

pytest_plugins = ["langchain_moa.testing.pytest_plugin"]
