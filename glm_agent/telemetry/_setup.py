"""The OpenTelemetry SDK, set up by the command line: ``--trace FILE`` (OTLP JSON lines, no server needed)
and the standard ``OTEL_EXPORTER_OTLP_*`` variables (OTLP/HTTP). Nothing is set up, and nothing is sent
anywhere, unless one of them is given. Needs the ``otel`` extra."""

from __future__ import annotations

import base64
import json
import logging
import os
import threading
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from glm_agent.errors import GlmAgentError

__all__ = ["configure_tracing", "file_exporter", "otlp_endpoint_configured"]

logger = logging.getLogger(__name__)

_ID_FIELDS = ("traceId", "spanId", "parentSpanId")


def otlp_endpoint_configured() -> bool:
    return bool(os.environ.get("OTEL_EXPORTER_OTLP_ENDPOINT") or os.environ.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"))


def configure_tracing(trace_file: str | os.PathLike[str] | None = None) -> Callable[[], None]:
    """Install a tracer provider exporting to ``trace_file`` and/or the OTLP endpoint the environment names.

    Returns the function that flushes and shuts it down (call it before the process ends). Without a
    file or an endpoint it installs nothing and returns a no-op. A provider configured by the user
    (``opentelemetry-instrument``, their own code) is left alone.
    """
    endpoint = otlp_endpoint_configured()
    if trace_file is None and not endpoint:
        return lambda: None
    try:
        from opentelemetry import trace
        from opentelemetry.sdk.resources import Resource
        from opentelemetry.sdk.trace import TracerProvider
        from opentelemetry.sdk.trace.export import BatchSpanProcessor
    except ImportError as exc:
        raise GlmAgentError(
            f"tracing needs the 'otel' extra ({exc}); install it with: pip install 'glm-agent[otel]'"
        ) from None
    if isinstance(trace.get_tracer_provider(), TracerProvider):
        logger.info("a tracer provider is already configured; --trace and OTEL_EXPORTER_OTLP_* are left to it")
        return lambda: None
    resource = Resource.create({"service.name": os.environ.get("OTEL_SERVICE_NAME") or "glm-agent"})
    provider = TracerProvider(resource=resource)
    if trace_file is not None:
        provider.add_span_processor(BatchSpanProcessor(file_exporter(trace_file)))
    if endpoint:
        try:
            from opentelemetry.exporter.otlp.proto.http.trace_exporter import OTLPSpanExporter
        except ImportError as exc:
            raise GlmAgentError(
                f"OTEL_EXPORTER_OTLP_ENDPOINT needs the 'otel' extra ({exc}); pip install 'glm-agent[otel]'"
            ) from None
        provider.add_span_processor(BatchSpanProcessor(OTLPSpanExporter()))  # reads the standard variables
    trace.set_tracer_provider(provider)
    return provider.shutdown


def file_exporter(path: str | os.PathLike[str]) -> Any:
    """A span exporter writing OTLP JSON lines to ``path``: one ``ExportTraceServiceRequest`` a line, ids
    in hex as OTLP/JSON has them (appended: several runs can share a file)."""
    from google.protobuf.json_format import MessageToDict  # type: ignore[import-untyped]
    from opentelemetry.exporter.otlp.proto.common.trace_encoder import encode_spans
    from opentelemetry.sdk.trace.export import SpanExporter, SpanExportResult

    class OtlpJsonFileExporter(SpanExporter):
        def __init__(self) -> None:
            self.path = Path(path)
            self.path.parent.mkdir(parents=True, exist_ok=True)
            self._file = open(self.path, "a", encoding="utf-8")  # noqa: SIM115 (closed in shutdown)
            self._lock = threading.Lock()

        def export(self, spans: Sequence[Any]) -> SpanExportResult:
            request = MessageToDict(encode_spans(spans))
            for resource_spans in request.get("resourceSpans", []):
                for scope_spans in resource_spans.get("scopeSpans", []):
                    for span in scope_spans.get("spans", []):
                        _hex_ids(span)
                        for link in span.get("links", []):
                            _hex_ids(link)
            line = json.dumps(request, ensure_ascii=False, separators=(",", ":"))
            with self._lock:
                if self._file.closed:
                    return SpanExportResult.FAILURE
                self._file.write(line + "\n")
                self._file.flush()
            return SpanExportResult.SUCCESS

        def shutdown(self) -> None:
            with self._lock:
                self._file.close()

        def force_flush(self, timeout_millis: int = 30000) -> bool:
            return True

    return OtlpJsonFileExporter()


def _hex_ids(item: dict[str, Any]) -> None:
    for key in _ID_FIELDS:
        if key in item:
            item[key] = base64.b64decode(item[key]).hex()
