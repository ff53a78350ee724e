"""Chat model backends behind one protocol: local weights, OpenAI-compatible HTTP, scripted."""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from glm_agent.models._spec import load_chat_model
from glm_agent.models.base import BaseChatModel, ChatModel, GenerationParams
from glm_agent.models.scripted import ScriptedModel

if TYPE_CHECKING:
    from glm_agent.models.local import LocalModel
    from glm_agent.models.openai import OpenAIModel

__all__ = [
    "ChatModel",
    "BaseChatModel",
    "GenerationParams",
    "ScriptedModel",
    "LocalModel",
    "OpenAIModel",
    "load_chat_model",
]


def __getattr__(name: str) -> Any:  # heavy backends import lazily (torch, httpx clients)
    if name == "LocalModel":
        from glm_agent.models.local import LocalModel

        return LocalModel
    if name == "OpenAIModel":
        from glm_agent.models.openai import OpenAIModel

        return OpenAIModel
    raise AttributeError(f"module 'glm_agent.models' has no attribute {name!r}")
