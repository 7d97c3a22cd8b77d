"""The layout's import rules (docs/architecture.md), read from the code's own imports."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]

#: package -> the packages of this project it may import (besides itself).
ALLOWED = {
    "services.method": set(),
    "services.core": set(),
    "services.clients": set(),
    "services.reports": set(),
    "services.scoring": {"services.core", "services.method", "services.clients"},
    "services.demo": {"services.core", "services.method"},
    "services.routing": {"services.core", "services.method", "services.jobs"},
    "services.jobs": {"services.core", "services.method", "services.scoring", "services.clients"},
    "services.synthesis": {"services.core", "services.method", "services.scoring", "services.clients",
                           "services.routing", "services.demo", "services.reports"},
    "services.embedded": {"services.core", "services.jobs", "services.demo"},
    "services.student": {"services.core", "services.method", "services.scoring", "services.clients",
                         "services.routing", "services.reports"},
    "router_api": {"services", "services.core", "services.method", "services.jobs", "services.routing"},
}
WORKERS = ("generation_worker", "scoring_worker", "training_worker")


def _package_of(module: str) -> str:
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == "services" else parts[0]


def _imports(path: Path) -> set[str]:
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.ImportFrom) and node.level == 0 and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{a.name}" for a in node.names if node.module == "services")
        elif isinstance(node, ast.Import):
            found.update(a.name for a in node.names)
    return found


def _ours(module: str) -> bool:
    return module.split(".")[0] in ("services", "router_api", *WORKERS)


@pytest.mark.parametrize("package", sorted(ALLOWED))
def test_each_package_imports_only_what_it_may(package):
    folder = ROOT.joinpath(*package.split("."))
    broken = []
    for path in sorted(folder.rglob("*.py")):
        for module in sorted(_imports(path)):
            target = _package_of(module)
            if _ours(module) and target != package and target not in ALLOWED[package]:
                broken.append(f"{path.relative_to(ROOT)} imports {module}")
    assert not broken, "\n".join(broken)


def test_the_gateway_never_imports_worker_code_or_celery():
    for path in sorted((ROOT / "router_api").rglob("*.py")):
        modules = _imports(path)
        assert not {m for m in modules if m.split(".")[0] in (*WORKERS, "celery")}, path
        assert "services.jobs.celery_app" not in modules, path


def test_transport_stays_at_the_edges():
    """Celery, Redis and HTTP servers live in jobs, clients, routing's server side and the workers only."""
    edge_only = {"celery": ("services/jobs/",), "redis": ("services/jobs/", "services/embedded/"),
                 "fastapi": ("services/routing/server.py",), "uvicorn": ("services/routing/server.py",)}
    for path in sorted((ROOT / "services").rglob("*.py")):
        rel = path.relative_to(ROOT).as_posix()
        for module in _imports(path):
            allowed = edge_only.get(module.split(".")[0])
            if allowed is not None:
                assert rel.startswith(allowed), f"{rel} imports {module}"
