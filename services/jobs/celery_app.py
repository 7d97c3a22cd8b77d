"""The Celery application: Redis broker, three queues, at-least-once delivery.

Tasks acknowledge late and are rejected (requeued) when their worker dies, so a
killed worker loses nothing; every task is idempotent (see :mod:`services.jobs.store`),
so the redelivered copy changes nothing it already did. The visibility timeout is
above the longest task, or Redis would hand a running task to a second worker.
"""

from __future__ import annotations

from celery import Celery

from services.core.settings import Settings

QUEUES = ("generation", "scoring", "training")

app = Celery("persyn", include=["generation_worker.tasks", "scoring_worker.tasks", "training_worker.tasks"])


def configure(settings: Settings) -> Celery:
    """Point the app at ``settings``' Redis; queue keys carry the key prefix, so stacks sharing
    one Redis server (tests, staging) never see each other's tasks."""
    app.conf.update(
        broker_url=settings.redis_url,
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_default_queue="generation",
        task_routes={f"persyn.{q}.*": {"queue": q} for q in QUEUES},
        broker_transport_options={"visibility_timeout": settings.visibility_timeout_s,
                                  "global_keyprefix": f"{settings.key_prefix}:celery:"},
        broker_connection_retry_on_startup=True,
        worker_hijack_root_logger=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


configure(Settings.from_env())
