"""OTEL_* and GATEWAY_LOG_FORMAT: when tracing is on, where spans go, and bad values."""

from __future__ import annotations

import pytest
from opentelemetry.sdk.trace import sampling

from gateway.settings import SettingsError, settings_from_env
from gateway.telemetry import TracingConfig, build_tracing, tracing_config_from_env

ENDPOINT = {"OTEL_EXPORTER_OTLP_ENDPOINT": "http://collector:4318"}


@pytest.mark.parametrize(
    ("env", "exporters"),
    [
        ({}, set()),
        ({"OTEL_TRACES_EXPORTER": "none"}, set()),
        ({"OTEL_TRACES_EXPORTER": "none", **ENDPOINT}, set()),
        (ENDPOINT, {"otlp"}),  # an endpoint alone means OTLP
        ({"OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://c:4318/v1/traces"}, {"otlp"}),
        ({"OTEL_TRACES_EXPORTER": "otlp"}, {"otlp"}),
        ({"OTEL_TRACES_EXPORTER": "console"}, {"console"}),
        ({"OTEL_TRACES_EXPORTER": "otlp, console"}, {"otlp", "console"}),
        ({"OTEL_TRACES_EXPORTER": "otlp", "OTEL_SDK_DISABLED": "true"}, set()),
        ({"OTEL_SDK_DISABLED": "TRUE", **ENDPOINT}, set()),
        ({"OTEL_SDK_DISABLED": "false", **ENDPOINT}, {"otlp"}),
    ],
)
def test_when_tracing_is_on(env: dict[str, str], exporters: set[str]) -> None:
    config = tracing_config_from_env(env)
    assert set(config.exporters) == exporters
    assert config.enabled is bool(exporters)


@pytest.mark.parametrize(
    ("env", "endpoint"),
    [
        ({"OTEL_TRACES_EXPORTER": "otlp"}, "http://localhost:4318/v1/traces"),
        (ENDPOINT, "http://collector:4318/v1/traces"),
        (
            {"OTEL_EXPORTER_OTLP_ENDPOINT": "https://c.example:4318/"},
            "https://c.example:4318/v1/traces",
        ),
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_ENDPOINT": "http://t:9999/custom"},
            "http://t:9999/custom",  # the signal-specific URL is used as it is
        ),
    ],
)
def test_endpoint(env: dict[str, str], endpoint: str) -> None:
    assert tracing_config_from_env(env).otlp_endpoint == endpoint


def test_service_name_and_resource_attributes() -> None:
    assert tracing_config_from_env({}).service_name == "hybrid-gateway"
    config = tracing_config_from_env(
        {
            "OTEL_RESOURCE_ATTRIBUTES": "service.name=from-attrs,deployment.environment=prod%20eu",
            **ENDPOINT,
        }
    )
    assert config.service_name == "from-attrs"
    assert ("deployment.environment", "prod eu") in config.resource_attributes
    config = tracing_config_from_env(
        {"OTEL_SERVICE_NAME": "gw-7", "OTEL_RESOURCE_ATTRIBUTES": "service.name=x", **ENDPOINT}
    )
    assert config.service_name == "gw-7"  # OTEL_SERVICE_NAME wins, as the spec says
    tracing = build_tracing(config)
    try:
        assert tracing.provider is not None
        assert tracing.provider.resource.attributes["service.name"] == "gw-7"
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("name", "arg", "expected"),
    [
        (None, None, "ParentBased{root:AlwaysOnSampler"),
        ("always_off", None, "AlwaysOffSampler"),
        ("traceidratio", "0.25", "TraceIdRatioBased{0.25}"),
        ("parentbased_traceidratio", "0.1", "ParentBased{root:TraceIdRatioBased{0.1}"),
    ],
)
def test_sampler(name: str | None, arg: str | None, expected: str) -> None:
    env = {"OTEL_TRACES_EXPORTER": "console"}
    if name is not None:
        env["OTEL_TRACES_SAMPLER"] = name
    if arg is not None:
        env["OTEL_TRACES_SAMPLER_ARG"] = arg
    tracing = build_tracing(tracing_config_from_env(env))
    try:
        assert tracing.provider is not None
        sampler = tracing.provider.sampler
        assert isinstance(sampler, sampling.Sampler)
        assert sampler.get_description().startswith(expected)
    finally:
        tracing.shutdown()


@pytest.mark.parametrize(
    ("env", "variable"),
    [
        ({"OTEL_TRACES_EXPORTER": "zipkin"}, "OTEL_TRACES_EXPORTER"),
        ({"OTEL_TRACES_EXPORTER": "none,otlp"}, "OTEL_TRACES_EXPORTER"),
        ({**ENDPOINT, "OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"}, "OTEL_EXPORTER_OTLP_PROTOCOL"),
        (
            {**ENDPOINT, "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL": "http/json"},
            "OTEL_EXPORTER_OTLP_TRACES_PROTOCOL",
        ),
        ({"OTEL_EXPORTER_OTLP_ENDPOINT": "collector:4318"}, "OTEL_EXPORTER_OTLP_ENDPOINT"),
        ({"OTEL_TRACES_SAMPLER": "jaeger_remote"}, "OTEL_TRACES_SAMPLER"),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "half"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        (
            {"OTEL_TRACES_SAMPLER": "traceidratio", "OTEL_TRACES_SAMPLER_ARG": "1.5"},
            "OTEL_TRACES_SAMPLER_ARG",
        ),
        ({"OTEL_RESOURCE_ATTRIBUTES": "novalue"}, "OTEL_RESOURCE_ATTRIBUTES"),
        ({"GATEWAY_LOG_FORMAT": "xml"}, "GATEWAY_LOG_FORMAT"),
    ],
)
def test_bad_values_fail_start_up_naming_the_variable(env: dict[str, str], variable: str) -> None:
    with pytest.raises(SettingsError, match=variable):
        settings_from_env(env)


def test_grpc_is_fine_while_otlp_is_not_used() -> None:
    settings = settings_from_env({"OTEL_EXPORTER_OTLP_PROTOCOL": "grpc"})
    assert not settings.tracing.enabled


def test_log_format_default_and_choice() -> None:
    assert settings_from_env({}).log_format == "json"
    assert settings_from_env({"GATEWAY_LOG_FORMAT": "TEXT"}).log_format == "text"


def test_disabled_tracing_builds_nothing() -> None:
    tracing = build_tracing(TracingConfig())
    assert not tracing.enabled
    assert tracing.provider is None
    with tracing.span("anything") as span:
        assert not span.is_recording()
