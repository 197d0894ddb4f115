"""Constrained decoding's grammar against a plain reference: the rules written out row by row."""

import pytest
import torch

from ringworld.infer.grammar import FREE, IMAGE, VIDEO, SpanGrammar
from ringworld.tokens.bundle import load_codec
from ringworld.tokens.codec import Codec


@pytest.fixture(scope="module", params=[True, False], ids=["delta-frames", "whole-frames"])
def codec(world_tokenizer_dir, request):
    saved = load_codec(world_tokenizer_dir)
    return Codec.build(saved.text, saved.vision, delta_frames=request.param)


def _reference_allowed(g: SpanGrammar, b: int) -> torch.Tensor:
    """Row ``b``'s allowed ids, rule by rule as the module's docstring says, one row at a time."""
    span, pos, frames, prev = (int(getattr(g, name)[b]) for name in ("span", "pos", "frames", "prev"))
    video_frames, actions, notes = int(g.video_frames[b]), g.video_actions[b].tolist(), bool(g.video_notes[b])

    def only(token: int) -> torch.Tensor:
        m = torch.zeros(g.vocab_size, dtype=torch.bool)
        m[token] = True
        return m

    allowed = (g.codes if span != FREE else g.free).clone()
    changes = g.delta and span == VIDEO and frames >= 1  # a frame after the first, written as its changes
    if changes and g.cell_lo <= prev < g.cell_hi:
        allowed = g.codes.clone()  # a cell's code
    elif changes:
        allowed = torch.zeros(g.vocab_size, dtype=torch.bool)
        allowed[g.cell_lo + pos : g.cell_hi] = True  # a cell after the last one named
        allowed[g.eof] = True  # or the end of the frame
    between = span == VIDEO and pos == 0 and prev == g.eof
    action = actions[max(0, min(frames - 1, len(actions) - 1))] if actions else -1
    has_action = between and frames <= len(actions) and action >= 0
    after_text, after_action = prev < g.text_hi, g.action_lo <= prev < g.action_hi
    after_eof_action_or_note = prev == g.eof or after_action or after_text
    gap = span == VIDEO and frames >= 1 and pos == 0 and not has_action and after_eof_action_or_note
    if notes and gap:  # a note before the frame: text, then more text or the frame
        allowed = g.text.clone() if not after_text else allowed | g.text
    if has_action:
        allowed = only(action)
    if between and video_frames == 0:
        allowed[g.close_video] = True
    forced = None
    if span != FREE and not changes and pos < g.body and pos % g.row == g.row - 1:
        forced = g.eol
    if span == IMAGE and pos == g.body:
        forced = g.close_image
    if span == VIDEO and not changes and pos == g.body:
        forced = g.eof
    if between and video_frames > 0 and frames >= video_frames:
        forced = g.close_video
    if bool(g.done[b]):
        forced = g.pad
    return allowed if forced is None else only(forced)


def test_allowed_ids_and_states_follow_the_rules_row_by_row(codec):
    """Random token streams, mostly following the grammar: after each token every row's mask is the
    reference's, and ``start`` on a prompt (which reads it from its last opened span, or its last token) leaves the
    state that advancing through every token of it leaves."""
    v, sp = codec.vocab, codec.vocab.special
    g, stepped = SpanGrammar(codec.layout), SpanGrammar(codec.layout)
    gen = torch.Generator().manual_seed(0)
    spans = ["<|image|>", "<|/image|>", "<|video|>", "<|/video|>", "<|eol|>", "<|eof|>", "<|pad|>", "<|bos|>"]
    cells = list(v.cell_ids)[::5]
    pool = torch.tensor([sp(t) for t in spans] * 6 + list(v.code_ids)[:20] + list(v.action_ids) + cells + [5, 6, 7] * 3)
    B = 16
    for _ in range(12):
        L = int(torch.randint(1, 40, (), generator=gen))
        prompts = pool[torch.randint(len(pool), (B, L), generator=gen)]
        frames = torch.randint(0, 4, (B,), generator=gen)
        actions = torch.tensor(list(v.action_ids))[torch.randint(len(v.action_ids), (B, 3), generator=gen)]
        actions[torch.rand(B, 3, generator=gen) < 0.3] = -1
        notes = torch.rand(B, generator=gen) < 0.5
        g.start(prompts, frames, actions, notes)
        stepped.start(prompts[:, :0], frames, actions, notes)
        for column in prompts.T:
            stepped.advance(column)
        for name in SpanGrammar.STATE:
            assert torch.equal(getattr(g, name), getattr(stepped, name)), name
        for step in range(24):
            if step == 11:
                g.stop(torch.rand(B, generator=gen) < 0.2)
            allowed = g.allowed()
            for b in range(B):
                assert torch.equal(allowed[b], _reference_allowed(g, b)), (b, step)
            off_grammar = torch.rand(B, 1, generator=gen) < 0.1
            g.advance(torch.multinomial(allowed.float() + off_grammar, 1, generator=gen).squeeze(1))
