"""Everything that knows ChatGLM3's bytes: tokenizer, chat template, reply parser, checkpoints."""

from __future__ import annotations

from typing import Any

from glm_agent.chatglm3.tokenizer import SPECIAL_TOKENS, ChatGLM3Tokenizer, format_system_content

__all__ = ["ChatGLM3Tokenizer", "SPECIAL_TOKENS", "format_system_content", "load_model"]

_LAZY = {
    "load_model": "glm_agent.chatglm3.checkpoint",
}


def __getattr__(name: str) -> Any:  # torch-heavy names import on first use
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module 'glm_agent.chatglm3' has no attribute {name!r}")
    import importlib

    return getattr(importlib.import_module(module), name)
