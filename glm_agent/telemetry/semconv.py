"""The OpenTelemetry GenAI semantic conventions this package follows, in one place.

The conventions are still "Development". We follow semconv 1.38: ``gen_ai.provider.name``
(``gen_ai.system`` before 1.37), content as ``gen_ai.input.messages`` / ``gen_ai.output.messages``
and ``gen_ai.tool.call.arguments`` / ``gen_ai.tool.call.result`` attributes. Where the names
changed, both are written by default (older backends still group by ``gen_ai.system``);
``OTEL_SEMCONV_STABILITY_OPT_IN=gen_ai_latest_experimental`` writes only the latest ones.
Message and tool content is written only with ``OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT=true``.
"""

from __future__ import annotations

import os

__all__ = [
    "SEMCONV_VERSION",
    "SCHEMA_URL",
    "CONTENT_ENV",
    "capture_content",
    "latest_only",
    "provider_attributes",
    "MAX_CONTENT_CHARS",
]

SEMCONV_VERSION = "1.38.0"
SCHEMA_URL = f"https://opentelemetry.io/schemas/{SEMCONV_VERSION}"
CONTENT_ENV = "OTEL_INSTRUMENTATION_GENAI_CAPTURE_MESSAGE_CONTENT"
STABILITY_ENV = "OTEL_SEMCONV_STABILITY_OPT_IN"
MAX_CONTENT_CHARS = 8192  # a content attribute longer than this is cut (with a marker)

# attribute names
OPERATION = "gen_ai.operation.name"
PROVIDER = "gen_ai.provider.name"
PROVIDER_BEFORE_1_37 = "gen_ai.system"
AGENT_NAME = "gen_ai.agent.name"
CONVERSATION = "gen_ai.conversation.id"
REQUEST_MODEL = "gen_ai.request.model"
RESPONSE_MODEL = "gen_ai.response.model"
FINISH_REASONS = "gen_ai.response.finish_reasons"
INPUT_TOKENS = "gen_ai.usage.input_tokens"
OUTPUT_TOKENS = "gen_ai.usage.output_tokens"
CACHED_INPUT_TOKENS = "gen_ai.usage.cache_read.input_tokens"
TOOL_NAME = "gen_ai.tool.name"
TOOL_CALL_ID = "gen_ai.tool.call.id"
TOOL_TYPE = "gen_ai.tool.type"
TOOL_ARGUMENTS = "gen_ai.tool.call.arguments"
TOOL_RESULT = "gen_ai.tool.call.result"
INPUT_MESSAGES = "gen_ai.input.messages"
OUTPUT_MESSAGES = "gen_ai.output.messages"
ERROR_TYPE = "error.type"
REQUEST_PARAMS = {
    "temperature": "gen_ai.request.temperature",
    "top_p": "gen_ai.request.top_p",
    "top_k": "gen_ai.request.top_k",
    "max_new_tokens": "gen_ai.request.max_tokens",
    "seed": "gen_ai.request.seed",
    "repetition_penalty": "gen_ai.request.frequency_penalty",  # the nearest convention; ChatGLM3's is multiplicative
}


def capture_content() -> bool:
    """Whether prompts, replies, arguments, observations and code may go into spans (off by default)."""
    return os.environ.get(CONTENT_ENV, "").strip().lower() in ("1", "true", "yes")


def latest_only() -> bool:
    """``OTEL_SEMCONV_STABILITY_OPT_IN`` asks for the latest experimental GenAI names only."""
    values = {v.strip() for v in os.environ.get(STABILITY_ENV, "").split(",")}
    return "gen_ai_latest_experimental" in values


def provider_attributes(provider: str) -> dict[str, str]:
    """The provider's name under the current name, and the pre-1.37 one unless only the latest is wanted."""
    out = {PROVIDER: provider}
    if not latest_only():
        out[PROVIDER_BEFORE_1_37] = provider
    return out
