"""What the gateway tests share besides fixtures: the tiny router's data, an idle router client, real uvicorn."""

from __future__ import annotations

import socket
import threading
import time
from contextlib import contextmanager

import uvicorn

REDIS_URL = "redis://127.0.0.1:6379/0"
TEACHERS = ["mathy", "poet", "middle"]
MATHS = [f"What is {a} plus {b}? Show the sum." for a, b in zip(range(3, 23), range(40, 60))]
POEMS = [f"Write a short poem about the {w}." for w in
         ("sea", "moon", "forest", "rain", "winter", "city", "river", "mountain", "desert", "garden", "stars", "snow")]
QUERIES = ["What is 12 plus 30?", "Write a short poem about the lake.", "What is 7 plus 41? Show the sum.",
           "Write a short poem about autumn leaves."]


class IdleRouterClient:
    """For apps whose tests never route: nothing to load."""

    async def route(self, student_id, prompts, top_k=3):
        raise AssertionError("this app does not route")

    async def readiness(self):
        return "ok"

    async def aclose(self):
        pass


@contextmanager
def serve(app):
    """Real uvicorn on a loopback port, in a background thread."""
    sock = socket.socket()
    sock.bind(("127.0.0.1", 0))
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning"))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.time() + 30
    while not server.started:
        assert thread.is_alive() and time.time() < deadline, "uvicorn did not start"
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(15)
        sock.close()
