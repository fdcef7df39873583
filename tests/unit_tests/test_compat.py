"""Every private upstream API the package uses still exists (see ``_compat``)."""

from __future__ import annotations

import ast
from pathlib import Path

from langchain_core.language_models.fake_chat_models import FakeListChatModel
from langchain_openai import ChatOpenAI

from langchain_moa import _compat

PACKAGE = Path(__file__).resolve().parents[2] / "langchain_moa"


def test_the_private_upstream_names_still_exist() -> None:
    assert callable(_compat.RunnableCallable)
    assert _compat.configure_hook_variables(), "LangChain has no configure hooks any more"
    model = FakeListChatModel(responses=["a"])
    assert isinstance(_compat.llm_string(model), str)
    assert _compat.convert_cached_generations(model, []) == []
    assert _compat.ls_model_name(ChatOpenAI(model="m", api_key="k")) == "m"
    client = _compat.openai_root_async_client(ChatOpenAI(model="m", api_key="k"))
    assert client is not None, "langchain_openai no longer keeps root_async_client"


def test_no_private_upstream_name_is_imported_outside_compat() -> None:
    offenders = []
    for path in PACKAGE.rglob("*.py"):
        if path.name == "_compat.py":
            continue
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
            if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
                upstream = node.module.split(".")[0] in {"langchain_core", "langgraph", "langsmith"}
                private_module = any(part.startswith("_") for part in node.module.split("."))
                private_name = any(alias.name.startswith("_") for alias in node.names)
                if upstream and (private_module or private_name):
                    offenders.append(f"{path.name}: from {node.module} import ...")
    assert offenders == []
