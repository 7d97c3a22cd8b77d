"""Celery worker for the ``scoring`` queue: quality, learnability and SCAS scores."""
