"""W3C ``traceparent`` out (model servers, the Kernel Gateway) and in (``glm-agent serve``)."""

from __future__ import annotations

from collections.abc import Mapping, MutableMapping

from opentelemetry import context as otel_context
from opentelemetry import propagate

__all__ = ["extract_context", "inject_traceparent"]


def inject_traceparent(headers: MutableMapping[str, str]) -> MutableMapping[str, str]:
    """Add the current span's ``traceparent`` (and ``tracestate``) to ``headers``; nothing without a span."""
    propagate.inject(headers)
    return headers


def extract_context(headers: Mapping[str, str]) -> otel_context.Context:
    """The context a request's ``traceparent`` continues (an empty one without it)."""
    return propagate.extract(dict(headers))
