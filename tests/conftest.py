"""Shared fixtures: the reference data in ../shared/chatglm3 (never copied into the project)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
SHARED = REPO.parent / "shared" / "chatglm3"
GOLDEN = SHARED / "golden"
TINY_CHECKPOINT = GOLDEN / "tiny-chatglm3"

needs_shared = pytest.mark.skipif(
    not (SHARED / "tokenizer.model").is_file(),
    reason=f"reference data not found at {SHARED} (the ChatGLM3 tokenizer and golden files live in ../shared)",
)


def load_golden(name: str):
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))


@pytest.fixture(scope="session")
def tokenizer():
    if not (SHARED / "tokenizer.model").is_file():
        pytest.skip(f"reference data not found at {SHARED}")
    from glm_agent.chatglm3 import ChatGLM3Tokenizer

    return ChatGLM3Tokenizer.from_pretrained(SHARED / "tokenizer.model")
