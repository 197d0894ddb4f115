"""The model's side of a server: one loop owns a ``Batcher`` and steps it while any request is
running, so requests from many clients share every forward.

The loop runs in a process of its own (``ProcessWorker``, what ``ringworld serve`` uses), which
loads the checkpoint itself: the server's HTTP, JSON and image work then never holds the GIL the
model's loop needs between its kernels. Or it runs in a thread of this process (``ThreadWorker``:
tests, and a model embedded in a program of one's own).

Handlers (asyncio) call ``worker.tokens(request)``: an async iterator of the request's tokens, fed
from the loop through the event loop. A full worker refuses the request (``Busy``); a handler that
stops iterating (its client went away) cancels it, which frees its rows at the loop's next step.
"""

from __future__ import annotations

import asyncio
import itertools
import multiprocessing
import queue
import signal
import threading
import time
import traceback
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import torch

from ringworld.infer.batcher import Batcher, Request, check_request
from ringworld.infer.engine import Engine
from ringworld.infer.sampling import GREEDY, Sampling
from ringworld.infer.tasks import WorldModel
from ringworld.serve.fronts import load_front

Command = tuple[str, int, Request | None]  # ("submit" | "cancel" | "stop", ticket, the request to submit)
Delivery = tuple[int, int | None, bool]  # (ticket, token or None: the model failed, finished)


class Busy(Exception):
    """The server holds as many requests as it may; the client should retry later (HTTP 429)."""


class ModelDown(RuntimeError):
    """The model's process has stopped; nothing more can be served (HTTP 503)."""


def step_loop(batcher: Batcher, receive: Callable[[bool], Command | None], deliver: Callable[[list], None]) -> None:
    """Step ``batcher`` while any request runs, until told to stop. ``receive(wait)`` is the next
    command (waiting for one when ``wait``, else None when there is none); ``deliver`` takes each
    step's ``Delivery``s."""
    rid_of: dict[int, int] = {}  # ticket -> the batcher's id
    ticket_of: dict[int, int] = {}  # the batcher's id -> ticket
    while True:
        command = receive(not batcher.busy)  # wait for work when idle; only look when busy
        while command is not None:
            kind, ticket, request = command
            if kind == "stop":
                return
            if kind == "submit":
                try:
                    rid_of[ticket] = batcher.submit(request)
                    ticket_of[rid_of[ticket]] = ticket
                except ValueError:  # checked before it was sent: a bug, not bad input
                    traceback.print_exc()
                    deliver([(ticket, None, True)])
            elif kind == "cancel" and ticket in rid_of:
                batcher.cancel(rid_of[ticket])
                del ticket_of[rid_of.pop(ticket)]
            command = receive(False)
        if not batcher.busy:
            continue
        try:
            events = batcher.step()
        except Exception:  # a bug, not bad input: fail what is running, keep serving
            traceback.print_exc()
            deliver([(ticket, None, True) for ticket in rid_of])
            for rid in ticket_of:
                batcher.cancel(rid)
            rid_of.clear()
            ticket_of.clear()
            continue
        delivered = [(ticket_of[e.request], e.token, e.finished) for e in events]
        for e in events:
            if e.finished:
                del rid_of[ticket_of.pop(e.request)]
        deliver(delivered)


class Worker:
    """The server's side of the loop: at most ``max_requests`` requests held (waiting or running),
    each a ticket whose tokens come back through ``_deliver``. Subclasses say where the loop runs."""

    def __init__(self, *, max_requests: int) -> None:
        self.max_requests = max_requests
        self.live: dict[int, Callable[[int | None, bool], None]] = {}  # ticket -> (token, finished) callback
        self.lock = threading.Lock()
        self.tickets = itertools.count()
        self.down: str | None = None  # why the loop stopped, if it did

    @property
    def held(self) -> int:
        """Requests submitted and not yet finished or cancelled."""
        return len(self.live)

    def check(self, request: Request) -> None:
        """Raise a ValueError saying what is wrong with ``request``, if anything (for a 400)."""
        raise NotImplementedError

    def close(self) -> None:
        raise NotImplementedError

    def _send(self, command: Command) -> None:
        raise NotImplementedError

    def run(self, requests: list[Request], timeout: float) -> list[np.ndarray]:
        """Every request's tokens, decoded with everything else in flight; blocks, so call it from
        a thread of its own (``asyncio.to_thread``), never from the event loop."""
        for request in requests:
            self.check(request)
        made: list[list[int]] = [[] for _ in requests]
        left, done, failed = [len(requests)], threading.Event(), []

        def deliver(i: int, token: int | None, finished: bool) -> None:  # on the loop's side
            if token is None:
                failed.append(i)
            else:
                made[i].append(token)
            left[0] -= finished
            if not left[0]:
                done.set()

        tickets = self._submit(requests, [lambda t, f, i=i: deliver(i, t, f) for i in range(len(requests))])
        if not done.wait(timeout):
            for ticket in tickets:
                self._cancel(ticket)
            raise TimeoutError(f"the request took more than {timeout:g} s")
        if failed:
            self._raise_failed()
        return [np.array(tokens, dtype=np.int64) for tokens in made]

    async def tokens(self, request: Request) -> AsyncIterator[int]:
        """The request's tokens as they are made. Raises ``Busy`` when the server is full and
        ``ValueError`` for a request the batcher refuses (what is wrong, for a 400)."""
        self.check(request)
        loop = asyncio.get_running_loop()
        made: asyncio.Queue[tuple[int | None, bool]] = asyncio.Queue()
        (ticket,) = self._submit([request], [lambda t, f: loop.call_soon_threadsafe(made.put_nowait, (t, f))])
        finished = False
        try:
            while not finished:
                token, finished = await made.get()
                if token is None:
                    self._raise_failed()
                yield token
        finally:
            if not finished:
                self._cancel(ticket)

    def _submit(self, requests: list[Request], callbacks: list[Callable]) -> list[int]:
        with self.lock:
            if self.down is not None:
                raise ModelDown(self.down)
            if len(self.live) + len(requests) > self.max_requests:
                raise Busy(f"{len(self.live)} requests are in flight, the most this server takes; retry later")
            tickets = [next(self.tickets) for _ in requests]
            self.live.update(zip(tickets, callbacks, strict=True))
        for ticket, request in zip(tickets, requests, strict=True):
            self._send(("submit", ticket, request))
        return tickets

    def _cancel(self, ticket: int) -> None:
        with self.lock:
            if self.live.pop(ticket, None) is None:  # finished meanwhile
                return
        self._send(("cancel", ticket, None))

    def _deliver(self, deliveries: list[Delivery]) -> None:
        """Each token to its request (on the loop's thread, or the thread reading its process)."""
        for ticket, token, finished in deliveries:
            with self.lock:
                callback = self.live.get(ticket)
                if callback is None:  # cancelled: its last tokens were on their way
                    continue
                if finished:
                    del self.live[ticket]
            callback(token, finished)

    def _raise_failed(self) -> None:
        if self.down is not None:
            raise ModelDown(self.down)
        raise RuntimeError("the model failed on this request; see the server's log")


class ThreadWorker(Worker):
    """The loop in a thread of this process, stepping ``batcher``."""

    def __init__(self, batcher: Batcher, *, max_requests: int = 64) -> None:
        super().__init__(max_requests=max_requests)
        self.batcher = batcher
        self.inbox: queue.Queue[Command] = queue.Queue()
        self.thread = threading.Thread(
            target=step_loop, args=(batcher, self._receive, self._deliver), name="ringworld-model", daemon=True
        )
        self.thread.start()

    def check(self, request: Request) -> None:
        self.batcher.check(request)

    def close(self) -> None:
        self.inbox.put(("stop", -1, None))
        self.thread.join(timeout=10)

    def _send(self, command: Command) -> None:
        self.inbox.put(command)

    def _receive(self, wait: bool) -> Command | None:
        try:
            return self.inbox.get(block=wait)
        except queue.Empty:
            return None


class ProcessWorker(Worker):
    """The loop in a process of its own, which loads ``checkpoint`` on ``device`` and builds a
    ``Batcher`` of ``rows`` rows there (compiled, and warmed up, when ``compile``); this process
    keeps ``engine`` (the same checkpoint's) to check requests. Starting blocks until the model is
    ready, 20-40 s with ``compile`` on a 2-core CPU."""

    def __init__(
        self,
        checkpoint: str | Path,
        engine: Engine,
        *,
        device: str | None = None,
        rows: int = 32,
        compile: bool = True,
        max_requests: int = 64,
    ) -> None:
        super().__init__(max_requests=max_requests)
        self.engine, self.rows, self.length = engine, rows, engine.model.cfg.max_seq_len
        spawn = multiprocessing.get_context("spawn")  # a fork would inherit this process's threads
        self.conn, theirs = spawn.Pipe()
        self.process = spawn.Process(
            target=_model_process, args=(theirs, str(checkpoint), device, rows, compile), name="ringworld-model"
        )
        self.process.daemon = True  # it goes when this process does
        self.process.start()
        theirs.close()
        try:
            said, self.start_s = self.conn.recv()  # "ready" and the seconds it took, or what went wrong
        except EOFError:
            self.process.join(5)
            said, self.start_s = f"it exited with code {self.process.exitcode}", None
        if said != "ready":
            self.process.kill()
            raise ChildProcessError(f"the model's process did not start: {said}")
        self.sending = threading.Lock()  # one pickled command at a time on the pipe
        self.closing = False
        self.reader = threading.Thread(target=self._read, name="ringworld-model-reader", daemon=True)
        self.reader.start()

    def check(self, request: Request) -> None:
        check_request(self.engine, request, length=self.length, rows=self.rows)

    def close(self) -> None:
        self.closing = True
        try:
            self._send(("stop", -1, None))
        except (OSError, ModelDown):
            pass  # already gone
        self.process.join(timeout=10)
        if self.process.is_alive():
            self.process.kill()
        self.reader.join(timeout=10)

    def _send(self, command: Command) -> None:
        try:
            with self.sending:
                self.conn.send(command)
        except OSError as e:
            raise ModelDown(self.down or f"the model's process is gone ({e})") from e

    def _read(self) -> None:
        try:
            while True:
                self._deliver(self.conn.recv())
        except (EOFError, OSError):
            pass
        if self.closing:
            return
        self.process.join(timeout=5)
        with self.lock:  # fail what was in flight; refuse what comes
            self.down = f"the model's process stopped (exit code {self.process.exitcode}); restart the server"
            failed, self.live = list(self.live.values()), {}
        print(self.down, flush=True)
        for callback in failed:
            callback(None, True)


def _model_process(conn, checkpoint: str, device: str | None, rows: int, compile: bool) -> None:
    """A ``ProcessWorker``'s loop: load, warm up, say "ready" with the seconds it took, then step."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # Ctrl-C stops the server, which stops this
    start = time.perf_counter()
    try:
        engine = load_front(checkpoint, device, compile=compile).engine
        if engine.device.type == "cpu":  # the decode loop and the prefill thread split the cores
            torch.set_num_threads(max(1, torch.get_num_threads() // 2))
        batcher = Batcher(engine, rows=rows, overlap_prefill=True)
        batcher.warm_up()
    except Exception as e:
        conn.send((f"{type(e).__name__}: {e}", None))
        return
    conn.send(("ready", time.perf_counter() - start))

    def receive(wait: bool) -> Command | None:
        return conn.recv() if wait or conn.poll() else None

    try:
        step_loop(batcher, receive, conn.send)
    except (EOFError, OSError):
        pass  # the server is gone


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
        video_notes: bool = False,
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
                video_notes,
            )
            for i, prompt in enumerate(prompts)
        ]
        return self.worker.run(requests, self.timeout)


def served(wm: WorldModel, worker: Worker, timeout: float) -> ServedWorldModel:
    return ServedWorldModel(
        wm.engine, wm.world, wm.checkpoint, wm.video_frames, wm.says_motion, worker=worker, timeout=timeout
    )
