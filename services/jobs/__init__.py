"""Service jobs: their state in Redis, their stages, the Celery app and what a worker process keeps loaded."""
