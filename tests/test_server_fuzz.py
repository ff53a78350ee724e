"""A property-based fuzz of the HTTP API from its own OpenAPI schema (schemathesis): every operation,
valid and invalid requests; no response is a 5xx, and every error body has OpenAI's shape."""

from __future__ import annotations

from typing import Any

import pytest

schemathesis = pytest.importorskip("schemathesis")

from hypothesis import HealthCheck, settings  # noqa: E402

from glm_agent.chatglm3.tokenizer import ChatGLM3Tokenizer  # noqa: E402
from glm_agent.models import ScriptedModel  # noqa: E402
from glm_agent.server import create_app  # noqa: E402
from tests._data import SHARED  # noqa: E402

MAX_EXAMPLES = 100  # per operation: about 30 s for the whole API on one core


if not (SHARED / "tokenizer.model").is_file():
    pytest.skip(f"reference data {SHARED} is absent (../shared/chatglm3)", allow_module_level=True)

APP = create_app(
    ScriptedModel(lambda messages: "\n ok"), ChatGLM3Tokenizer(SHARED / "tokenizer.model"), context_length=4096
)
schema = schemathesis.openapi.from_asgi("/openapi.json", APP)


@schema.parametrize()  # type: ignore[untyped-decorator]
@settings(
    max_examples=MAX_EXAMPLES,
    deadline=None,
    derandomize=True,
    database=None,
    suppress_health_check=list(HealthCheck),
)
@pytest.mark.slow
def test_no_5xx_and_openai_error_shape(case: Any) -> None:
    response = case.call()
    assert response.status_code < 500, (case.method, case.path, case.body, response.text[:500])
    if response.status_code >= 400:
        body = response.json()
        assert set(body) == {"error"}, body
        assert set(body["error"]) == {"message", "type", "param", "code"}, body
        assert isinstance(body["error"]["message"], str) and body["error"]["message"]
