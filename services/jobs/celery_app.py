"""The Celery application: Redis broker, three queues, at-least-once delivery.

Tasks acknowledge late and are rejected (requeued) when their worker dies, but on Redis the
broker hands an unacknowledged message out again only after the visibility timeout (hours,
above the longest task, or Redis would give a running task to a second worker). What makes
recovery fast is ours: every item runs under a short lease and the watchdog each worker runs
(:mod:`services.jobs.watchdog`) requeues items whose lease lapsed. Every task is idempotent
(see :mod:`services.jobs.store`), so a redelivered copy changes nothing it already did.
"""

from __future__ import annotations

from celery import Celery
from celery.signals import worker_ready

from services.core.settings import Settings

QUEUES = ("generation", "scoring", "training")

app = Celery("persyn", include=["generation_worker.tasks", "scoring_worker.tasks", "training_worker.tasks",
                               "training_worker.distill"])


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
        # a task that loses the broker keeps running: it retries its Redis calls and its lease
        # covers it; cancelling it would only wait for the watchdog
        worker_cancel_long_running_tasks_on_connection_loss=False,
        worker_send_task_events=True,
        task_send_sent_event=True,
    )
    return app


configure(Settings.from_env())


@worker_ready.connect
def _start_watchdog(**_) -> None:
    """Every worker's main process runs the watchdog; a Redis lock keeps passes one at a time."""
    from services.jobs import watchdog

    watchdog.start(Settings.from_env())
