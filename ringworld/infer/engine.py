"""The inference engine: prefill + decode over a preallocated KV cache, batched sampling,
constrained decoding inside image and video spans, and classifier-free guidance.

    engine = Engine(model, codec)
    out = engine.generate(prompts, max_new_tokens=80, sampling=Sampling(temperature=0.8, top_k=50))

Rows of different prompt lengths are left-padded into one batch; each row's positions start at
0 at its first real token, and its padding slots are never visible. With guidance, every row gets
an unconditional twin (its prompt without the caption) in the same batch; the two rows' logits
are mixed ``uncond + s * (cond - uncond)`` and the one sampled token is fed to both.

How the prompt is prefilled is the engine's one pluggable part (``Prefill``): one process runs it
whole (``LocalPrefill``); ``ringworld.parallel.context.RingPrefill`` runs it through ring attention,
each rank holding a zigzag shard of every row, and leaves every rank's cache whole, so decoding
then runs alike on every rank.

Constraints follow ``ringworld.infer.grammar.SpanGrammar``; picking a token,
``ringworld.infer.sampling``. Both run on the device without host syncs; the loop asks whether
every row has stopped only every ``sync_every`` steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Protocol

import numpy as np
import torch

from ringworld.infer.compiled import decode_compile
from ringworld.infer.grammar import SpanGrammar
from ringworld.infer.sampling import GREEDY, Sampling, guide, sample
from ringworld.model.transformer import KVCache, Transformer
from ringworld.tokens.codec import Codec
from ringworld.tokens.family import FamilyCodec
from ringworld.tokens.layout import TokenLayout


class Prefill(Protocol):
    """Runs every prompt token through the model at once, filling ``cache`` at slots 0..L-1."""

    row_multiple: int  # prompt rows are left-padded to a multiple of this length

    def __call__(
        self,
        model: Transformer,
        ids: torch.Tensor,  # (R, L)
        segment_ids: torch.Tensor | None,  # (R, L): left padding is a document of its own; None: unpadded
        positions: torch.Tensor,  # (R, L)
        cache: KVCache,
    ) -> torch.Tensor: ...  # (R, V) logits of each row's last token


class LocalPrefill:
    """The prompt attends to itself only (causal), so no (L, S) mask is built."""

    row_multiple = 1

    def __call__(self, model, ids, segment_ids, positions, cache) -> torch.Tensor:
        slots = torch.arange(ids.size(1), device=ids.device)
        logits = model(ids, segment_ids=segment_ids, positions=positions, cache=cache.at(slots, None))
        return logits[:, -1].float()


@dataclass
class Generation:
    tokens: list[np.ndarray]  # per row: the new ids, up to and including the stop token
    logits: torch.Tensor | None = None  # (B, steps, V) the (guided) logits each step, if asked for


class Engine:
    """Generation with one model and its codec (ringworld's, or a public family's: the engine reads its
    ``layout``, or the ``layout`` given); ``compile=True`` compiles the one-token decode step
    (``infer/compiled.py``: 6x HF transformers at batch 1 on CPU, after 7-18 s of compiling, so
    worth it where many tokens follow: ``ringworld serve`` turns it on)."""

    def __init__(
        self,
        model: Transformer,
        codec: Codec | FamilyCodec,
        *,
        compile: bool = False,
        prefill: Prefill | None = None,
        logit_bias: torch.Tensor | None = None,
        layout: TokenLayout | None = None,
    ) -> None:
        layout = layout or codec.layout  # what the grammar follows: the codec's, unless said otherwise
        if model.cfg.vocab_size != layout.vocab_size:
            raise ValueError(
                f"the model's vocabulary has {model.cfg.vocab_size} ids but the tokenizer's has "
                f"{layout.vocab_size}; load the tokenizer saved with the checkpoint"
            )
        self.model, self.codec, self.layout = model.eval(), codec, layout
        self.device = next(model.parameters()).device
        self.dtype = next(model.parameters()).dtype
        self.grammar = SpanGrammar(layout, self.device)
        self.pad = layout.pad
        # (V,) added to every step's logits: what undoes a training loss weight (``background_logit_bias``)
        self.logit_bias = None if logit_bias is None else logit_bias.to(self.device, torch.float32)
        self.compiled = compile
        self._decode = decode_compile(self._decode_step) if compile else self._decode_step
        self.prefill = prefill or LocalPrefill()

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
        mask, so a call's steps all have one shape (``infer/compiled.py``: a new cache length makes
        the compiled step's length dynamic once)."""
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
        video_notes: Sequence[bool] | bool = False,
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
            f's ``<|eof|>`` (-1 for none): the actions of a world-model rollout. video_notes: (per
            row or one for all) say a note before each video frame drawn after the first: a model
            trained with ``--say-motion`` says how each object moves, then draws it.
        """
        B = len(prompts)
        if B == 0:
            return Generation([])
        if max_new_tokens < 1:
            raise ValueError(f"max_new_tokens must be >= 1, got {max_new_tokens}")
        guided = uncond_prompts is not None and guidance != 1.0
        if uncond_prompts is not None and len(uncond_prompts) != B:
            raise ValueError(f"{B} prompts but {len(uncond_prompts)} unconditional prompts; give one per prompt")
        rows = [self.check_prompt(p, i) for i, p in enumerate(prompts)]
        if guided:
            rows += [self.check_prompt(p, i) for i, p in enumerate(uncond_prompts)]  # type: ignore[arg-type]
        stop_ids = torch.tensor(list(stop) if stop is not None else [self.layout.eos], device=self.device)
        length = max(map(len, rows))
        multiple = self.prefill.row_multiple
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
            actions = pad_actions(video_actions, B, self.device)
            notes = torch.as_tensor(video_notes, device=self.device).expand(B).bool()
            grammar.start(ids[:B], frames, actions, notes)
        generator = torch.Generator(self.device).manual_seed(sampling.seed)
        cache = KVCache.allocate(self.model.cfg, len(rows), total, device=self.device, dtype=self.dtype)

        positions = (slot[None, :length] - pad_len[:, None]).clamp(min=0)  # (R, L)
        padded = any(len(r) < length for r in rows)
        segments = torch.where(valid[:, :length], 0, -1) if padded else None  # left padding: a document
        logits = self.prefill(self.model, ids, segments, positions, cache)

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
            logits = self._decode(fed, slot[length + t : length + t + 1], slot, valid, pad_len, cache)

        tokens = [row[:end] for row, end in zip(new.cpu().numpy(), lengths.tolist(), strict=True)]
        return Generation(tokens, torch.stack(kept, 1) if return_logits else None)

    def room(self, prompts: Sequence[Sequence[int] | np.ndarray]) -> int:
        """New ids that fit in the model's context after the longest of ``prompts`` (as padded)."""
        multiple = self.prefill.row_multiple
        return self.model.cfg.max_seq_len - -(-max(map(len, prompts)) // multiple) * multiple

    def check_prompt(self, prompt: Sequence[int] | np.ndarray, i: int) -> list[int]:
        row = [int(x) for x in prompt]
        if not row:
            raise ValueError(f"prompt {i} is empty; every prompt starts with <|bos|> at least")
        bad = [x for x in row if not 0 <= x < self.layout.vocab_size]
        if bad:
            raise ValueError(f"prompt {i} holds id {bad[0]}, outside the vocabulary of {self.layout.vocab_size} ids")
        return row


def pad_actions(actions: Sequence[Sequence[int]] | None, rows: int, device: torch.device) -> torch.Tensor:
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
