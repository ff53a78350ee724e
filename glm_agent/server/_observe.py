"""What the server tells an operator: Prometheus metrics at ``/metrics`` and a ``chat`` span per request
that continues the client's ``traceparent``.

Metric names follow the OpenTelemetry GenAI metric conventions where they exist, in Prometheus form
(``gen_ai.server.time_to_first_token`` is ``gen_ai_server_time_to_first_token_seconds``); the rest
are ``glm_agent_*``. Routes are labelled by their template, and any other path as ``other``: a
client cannot grow the label set.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any

from opentelemetry.trace import SpanKind, Status, StatusCode
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from glm_agent.telemetry import COUNTERS, extract_context, tracer
from glm_agent.telemetry.semconv import (
    CACHED_INPUT_TOKENS,
    ERROR_TYPE,
    FINISH_REASONS,
    INPUT_TOKENS,
    OPERATION,
    OUTPUT_TOKENS,
    REQUEST_MODEL,
    provider_attributes,
)

__all__ = ["ServerMetrics", "MetricsMiddleware", "RequestObserver", "route_label"]

_ROUTES = ("/health", "/metrics", "/v1/models", "/v1/chat/completions", "/v1/completions")
_PREFIXES = (("/v1/models/", "/v1/models/{name}"), ("/ui", "/ui"), ("/mcp", "/mcp"))
_SECONDS = (0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 20, 40, 80, 160, 320)
_PER_TOKEN = (0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.15, 0.2, 0.3, 0.5, 0.75, 1, 2.5, 5)


def route_label(path: str) -> str:
    if path in _ROUTES:
        return path
    for prefix, label in _PREFIXES:
        if path.startswith(prefix):
            return label
    return "other"


class ServerMetrics:
    """The server's metrics in a registry of its own (several apps in one process never collide)."""

    def __init__(self, state: Any, *, web_sessions: Callable[[], int] | None = None) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        r = self.registry
        self.requests = Counter(
            "glm_agent_http_requests", "HTTP requests answered, by route and status", ["route", "status"], registry=r
        )
        self.duration = Histogram(
            "gen_ai_server_request_duration",
            "Time from a generation request to its last byte",
            unit="seconds",
            buckets=_SECONDS,
            registry=r,
        )
        self.ttft = Histogram(
            "gen_ai_server_time_to_first_token",
            "Time from a generation request to its first text (queueing and prefill included)",
            unit="seconds",
            buckets=_SECONDS,
            registry=r,
        )
        self.tpot = Histogram(
            "gen_ai_server_time_per_output_token",
            "Time per output token after the first",
            unit="seconds",
            buckets=_PER_TOKEN,
            registry=r,
        )
        self.tokens = Counter(
            "gen_ai_server_token_usage",
            "Tokens of prompts (input), of replies (output), and of prompts served from the KV cache (cached_input)",
            ["gen_ai_token_type"],
            registry=r,
        )
        self._state = _StateCollector(state, web_sessions)
        r.register(self._state)

    def watch_web_sessions(self, count: Callable[[], int]) -> None:
        """Report ``count()`` as the web UI's open sessions."""
        self._state.web_sessions = count


class _StateCollector(Collector):
    """Gauges read when scraped: requests running and waiting, the KV cache, the interpreter's counts, UI sessions."""

    def __init__(self, state: Any, web_sessions: Callable[[], int] | None) -> None:
        self.state = state
        self.web_sessions = web_sessions

    def collect(self) -> Iterator[Metric]:
        gate = self.state.gate
        yield GaugeMetricFamily("glm_agent_requests_running", "Generation requests running now", value=gate.active)
        yield GaugeMetricFamily(
            "glm_agent_requests_waiting", "Generation requests waiting for a slot", value=gate.waiting
        )
        cache_info = getattr(self.state.model, "cache_info", None)
        if callable(cache_info):
            info = cache_info()
            kv = GaugeMetricFamily("glm_agent_kv_cache_bytes", "The local model's KV cache memory", labels=["part"])
            for part in ("stored_bytes", "buffer_bytes", "budget_bytes"):
                if part in info:
                    kv.add_metric([part.removesuffix("_bytes")], info[part])
            yield kv
            if "blocks" in info:
                yield GaugeMetricFamily("glm_agent_kv_cache_blocks", "KV blocks kept for reuse", value=info["blocks"])
                yield CounterMetricFamily(
                    "glm_agent_kv_cache_evicted_blocks", "KV blocks evicted", value=info["evicted"]
                )
        load = getattr(self.state.model, "engine_info", None)
        if callable(load):
            engine = load()
            sequences = GaugeMetricFamily(
                "glm_agent_engine_sequences",
                "Sequences in the local engine, decoding together or waiting",
                labels=["state"],
            )
            sequences.add_metric(["running"], engine["running"])
            sequences.add_metric(["waiting"], engine["waiting"])
            yield sequences
        yield CounterMetricFamily(
            "glm_agent_interpreter_runs", "Code runs in this process's kernels", value=COUNTERS["interpreter_runs"]
        )
        yield CounterMetricFamily(
            "glm_agent_interpreter_restarts",
            "Kernel restarts (deaths, timeouts)",
            value=COUNTERS["interpreter_restarts"],
        )
        if self.web_sessions is not None:
            yield GaugeMetricFamily("glm_agent_web_sessions", "Web UI sessions open", value=self.web_sessions())


class MetricsMiddleware:
    """Counts every answer by route template and status (401s, 413s and 429s included)."""

    def __init__(self, app: ASGIApp, metrics: ServerMetrics) -> None:
        self.app = app
        self.metrics = metrics

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        route = route_label(scope.get("path", ""))
        started = False

        async def watch(message: Message) -> None:
            nonlocal started
            if message["type"] == "http.response.start" and not started:
                started = True  # counted before the client can see the answer (a scrape after it includes it)
                self.metrics.requests.labels(route, str(int(message["status"]))).inc()
            await send(message)

        try:
            await self.app(scope, receive, watch)
        finally:
            if not started:  # the app failed (or the client left) before answering
                self.metrics.requests.labels(route, "500").inc()


class RequestObserver:
    """One generation request: its server span (continuing the client's trace) and its timings."""

    def __init__(self, metrics: ServerMetrics | None, headers: Any, model: str, provider: str) -> None:
        self.metrics = metrics
        self.start = time.perf_counter()
        self.first: float | None = None
        self.span = tracer().start_span(
            f"chat {model}",
            context=extract_context(headers),
            kind=SpanKind.SERVER,
            attributes={OPERATION: "chat", REQUEST_MODEL: model, **provider_attributes(provider)},
        )
        self.done = False

    def first_text(self) -> None:
        if self.first is None:
            self.first = time.perf_counter()
            if self.metrics is not None:
                self.metrics.ttft.observe(self.first - self.start)

    def finish(self, usage: dict[str, Any], reason: str) -> None:
        if self.done:
            return
        self.done = True
        now = time.perf_counter()
        prompt, completion = int(usage.get("prompt_tokens", 0)), int(usage.get("completion_tokens", 0))
        cached = (usage.get("prompt_tokens_details") or {}).get("cached_tokens")
        if self.metrics is not None:
            self.metrics.duration.observe(now - self.start)
            self.metrics.tokens.labels("input").inc(prompt)
            self.metrics.tokens.labels("output").inc(completion)
            if cached is not None:
                self.metrics.tokens.labels("cached_input").inc(int(cached))
            if self.first is not None and completion > 1:
                self.metrics.tpot.observe((now - self.first) / (completion - 1))
        self.span.set_attribute(INPUT_TOKENS, prompt)
        self.span.set_attribute(OUTPUT_TOKENS, completion)
        if cached is not None:
            self.span.set_attribute(CACHED_INPUT_TOKENS, int(cached))
        self.span.set_attribute(FINISH_REASONS, [reason])
        self.span.end()

    def fail(self, error: str, exc: BaseException | None = None) -> None:
        if self.done:
            return
        self.done = True
        if self.metrics is not None:
            self.metrics.duration.observe(time.perf_counter() - self.start)
        if exc is not None:
            self.span.record_exception(exc)
        self.span.set_attribute(ERROR_TYPE, error)
        self.span.set_status(Status(StatusCode.ERROR, error))
        self.span.end()
