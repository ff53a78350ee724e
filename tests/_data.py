"""Where the tests find their data: the repository and the reference data in ../shared/chatglm3.

The reference data (the genuine tokenizer, golden files, the tiny checkpoint) is never copied into the
project; tests that need it skip, with a reason naming the path, when it is absent.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

REPO = Path(__file__).resolve().parents[1]
TOOLS = REPO / "tools"
SHARED = REPO.parent / "shared" / "chatglm3"
TOKENIZER = SHARED / "tokenizer.model"
GOLDEN = SHARED / "golden"
TINY_CHECKPOINT = GOLDEN / "tiny-chatglm3"

needs_shared = pytest.mark.skipif(
    not TOKENIZER.is_file(),
    reason=f"reference data not found at {SHARED} (the ChatGLM3 tokenizer and golden files live in ../shared)",
)
needs_tiny_checkpoint = pytest.mark.skipif(
    not (TINY_CHECKPOINT / "config.json").is_file(),
    reason=f"the tiny checkpoint is absent at {TINY_CHECKPOINT} (../shared/chatglm3)",
)


def load_golden(name: str) -> Any:
    """A golden JSON file from ../shared/chatglm3/golden, parsed."""
    return json.loads((GOLDEN / name).read_text(encoding="utf-8"))
