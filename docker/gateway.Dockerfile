# syntax=docker/dockerfile:1
# Gateway: the aiohttp server clients talk to. Pure Python, no build tools needed.
#   docker build -f docker/gateway.Dockerfile -t hybrid-gateway/gateway .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
WORKDIR /src
COPY pyproject.toml ./
COPY gateway ./gateway
COPY edge_node ./edge_node
COPY cloud_node ./cloud_node
COPY hybrid_common ./hybrid_common
# The README is the project's long description; an empty one lets the metadata build.
RUN touch README.md && pip install .

FROM ${PYTHON_IMAGE}
RUN useradd --system --uid 10001 --no-create-home gateway
COPY --from=builder /opt/venv /opt/venv
# The policy lives outside the package: compose and Kubernetes mount their own over it,
# and the gateway reloads it when the file changes.
COPY policies /app/policies
WORKDIR /app
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    GATEWAY_HOST=0.0.0.0 \
    GATEWAY_PORT=8080 \
    GATEWAY_POLICY=/app/policies/default.yaml \
    OTEL_SERVICE_NAME=hybrid-gateway
USER 10001
EXPOSE 8080
# /healthz (alive), not /readyz: a gateway whose nodes are all down is still a healthy
# process that answers 503s; orchestrators route on readiness separately.
HEALTHCHECK --interval=10s --timeout=3s --start-period=20s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8080/healthz', timeout=2)"]
CMD ["python", "-m", "gateway", "serve"]
