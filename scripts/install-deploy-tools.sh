#!/usr/bin/env bash
# Tools for tests/test_deploy.py (validating docker-compose.yml and the k8s/ manifests; nothing is run):
#   docker-compose (Debian's, `docker-compose config`) and kubectl with kustomize >= v4 (`kubectl kustomize`);
#   kubernetes-validate and hadolint come with the venv's test extra. Safe to run again; installs only what is missing.
set -euo pipefail

need_apt=()
command -v docker-compose >/dev/null 2>&1 || need_apt+=(docker-compose)
# Debian's kubernetes-client ships kubectl 1.20, whose built-in kustomize (v2) is too old for k8s/;
# it is only a fallback where no kubectl is installed (this project's machines have a newer one).
command -v kubectl >/dev/null 2>&1 || need_apt+=(kubernetes-client)
if [ "${#need_apt[@]}" -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    $SUDO apt-get update -qq
    DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-install-recommends "${need_apt[@]}" >/dev/null
fi
echo "install-deploy-tools: $(docker-compose version --short 2>/dev/null || echo 'docker-compose ?'), $(kubectl version --client 2>/dev/null | head -1)"
