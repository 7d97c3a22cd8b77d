"""Celery worker for the ``generation`` queue: teachers answer prompts."""
