"""Continuous batching: many generation requests decoded in one batch, as vLLM does (without paging).

A request takes one row of a preallocated KV cache (two with classifier-free guidance: its prompt
and its unconditional twin). It joins at any step: its prompt is prefilled into its rows alone,
and from then on its next token goes through the model in one batched forward with every other
running request's, each row writing its keys and values at its own slot and attending to its own
slots only. A request leaves when it stops (a stop id, its token budget, or a cancel), and its
rows are free for the next one. Each request keeps its own sampling settings, seed, grammar state
and guidance scale, so its tokens do not depend on what else is running (up to float rounding of
a batched forward against a lone one).

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
    grammar: SpanGrammar | None
    generator: torch.Generator
    stop: torch.Tensor  # (k,) ids
    logits: torch.Tensor | None = None  # (len(rows), V) for its next token
    made: list[int] = field(default_factory=list)


class Batcher:
    """Runs requests through ``engine``'s model ``rows`` cache rows at a time, ``length`` slots each."""

    def __init__(self, engine: Engine, *, rows: int = 32, length: int | None = None) -> None:
        self.engine, self.model, self.codec = engine, engine.model, engine.codec
        self.length = length or self.model.cfg.max_seq_len
        self.rows = rows
        self.cache = KVCache.allocate(self.model.cfg, rows, self.length, device=engine.device, dtype=engine.dtype)
        self.at = torch.zeros(rows, dtype=torch.long, device=engine.device)  # (rows,) each row's next slot
        self.free = list(range(rows))
        self.waiting: deque[tuple[int, Request]] = deque()
        self.running: dict[int, _Running] = {}
        self.ids = itertools.count()
        self.eos = self.codec.vocab.special("<|eos|>")
        self.peak = 0  # the most requests one forward has decoded together

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
        events = []
        for rid, run in list(self.running.items()):
            token, finished = self._pick(run)
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

    # internals -------------------------------------------------------------------------------
    def _admit(self) -> None:
        while self.waiting:
            rid, request = self.waiting[0]
            need = 2 if request.guided else 1
            if len(self.free) < need:
                return
            self.waiting.popleft()
            rows = sorted(self.free)[:need]  # the lowest rows: the batch's forward covers rows 0..max
            self.free = [r for r in self.free if r not in rows]
            prompts = [request.prompt, request.uncond_prompt] if request.guided else [request.prompt]
            logits = torch.cat([self._prefill(row, prompt) for row, prompt in zip(rows, prompts, strict=True)])
            grammar = None
            if request.constrained:
                grammar = SpanGrammar(self.codec, self.engine.device)
                frames = torch.tensor([request.video_frames], device=self.engine.device)
                actions = pad_actions([request.video_actions], 1, self.engine.device)
                grammar.start(torch.as_tensor([list(request.prompt)], device=self.engine.device), frames, actions)
            stop = torch.tensor(request.stop if request.stop is not None else [self.eos], device=self.engine.device)
            generator = torch.Generator(self.engine.device).manual_seed(request.sampling.seed)
            self.running[rid] = _Running(request, rows, grammar, generator, stop, logits)

    def _prefill(self, row: int, prompt: Sequence[int]) -> torch.Tensor:
        """Prompt through the model alone, its keys and values into ``row``: (1, V) last logits."""
        ids = torch.as_tensor([list(prompt)], device=self.engine.device)  # (1, L)
        view = KVCache([k[row : row + 1] for k in self.cache.k], [v[row : row + 1] for v in self.cache.v])
        logits = self.engine.prefill(self.model, ids, None, torch.arange(ids.size(1), device=ids.device)[None], view)
        self.at[row] = ids.size(1)
        return logits

    def _pick(self, run: _Running) -> tuple[int, bool]:
        """The request's next token from its pending logits; whether it is done."""
        request, logits = run.request, run.logits
        if self.engine.logit_bias is not None:
            logits = logits + self.engine.logit_bias
        logits = guide(logits[:1], logits[1:], request.guidance) if request.guided else logits
        if run.grammar is not None:
            logits = logits.masked_fill(~run.grammar.allowed(), float("-inf"))
        token = sample(logits, request.sampling, run.generator)  # (1,)
        run.made.append(int(token))
        if run.grammar is not None:
            run.grammar.advance(token)
        finished = bool(torch.isin(token, run.stop)) or len(run.made) == request.max_new_tokens
        return int(token), finished

    def _decode(self) -> None:
        """One token per running request's rows, in one forward over rows 0..max in use."""
        n = 1 + max(row for run in self.running.values() for row in run.rows)
        self.peak = max(self.peak, len(self.running))
        pad = self.codec.vocab.special("<|pad|>")
        tokens = torch.full((n,), pad, dtype=torch.long, device=self.engine.device)
        for run in self.running.values():
            tokens[run.rows] = run.made[-1]
        at = self.at[:n]  # (n,) each row's write slot; rows not in use write where nothing is read
        width = int(at.max()) + 1
        slot = torch.arange(width, device=at.device)
        visible = (slot[None] <= at[:, None])[:, None, None, :]  # (n, 1, 1, width)
        view = KVCache([k[:n] for k in self.cache.k], [v[:n] for v in self.cache.v])
        logits = self.model(tokens[:, None], positions=at[:, None], cache=view.at(at[:, None], visible))
        logits = logits[:, -1].float()  # (n, V)
        for run in self.running.values():
            run.logits = logits[run.rows]
        for run in self.running.values():
            self.at[run.rows] += 1
