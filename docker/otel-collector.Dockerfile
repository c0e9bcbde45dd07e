# syntax=docker/dockerfile:1
# The OpenTelemetry Collector (contrib distribution) on an Alpine base. The upstream image is
# distroless, so a container health check has nothing to run; the collector is one static
# Go binary, and Alpine's busybox wget can ask its health_check extension.
ARG OTELCOL_VERSION=0.111.0
FROM otel/opentelemetry-collector-contrib:${OTELCOL_VERSION} AS collector

FROM alpine:3.20
COPY --from=collector /otelcol-contrib /otelcol-contrib
COPY docker/otel-collector.yaml /etc/otelcol-contrib/config.yaml
USER 10001
EXPOSE 4317 4318 13133
HEALTHCHECK --interval=10s --timeout=3s --start-period=10s --retries=3 \
  CMD ["wget", "-q", "-O", "/dev/null", "http://127.0.0.1:13133/"]
ENTRYPOINT ["/otelcol-contrib"]
CMD ["--config", "/etc/otelcol-contrib/config.yaml"]
