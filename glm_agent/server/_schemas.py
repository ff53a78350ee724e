"""Request bodies the server accepts (OpenAI's chat and completions, plus vLLM's extra sampling fields).

Unknown fields are ignored (as vLLM does); fields whose feature is not supported are refused with a
clear message rather than ignored (``n > 1``, ``logprobs``, ``echo``, ``suffix``, ``best_of``).
Fields are strict, as OpenAI's are: ``true`` is not a number, ``"yes"`` is not a flag, ``1.0`` is not
an integer (an integer is accepted where a number is).
"""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, ConfigDict, Field, model_validator

__all__ = ["ChatRequest", "CompletionRequest", "Unsupported", "request_body_openapi"]


class Unsupported(ValueError):
    """A request asks for a feature this server does not have; ``param`` names the field."""

    def __init__(self, message: str, param: str) -> None:
        super().__init__(message)
        self.param = param


class _Sampling(BaseModel):
    model_config = ConfigDict(extra="ignore", strict=True)

    model: str | None = None
    temperature: float | None = Field(None, ge=0, le=2)
    top_p: float | None = Field(None, gt=0, le=1)
    top_k: int | None = None
    repetition_penalty: float | None = Field(None, gt=0)
    seed: int | None = Field(None, ge=-(2**63), lt=2**64)
    stop: str | list[str] | None = None
    stream: bool = False
    stream_options: dict[str, Any] | None = None
    n: int = Field(1, ge=1)
    logprobs: Any = None

    def check_supported(self) -> None:
        if self.n != 1:
            raise Unsupported("only n=1 is supported; send several requests for several samples", "n")
        if self.logprobs not in (None, False):
            raise Unsupported("logprobs are not supported by this server", "logprobs")

    def stop_list(self) -> list[str]:
        if self.stop is None:
            return []
        return [self.stop] if isinstance(self.stop, str) else list(self.stop)

    def include_usage(self) -> bool:
        return bool((self.stream_options or {}).get("include_usage"))

    def generation_params(self, max_new_tokens: int) -> dict[str, Any]:
        """Keyword parameters for the backend: only what the request set, so backend defaults apply."""
        params: dict[str, Any] = {"max_new_tokens": max_new_tokens}
        for name in ("temperature", "top_p", "repetition_penalty", "seed"):
            value = getattr(self, name)
            if value is not None:
                params[name] = value
        if self.top_k is not None and self.top_k > 0:  # vLLM: -1 / 0 mean "off"
            params["top_k"] = self.top_k
        return params


class ChatRequest(_Sampling):
    messages: list[Any] = Field(min_length=1)
    tools: list[Any] | None = None
    tool_choice: Any = None
    max_tokens: int | None = Field(None, ge=1)
    max_completion_tokens: int | None = Field(None, ge=1)
    top_logprobs: int | None = None

    def requested_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class CompletionRequest(_Sampling):
    prompt: str | list[int] | list[str] | list[list[int]]
    max_tokens: int | None = Field(16, ge=1)
    stop_token_ids: list[int] | None = None
    skip_special_tokens: bool = True
    spaces_between_special_tokens: bool = True  # accepted for vLLM clients; special tokens are never padded here
    echo: bool = False
    suffix: str | None = None
    best_of: int | None = None

    @model_validator(mode="after")
    def _one_prompt(self) -> CompletionRequest:
        p = self.prompt
        if isinstance(p, list) and p and isinstance(p[0], (list, str)):
            if len(p) != 1:
                raise ValueError("send one prompt per request (a batch of prompts is not supported)")
            self.prompt = p[0]
        if isinstance(self.prompt, list) and not self.prompt:
            raise ValueError("prompt is an empty list of token ids")
        return self

    def check_supported(self) -> None:
        super().check_supported()
        if self.echo:
            raise Unsupported("echo is not supported by this server", "echo")
        if self.suffix:
            raise Unsupported("suffix (fill-in-the-middle) is not supported by ChatGLM3", "suffix")
        if self.best_of not in (None, 1):
            raise Unsupported("best_of is not supported by this server", "best_of")


_MESSAGE_SCHEMA = {
    "type": "object",
    "properties": {
        "role": {"type": "string", "enum": ["system", "developer", "user", "assistant", "tool"]},
        "content": {"anyOf": [{"type": "string"}, {"type": "null"}]},
        "tool_calls": {"type": "array", "items": {"type": "object"}},
        "tool_call_id": {"type": "string"},
    },
    "required": ["role"],
}


def request_body_openapi(schema: type[BaseModel]) -> dict[str, Any]:
    """The OpenAPI ``requestBody`` of a route that reads ``schema`` itself (for docs and API fuzzers)."""
    body = schema.model_json_schema()
    if "messages" in body["properties"]:
        body["properties"]["messages"]["items"] = _MESSAGE_SCHEMA
    return {"requestBody": {"required": True, "content": {"application/json": {"schema": body}}}}
