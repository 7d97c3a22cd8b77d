"""A redis-server of the tests' own: restart it, stop it or flush it without disturbing anyone."""

from __future__ import annotations

import subprocess
import time

import redis

from services.embedded.stack import free_port


class PrivateRedis:
    """A redis-server of our own on a free port, AOF on, so a restart loses nothing and disturbs no one."""

    def __init__(self, directory):
        self.port = free_port()
        self.dir = directory
        self.url = f"redis://127.0.0.1:{self.port}/0"
        self.proc = None

    def start(self) -> None:
        self.proc = subprocess.Popen(["redis-server", "--port", str(self.port), "--bind", "127.0.0.1",
                                      "--dir", str(self.dir), "--appendonly", "yes", "--save", ""],
                                     stdout=subprocess.DEVNULL)
        client = redis.Redis.from_url(self.url)
        deadline = time.time() + 10
        while time.time() < deadline:
            try:
                client.ping()
                return
            except redis.ConnectionError:
                time.sleep(0.05)
        raise RuntimeError("private redis-server did not start")

    def stop(self) -> None:
        """SHUTDOWN: Redis flushes its AOF and exits, as a restarted pod's Redis would."""
        try:
            redis.Redis.from_url(self.url).shutdown()
        except redis.ConnectionError:
            pass
        self.proc.wait(10)
