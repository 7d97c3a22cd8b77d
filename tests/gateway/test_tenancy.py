"""Two tenants and an admin against every route of the gateway (real Redis, a real router in process).

Tenant B owns a student with a router and a job with rows; tenant A tries every route on B's ids and
must get exactly what an unknown id gets, while B and the admin see everything of B's.
"""

from __future__ import annotations

import json

import pytest
from fastapi.testclient import TestClient

import services.jobs.stages
from gateway_support import QUERIES, REDIS_URL, TEACHERS
from router_api.app import create_app
from services.core.settings import ApiKey, Settings

A, B, ADMIN = ({"Authorization": f"Bearer {key}"} for key in ("key-a", "key-b", "key-ops"))
B_ENDPOINT = "http://127.0.0.1:9/v1"


@pytest.fixture(scope="module")
def settings(store, pool_file):
    return Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, device="cpu",
                    api_keys=(ApiKey("team-a", "key-a"), ApiKey("team-b", "key-b"),
                              ApiKey("ops", "key-ops", admin=True)))


@pytest.fixture(scope="module")
def client(settings, store):
    with TestClient(create_app(settings, store=store)) as client:
        yield client


@pytest.fixture(scope="module")
def b_student(client, store, router_dir):
    """B's student, registered through the API, with two router versions (v2 active)."""
    reply = client.post("/v1/students", headers=B, json={"student_id": "b-stu", "endpoint": B_ENDPOINT})
    assert reply.status_code == 201, reply.text
    store.add_router_version("b-stu", "v1", str(router_dir), {"hit@1": 1.0})
    store.add_router_version("b-stu", "v2", str(router_dir), {"hit@1": 1.0})
    return "b-stu"


@pytest.fixture(scope="module")
def b_job(client, store, b_student, pool_file):
    """B's job, submitted through the API (no worker runs it), with one dataset row."""
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(services.jobs.stages, "enqueue_many", lambda messages: None)
        reply = client.post("/v1/jobs", headers=B, json={
            "kind": "synthesize", "student_id": b_student, "strategy": "random",
            "prompts": [{"id": "q1", "prompt": "What is 1 plus 2?"}]})
    assert reply.status_code == 202, reply.text
    job_id = reply.json()["id"]
    store.put_row(job_id, {"id": "q1", "prompt": "What is 1 plus 2?", "response": "3", "teacher": "mathy"})
    return job_id


def _same_as_unknown(reply, unknown, real_id: str, fake_id: str) -> None:
    """Another tenant's id must be indistinguishable from an id that does not exist."""
    assert reply.status_code == unknown.status_code == 404, reply.text
    assert reply.json() == json.loads(unknown.text.replace(fake_id, real_id))


def test_another_tenants_student_is_unknown_on_every_student_route(client, store, b_student):
    unknown = client.get("/v1/students/nobody-here", headers=A)
    _same_as_unknown(client.get(f"/v1/students/{b_student}", headers=A), unknown, b_student, "nobody-here")
    unknown = client.post("/v1/students/nobody-here/activate", headers=A, json={"version": "v1"})
    _same_as_unknown(client.post(f"/v1/students/{b_student}/activate", headers=A, json={"version": "v1"}),
                     unknown, b_student, "nobody-here")
    taken = client.post("/v1/students", headers=A, json={"student_id": b_student, "endpoint": "http://127.0.0.1:1/v1"})
    assert taken.status_code == 409 and "taken" in taken.json()["detail"]
    assert set(taken.json()) == {"detail"} and B_ENDPOINT not in taken.text

    mine = client.get(f"/v1/students/{b_student}", headers=B).json()
    assert mine["endpoint"] == B_ENDPOINT and mine["active_version"] == "v2"  # nothing A sent changed it
    assert all("path" not in v for v in mine["versions"])
    assert str(store.active_router(b_student)[1]) not in json.dumps(mine)  # no server paths
    rolled = client.post(f"/v1/students/{b_student}/activate", headers=B, json={"version": "v1"})
    assert rolled.status_code == 200 and rolled.json()["active_version"] == "v1"
    client.post(f"/v1/students/{b_student}/activate", headers=B, json={"version": "v2"})


def test_another_tenants_student_cannot_be_routed_with_or_calibrated(client, b_student, enqueued):
    body = {"student_id": b_student, "prompts": QUERIES[:2]}
    unknown = client.post("/v1/route", headers=A, json={**body, "student_id": "nobody-here"})
    _same_as_unknown(client.post("/v1/route", headers=A, json=body), unknown, b_student, "nobody-here")
    routed = client.post("/v1/route", headers=B, json=body)
    assert routed.status_code == 200 and routed.json()["router_version"] == "v2"
    assert [r["teacher"] for r in routed.json()["results"]] == ["mathy", "poet"]

    calibrate = {"kind": "calibrate", "student_id": b_student, "calibration_size": 2,
                 "prompts": [{"prompt": "What is 1 plus 1?", "reference": 2}, {"prompt": "2+2?", "reference": 4}]}
    unknown = client.post("/v1/jobs", headers=A, json={**calibrate, "student_id": "nobody-here"})
    _same_as_unknown(client.post("/v1/jobs", headers=A, json=calibrate), unknown, b_student, "nobody-here")
    spec = json.dumps({k: v for k, v in calibrate.items() if k != "prompts"})
    upload = client.post("/v1/jobs/upload", headers=A, data={"spec": spec},
                         files={"file": ("p.jsonl", b'{"prompt": "What is 1 plus 1?", "reference": 2}\n')})
    assert upload.status_code == 404 and upload.json() == {"detail": f"unknown student {b_student!r}"}
    assert not enqueued


def test_another_tenants_job_is_unknown_on_every_job_route(client, store, b_job):
    fake = "0123456789abcdef"
    for method, suffix in (("GET", ""), ("DELETE", ""), ("GET", "/dataset")):
        unknown = client.request(method, f"/v1/jobs/{fake}{suffix}", headers=A)
        _same_as_unknown(client.request(method, f"/v1/jobs/{b_job}{suffix}", headers=A), unknown, b_job, fake)
    assert store.state(b_job) != "cancelled"  # A's DELETE did nothing
    assert client.get(f"/v1/jobs/{b_job}", headers=B).json()["id"] == b_job
    assert [json.loads(line)["id"] for line in client.get(f"/v1/jobs/{b_job}/dataset", headers=B).text.splitlines()] \
        == ["q1"]


def test_the_admin_sees_every_tenant_and_keeps_owners(client, store, b_student, b_job):
    assert client.get(f"/v1/students/{b_student}", headers=ADMIN).status_code == 200
    assert client.get(f"/v1/jobs/{b_job}", headers=ADMIN).status_code == 200
    assert client.get(f"/v1/jobs/{b_job}/dataset", headers=ADMIN).text.count("\n") == 1
    assert client.post("/v1/route", headers=ADMIN, json={"student_id": b_student, "prompts": ["hi"]}).status_code == 200
    assert client.post(f"/v1/students/{b_student}/activate", headers=ADMIN, json={"version": "v2"}).status_code == 200
    updated = client.post("/v1/students", headers=ADMIN, json={"student_id": b_student, "family": "llama"})
    assert updated.status_code == 201 and updated.json()["family"] == "llama"
    assert store.owner("student", b_student) == "team-b"  # an admin's update does not take it over
    assert client.get(f"/v1/students/{b_student}", headers=B).json()["family"] == "llama"


def test_records_without_a_tenant_are_admin_only(client, store):
    """Made before tenancy, or by the library (the default tenant): not any key's tenant."""
    store.register_student("legacy-stu", "smollm2-135m-instruct")
    job_id = store.create_job("synthesize", {"student_id": "legacy-stu"}, [{"id": "x", "prompt": "y"}])
    assert store.owner("job", job_id) == "default"  # the library's tenant, no key's
    for path in ("/v1/students/legacy-stu", f"/v1/jobs/{job_id}"):
        assert client.get(path, headers=A).status_code == 404, path
        assert client.get(path, headers=ADMIN).status_code == 200, path
    assert client.post("/v1/students", headers=A, json={"student_id": "legacy-stu"}).status_code == 409


def test_each_tenant_registers_its_own_students_and_ids_stay_global(client):
    assert client.post("/v1/students", headers=A, json={"student_id": "a-stu"}).status_code == 201
    again = client.post("/v1/students", headers=A, json={"student_id": "a-stu", "family": "qwen"})
    assert again.status_code == 201 and again.json()["family"] == "qwen"  # the owner updates its own
    assert client.post("/v1/students", headers=B, json={"student_id": "a-stu"}).status_code == 409
    assert client.get("/v1/students/a-stu", headers=B).status_code == 404


def test_teachers_are_shared_and_metrics_are_admin_only(client, b_job):
    for headers in (A, B, ADMIN):
        reply = client.get("/v1/teachers", headers=headers)
        assert reply.status_code == 200 and [t["name"] for t in reply.json()] == TEACHERS
    for headers in (A, B):
        forbidden = client.get("/metrics", headers=headers)
        assert forbidden.status_code == 403 and forbidden.json() == {"detail": "an admin API key is needed"}
    scrape = client.get("/metrics", headers=ADMIN)
    assert scrape.status_code == 200 and "persyn_jobs" in scrape.text


def test_without_keys_there_is_one_tenant_that_sees_everything(store, pool_file, b_student):
    open_app = create_app(Settings(redis_url=REDIS_URL, key_prefix=store.p, teacher_pool=pool_file, device="cpu"),
                          store=store)
    with TestClient(open_app) as client:
        assert client.get(f"/v1/students/{b_student}").status_code == 200
        assert client.post("/v1/students", json={"student_id": "open-stu"}).status_code == 201
        assert client.get("/metrics").status_code == 200
    assert store.owner("student", "open-stu") == "default"
