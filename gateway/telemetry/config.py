"""The gateway's tracing configuration: the shared ``OTEL_*`` reading under its own name."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Final

from hybrid_common import otel
from hybrid_common.otel import TracingConfig

SERVICE_NAME: Final = "hybrid-gateway"
"""``service.name`` when neither ``OTEL_SERVICE_NAME`` nor the resource attributes set one."""


def tracing_config_from_env(
    env: Mapping[str, str], *, capture_content: bool = False
) -> TracingConfig:
    """Parse the standard ``OTEL_*`` variables; ValueError names the variable at fault.

    Only the OTLP/HTTP protobuf exporter is installed, so ``grpc`` and ``http/json``
    are refused at start-up rather than silently exporting nothing.
    """
    return otel.tracing_config_from_env(
        env, default_service_name=SERVICE_NAME, capture_content=capture_content
    )


__all__ = ["SERVICE_NAME", "TracingConfig", "tracing_config_from_env"]
