"""The PerSyn HTTP gateway: routing, students, teachers, jobs and datasets over REST.

Run it with ``uvicorn --factory router_api.app:create_app``.
"""
