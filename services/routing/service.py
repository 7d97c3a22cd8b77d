"""The router service core: per-student routers, hot-reloaded, with dynamic micro-batching.

Used in-process by the gateway (``router_api``) and by the standalone router server
(``services.routing.server``).

- **Versions.** ``resolve_active(student_id)`` is asked on every request (in production
  ``JobStore.active_router``: a Redis lookup). A version that is not loaded yet is loaded
  (``Router.load``) in a worker thread, once however many requests ask for it at the same
  time, and kept in an LRU of at most ``cache_size`` routers keyed by (student, version).
  Activating a new version is thus picked up by the next request, without a restart. A request
  may name a version instead (``resolve_version(student_id, version)``): two versions of one
  student then serve side by side (A/B), each with its own entry, batches and LRU slot.
- **Micro-batching.** Requests for the same (student, version) that arrive together share
  one forward pass: each key has an asyncio queue and a collector task that takes the first
  pending request, then more until ``max_batch_size`` prompts are gathered or ``max_wait_ms``
  has passed since the first one arrived. While a forward pass runs, new requests queue up
  and form the next batch, so batches grow with the load. A request larger than
  ``max_batch_size`` runs alone. A forward pass that fails is run again request by request, so
  the error reaches only the request that caused it.
- **One forward at a time.** Every forward pass runs in one dedicated single-thread
  executor (the CPU or GPU is the bottleneck; the event loop only moves requests).
  Inside a pass the encoder cuts the prompts into chunks of similar token length
  (``PromptEncoder.encode``): prompts of very different lengths padded together cost far
  more than their real tokens.
- ``batching=False``: every request gets its own forward pass on the same executor (the
  benchmark's baseline).
"""

from __future__ import annotations

import asyncio
import inspect
import time
from collections import OrderedDict
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from typing import Awaitable, Callable

import numpy as np

from services.routing.model import Router, RouteResult

ResolveActive = Callable[[str], "tuple[str, str] | None | Awaitable[tuple[str, str] | None]"]
ResolveVersion = Callable[[str, str], "tuple[str, str] | None | Awaitable[tuple[str, str] | None]"]


class NoActiveRouter(LookupError):
    """The student has no active router version (unknown student or none trained yet)."""


class UnknownRouterVersion(LookupError):
    """The student has no router version of the name a request gave."""


class RouterServiceError(RuntimeError):
    """The router service could not answer (load failure, closed service, remote error)."""


class RouterUnavailable(RouterServiceError):
    """The active router version could not be loaded (missing or broken artifact)."""


@dataclass(frozen=True)
class RoutedBatch:
    version: str
    results: list[RouteResult]


@dataclass
class _Request:
    prompts: list[str]
    future: asyncio.Future
    arrived: float


@dataclass
class _Entry:
    router: Router
    queue: asyncio.Queue = field(default_factory=asyncio.Queue)
    collector: asyncio.Task | None = None


_STOP = object()


class RouterService:
    """Per-(student, version) routers behind an async ``route`` call; see the module docstring."""

    def __init__(self, resolve_active: ResolveActive, *, resolve_version: ResolveVersion | None = None,
                 cache_size: int = 8, max_batch_size: int = 64, max_wait_ms: float = 2.0, batching: bool = True,
                 device: str | None = None, precision: str = "fp32", on_batch: Callable[[int], None] | None = None):
        if cache_size < 1:
            raise ValueError("cache_size must be >= 1")
        if max_batch_size < 1:
            raise ValueError("max_batch_size must be >= 1")
        self._resolve_active = resolve_active
        self._resolve_version = resolve_version
        self.cache_size = cache_size
        self.max_batch_size = max_batch_size
        self.max_wait_s = max(0.0, float(max_wait_ms)) / 1000.0
        self.batching = batching
        self.device = device
        self.precision = precision  # of the routers' encoders (services.core.precision)
        self._on_batch = on_batch
        self._entries: OrderedDict[tuple[str, str], _Entry] = OrderedDict()
        self._loading: dict[tuple[str, str], asyncio.Task] = {}
        self._executor = ThreadPoolExecutor(max_workers=1, thread_name_prefix="router-forward")
        self._closed = False
        self.forward_passes = 0  # forward passes run so far (one per batch)

    # ------------------------------------------------------------------ public API

    async def route(self, student_id: str, prompts: list[str], top_k: int = 3,
                    version: str | None = None) -> RoutedBatch:
        """Each prompt's teacher, top k and strengths under the student's active router, or under
        its router ``version`` when one is named."""
        if self._closed:
            raise RouterServiceError("router service is closed")
        prompts = list(prompts)
        if version is None:
            target = self._resolve_active(student_id)
        elif self._resolve_version is None:
            raise RouterServiceError("this router service routes with active versions only")
        else:
            target = self._resolve_version(student_id, version)
        if inspect.isawaitable(target):
            target = await target
        if target is None:
            if version is not None:
                raise UnknownRouterVersion(f"student {student_id!r} has no router version {version!r}")
            raise NoActiveRouter(f"student {student_id!r} has no active router")
        version, path = target
        version = str(version)
        if not prompts:
            return RoutedBatch(version, [])
        entry = await self._entry((student_id, version), str(path))
        if self.batching:
            future = asyncio.get_running_loop().create_future()
            entry.queue.put_nowait(_Request(prompts, future, time.monotonic()))
            strengths = await future
        else:
            strengths = await self._forward(entry.router, prompts)
        return RoutedBatch(version, entry.router.results(strengths, top_k))

    async def aclose(self) -> None:
        """Stop the collectors, fail requests still queued, release the executor."""
        if self._closed:
            return
        self._closed = True
        for task in self._loading.values():
            task.cancel()
        entries = list(self._entries.values())
        self._entries.clear()
        for entry in entries:
            if entry.collector is not None:
                entry.collector.cancel()
        for entry in entries:
            if entry.collector is not None:
                try:
                    await entry.collector
                except (asyncio.CancelledError, Exception):
                    pass
            self._fail_queued(entry, RouterServiceError("router service is closed"))
        self._executor.shutdown(wait=False, cancel_futures=True)

    def loaded(self) -> list[tuple[str, str]]:
        """(student, version) of the loaded routers, least recently used first."""
        return list(self._entries)

    # ------------------------------------------------------------------ loading and LRU

    async def _entry(self, key: tuple[str, str], path: str) -> _Entry:
        entry = self._entries.get(key)
        if entry is not None:
            self._entries.move_to_end(key)
            return entry
        task = self._loading.get(key)
        if task is None:
            task = asyncio.get_running_loop().create_task(self._load(key, path))
            self._loading[key] = task
        # shield: a caller that gives up must not cancel the load the others wait on
        return await asyncio.shield(task)

    async def _load(self, key: tuple[str, str], path: str) -> _Entry:
        try:
            try:
                router = await asyncio.to_thread(Router.load, path, device=self.device,
                                                precision=self.precision)
            except Exception as exc:  # missing or broken artifact: tell the caller, retry next time
                raise RouterUnavailable(
                    f"cannot load router {key[1]!r} of student {key[0]!r} from {path}: {exc}") from exc
            if self._closed:
                raise RouterServiceError("router service is closed")
            entry = _Entry(router)
            if self.batching:
                entry.collector = asyncio.get_running_loop().create_task(
                    self._collect(entry), name=f"router-collector-{key[0]}-{key[1]}")
            self._entries[key] = entry
            self._entries.move_to_end(key)
            while len(self._entries) > self.cache_size:
                _, old = self._entries.popitem(last=False)
                if old.collector is not None:
                    old.queue.put_nowait(_STOP)  # serves what is queued, then exits
            return entry
        finally:
            self._loading.pop(key, None)

    # ------------------------------------------------------------------ forward passes

    async def _forward(self, router: Router, prompts: list[str]) -> np.ndarray:
        loop = asyncio.get_running_loop()
        strengths = await loop.run_in_executor(self._executor, router.strengths, prompts)
        self.forward_passes += 1
        if self._on_batch is not None:
            try:
                self._on_batch(len(prompts))
            except Exception:  # a metrics hook must never fail a request
                pass
        return strengths

    async def _collect(self, entry: _Entry) -> None:
        """Collector of one (student, version): gather a batch, one forward, split the rows."""
        queue = entry.queue
        carry: _Request | None = None
        stopping = False
        while True:
            if carry is not None:
                first, carry = carry, None
            else:
                if stopping and queue.empty():
                    return
                item = await queue.get()
                if item is _STOP:
                    stopping = True
                    continue
                first = item
            if first.future.done():  # the caller went away
                continue
            batch = [first]
            size = len(first.prompts)
            deadline = first.arrived + self.max_wait_s
            while size < self.max_batch_size:
                try:
                    item = queue.get_nowait()
                except asyncio.QueueEmpty:
                    timeout = deadline - time.monotonic()
                    if timeout <= 0 or stopping:
                        break
                    try:
                        item = await asyncio.wait_for(queue.get(), timeout)
                    except asyncio.TimeoutError:
                        break
                if item is _STOP:
                    stopping = True
                    continue
                if item.future.done():
                    continue
                if size + len(item.prompts) > self.max_batch_size:
                    carry = item  # starts the next batch (alone if it is too big on its own)
                    break
                batch.append(item)
                size += len(item.prompts)
            await self._run_batch(entry.router, batch)

    async def _run_batch(self, router: Router, batch: list[_Request]) -> None:
        prompts = [p for request in batch for p in request.prompts]
        try:
            strengths = await self._forward(router, prompts)
        except asyncio.CancelledError:
            for request in batch:
                if not request.future.done():
                    request.future.set_exception(RouterServiceError("router service is closed"))
            raise
        except Exception as exc:
            if len(batch) > 1:  # one bad request (a prompt the tokenizer refuses) must not fail the others
                for request in batch:
                    if not request.future.done():
                        await self._run_batch(router, [request])
                return
            if not batch[0].future.done():
                batch[0].future.set_exception(exc)
            return
        start = 0
        for request in batch:
            end = start + len(request.prompts)
            if not request.future.done():
                request.future.set_result(strengths[start:end])
            start = end

    @staticmethod
    def _fail_queued(entry: _Entry, exc: Exception) -> None:
        while True:
            try:
                item = entry.queue.get_nowait()
            except asyncio.QueueEmpty:
                return
            if item is not _STOP and not item.future.done():
                item.future.set_exception(exc)
