"""Tracing configuration from the standard ``OTEL_*`` variables."""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Final, Literal
from urllib.parse import unquote

from opentelemetry.sdk.trace import sampling

if TYPE_CHECKING:
    pass


SERVICE_NAME: Final = "hybrid-gateway"
DEFAULT_OTLP_ENDPOINT: Final = "http://localhost:4318"

Exporter = Literal["otlp", "console", "console-tree"]
"""``console`` is OpenTelemetry's JSON per span; ``console-tree`` one line per span, as a tree."""
SamplerName = Literal[
    "always_on",
    "always_off",
    "traceidratio",
    "parentbased_always_on",
    "parentbased_always_off",
    "parentbased_traceidratio",
]
_SAMPLERS: Final[frozenset[str]] = frozenset(SamplerName.__args__)  # type: ignore[attr-defined]


# -- configuration -------------------------------------------------------------------------


@dataclass(frozen=True, slots=True, kw_only=True)
class TracingConfig:
    """What the ``OTEL_*`` variables ask for; no exporter means tracing is off."""

    exporters: frozenset[Exporter] = frozenset()
    service_name: str = SERVICE_NAME
    resource_attributes: tuple[tuple[str, str], ...] = ()
    otlp_endpoint: str = DEFAULT_OTLP_ENDPOINT + "/v1/traces"
    """The full URL spans are POSTed to."""
    sampler: SamplerName = "parentbased_always_on"
    sampler_ratio: float = 1.0
    capture_content: bool = False
    """GATEWAY_TRACE_CONTENT: prompt and completion text on the attempt spans."""

    @property
    def enabled(self) -> bool:
        return bool(self.exporters)


def tracing_config_from_env(
    env: Mapping[str, str],
    *,
    default_service_name: str = SERVICE_NAME,
    capture_content: bool = False,
) -> TracingConfig:
    """Parse the standard ``OTEL_*`` variables; ValueError names the variable at fault.

    Only the OTLP/HTTP protobuf exporter is installed, so ``grpc`` and ``http/json``
    are refused at start-up rather than silently exporting nothing.
    """
    capture = capture_content
    if env.get("OTEL_SDK_DISABLED", "").strip().lower() == "true":
        return TracingConfig(capture_content=capture)
    traces_endpoint = env.get("OTEL_EXPORTER_OTLP_TRACES_ENDPOINT", "").strip()
    base_endpoint = env.get("OTEL_EXPORTER_OTLP_ENDPOINT", "").strip()
    raw = env.get("OTEL_TRACES_EXPORTER")
    if raw is None or not raw.strip():
        names = ["otlp"] if traces_endpoint or base_endpoint else []
    else:
        names = [n.strip().lower() for n in raw.split(",") if n.strip()]
    exporters: set[Exporter] = set()
    for name in names:
        if name == "none":
            continue
        if name == "otlp":
            exporters.add("otlp")
        elif name == "console":
            exporters.add("console")
        elif name == "console-tree":
            exporters.add("console-tree")
        else:
            raise ValueError(
                f"OTEL_TRACES_EXPORTER: {name!r} is not supported "
                "(use otlp, console, console-tree or none)"
            )
    if "none" in names and exporters:
        raise ValueError("OTEL_TRACES_EXPORTER: 'none' cannot be combined with other exporters")
    if traces_endpoint:
        endpoint, variable = traces_endpoint, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT"
    else:
        endpoint = (base_endpoint or DEFAULT_OTLP_ENDPOINT).rstrip("/") + "/v1/traces"
        variable = "OTEL_EXPORTER_OTLP_ENDPOINT"
    if not endpoint.startswith(("http://", "https://")):
        raise ValueError(f"{variable}: {endpoint!r} must start with http:// or https://")
    protocol_variable = (
        "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL"
        if env.get("OTEL_EXPORTER_OTLP_TRACES_PROTOCOL")
        else "OTEL_EXPORTER_OTLP_PROTOCOL"
    )
    protocol = env.get(protocol_variable, "http/protobuf").strip() or "http/protobuf"
    if "otlp" in exporters and protocol != "http/protobuf":
        raise ValueError(
            f"{protocol_variable}: {protocol!r} is not supported; use http/protobuf "
            "(the collector's OTLP/HTTP port, 4318)"
        )
    sampler = env.get("OTEL_TRACES_SAMPLER", "parentbased_always_on").strip().lower()
    if sampler not in _SAMPLERS:
        raise ValueError(
            f"OTEL_TRACES_SAMPLER: {sampler!r} is not supported (one of: "
            + ", ".join(sorted(_SAMPLERS))
            + ")"
        )
    ratio = 1.0
    ratio_text = env.get("OTEL_TRACES_SAMPLER_ARG", "").strip()
    if ratio_text and sampler.endswith("traceidratio"):
        try:
            ratio = float(ratio_text)
        except ValueError:
            raise ValueError(
                f"OTEL_TRACES_SAMPLER_ARG: {ratio_text!r} must be a number in [0, 1]"
            ) from None
        if not 0.0 <= ratio <= 1.0:
            raise ValueError(f"OTEL_TRACES_SAMPLER_ARG: {ratio} must be in [0, 1]")
    attributes = _resource_attributes(env.get("OTEL_RESOURCE_ATTRIBUTES", ""))
    service = (
        env.get("OTEL_SERVICE_NAME", "").strip()
        or dict(attributes).get("service.name")
        or default_service_name
    )
    return TracingConfig(
        exporters=frozenset(exporters),
        service_name=service,
        resource_attributes=attributes,
        otlp_endpoint=endpoint,
        sampler=sampler,  # type: ignore[arg-type]  # checked against _SAMPLERS above
        sampler_ratio=ratio,
        capture_content=capture,
    )


def _resource_attributes(text: str) -> tuple[tuple[str, str], ...]:
    pairs: list[tuple[str, str]] = []
    for item in text.split(","):
        key, sep, value = item.partition("=")
        if not item.strip():
            continue
        if not sep or not key.strip():
            raise ValueError(f"OTEL_RESOURCE_ATTRIBUTES: {item!r} must be key=value")
        pairs.append((key.strip(), unquote(value.strip())))
    return tuple(pairs)


def build_sampler(config: TracingConfig) -> sampling.Sampler:
    ratio = config.sampler_ratio
    match config.sampler:
        case "always_on":
            return sampling.ALWAYS_ON
        case "always_off":
            return sampling.ALWAYS_OFF
        case "traceidratio":
            return sampling.TraceIdRatioBased(ratio)
        case "parentbased_always_off":
            return sampling.ParentBased(sampling.ALWAYS_OFF)
        case "parentbased_traceidratio":
            return sampling.ParentBased(sampling.TraceIdRatioBased(ratio))
        case _:
            return sampling.ParentBased(sampling.ALWAYS_ON)
