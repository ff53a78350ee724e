"""Shared fixtures. Paths to the reference data and skip markers live in tests/_data.py."""

from __future__ import annotations

import pytest

from tests._data import SHARED, TOKENIZER


@pytest.fixture(scope="session")
def tokenizer():
    if not TOKENIZER.is_file():
        pytest.skip(f"reference data not found at {SHARED}")
    from glm_agent.chatglm3 import ChatGLM3Tokenizer

    return ChatGLM3Tokenizer.from_pretrained(TOKENIZER)
