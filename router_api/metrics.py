"""Prometheus metrics of one gateway app, in a registry of its own (apps in one process do not clash).

Routing metrics are recorded as requests happen; job figures are read from Redis at scrape
time, so every gateway replica reports the same numbers without sharing counters.
"""

from __future__ import annotations

import logging

import redis
from prometheus_client import CollectorRegistry, Counter, Histogram
from prometheus_client.core import GaugeMetricFamily

from services.jobs.store import JOB_STATES, JobStore, NotFound

log = logging.getLogger(__name__)

#: How many of the most recent jobs the scrape-time figures cover.
RECENT_JOBS = 200


class JobCollector:
    """Jobs by state and failed task items, over the most recent jobs."""

    def __init__(self, store: JobStore, recent: int = RECENT_JOBS):
        self.store = store
        self.recent = recent

    def collect(self):
        by_state = dict.fromkeys(JOB_STATES, 0)
        failures = 0
        try:
            for job_id in self.store.list_jobs(self.recent):
                try:
                    by_state[self.store.state(job_id)] += 1
                except NotFound:  # deleted between the listing and the read
                    continue
                failures += sum(stage["failed"] for stage in self.store.stage_progress(job_id))
        except redis.RedisError as exc:  # a scrape must not fail because Redis does; /readyz reports it
            log.warning("job metrics skipped: %s", exc)
            return
        jobs = GaugeMetricFamily("persyn_jobs", f"Jobs by state among the {self.recent} most recent",
                                 labels=["state"])
        for state, count in by_state.items():
            jobs.add_metric([state], count)
        yield jobs
        yield GaugeMetricFamily("persyn_task_failures",
                                f"Failed task items summed over the stages of the {self.recent} most recent jobs",
                                value=failures)


class GatewayMetrics:
    def __init__(self, store: JobStore):
        self.registry = CollectorRegistry()
        self.route_latency = Histogram(
            "persyn_route_latency_seconds", "Time to route one /v1/route request (batching included)",
            buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0), registry=self.registry)
        self.batch_size = Histogram(
            "persyn_router_batch_size", "Prompts per forward pass of the router service",
            buckets=(1, 2, 4, 8, 16, 32, 64, 128, 256, 512), registry=self.registry)
        self.assignments = Counter(
            "persyn_route_assignments", "Prompts routed to each teacher", labelnames=["teacher"],
            registry=self.registry)
        self.version_requests = Counter(
            "persyn_route_requests", "/v1/route requests served by each router version of each student",
            labelnames=["student", "version"], registry=self.registry)
        self.version_prompts = Counter(
            "persyn_route_prompts", "Prompts routed by each router version of each student",
            labelnames=["student", "version"], registry=self.registry)
        self.registry.register(JobCollector(store))

    def observe_batch(self, size: int) -> None:
        """The router service's ``on_batch`` hook."""
        self.batch_size.observe(size)
