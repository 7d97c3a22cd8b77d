"""Celery worker for the ``training`` queue: router training and routing of job prompts."""
