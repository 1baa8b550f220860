"""Tracing on or off: OpenTelemetry when OTEL_EXPORTER_OTLP_ENDPOINT is set, else nothing (not even imported)."""

from __future__ import annotations

from services.ops.tracing import NoTracing, Tracing


def make_tracing(endpoint: str | None, service_name: str = "iss-llm", capture_content: bool = False) -> Tracing:
    """OtelTracing exporting to `endpoint` (OTLP/HTTP), or NoTracing when it is not set."""
    if not endpoint:
        return NoTracing()
    from services.ops.otel_tracing import OtelTracing  # the opentelemetry packages, only now

    return OtelTracing(endpoint, service_name, capture_content)
