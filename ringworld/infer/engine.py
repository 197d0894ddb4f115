"""The inference engine: prefill + decode over a preallocated KV cache, batched sampling,
constrained decoding inside image and video spans, and classifier-free guidance.

    engine = Engine(model, codec)
    out = engine.generate(prompts, max_new_tokens=80, sampling=Sampling(temperature=0.8, top_k=50))

Rows of different prompt lengths are left-padded into one batch; each row's positions start at
0 at its first real token, and its padding slots are never visible. With guidance, every row gets
an unconditional twin (its prompt without the caption) in the same batch; the two rows' logits
are mixed ``uncond + s * (cond - uncond)`` and the one sampled token is fed to both.

With ``context_parallel=group`` (under torchrun), prompts prefill through ring attention, each
rank holding a zigzag shard of every row; the gathered keys and values fill every rank's cache and
decoding then runs alike on every rank.

Constraints (``SpanGrammar``) are a per-row state machine over the codec's token layout: inside
an image or video only visual codes are allowed, ``<|eol|>`` and ``<|eof|>`` are forced at their
places, actions can be forced between frames, and a span is closed at its length. Every
constrained span therefore decodes. Sampling runs on the device without host syncs; the loop asks
whether every row has stopped only every ``sync_every`` steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.distributed import ProcessGroup

from ringworld.model.transformer import KVCache, Transformer
from ringworld.parallel.ring import zigzag_shard, zigzag_unshard
from ringworld.tokens.codec import Codec


@dataclass(frozen=True)
class Sampling:
    """How the next token is picked: greedy at ``temperature == 0``, else sampled from the
    temperature-scaled distribution cut to the ``top_k`` most likely ids and the smallest set
    holding ``top_p`` of the mass (0 and 1 switch those off)."""

    temperature: float = 1.0
    top_k: int = 0
    top_p: float = 1.0
    seed: int = 0

    def __post_init__(self) -> None:
        if self.temperature < 0:
            raise ValueError(f"temperature must be >= 0 (0 = greedy), got {self.temperature}")
        if self.top_k < 0:
            raise ValueError(f"top_k must be >= 0 (0 = off), got {self.top_k}")
        if not 0 < self.top_p <= 1:
            raise ValueError(f"top_p must be in (0, 1] (1 = off), got {self.top_p}")


GREEDY = Sampling(temperature=0.0)


def sample(logits: torch.Tensor, sampling: Sampling, generator: torch.Generator | None = None) -> torch.Tensor:
    """logits (B, V) -> ids (B,). Disallowed ids carry -inf and are never picked."""
    if sampling.temperature == 0:
        return logits.argmax(-1)
    logits = logits.float() / sampling.temperature
    if sampling.top_k:
        kth = logits.topk(min(sampling.top_k, logits.size(-1)), dim=-1).values[:, -1:]  # (B, 1)
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if sampling.top_p < 1:
        sorted_logits, order = logits.sort(dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # drop an id once the mass before it already reaches top_p (the most likely id always stays)
        drop = probs.cumsum(-1) - probs >= sampling.top_p
        logits = logits.scatter(-1, order, sorted_logits.masked_fill(drop, float("-inf")))
    return torch.multinomial(logits.softmax(-1), 1, generator=generator).squeeze(-1)


def guide(cond: torch.Tensor, uncond: torch.Tensor, scale: float) -> torch.Tensor:
    """Classifier-free guidance: ``uncond + scale * (cond - uncond)`` (scale 1 = cond alone).
    Masked ids (-inf in both) stay -inf."""
    mixed = uncond + scale * (cond - uncond)
    return mixed.masked_fill(torch.isinf(cond) & (cond < 0), float("-inf"))


FREE, IMAGE, VIDEO = 0, 1, 2


class SpanGrammar:
    """Which ids may come next, for a batch of rows, following the codec's layout.

    State per row: the span it is in (free text, image, video), the position inside the current
    frame body (``h`` rows of ``w`` codes and an ``<|eol|>``), the frames finished in the video,
    the last token, and whether the row has stopped. ``allowed()`` gives a (B, V) mask; forced
    tokens are masks with one id.
    """

    def __init__(self, codec: Codec, device: torch.device | str = "cpu") -> None:
        v, sp = codec.vocab, codec.vocab.special
        self.h, self.w = codec.grid
        self.body = self.h * (self.w + 1)  # tokens in one frame body
        self.vocab_size = v.size
        self.eol, self.eof, self.pad = sp("<|eol|>"), sp("<|eof|>"), sp("<|pad|>")
        self.open_image, self.close_image = sp("<|image|>"), sp("<|/image|>")
        self.open_video, self.close_video = sp("<|video|>"), sp("<|/video|>")
        self.code_lo, self.code_hi = v.code_ids.start, v.code_ids.stop
        self.device = torch.device(device)

        def mask(ids) -> torch.Tensor:
            m = torch.zeros(v.size, dtype=torch.bool, device=self.device)
            m[torch.as_tensor(list(ids), dtype=torch.long, device=self.device)] = True
            return m

        self.codes = mask(v.code_ids)
        self.actions = mask(v.action_ids)
        in_span_only = [*v.code_ids, self.eol, self.eof, self.close_image, self.close_video]
        self.free = ~mask([*in_span_only, self.pad, sp("<|bos|>")])
        self.only = {tok: mask([tok]) for tok in (self.eol, self.eof, self.pad, self.close_image, self.close_video)}

    def start(
        self,
        prompts: torch.Tensor,  # (B, L) left-padded with <|pad|>
        video_frames: torch.Tensor,  # (B,) frames a generated video ends after; 0 = the model decides
        video_actions: torch.Tensor,  # (B, A) action id forced after frame f's <|eof|>; -1 = none
    ) -> None:
        B = len(prompts)
        zeros = torch.zeros(B, dtype=torch.long, device=self.device)
        self.span, self.pos, self.frames = zeros.clone(), zeros.clone(), zeros.clone()
        self.prev = torch.full((B,), self.pad, dtype=torch.long, device=self.device)
        self.done = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.video_frames, self.video_actions = video_frames, video_actions
        for column in prompts.T:  # the state at the end of each prompt
            self.advance(column)

    def advance(self, tokens: torch.Tensor) -> None:
        """Move every row's state past ``tokens`` (B,); <|pad|> leaves a state as it is."""
        real = tokens != self.pad
        in_span = self.span != FREE
        body = in_span & (((tokens >= self.code_lo) & (tokens < self.code_hi)) | (tokens == self.eol))
        self.pos = torch.where(body, self.pos + 1, self.pos)
        eof = in_span & (tokens == self.eof)
        self.frames = torch.where(eof, self.frames + 1, self.frames)
        self.pos = torch.where(eof, 0, self.pos)
        opened = (tokens == self.open_image) | (tokens == self.open_video)
        closed = (tokens == self.close_image) | (tokens == self.close_video)
        self.span = torch.where(tokens == self.open_image, IMAGE, self.span)
        self.span = torch.where(tokens == self.open_video, VIDEO, self.span)
        self.span = torch.where(closed, FREE, self.span)
        reset = opened | closed
        self.pos = torch.where(reset, 0, self.pos)
        self.frames = torch.where(reset, 0, self.frames)
        self.prev = torch.where(real, tokens, self.prev)

    def stop(self, stopped: torch.Tensor) -> None:
        self.done |= stopped

    def allowed(self) -> torch.Tensor:
        """(B, V) bool: the ids each row may take next."""
        B = len(self.span)
        out = self.free.expand(B, -1)
        in_span = self.span != FREE
        out = torch.where(in_span[:, None], self.codes, out)
        between = (self.span == VIDEO) & (self.pos == 0) & (self.prev == self.eof)
        if self.video_actions.size(1):
            index = (self.frames - 1).clamp(0, self.video_actions.size(1) - 1)
            action = self.video_actions.gather(1, index[:, None]).squeeze(1)  # (B,)
            has_action = between & (self.frames <= self.video_actions.size(1)) & (action >= 0)
            forced = torch.zeros_like(out)
            forced[torch.arange(B, device=self.device), action.clamp(min=0)] = True
            out = torch.where(has_action[:, None], forced, out)
        last = between & (self.video_frames > 0) & (self.frames >= self.video_frames)
        open_end = between & (self.video_frames == 0)  # the model may close the video here
        out = out | (open_end[:, None] & self.only[self.close_video])
        eol = in_span & (self.pos < self.body) & (self.pos % (self.w + 1) == self.w)
        rules = (
            (eol, self.eol),
            ((self.span == IMAGE) & (self.pos == self.body), self.close_image),
            ((self.span == VIDEO) & (self.pos == self.body), self.eof),
            (last, self.close_video),
            (self.done, self.pad),
        )
        for where, token in rules:
            out = torch.where(where[:, None], self.only[token], out)
        return out


@dataclass
class Generation:
    tokens: list[np.ndarray]  # per row: the new ids, up to and including the stop token
    logits: torch.Tensor | None = None  # (B, steps, V) the (guided) logits each step, if asked for


class Engine:
    """Generation with one model and its codec; ``compile=True`` compiles the one-token decode step."""

    def __init__(
        self,
        model: Transformer,
        codec: Codec,
        *,
        compile: bool = False,
        context_parallel: ProcessGroup | None = None,
        logit_bias: torch.Tensor | None = None,
    ) -> None:
        if model.cfg.vocab_size != codec.vocab.size:
            raise ValueError(
                f"the model's vocabulary has {model.cfg.vocab_size} ids but the tokenizer's has "
                f"{codec.vocab.size}; load the tokenizer saved with the checkpoint"
            )
        self.model, self.codec = model.eval(), codec
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.grammar = SpanGrammar(codec, self.device)
        self.pad = codec.vocab.special("<|pad|>")
        # (V,) added to every step's logits: what undoes a training loss weight (``background_logit_bias``)
        self.logit_bias = None if logit_bias is None else logit_bias.to(self.device, torch.float32)
        self._forward = torch.compile(self._decode_step, dynamic=False) if compile else self._decode_step
        # with a group, prompts prefill through ring attention (each rank a zigzag shard of every row)
        # and the gathered keys and values fill every rank's cache; decoding then runs on each rank alike
        self.context_parallel = context_parallel
        self.model.context_parallel = None

    def _prefill(self, ids: torch.Tensor, pad_len: torch.Tensor, padded: bool, cache: KVCache) -> torch.Tensor:
        """Every prompt token at once -> (R, V) logits of each row's last one. The prompt attends to
        itself only (causal; left padding in a document of its own), so no (L, S) mask is built."""
        R, L = ids.shape
        slots = torch.arange(L, device=self.device)
        positions = (slots[None] - pad_len[:, None]).clamp(min=0)  # (R, L)
        group = self.context_parallel
        # left padding is a document of its own; every rank of a ring passes segments, padded or not
        segments = (
            torch.where(slots[None] >= pad_len[:, None], 0, -1) if padded or group is not None else None
        )  # (R, L)
        if group is None:
            logits = self.model(ids, segment_ids=segments, positions=positions, cache=cache.at(slots, None))
            return logits[:, -1].float()
        shard = lambda t: zigzag_shard(t, 1, group)  # noqa: E731
        gather = lambda t: zigzag_unshard(t, 2, group)  # noqa: E731
        self.model.context_parallel = group
        try:
            logits = self.model(
                shard(ids), segment_ids=shard(segments), positions=shard(positions), cache=cache.at(slots, None, gather)
            )
        finally:
            self.model.context_parallel = None
        last = logits[:, -1].float().contiguous()  # the last token is the end of chunk 2N-1: group rank 0's
        dist.broadcast(last, src=dist.get_global_rank(group, 0), group=group)
        return last

    def _decode_step(
        self,
        tokens: torch.Tensor,  # (R,) the tokens just chosen
        at: torch.Tensor,  # (1,) the slot they go to
        slot: torch.Tensor,  # (S,) 0..S-1
        valid: torch.Tensor,  # (R, S) slots holding real tokens
        pad_len: torch.Tensor,  # (R,) left padding of each row
        cache: KVCache,
    ) -> torch.Tensor:  # (R, V) logits for the next token
        """One token per row through the model. Every step attends over the whole cache under its
        mask, so the shapes never change and the compiled step is compiled once."""
        visible = valid[:, None, None, :] & (slot <= at)[None, None, None, :]  # (R, 1, 1, S)
        positions = (at - pad_len)[:, None]  # (R, 1)
        return self.model(tokens[:, None], positions=positions, cache=cache.at(at, visible))[:, -1].float()

    @torch.inference_mode()
    def generate(
        self,
        prompts: Sequence[Sequence[int] | np.ndarray],
        *,
        max_new_tokens: int,
        sampling: Sampling = GREEDY,
        stop: Sequence[int] | None = None,
        guidance: float = 1.0,
        uncond_prompts: Sequence[Sequence[int] | np.ndarray] | None = None,
        constrained: bool = True,
        video_frames: Sequence[int] | int = 0,
        video_actions: Sequence[Sequence[int]] | None = None,
        return_logits: bool = False,
        sync_every: int | None = None,
        progress: bool = False,
    ) -> Generation:
        """Continue every prompt by at most ``max_new_tokens`` ids.

        stop: ids that end a row (default ``<|eos|>``); the row keeps its stop id.
        guidance, uncond_prompts: classifier-free guidance at this scale, each row against its
            unconditional prompt (scale 1 or no uncond prompts: plain conditional sampling).
        constrained: follow ``SpanGrammar`` (otherwise any id may follow any other).
        video_frames: a generated video closes after this many frames (per row or one for all;
            0 lets the model close it). video_actions: per row, the action id forced after frame
            f's ``<|eof|>`` (-1 for none): the actions of a world-model rollout.
        """
        B = len(prompts)
        if B == 0:
            return Generation([])
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        guided = uncond_prompts is not None and guidance != 1.0
        if uncond_prompts is not None and len(uncond_prompts) != B:
            raise ValueError(f"{B} prompts but {len(uncond_prompts)} unconditional prompts; give one per prompt")
        rows = [self._check(p, i) for i, p in enumerate(prompts)]
        if guided:
            rows += [self._check(p, i) for i, p in enumerate(uncond_prompts)]  # type: ignore[arg-type]
        stop_ids = torch.tensor(
            list(stop) if stop is not None else [self.codec.vocab.special("<|eos|>")], device=self.device
        )
        length = max(map(len, rows))
        if self.context_parallel is not None:  # a ring shards rows into 2N equal chunks
            multiple = 2 * dist.get_world_size(self.context_parallel)
            length = -(-length // multiple) * multiple
        total = length + max_new_tokens
        if total > self.model.cfg.max_seq_len:
            raise ValueError(
                f"a prompt of {length} tokens plus {max_new_tokens} new ones exceeds the model's "
                f"{self.model.cfg.max_seq_len}-token context; shorten the prompt or ask for fewer tokens"
            )
        ids = torch.full((len(rows), length), self.pad, dtype=torch.long)
        for r, row in enumerate(rows):
            ids[r, length - len(row) :] = torch.as_tensor(row)
        ids = ids.to(self.device)
        pad_len = torch.tensor([length - len(r) for r in rows], device=self.device)  # (R,)
        slot = torch.arange(total, device=self.device)
        valid = slot[None] >= pad_len[:, None]  # (R, S) slots holding real tokens

        grammar = self.grammar
        if constrained:
            frames = torch.as_tensor(video_frames, device=self.device).expand(B).long()
            actions = _pad_actions(video_actions, B, self.device)
            grammar.start(ids[:B], frames, actions)
        generator = torch.Generator(self.device).manual_seed(sampling.seed)
        cache = KVCache.allocate(self.model.cfg, len(rows), total, device=self.device, dtype=self.dtype)

        logits = self._prefill(ids, pad_len, any(len(r) < length for r in rows), cache)

        new = torch.full((B, max_new_tokens), self.pad, dtype=torch.long, device=self.device)
        done = torch.zeros(B, dtype=torch.bool, device=self.device)
        lengths = torch.full((B,), max_new_tokens, dtype=torch.long, device=self.device)  # until a row stops
        kept: list[torch.Tensor] = []
        sync_every = sync_every or (1 if self.device.type == "cpu" else 16)
        steps = range(max_new_tokens)
        if progress:
            from tqdm.auto import tqdm

            steps = tqdm(steps, desc="generate", unit="tok", leave=False)
        for t in steps:
            if self.logit_bias is not None:
                logits = logits + self.logit_bias
            if guided:
                logits = guide(logits[:B], logits[B:], guidance)
            else:
                logits = logits[:B]
            if constrained:
                logits = logits.masked_fill(~grammar.allowed(), float("-inf"))
            if return_logits:
                kept.append(logits)
            token = sample(logits, sampling, generator)
            token = torch.where(done, self.pad, token)
            new[:, t] = token
            stopped = ~done & torch.isin(token, stop_ids)
            lengths = torch.where(stopped, t + 1, lengths)
            done = done | stopped
            if constrained:
                grammar.advance(token)
                grammar.stop(done)
            if t + 1 == max_new_tokens or ((t + 1) % sync_every == 0 and bool(done.all())):
                lengths = lengths.clamp(max=t + 1)
                break
            fed = token.repeat(2) if guided else token  # (R,)
            logits = self._forward(fed, slot[length + t : length + t + 1], slot, valid, pad_len, cache)

        tokens = [row[:end] for row, end in zip(new.cpu().numpy(), lengths.tolist(), strict=True)]
        return Generation(tokens, torch.stack(kept, 1) if return_logits else None)

    def _check(self, prompt: Sequence[int] | np.ndarray, i: int) -> list[int]:
        row = [int(x) for x in prompt]
        if not row:
            raise ValueError(f"prompt {i} is empty; every prompt starts with <|bos|> at least")
        bad = [x for x in row if not 0 <= x < self.codec.vocab.size]
        if bad:
            raise ValueError(f"prompt {i} holds {self.codec.vocab.describe(bad[0])}")
        return row


def _pad_actions(actions: Sequence[Sequence[int]] | None, rows: int, device: torch.device) -> torch.Tensor:
    """(rows, A) action ids, -1 where there is none."""
    if actions is None:
        return torch.full((rows, 0), -1, dtype=torch.long, device=device)
    if len(actions) != rows:
        raise ValueError(f"video_actions has {len(actions)} rows for {rows} prompts")
    width = max((len(a) for a in actions), default=0)
    out = torch.full((rows, width), -1, dtype=torch.long)
    for r, a in enumerate(actions):
        out[r, : len(a)] = torch.as_tensor(list(a), dtype=torch.long)
    return out.to(device)
