"""Process settings from the environment. The only module that reads ``os.environ``."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

from gateway.event_loop import EVENT_LOOPS, EventLoopKind
from gateway.logs import LOG_FORMATS, LogFormat
from gateway.policy.model import NodeSpec, node_base_url
from gateway.telemetry import TracingConfig, tracing_config_from_env
from hybrid_common.protocol import Tier

DEFAULT_POLICY = Path(__file__).resolve().parent.parent / "policies" / "default.yaml"


class SettingsError(ValueError):
    """An environment variable with a value the gateway cannot use."""


@dataclass(frozen=True, slots=True, kw_only=True)
class ConnectionLimits:
    """Deadlines and a cap for client connections (``gateway.http.connections`` applies them).

    Every slow or idle client holds a socket and a file descriptor; these bound how long
    and how many. The defaults let a healthy client on a slow mobile link through.
    """

    header_timeout_s: float = 10.0
    """GATEWAY_HEADER_TIMEOUT_S: a request's line and headers must arrive within this many
    seconds of the connection opening (its first request) or of the request's first byte."""
    body_timeout_s: float = 30.0
    """GATEWAY_BODY_TIMEOUT_S: the whole request body must arrive within this many seconds
    of the headers; otherwise 408 and the connection is closed."""
    idle_timeout_s: float = 30.0
    """GATEWAY_IDLE_TIMEOUT_S: a keep-alive connection with no request on it is closed after
    this many seconds (set it above the idle timeout of a proxy in front that reuses them)."""
    max_connections: int = 1000
    """GATEWAY_MAX_CONNECTIONS: client connections open at once; one more is answered 503
    and closed at once."""


@dataclass(frozen=True, slots=True, kw_only=True)
class Settings:
    policy_path: Path = DEFAULT_POLICY
    host: str = "127.0.0.1"
    port: int = 8080
    edge_nodes: tuple[NodeSpec, ...] | None = None
    """GATEWAY_EDGE_URLS: replaces the policy's edge node list when set."""
    cloud_nodes: tuple[NodeSpec, ...] | None = None
    redis_url: str | None = None
    """REDIS_URL (redis://, rediss:// for TLS, unix://); unset disables sessions."""
    redis_cluster: bool = False
    """REDIS_CLUSTER=1: REDIS_URL names a node of a Redis Cluster (cluster client)."""
    api_keys: frozenset[str] = frozenset()
    """GATEWAY_API_KEYS: when set, clients must send one as a Bearer token."""
    key_store: bool = False
    """GATEWAY_KEY_STORE=redis: keys created with ``python -m gateway keys`` or the admin
    API (kept in Redis at REDIS_URL) are accepted, and clients must send a key."""
    admin_key: str | None = None
    """GATEWAY_ADMIN_KEY: the Bearer token of the admin API (``/admin/keys``,
    ``/v1/usage``); unset, that API answers 403."""
    policy_poll_s: float = 1.0
    log_level: str = "INFO"
    log_format: LogFormat = "json"
    """GATEWAY_LOG_FORMAT: ``json`` (one object per line) or ``text``."""
    event_loop: EventLoopKind = "auto"
    """GATEWAY_EVENT_LOOP: ``auto`` (uvloop where installed), ``uvloop`` or ``asyncio``."""
    tracing: TracingConfig = field(default_factory=TracingConfig)
    """The standard OTEL_* variables and GATEWAY_TRACE_CONTENT; off by default."""
    connections: ConnectionLimits = field(default_factory=ConnectionLimits)
    """GATEWAY_HEADER_TIMEOUT_S, _BODY_TIMEOUT_S, _IDLE_TIMEOUT_S and GATEWAY_MAX_CONNECTIONS."""

    def node_overrides(self) -> dict[Tier, tuple[NodeSpec, ...]]:
        overrides: dict[Tier, tuple[NodeSpec, ...]] = {}
        if self.edge_nodes is not None:
            overrides["edge"] = self.edge_nodes
        if self.cloud_nodes is not None:
            overrides["cloud"] = self.cloud_nodes
        return overrides


def settings_from_env(env: Mapping[str, str] | None = None) -> Settings:
    """Read GATEWAY_* and REDIS_URL; raises :class:`SettingsError` naming the variable."""
    env = os.environ if env is None else env
    port_text = env.get("GATEWAY_PORT", "8080")
    try:
        port = int(port_text)
    except ValueError:
        raise SettingsError(f"GATEWAY_PORT must be an integer, got {port_text!r}") from None
    if not 0 <= port <= 65535:
        raise SettingsError(f"GATEWAY_PORT must be between 0 and 65535, got {port}")
    keys = frozenset(k.strip() for k in env.get("GATEWAY_API_KEYS", "").split(",") if k.strip())
    log_format = env.get("GATEWAY_LOG_FORMAT", "json").strip().lower() or "json"
    if log_format not in LOG_FORMATS:
        raise SettingsError(f"GATEWAY_LOG_FORMAT must be json or text, got {log_format!r}")
    loop_text = env.get("GATEWAY_EVENT_LOOP", "auto").strip().lower() or "auto"
    event_loop = next((kind for kind in EVENT_LOOPS if kind == loop_text), None)
    if event_loop is None:
        raise SettingsError(
            f"GATEWAY_EVENT_LOOP must be auto, uvloop or asyncio, got {loop_text!r}"
        )
    try:
        tracing = tracing_config_from_env(
            env,
            capture_content=env.get("GATEWAY_TRACE_CONTENT", "").strip().lower()
            in {"1", "true", "yes"},
        )
    except ValueError as exc:
        raise SettingsError(str(exc)) from None
    key_store = env.get("GATEWAY_KEY_STORE", "").strip().lower()
    if key_store not in {"", "redis"}:
        raise SettingsError(f"GATEWAY_KEY_STORE must be redis or unset, got {key_store!r}")
    if key_store and not env.get("REDIS_URL"):
        raise SettingsError("GATEWAY_KEY_STORE=redis needs REDIS_URL")
    return Settings(
        policy_path=Path(env.get("GATEWAY_POLICY") or DEFAULT_POLICY),
        host=env.get("GATEWAY_HOST", "127.0.0.1"),
        port=port,
        edge_nodes=parse_node_urls("GATEWAY_EDGE_URLS", "edge", env.get("GATEWAY_EDGE_URLS")),
        cloud_nodes=parse_node_urls("GATEWAY_CLOUD_URLS", "cloud", env.get("GATEWAY_CLOUD_URLS")),
        redis_url=env.get("REDIS_URL") or None,
        redis_cluster=env.get("REDIS_CLUSTER", "").strip().lower() in {"1", "true", "yes"},
        api_keys=keys,
        key_store=bool(key_store),
        admin_key=env.get("GATEWAY_ADMIN_KEY", "").strip() or None,
        log_level=env.get("GATEWAY_LOG_LEVEL", "INFO").upper(),
        log_format="text" if log_format == "text" else "json",
        event_loop=event_loop,
        tracing=tracing,
        connections=connection_limits_from_env(env),
    )


def connection_limits_from_env(env: Mapping[str, str]) -> ConnectionLimits:
    """GATEWAY_{HEADER,BODY,IDLE}_TIMEOUT_S and GATEWAY_MAX_CONNECTIONS, each optional."""
    defaults = ConnectionLimits()
    return ConnectionLimits(
        header_timeout_s=_seconds(env, "GATEWAY_HEADER_TIMEOUT_S", defaults.header_timeout_s),
        body_timeout_s=_seconds(env, "GATEWAY_BODY_TIMEOUT_S", defaults.body_timeout_s),
        idle_timeout_s=_seconds(env, "GATEWAY_IDLE_TIMEOUT_S", defaults.idle_timeout_s),
        max_connections=_count(env, "GATEWAY_MAX_CONNECTIONS", defaults.max_connections),
    )


def _seconds(env: Mapping[str, str], variable: str, default: float) -> float:
    text = env.get(variable, "").strip()
    if not text:
        return default
    try:
        value = float(text)
    except ValueError:
        raise SettingsError(f"{variable} must be a number of seconds, got {text!r}") from None
    if not 0 < value < 1e6:  # also refuses nan and inf
        raise SettingsError(f"{variable} must be more than 0 and under 1e6 seconds, got {text!r}")
    return value


def _count(env: Mapping[str, str], variable: str, default: int) -> int:
    text = env.get(variable, "").strip()
    if not text:
        return default
    try:
        value = int(text)
    except ValueError:
        raise SettingsError(f"{variable} must be an integer, got {text!r}") from None
    if value < 1:
        raise SettingsError(f"{variable} must be at least 1, got {value}")
    return value


def parse_node_urls(variable: str, tier: Tier, value: str | None) -> tuple[NodeSpec, ...] | None:
    """``url=model,url=model`` into node specs named ``<tier>-1``, ``<tier>-2``..."""
    if value is None or not value.strip():
        return None
    nodes: list[NodeSpec] = []
    for index, item in enumerate(part.strip() for part in value.split(",") if part.strip()):
        url, sep, model = item.partition("=")
        url, model = node_base_url(url.strip()), model.strip()
        if not sep or not model:
            raise SettingsError(f"{variable}: {item!r} must be url=model")
        if not url.startswith(("http://", "https://")):
            raise SettingsError(f"{variable}: {url!r} must start with http:// or https://")
        nodes.append(NodeSpec(url=url, model=model, name=f"{tier}-{index + 1}"))
    return tuple(nodes)
