"""Conversations that share a long system prompt with tools, for the KV cache tests and their worker process."""

from __future__ import annotations

from typing import Any

TOOLS: list[dict[str, Any]] = [
    {
        "name": f"tool_{i}",
        "description": f"Tool number {i}: looks things up in catalogue {i} and returns what it finds.",
        "parameters": {
            "type": "object",
            "properties": {
                "query": {"type": "string", "description": "what to look for"},
                "limit": {"type": "integer"},
            },
            "required": ["query"],
        },
    }
    for i in range(4)
]
SYSTEM: dict[str, Any] = {"role": "system", "content": "Answer as best you can, using the tools.", "tools": TOOLS}


def conversation(question: int, turns: list[str] | None = None) -> list[dict[str, Any]]:
    """The system prompt, question ``question``, and earlier turns (assistant replies then user follow-ups)."""
    messages: list[dict[str, Any]] = [
        SYSTEM,
        {"role": "user", "content": f"Question {question}: what is in catalogue {question}?"},
    ]
    for i, reply in enumerate(turns or []):
        messages += [{"role": "assistant", "content": reply}, {"role": "user", "content": f"And then ({i})?"}]
    return messages
