"""Serve Mixture-of-Agents ensembles over OpenAI's Chat Completions API.

Needs the ``server`` extra (``pip install 'langchain-moa[server]'``: FastAPI,
sse-starlette, uvicorn). :func:`create_app` builds the ASGI app; ``moa
serve`` runs it with uvicorn (see :mod:`langchain_moa.server.cli`).
"""

from langchain_moa.server.app import create_app
from langchain_moa.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
