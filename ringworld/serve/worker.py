"""The one thread that runs the model for a server: it owns a ``Batcher`` and steps it while any
request is running, so requests from many clients share every forward.

Handlers (asyncio) call ``Worker.tokens(request)``: an async iterator of the request's tokens, fed
from the worker thread through the event loop. A full queue refuses the request (``Busy``); a
handler that stops iterating (its client went away) cancels it, which frees its rows at once.
"""

from __future__ import annotations

import asyncio
import itertools
import queue
import threading
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

import numpy as np

from ringworld.infer.batcher import Batcher, Request
from ringworld.infer.sampling import GREEDY, Sampling
from ringworld.infer.tasks import WorldModel


class Busy(Exception):
    """The server holds as many requests as it may; the client should retry later (HTTP 429)."""


@dataclass
class _Ticket:
    request: Request
    deliver: Callable[[int | None, bool], None]  # (token, finished); token None: failed
    rid: int | None = None  # the batcher's id, once admitted


class Worker:
    """Steps ``batcher`` in a thread of its own; at most ``max_requests`` waiting or running."""

    def __init__(self, batcher: Batcher, *, max_requests: int = 64) -> None:
        self.batcher, self.max_requests = batcher, max_requests
        self.inbox: queue.Queue[tuple[str, _Ticket]] = queue.Queue()
        self.held = 0  # requests submitted and not yet finished or cancelled (any thread reads it)
        self.lock = threading.Lock()
        self.tickets = itertools.count()
        self.thread = threading.Thread(target=self._loop, name="ringworld-model", daemon=True)
        self.stopping = threading.Event()
        self.thread.start()

    def close(self) -> None:
        self.stopping.set()
        self.inbox.put(("stop", None))  # type: ignore[arg-type]
        self.thread.join(timeout=10)

    def run(self, requests: list[Request], timeout: float) -> list[np.ndarray]:
        """Every request's tokens, decoded with everything else in flight; blocks, so call it from
        a thread of its own (``asyncio.to_thread``), never from the event loop."""
        for request in requests:
            self.batcher.check(request)
        self._hold(len(requests))
        made: list[list[int]] = [[] for _ in requests]
        left, done, failed = [len(requests)], threading.Event(), []

        def deliver(i: int, token: int | None, finished: bool) -> None:  # on the model's thread
            if token is None:
                failed.append(i)
            else:
                made[i].append(token)
            left[0] -= finished
            if not left[0]:
                done.set()

        tickets = [_Ticket(r, lambda t, f, i=i: deliver(i, t, f)) for i, r in enumerate(requests)]
        for ticket in tickets:
            self.inbox.put(("submit", ticket))
        if not done.wait(timeout):
            for ticket in tickets:
                self.inbox.put(("cancel", ticket))
            raise TimeoutError(f"the request took more than {timeout:g} s")
        if failed:
            raise RuntimeError("the model failed on this request; see the server's log")
        return [np.array(tokens, dtype=np.int64) for tokens in made]

    def _hold(self, n: int) -> None:
        with self.lock:
            if self.held + n > self.max_requests:
                raise Busy(f"{self.held} requests are in flight, the most this server takes; retry later")
            self.held += n

    async def tokens(self, request: Request) -> AsyncIterator[int]:
        """The request's tokens as they are made. Raises ``Busy`` when the server is full and
        ``ValueError`` for a request the batcher refuses (what is wrong, for a 400)."""
        self.batcher.check(request)
        self._hold(1)
        loop = asyncio.get_running_loop()
        made: asyncio.Queue[tuple[int | None, bool]] = asyncio.Queue()
        ticket = _Ticket(request, lambda token, done: loop.call_soon_threadsafe(made.put_nowait, (token, done)))
        self.inbox.put(("submit", ticket))
        finished = False
        try:
            while not finished:
                token, finished = await made.get()
                if token is None:
                    raise RuntimeError("the model failed on this request; see the server's log")
                yield token
        finally:
            if not finished:
                self.inbox.put(("cancel", ticket))

    # the model's thread ------------------------------------------------------------------------
    def _loop(self) -> None:
        by_rid: dict[int, _Ticket] = {}
        while not self.stopping.is_set():
            try:  # wait for work when idle; only look when busy
                kind, ticket = self.inbox.get(timeout=None if not self.batcher.busy else 0)
            except queue.Empty:
                kind = None
            while kind is not None:
                if kind == "stop":
                    return
                if kind == "submit":
                    ticket.rid = self.batcher.submit(ticket.request)
                    by_rid[ticket.rid] = ticket
                elif kind == "cancel" and by_rid.get(ticket.rid) is ticket:
                    self.batcher.cancel(ticket.rid)
                    del by_rid[ticket.rid]
                    self._release()
                try:
                    kind, ticket = self.inbox.get_nowait()
                except queue.Empty:
                    kind = None
            if not self.batcher.busy:
                continue
            try:
                events = self.batcher.step()
            except Exception:  # a bug, not bad input: fail what is running, keep serving
                traceback.print_exc()
                for rid, t in by_rid.items():
                    t.deliver(None, True)
                    self.batcher.cancel(rid)
                    self._release()
                by_rid.clear()
                continue
            for event in events:
                by_rid[event.request].deliver(event.token, event.finished)
                if event.finished:
                    del by_rid[event.request]
                    self._release()

    def _release(self) -> None:
        with self.lock:
            self.held -= 1


@dataclass
class ServedWorldModel(WorldModel):
    """A world model whose tasks (``ringworld.infer.tasks``) run through a server's shared batch."""

    worker: Worker | None = None
    timeout: float = 120.0

    def generate(
        self,
        prompts,
        *,
        max_new_tokens: int,
        sampling: Sampling = GREEDY,
        stop=None,
        guidance: float = 1.0,
        uncond_prompts=None,
        constrained: bool = True,
        video_frames: int = 0,
        video_actions=None,
    ) -> list[np.ndarray]:
        requests = [
            Request(
                [int(x) for x in prompt],
                max_new_tokens,
                sampling,
                None if stop is None else tuple(stop),
                guidance,
                None if uncond_prompts is None else [int(x) for x in uncond_prompts[i]],
                constrained,
                video_frames,
                () if video_actions is None else tuple(video_actions[i]),
            )
            for i, prompt in enumerate(prompts)
        ]
        return self.worker.run(requests, self.timeout)


def served(wm: WorldModel, worker: Worker, timeout: float) -> ServedWorldModel:
    return ServedWorldModel(wm.engine, wm.world, wm.checkpoint, wm.video_frames, worker=worker, timeout=timeout)
