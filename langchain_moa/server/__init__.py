"""Serve Mixture-of-Agents ensembles over OpenAI's Chat Completions API.

Needs the ``server`` extra (``pip install 'langchain-moa[server]'``: FastAPI,
sse-starlette, uvicorn). :func:`create_app` builds the ASGI app; ``moa
serve`` runs it with uvicorn (see :mod:`langchain_moa.server.cli`).
"""

from langchain_moa._extras import missing_extra

try:
    import fastapi  # noqa: F401
    import sse_starlette  # noqa: F401
    import uvicorn  # noqa: F401
except ImportError as _missing:  # pragma: no cover - depends on the install
    raise missing_extra("server", _missing) from _missing

from langchain_moa.server.app import create_app
from langchain_moa.server.settings import ServerSettings

__all__ = ["ServerSettings", "create_app"]
