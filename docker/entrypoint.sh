#!/bin/sh
# PerSyn container entrypoint: one image, one role per container.
#
#   persyn-entrypoint gateway            FastAPI gateway on :8000 (/healthz, /readyz, /metrics)
#   persyn-entrypoint router-service     router service on :8100 (gateways call it via PERSYN_ROUTER_URL)
#   persyn-entrypoint generation-worker  Celery worker on the `generation` queue (likewise scoring-, training-worker)
#   persyn-entrypoint flower             Flower (Celery monitoring) on :5555
#   persyn-entrypoint healthcheck [ROLE] exit 0 when this container's role answers (Docker HEALTHCHECK)
#   persyn-entrypoint CMD [ARGS...]      anything else is exec'd as is (e.g. `persyn train-router ...`)
#
# Extra arguments after the role are passed to the program. Service settings come from the environment
# (services/core/settings.py ENV_VARS). The variables below are read only by this script; tests/test_deploy.py
# parses this list, so add new entrypoint-only variables here and nowhere else.
ENTRYPOINT_ENV_VARS="PERSYN_WORKER_CONCURRENCY PERSYN_LOG_LEVEL"
#   PERSYN_WORKER_CONCURRENCY  Celery worker processes (default: generation 8, scoring 1, training 1)
#   PERSYN_LOG_LEVEL           log level of uvicorn / Celery (default: info)
set -eu

ROLE_FILE=/tmp/persyn-role
LOG_LEVEL=$(printf '%s' "${PERSYN_LOG_LEVEL:-info}" | tr '[:upper:]' '[:lower:]')

hostname_() { python -c 'import socket; print(socket.gethostname())'; }

http_ok() {  # URL: exit 0 on a 2xx answer
    python - "$1" <<'PY'
import sys, urllib.request
try:
    with urllib.request.urlopen(sys.argv[1], timeout=5) as r:
        sys.exit(0 if 200 <= r.status < 300 else 1)
except Exception as exc:
    print(f"healthcheck: {sys.argv[1]}: {exc}", file=sys.stderr)
    sys.exit(1)
PY
}

healthcheck() {
    role=${1:-}
    if [ -z "$role" ] && [ -r "$ROLE_FILE" ]; then role=$(cat "$ROLE_FILE"); fi
    case "$role" in
        gateway) http_ok http://127.0.0.1:8000/healthz ;;
        router-service) http_ok http://127.0.0.1:8100/healthz ;;
        flower) http_ok http://127.0.0.1:5555/healthcheck ;;
        generation-worker|scoring-worker|training-worker)
            queue=${role%-worker}
            exec celery -A services.jobs.celery_app inspect ping -d "$queue@$(hostname_)" --timeout 10 >/dev/null ;;
        *) exit 0 ;;  # a one-off command: nothing to check
    esac
}

role=${1:-gateway}
[ "$#" -gt 0 ] && shift

case "$role" in
    gateway|router-service|flower|generation-worker|scoring-worker|training-worker)
        # Remembered for `healthcheck` (a separate process); /tmp is an emptyDir in k8s.
        printf '%s\n' "$role" > "$ROLE_FILE" 2>/dev/null || true ;;
esac

case "$role" in
    gateway)
        exec uvicorn --factory router_api.app:create_app --host 0.0.0.0 --port 8000 \
            --log-level "$LOG_LEVEL" --proxy-headers --forwarded-allow-ips '*' --timeout-graceful-shutdown 30 "$@" ;;
    router-service)
        exec persyn router-server --host 0.0.0.0 --port 8100 "$@" ;;
    generation-worker|scoring-worker|training-worker)
        queue=${role%-worker}
        case "$queue" in
            generation) default_concurrency=8 ;;  # I/O-bound: waits on teacher endpoints
            *) default_concurrency=1 ;;           # one model per process (GPU/CPU-bound)
        esac
        # -n QUEUE@%h: `healthcheck` pings exactly this node name.
        exec celery -A services.jobs.celery_app worker -Q "$queue" -n "$queue@%h" \
            -c "${PERSYN_WORKER_CONCURRENCY:-$default_concurrency}" \
            --without-gossip --without-mingle -l "$LOG_LEVEL" "$@" ;;
    flower)
        exec celery -A services.jobs.celery_app flower --address=0.0.0.0 --port=5555 "$@" ;;
    healthcheck)
        healthcheck "$@" ;;
    *)
        exec "$role" "$@" ;;
esac
