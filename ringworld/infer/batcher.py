"""Continuous batching: many generation requests decoded in one batch, as vLLM does (without paging).

A request takes one row of a preallocated KV cache (two with classifier-free guidance: its prompt
and its unconditional twin). It joins at any step: its prompt is prefilled into its rows alone,
and from then on its next token goes through the model in one batched forward with every other
running request's, each row writing its keys and values at its own slot and attending to its own
slots only. A request leaves when it stops (a stop id, its token budget, or a cancel), and its
rows are free for the next one. Each request keeps its own sampling settings, seed, grammar state
and guidance scale, so its tokens do not depend on what else is running (up to float rounding of
a batched forward against a lone one).

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
from dataclasses import dataclass, field

import numpy as np
import torch

from ringworld.infer.compiled import GEMV_ROWS, decode_compile, prompt_compile
from ringworld.infer.engine import Engine, pad_actions
from ringworld.infer.grammar import SpanGrammar
from ringworld.infer.sampling import GREEDY, Sampling, guide, sample
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
    constrained: bool = True  # follow the codec's layout (SpanGrammar)
    video_frames: int = 0  # a generated video closes after this many frames (0: the model decides)
    video_actions: Sequence[int] = ()  # the action id forced after frame f's <|eof|> (-1: none)

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


class Batcher:
    """Runs requests through ``engine``'s model ``rows`` cache rows at a time, ``length`` slots each."""

    def __init__(self, engine: Engine, *, rows: int = 32, length: int | None = None) -> None:
        self.engine, self.model, self.codec = engine, engine.model, engine.codec
        self.length = length or self.model.cfg.max_seq_len
        self.rows = rows
        self.cache = KVCache.allocate(self.model.cfg, rows, self.length, device=engine.device, dtype=engine.dtype)
        self.at = torch.zeros(rows, dtype=torch.long, device=engine.device)  # (rows,) each row's next slot
        self.logits = torch.zeros(rows, self.model.cfg.vocab_size, device=engine.device)  # each row's next-token logits
        self.grammar = SpanGrammar(self.codec, engine.device)  # one state per row
        pad = self.codec.vocab.special("<|pad|>")
        none = torch.full((rows, 1), pad, device=engine.device)
        self.grammar.start(none, torch.zeros(rows, dtype=torch.long, device=engine.device), none[:, :0])
        self.free = list(range(rows))
        self.waiting: deque[tuple[int, Request]] = deque()
        self.running: dict[int, _Running] = {}
        self.ids = itertools.count()
        self.eos = self.codec.vocab.special("<|eos|>")
        self.peak = 0  # the most requests one forward has decoded together
        self._forward = decode_compile(self._forward_rows) if engine.compiled else self._forward_rows
        self._prompt_forward = prompt_compile(self._prompt_rows) if engine.compiled else self._prompt_rows

    @property
    def busy(self) -> bool:
        return bool(self.waiting or self.running)

    def check(self, request: Request) -> None:
        """Raise a ValueError saying what is wrong with ``request``, if anything (any thread may ask)."""
        if request.max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {request.max_new_tokens}")
        prompts = [request.prompt, request.uncond_prompt] if request.guided else [request.prompt]
        for i, prompt in enumerate(prompts):
            self.engine.check_prompt(prompt, i)
            if len(prompt) + request.max_new_tokens > self.length:
                raise ValueError(
                    f"a prompt of {len(prompt)} tokens plus {request.max_new_tokens} new ones exceeds the "
                    f"{self.length}-token context; shorten the prompt or ask for fewer tokens"
                )
        if len(prompts) > self.rows:
            raise ValueError(f"a guided request needs 2 rows; this batcher has {self.rows}")

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

    @torch.inference_mode()
    def step(self) -> list[Event]:
        """Admit what fits, pick one token for every running request, and run them through the model."""
        self._admit()
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
        bos = self.codec.vocab.special("<|bos|>")
        for a, b in ((9, 10), (2, 3)):
            for lengths in ([a], [b], [a, b]):
                self.run([Request((bos,) * n, max_new_tokens=3, constrained=False, stop=()) for n in lengths])
        self.run([Request((bos,) * 9, max_new_tokens=3, constrained=False, stop=())] * min(GEMV_ROWS + 1, self.rows))
        self.peak = 0

    # internals -------------------------------------------------------------------------------
    def _admit(self) -> None:
        """Take waiting requests while their rows are free, and prefill all their prompts at once."""
        admitted = []
        while self.waiting:
            rid, request = self.waiting[0]
            need = 2 if request.guided else 1
            if len(self.free) < need:
                break
            self.waiting.popleft()
            self.free.sort()
            rows, self.free = self.free[:need], self.free[need:]  # the lowest: a forward covers rows 0..max
            admitted.append((rid, request, rows))
        if not admitted:
            return
        rows = [row for _, _, rs in admitted for row in rs]
        prompts = [p for _, r, _ in admitted for p in ([r.prompt, r.uncond_prompt] if r.guided else [r.prompt])]
        self.logits[rows] = self._prefill(rows, prompts)
        device = self.engine.device
        constrained = [(r, rs[0]) for _, r, rs in admitted if r.constrained]
        if constrained:  # the grammar's state at the end of each prompt, in one pass for all
            width = max(len(r.prompt) for r, _ in constrained)
            padded = torch.full((len(constrained), width), self.codec.vocab.special("<|pad|>"), dtype=torch.long)
            for i, (r, _) in enumerate(constrained):
                padded[i, width - len(r.prompt) :] = torch.as_tensor(list(r.prompt))
            frames = torch.tensor([r.video_frames for r, _ in constrained], device=device)
            actions = pad_actions([r.video_actions for r, _ in constrained], len(constrained), device)
            where = torch.tensor([row for _, row in constrained], device=device)
            self.grammar.restart(where, padded.to(device), frames, actions)
        for rid, request, rs in admitted:
            stop = set(request.stop if request.stop is not None else [self.eos])
            greedy = request.sampling.temperature == 0
            generator = None if greedy else torch.Generator(device).manual_seed(request.sampling.seed)
            self.running[rid] = _Running(request, rs, generator, stop)

    def _prefill(self, rows: list[int], prompts: list[Sequence[int]]) -> torch.Tensor:
        """Every prompt through the model in one forward, right-padded (causal attention: a token
        never sees the padding after it); their keys and values into ``rows``: (R, V) last logits."""
        lengths = torch.tensor([len(p) for p in prompts], device=self.engine.device)
        R, L = len(prompts), int(lengths.max())
        ids = torch.full((R, L), self.codec.vocab.special("<|pad|>"), dtype=torch.long)
        for r, prompt in enumerate(prompts):
            ids[r, : len(prompt)] = torch.as_tensor(list(prompt))
        slots = torch.arange(L, device=self.engine.device)
        fresh = KVCache.allocate(self.model.cfg, R, L, device=self.engine.device, dtype=self.engine.dtype)
        logits = self._prompt_forward(ids.to(self.engine.device), slots, lengths, fresh)
        index = torch.tensor(rows, device=self.engine.device)
        for mine, theirs in zip(self.cache.k + self.cache.v, fresh.k + fresh.v, strict=True):
            mine[index, :, :L] = theirs  # past a row's prompt: slots its decoding overwrites before it sees them
        self.at[index] = lengths
        return logits

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
        for i, run in enumerate(runs):
            if run.generator is not None:
                tokens[i] = sample(logits[i : i + 1], run.request.sampling, run.generator)[0]
        fed = torch.full((len(self.at),), self.codec.vocab.special("<|pad|>"), device=device)
        fed[cond] = tokens
        self.grammar.advance(fed)  # <|pad|> leaves the other rows as they are
        return tokens

    def _decode(self) -> None:
        """One token per running request's rows, in one forward over rows 0..max in use."""
        rows = [row for run in self.running.values() for row in run.rows]
        fed = [run.made[-1] for run in self.running.values() for _ in run.rows]
        n = 1 + max(rows)
        self.peak = max(self.peak, len(self.running))
        device = self.engine.device
        rows_in_use = torch.tensor(rows, device=device)
        tokens = torch.full((n,), self.codec.vocab.special("<|pad|>"), dtype=torch.long, device=device)
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
