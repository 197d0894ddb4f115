"""Continuous batching: many generation requests decoded in one batch, as vLLM does (without paging).

A request takes one row of a preallocated KV cache (two with classifier-free guidance: its prompt
and its unconditional twin). It joins at any step: its prompt is prefilled (with those of the
other requests admitted at that step) into its rows alone, and from then on its next token goes
through the model in one batched forward with every other running request's, each row writing
its keys and values at its own slot and attending to its own slots only. A request leaves when it
stops (a stop id, its token budget, or a cancel), and its rows are free for the next one; a
request in a higher row then moves down into them, since a forward covers rows 0..max in use.
Each request keeps its own sampling settings, seed, grammar state and guidance scale, so its
tokens do not depend on what else is running (up to float rounding of a batched forward against a
lone one).

With ``overlap_prefill`` (what a server uses) prompts are prefilled on a thread of their own while
the running requests decode, and join the batch at the first step after they are through: on a
2-core CPU each thread then keeps a core busy, and a long prompt no longer stalls every running
request for its forward.

With a compiled engine (``Engine(compile=True)``) the decode step and the prompts' forward are
compiled too (``infer/compiled.py``), dynamic in rows and lengths; ``warm_up`` compiles them.

    batcher = Batcher(engine, rows=32)
    rid = batcher.submit(Request(prompt_ids, max_new_tokens=64))
    while batcher.busy:
        for event in batcher.step():   # one token for every running request
            ...                        # event.request, event.token, event.finished
"""

from __future__ import annotations

import itertools
from collections import deque
from collections.abc import Sequence
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass, field

import numpy as np
import torch

from ringworld.infer.compiled import GEMV_ROWS, decode_compile, prompt_compile
from ringworld.infer.engine import Engine, pad_actions
from ringworld.infer.grammar import SpanGrammar
from ringworld.infer.sampling import GREEDY, Sampling, guide, sample_rows
from ringworld.model.transformer import KVCache


@dataclass(frozen=True)
class Request:
    """What ``Engine.generate`` takes for one row, as one request."""

    prompt: Sequence[int]
    max_new_tokens: int
    sampling: Sampling = GREEDY
    stop: tuple[int, ...] | None = None  # ids that end it (default <|eos|>); the last token is the stop id
    guidance: float = 1.0
    uncond_prompt: Sequence[int] | None = None  # guided against this prompt when guidance != 1
    constrained: bool = True  # follow the token layout (SpanGrammar)
    video_frames: int = 0  # a generated video closes after this many frames (0: the model decides)
    video_actions: Sequence[int] = ()  # the action id forced after frame f's <|eof|> (-1: none)
    video_notes: bool = False  # say a note before each video frame drawn after the first

    @property
    def guided(self) -> bool:
        return self.uncond_prompt is not None and self.guidance != 1.0


@dataclass
class Event:
    request: int  # the id ``submit`` returned
    token: int
    finished: bool  # the request has left the batch: this was its last token


@dataclass
class _Running:
    request: Request
    rows: list[int]  # its cache rows: [cond] or [cond, uncond]
    generator: torch.Generator | None  # None: greedy
    stop: set[int]
    made: list[int] = field(default_factory=list)


@dataclass
class _Admitted:
    rid: int
    request: Request
    rows: list[int]  # its cache rows: [cond] or [cond, uncond]


@dataclass
class _Prefilled:
    """What prefilling admitted requests gives, for their rows."""

    logits: torch.Tensor  # (R, V) after each prompt's last token
    cache: KVCache  # R rows: the prompts' keys and values
    lengths: torch.Tensor  # (R,)
    grammar: dict[str, torch.Tensor] | None  # SpanGrammar.prompt_state of the constrained requests


class Batcher:
    """Runs requests through ``engine``'s model ``rows`` cache rows at a time, ``length`` slots each.
    With ``overlap_prefill``, new prompts go through the model on a thread of their own while the
    running requests decode (each thread with this one's torch threads), and join the batch when
    they are through."""

    def __init__(
        self, engine: Engine, *, rows: int = 32, length: int | None = None, overlap_prefill: bool = False
    ) -> None:
        self.engine, self.model = engine, engine.model
        self.length = length or self.model.cfg.max_seq_len
        self.rows = rows
        self.cache = KVCache.allocate(self.model.cfg, rows, self.length, device=engine.device, dtype=engine.dtype)
        self.at = torch.zeros(rows, dtype=torch.long, device=engine.device)  # (rows,) each row's next slot
        self.logits = torch.zeros(rows, self.model.cfg.vocab_size, device=engine.device)  # each row's next-token logits
        self.grammar = SpanGrammar(engine.layout, engine.device)  # one state per row
        pad = self.engine.layout.pad
        none = torch.full((rows, 1), pad, device=engine.device)
        self.grammar.start(none, torch.zeros(rows, dtype=torch.long, device=engine.device), none[:, :0])
        self.free = list(range(rows))
        self.waiting: deque[tuple[int, Request]] = deque()
        self.running: dict[int, _Running] = {}
        self.prefilling: deque[tuple[list[_Admitted], Future]] = deque()  # in admission order
        self.cancelled: set[int] = set()  # ids cancelled while their prompts were on their way
        self.prefiller = (
            ThreadPoolExecutor(1, "ringworld-prefill", torch.set_num_threads, (torch.get_num_threads(),))
            if overlap_prefill
            else None
        )
        self.ids = itertools.count()
        self.eos = self.engine.layout.eos
        self.peak = 0  # the most requests one forward has decoded together
        self._forward = decode_compile(self._forward_rows) if engine.compiled else self._forward_rows
        self._prompt_forward = prompt_compile(self._prompt_rows) if engine.compiled else self._prompt_rows

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running or self.prefilling)

    def check(self, request: Request) -> None:
        """Raise a ValueError saying what is wrong with ``request``, if anything (any thread may ask)."""
        check_request(self.engine, request, length=self.length, rows=self.rows)

    def submit(self, request: Request) -> int:
        """Queue ``request`` (checked first); its id."""
        self.check(request)
        rid = next(self.ids)
        self.waiting.append((rid, request))
        return rid

    def cancel(self, rid: int) -> None:
        """Drop a request, waiting or running (its client went away); its rows are free at once."""
        self.waiting = deque((i, r) for i, r in self.waiting if i != rid)
        if rid in self.running:
            self.free += self.running.pop(rid).rows
        elif any(rid == a.rid for admitted, _ in self.prefilling for a in admitted):
            self.cancelled.add(rid)  # its rows are freed when its prompt is through

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit what fits, pick one token for every running request, and run them through the model."""
        self._admit()
        self._join(wait=not self.running)
        if not self.running:
            return []
        rids = list(self.running)
        tokens = self._pick([self.running[rid] for rid in rids]).tolist()
        events = []
        for rid, token in zip(rids, tokens, strict=True):
            run = self.running[rid]
            run.made.append(token)
            finished = token in run.stop or len(run.made) == run.request.max_new_tokens
            events.append(Event(rid, token, finished))
            if finished:
                self.free += self.running.pop(rid).rows
        if self.running:
            self._compact()
            self._decode()
        return events

    def run(self, requests: Sequence[Request]) -> list[np.ndarray]:
        """Every request's tokens (submitted together, decoded until all are done)."""
        rids = [self.submit(r) for r in requests]
        made: dict[int, list[int]] = {rid: [] for rid in rids}
        while self.busy:
            for event in self.step():
                made[event.request].append(event.token)
        return [np.array(made[rid], dtype=np.int64) for rid in rids]

    def warm_up(self) -> None:
        """Compile the compiled steps' graphs now, before a client waits for them (a no-op eager):
        prompts of two lengths alone, then together (a prompt's length and rows become dynamic),
        for short prompts and long ones (Inductor multiplies a few rows its own way), each decoded
        at growing widths; then more rows than ``GEMV_ROWS`` (the BLAS's graph)."""
        if not self.engine.compiled:
            return
        bos = self.engine.layout.bos
        for a, b in ((9, 10), (2, 3)):
            for lengths in ([a], [b], [a, b]):
                self.run([Request((bos,) * n, max_new_tokens=3, constrained=False, stop=()) for n in lengths])
        self.run([Request((bos,) * 9, max_new_tokens=3, constrained=False, stop=())] * min(GEMV_ROWS + 1, self.rows))
        self.peak = 0

    # internals -------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Take waiting requests while their rows are free, and prefill all their prompts at once:
        now, or on the prefill thread."""
        admitted = []
        while self.waiting:
            rid, request = self.waiting[0]
            need = 2 if request.guided else 1
            if len(self.free) < need:
                break
            self.waiting.popleft()
            self.free.sort()
            rows, self.free = self.free[:need], self.free[need:]  # the lowest: a forward covers rows 0..max
            admitted.append(_Admitted(rid, request, rows))
        if not admitted:
            return
        if self.prefiller is None:
            self._install(admitted, self._prefill(admitted))
        else:
            self.prefilling.append((admitted, self.prefiller.submit(self._prefill, admitted)))

    def _join(self, wait: bool) -> None:
        """Requests whose prompts are through join the batch, in the order they were admitted;
        ``wait``: for the first one, if it is not through yet."""
        while self.prefilling and (wait or self.prefilling[0][1].done()):
            admitted, through = self.prefilling.popleft()
            wait = False
            try:
                result = through.result()
            except BaseException:  # the rows go back; the caller fails the requests
                self.free += [row for a in admitted for row in a.rows]
                self.cancelled -= {a.rid for a in admitted}
                raise
            self._install(admitted, result)

    @torch.inference_mode()
    def _prefill(self, admitted: list[_Admitted]) -> _Prefilled:
        """Every prompt through the model in one forward, right-padded (causal attention: a token
        never sees the padding after it), and the grammar's state at each constrained one's end.
        Touches no state of the batch, so it may run on the prefill thread."""
        prompts = [
            p
            for a in admitted
            for p in ([a.request.prompt, a.request.uncond_prompt] if a.request.guided else [a.request.prompt])
        ]
        device = self.engine.device
        lengths = torch.tensor([len(p) for p in prompts], device=device)
        R, L = len(prompts), int(lengths.max())
        ids = torch.full((R, L), self.engine.layout.pad, dtype=torch.long)
        for r, prompt in enumerate(prompts):
            ids[r, : len(prompt)] = torch.as_tensor(list(prompt))
        slots = torch.arange(L, device=device)
        fresh = KVCache.allocate(self.model.cfg, R, L, device=device, dtype=self.engine.dtype)
        logits = self._prompt_forward(ids.to(device), slots, lengths, fresh)
        constrained = [a.request for a in admitted if a.request.constrained]
        grammar = None
        if constrained:  # the grammar's state at the end of each prompt, in one pass for all
            width = max(len(r.prompt) for r in constrained)
            padded = torch.full((len(constrained), width), self.engine.layout.pad, dtype=torch.long)
            for i, r in enumerate(constrained):
                padded[i, width - len(r.prompt) :] = torch.as_tensor(list(r.prompt))
            frames = torch.tensor([r.video_frames for r in constrained], device=device)
            actions = pad_actions([r.video_actions for r in constrained], len(constrained), device)
            notes = torch.tensor([r.video_notes for r in constrained], device=device)
            grammar = self.grammar.prompt_state(padded.to(device), frames, actions, notes)
        return _Prefilled(logits, fresh, lengths, grammar)

    def _install(self, admitted: list[_Admitted], prefilled: _Prefilled) -> None:
        """The prompts' keys, values, last logits and grammar state into the requests' rows; the
        requests run from the next pick (those cancelled meanwhile free their rows instead)."""
        device = self.engine.device
        rows = [row for a in admitted for row in a.rows]
        index = torch.tensor(rows, device=device)
        L = prefilled.cache.length
        for mine, theirs in zip(self.cache.k + self.cache.v, prefilled.cache.k + prefilled.cache.v, strict=True):
            mine[index, :, :L] = theirs  # past a row's prompt: slots its decoding overwrites before it sees them
        self.at[index] = prefilled.lengths
        self.logits[rows] = prefilled.logits
        if prefilled.grammar is not None:
            where = torch.tensor([a.rows[0] for a in admitted if a.request.constrained], device=device)
            self.grammar.set_rows(where, prefilled.grammar)
        for a in admitted:
            if a.rid in self.cancelled:
                self.cancelled.discard(a.rid)
                self.free += a.rows
                continue
            stop = set(a.request.stop if a.request.stop is not None else [self.eos])
            greedy = a.request.sampling.temperature == 0
            generator = None if greedy else torch.Generator(device).manual_seed(a.request.sampling.seed)
            self.running[a.rid] = _Running(a.request, a.rows, generator, stop)

    def _prompt_rows(
        self, ids: torch.Tensor, slots: torch.Tensor, lengths: torch.Tensor, cache: KVCache
    ) -> torch.Tensor:
        """ids (R, L) at slots (L,) into ``cache``: (R, V) the logits after each row's last token."""
        logits = self.model(ids, positions=slots[None], cache=cache.at(slots, None))
        return logits[torch.arange(len(ids), device=ids.device), lengths - 1].float()

    def _pick(self, runs: list[_Running]) -> torch.Tensor:
        """The next token of every running request (k,), as ``Engine.generate`` picks it: the logit
        bias, then guidance, then the grammar's mask, then greedy or the request's own sampling."""
        device = self.engine.device
        cond = torch.tensor([run.rows[0] for run in runs], device=device)
        logits = self.logits[cond]  # (k, V)
        if self.engine.logit_bias is not None:
            logits = logits + self.engine.logit_bias
        guided = [i for i, run in enumerate(runs) if run.request.guided]
        if guided:
            uncond = self.logits[[runs[i].rows[1] for i in guided]]
            if self.engine.logit_bias is not None:
                uncond = uncond + self.engine.logit_bias
            scale = torch.tensor([runs[i].request.guidance for i in guided], device=device)[:, None]
            logits[guided] = guide(logits[guided], uncond, scale)
        constrained = torch.tensor([run.request.constrained for run in runs], device=device)
        allowed = self.grammar.allowed()[cond] | ~constrained[:, None]
        logits = logits.masked_fill(~allowed, float("-inf"))
        tokens = logits.argmax(-1)  # (k,)
        sampled = [i for i, run in enumerate(runs) if run.generator is not None]
        if sampled:
            samplings = [runs[i].request.sampling for i in sampled]
            tokens[sampled] = sample_rows(logits[sampled], samplings, [runs[i].generator for i in sampled])
        fed = torch.full((len(self.at),), self.engine.layout.pad, device=device)
        fed[cond] = tokens
        self.grammar.advance(fed)  # <|pad|> leaves the other rows as they are
        return tokens

    def _compact(self) -> None:
        """Move requests from the highest rows into free lower ones, so that the decode forward,
        which covers rows 0..max in use, runs no idle row. A move copies the row's filled slots
        (its logits are about to be remade)."""
        self.free.sort()
        while self.free:
            row, rid, i = max((row, rid, i) for rid, run in self.running.items() for i, row in enumerate(run.rows))
            if self.free[0] > row:
                return
            run, to = self.running[rid], self.free.pop(0)
            filled = len(run.request.prompt if i == 0 else run.request.uncond_prompt) + len(run.made)
            for layer in self.cache.k + self.cache.v:
                layer[to, :, :filled] = layer[row, :, :filled]
            self.at[to] = self.at[row]
            self.grammar.move_row(row, to)
            run.rows[i] = to
            self.free.append(row)

    def _decode(self) -> None:
        """One token per running request's rows, in one forward over rows 0..max in use."""
        rows = [row for run in self.running.values() for row in run.rows]
        fed = [run.made[-1] for run in self.running.values() for _ in run.rows]
        n = 1 + max(rows)
        self.peak = max(self.peak, len(self.running))
        device = self.engine.device
        rows_in_use = torch.tensor(rows, device=device)
        tokens = torch.full((n,), self.engine.layout.pad, dtype=torch.long, device=device)
        tokens[rows_in_use] = torch.tensor(fed, device=device)
        at = self.at[:n]  # (n,) each row's write slot; rows not in use write where nothing is read
        slot = torch.arange(int(at.max()) + 1, device=at.device)  # (width,) the slots anyone sees
        view = KVCache([k[:n] for k in self.cache.k], [v[:n] for v in self.cache.v])
        self.logits[:n] = self._forward(tokens, at, slot, view)
        self.at[rows_in_use] += 1

    def _forward_rows(self, tokens: torch.Tensor, at: torch.Tensor, slot: torch.Tensor, cache: KVCache) -> torch.Tensor:
        """tokens (n,) at slots at (n,), each row seeing its slots up to its own: (n, V) logits."""
        visible = (slot[None] <= at[:, None])[:, None, None, :]  # (n, 1, 1, width)
        logits = self.model(tokens[:, None], positions=at[:, None], cache=cache.at(at[:, None], visible))
        return logits[:, -1].float()


def check_request(engine: Engine, request: Request, *, length: int, rows: int) -> None:
    """Raise a ValueError saying what is wrong with ``request`` for a batcher of ``rows`` rows of
    ``length`` slots on ``engine``'s model, if anything."""
    if request.max_new_tokens < 1:
        raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
    prompts = [request.prompt, request.uncond_prompt] if request.guided else [request.prompt]
    for i, prompt in enumerate(prompts):
        engine.check_prompt(prompt, i)
        if len(prompt) + request.max_new_tokens > length:
            raise ValueError(
                f"a prompt of {len(prompt)} tokens plus {request.max_new_tokens} new ones exceeds the "
                f"{length}-token context; shorten the prompt or ask for fewer tokens"
            )
    if len(prompts) > rows:
        raise ValueError(f"a guided request needs 2 rows; this batcher has {rows}")
