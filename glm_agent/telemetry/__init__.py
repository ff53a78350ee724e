"""Tracing and metrics: OpenTelemetry spans on the GenAI conventions (no-ops until an SDK is configured),
``traceparent`` in and out, process counters for the server's Prometheus metrics, and the SDK set-up the
command line uses (``--trace FILE``, ``OTEL_EXPORTER_OTLP_ENDPOINT``)."""

from __future__ import annotations

from glm_agent.telemetry._counters import COUNTERS, count
from glm_agent.telemetry._propagation import extract_context, inject_traceparent
from glm_agent.telemetry._setup import configure_tracing
from glm_agent.telemetry._spans import RunTrace, in_context, in_context_async, new_conversation_id, tracer
from glm_agent.telemetry.semconv import SEMCONV_VERSION, capture_content

__all__ = [
    "COUNTERS",
    "SEMCONV_VERSION",
    "RunTrace",
    "capture_content",
    "configure_tracing",
    "count",
    "extract_context",
    "in_context",
    "in_context_async",
    "inject_traceparent",
    "new_conversation_id",
    "tracer",
]
