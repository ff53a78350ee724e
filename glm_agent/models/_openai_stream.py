"""Reading OpenAI-style server-sent events into raw ChatGLM3 reply text (used by OpenAIModel)."""

from __future__ import annotations

import json
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any, Union

import httpx

from glm_agent.chatglm3.openai_format import call_segment, parse_arguments
from glm_agent.chatglm3.parser import ASSISTANT_TOKEN
from glm_agent.errors import ContextLengthError, FormatError, ModelError

__all__ = [
    "SSEDecoder",
    "ChatAssembler",
    "CompletionAssembler",
    "Assembler",
    "ReplyReader",
    "error_from_body",
    "read_json",
]


def error_from_body(where: str, status: int | None, body: Any) -> ModelError | ContextLengthError:
    """Our exception for an OpenAI error object (``{"error": {...}}``) or any other failed body."""
    err = body.get("error") if isinstance(body, dict) else None
    if isinstance(err, dict):
        message, code = str(err.get("message") or err), err.get("code")
    elif isinstance(err, str):
        message, code = err, None
    else:
        text = body if isinstance(body, str) else json.dumps(body, ensure_ascii=False)[:300]
        message, code = f"unexpected answer {text[:300]!r}", None
    prefix = f"{where} answered {status}: " if status else f"{where} reported an error: "
    if code == "context_length_exceeded" or "context length" in message.lower() or "maximum context" in message.lower():
        return ContextLengthError(prefix + message + " (shorten the conversation or lower max_new_tokens)")
    hint = {401: " (check api_key)", 403: " (check api_key)", 404: " (check base_url and the model name)"}.get(
        status or 0, ""
    )
    return ModelError(prefix + message + hint)


class SSEDecoder:
    """Server-sent events, line by line: ``feed(line)`` returns a parsed ``data`` object, ``DONE`` or None."""

    DONE = object()

    def __init__(self, where: str) -> None:
        self.where = where
        self._data: list[str] = []
        self.done = False

    def feed(self, line: str) -> Any:
        line = line.rstrip("\r")
        if line == "":
            return self._dispatch()
        if line.startswith(":"):
            return None  # comment / keep-alive
        field, _, value = line.partition(":")
        if field == "data":
            self._data.append(value[1:] if value.startswith(" ") else value)
        return None

    def close(self) -> Any:
        return self._dispatch()

    def _dispatch(self) -> Any:
        if not self._data:
            return None
        text, self._data = "\n".join(self._data), []
        if text.strip() == "[DONE]":
            self.done = True
            return self.DONE
        try:
            data = json.loads(text)
        except json.JSONDecodeError:
            raise ModelError(f"{self.where} sent an event that is not JSON: {text[:200]!r}") from None
        if not isinstance(data, dict):
            raise ModelError(f"{self.where} sent an event that is not a JSON object: {text[:200]!r}")
        if "error" in data:
            raise error_from_body(self.where, None, data)
        return data


def _first_choice(where: str, data: dict[str, Any]) -> dict[str, Any] | None:
    choices = data.get("choices")
    if not isinstance(choices, list):
        raise ModelError(f"{where} sent a chunk without a choices list: {json.dumps(data)[:200]}")
    if not choices:
        return None  # a usage-only chunk
    choice = choices[0]
    if not isinstance(choice, dict):
        raise ModelError(f"{where} sent a malformed choice: {json.dumps(choice)[:200]}")
    return choice


class ChatAssembler:
    """Chat-completion chunks → raw ChatGLM3 reply pieces (text as it comes, each call when complete).

    Text becomes ``"\\n" + text``; each tool call becomes ``NAME\\n```python\\ntool_call(...)\\n```"``
    (``interpreter`` with ``{"code"}`` becomes a code segment); segments are joined by ``<|assistant|>``.
    The pieces concatenate to what ChatGLM3 itself would have written.
    """

    def __init__(self, where: str) -> None:
        self.where = where
        self._calls: dict[int, dict[str, str]] = {}
        self._in_text = False
        self._any = False
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, data: dict[str, Any]) -> list[str]:
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        choice = _first_choice(self.where, data)
        if choice is None:
            return []
        delta = choice.get("delta") if "delta" in choice else choice.get("message")
        if delta is None:
            delta = {}
        if not isinstance(delta, dict):
            raise ModelError(f"{self.where} sent a malformed delta: {json.dumps(choice)[:200]}")
        out: list[str] = []
        content = delta.get("content")
        if content:
            if not isinstance(content, str):
                raise ModelError(f"{self.where} sent non-text content: {json.dumps(content)[:200]}")
            out += self._flush_calls()
            if not self._in_text:
                out.append((ASSISTANT_TOKEN if self._any else "") + "\n")
                self._in_text = self._any = True
            out.append(content)
        for item in delta.get("tool_calls") or []:
            self._add_call_delta(item)
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return out

    def _add_call_delta(self, item: Any) -> None:
        if not isinstance(item, dict):
            raise ModelError(f"{self.where} sent a malformed tool call delta: {item!r:.200}")
        index = item.get("index", len(self._calls))
        if not isinstance(index, int):
            raise ModelError(f"{self.where} sent a tool call delta with index {index!r}")
        call = self._calls.setdefault(index, {"name": "", "arguments": ""})
        fn = item.get("function") or {}
        if not isinstance(fn, dict):
            raise ModelError(f"{self.where} sent a malformed tool call function: {fn!r:.200}")
        if fn.get("name"):
            call["name"] += str(fn["name"])
        arguments = fn.get("arguments")
        if isinstance(arguments, dict):
            arguments = json.dumps(arguments)
        if arguments:
            call["arguments"] += str(arguments)

    def _flush_calls(self) -> list[str]:
        out = []
        for index in sorted(self._calls):
            call = self._calls[index]
            if not call["name"]:
                raise ModelError(f"{self.where} sent tool call {index} without a function name")
            try:
                segment = call_segment(call["name"], parse_arguments(call["name"], call["arguments"]))
            except FormatError as exc:
                raise ModelError(f"{self.where} sent a tool call that cannot be used: {exc}") from None
            out.append((ASSISTANT_TOKEN if self._any else "") + segment)
            self._any = True
        self._calls.clear()
        self._in_text = False if out else self._in_text
        return out

    def finish(self, done: bool) -> list[str]:
        if not done and self.finish_reason is None:
            raise ModelError(
                f"{self.where} ended the stream before the reply was complete (no finish_reason, no [DONE])"
            )
        return self._flush_calls()


class CompletionAssembler:
    """Completion chunks → the generated text, as it comes."""

    def __init__(self, where: str) -> None:
        self.where = where
        self.finish_reason: str | None = None
        self.usage: dict[str, Any] | None = None

    def feed(self, data: dict[str, Any]) -> list[str]:
        if isinstance(data.get("usage"), dict):
            self.usage = data["usage"]
        choice = _first_choice(self.where, data)
        if choice is None:
            return []
        text = choice.get("text")
        if text is not None and not isinstance(text, str):
            raise ModelError(
                f"{self.where} sent a completion chunk whose text is not a string: {json.dumps(choice)[:200]}"
            )
        if choice.get("finish_reason"):
            self.finish_reason = choice["finish_reason"]
        return [text] if text else []

    def finish(self, done: bool) -> list[str]:
        if not done and self.finish_reason is None:
            raise ModelError(
                f"{self.where} ended the stream before the completion was complete (no finish_reason, no [DONE])"
            )
        return []


Assembler = Union[ChatAssembler, CompletionAssembler]


def read_json(url: str, response: httpx.Response) -> Any:
    """The JSON of a response whose body was read, or a ModelError that quotes what came instead."""
    try:
        return response.json()
    except ValueError:
        raise ModelError(f"{url} answered with something that is not JSON: {response.text[:200]!r}") from None


class ReplyReader:
    """The body of one completion request, without I/O: the sync and async clients feed it.

    An event stream goes line by line (``line()``, until ``done``, then ``end()``); a server
    that answered with one JSON object instead goes through ``whole()``. Each returns the raw
    ChatGLM3 reply pieces to yield; ``usage`` is what the server reported.
    """

    def __init__(self, url: str, assembler_type: type[Assembler]) -> None:
        self.url = url
        self._assembler = assembler_type(url)
        self._decoder = SSEDecoder(url)
        self.done = False

    @property
    def usage(self) -> dict[str, Any] | None:
        return self._assembler.usage

    @staticmethod
    def is_stream(response: httpx.Response) -> bool:
        return "text/event-stream" in response.headers.get("content-type", "")

    def whole(self, response: httpx.Response) -> list[str]:
        """The pieces of a non-streamed answer (its body already read)."""
        return self._assembler.feed(read_json(self.url, response)) + self._assembler.finish(True)

    def line(self, line: str) -> list[str]:
        data = self._decoder.feed(line)
        if data is SSEDecoder.DONE:
            self.done = True
            return []
        return self._assembler.feed(data) if data is not None else []

    def end(self) -> list[str]:
        """After the last line (or ``[DONE]``): the rest, or a ModelError if the reply was cut short."""
        out: list[str] = []
        if not self.done:
            data = self._decoder.close()
            if data is not None and data is not SSEDecoder.DONE:
                out += self._assembler.feed(data)
        return out + self._assembler.finish(self._decoder.done)

    @contextmanager
    def broken_stream(self) -> Iterator[None]:
        """Around reading the lines: a connection that breaks mid-stream becomes a clear ModelError."""
        try:
            yield
        except httpx.HTTPError as exc:
            raise ModelError(
                f"the connection to {self.url} broke mid-stream ({type(exc).__name__}: {exc}); the reply is incomplete"
            ) from exc
