"""Constrained decoding: which ids may come next in each row, following a token layout
(``ringworld.tokens.layout``: ringworld's own, or a public family's).

An image's opening ids are forced once its first is written; inside an image or video only visual
codes are allowed, row ends (``<|eol|>``) and ``<|eof|>`` are forced at their places, an image's
closing ids after its last row; outside a span no code is written (transformers' Chameleon masks
its codes alike); actions can be forced between frames, and a span is closed at its length, so every
constrained span decodes. A video frame written as its changes (``Codec.delta_frames``) takes
cells after the last one it named, each followed by one code, until the model ends it with
``<|eof|>``. Rows asked for notes (``video_notes``) say one before each video frame they draw
after the first (after its action, if any): text such as how each object moves next
(``Video.notes``), then the frame. The state is kept as tensors on the device: no host syncs while decoding.
"""

from __future__ import annotations

import torch
import torch.nn.functional as F

from ringworld.tokens.layout import TokenLayout, VideoLayout

FREE, IMAGE, VIDEO, OPENING = 0, 1, 2, 3  # OPENING: inside an image's opening ids, after the first
NONE = -1  # an id a layout does not have: no token equals it


class SpanGrammar:
    """Which ids may come next, for a batch of rows, following ``layout``.

    State per row: the span it is in (free text, image, video, an image's opening), the position
    inside it (in a frame body, rows of codes each closed by its row end; in a frame of changes, one
    past the last cell named; past an image's body, its closing ids written), the frames finished in
    the video, the last token, and whether the row has stopped. ``allowed()`` gives a (B, V) mask;
    forced tokens are masks with one id.
    """

    def __init__(self, layout: TokenLayout, device: torch.device | str = "cpu") -> None:
        size = layout.vocab_size
        # tokens in a row (a layout without images has no rows: 1 keeps the arithmetic whole), in a frame body
        self.row, self.body = max(layout.row_length, 1), layout.body_length
        self.vocab_size = size
        self.device = torch.device(device)
        video = layout.video or VideoLayout(NONE, NONE, NONE, range(0), range(0), range(0))
        self.eol = NONE if layout.row_end is None else layout.row_end
        self.eof, self.pad = video.eof, layout.pad
        image_open, image_close = layout.image_open or (NONE,), layout.image_close or (NONE,)  # NONE: no images
        self.open_image, self.close_image = image_open[0], image_close[-1]
        self.image_open = torch.tensor(image_open, device=self.device)  # forced after its first id
        self.image_close = torch.tensor(image_close, device=self.device)  # forced after the body
        self.open_video, self.close_video = video.open, video.close
        self.text_hi = video.text_ids.stop
        self.action_lo, self.action_hi = video.action_ids.start, video.action_ids.stop
        self.cell_lo, self.cell_hi = video.cell_ids.start, video.cell_ids.stop
        self.delta = len(video.cell_ids) > 0

        def mask(ids) -> torch.Tensor:
            m = torch.zeros(size, dtype=torch.bool, device=self.device)
            m[torch.as_tensor([int(i) for i in ids if i != NONE], dtype=torch.long, device=self.device)] = True
            return m

        self.codes = mask(layout.code_ids)
        self.text = mask(video.text_ids)
        self.actions = mask(video.action_ids)
        self.cell_of_id = torch.arange(size, device=self.device) - self.cell_lo  # (V,) the cell an id names
        self.cells = (self.cell_of_id >= 0) & (self.cell_of_id < len(video.cell_ids))
        in_span_only = [*layout.code_ids, *video.cell_ids, self.eol, self.eof, *layout.image_close, self.close_video]
        self.free = ~mask([*in_span_only, self.pad, *layout.hidden])
        self.only = {tok: mask([tok]) for tok in (self.eol, self.eof, self.pad, self.close_video)}  # NONE: nothing
        self.by_span = torch.stack([self.free, self.codes, self.codes, self.codes])  # (4, V) by span; OPENING forced

    def start(
        self,
        prompts: torch.Tensor,  # (B, L) left-padded with <|pad|>
        video_frames: torch.Tensor,  # (B,) frames a generated video ends after; 0 = the model decides
        video_actions: torch.Tensor,  # (B, A) action id forced after frame f's <|eof|>; -1 = none
        video_notes: torch.Tensor | None = None,  # (B,) bool: say a note before each frame drawn
    ) -> None:
        B = len(prompts)
        zeros = torch.zeros(B, dtype=torch.long, device=self.device)
        self.span, self.pos, self.frames = zeros.clone(), zeros.clone(), zeros.clone()
        self.prev = torch.full((B,), self.pad, dtype=torch.long, device=self.device)
        self.done = torch.zeros(B, dtype=torch.bool, device=self.device)
        self.video_frames, self.video_actions = video_frames, video_actions
        self.video_notes = zeros.bool() if video_notes is None else video_notes.bool()
        if prompts.size(1):  # a span's opening token leaves the same state whatever came before it,
            # and outside a span only the last token counts; so a row inside an open span is read from
            # its opening token on, any other from its last token but <|pad|> (one host sync)
            columns = torch.arange(prompts.size(1), device=self.device)
            opened = torch.where((prompts == self.open_image) | (prompts == self.open_video), columns, -1).amax(1)
            closed = torch.where((prompts == self.close_image) | (prompts == self.close_video), columns, -1).amax(1)
            last = torch.where(prompts != self.pad, columns, 0).amax(1)
            first = torch.where(opened > closed, opened, last)[:, None]  # (B, 1)
            prompts = torch.where(columns >= first, prompts, self.pad)[:, int(first.min()) :]
        for column in prompts.T:
            self.advance(column)  # the state at the end of each prompt

    STATE = ("span", "pos", "frames", "prev", "done", "video_frames", "video_actions", "video_notes")

    def prompt_state(
        self,
        prompts: torch.Tensor,
        video_frames: torch.Tensor,
        video_actions: torch.Tensor,
        video_notes: torch.Tensor | None = None,
    ) -> dict[str, torch.Tensor]:
        """The state ``start`` would give k rows, as {name in ``STATE``: (k, ...)}, leaving this
        grammar's own as it is (any thread may ask). Arguments as ``start``'s, k rows each."""
        fresh = SpanGrammar.__new__(SpanGrammar)
        fresh.__dict__.update(self.__dict__)
        fresh.start(prompts, video_frames, video_actions, video_notes)
        return {name: getattr(fresh, name) for name in self.STATE}

    def set_rows(self, rows: torch.Tensor, state: dict[str, torch.Tensor]) -> None:
        """Rows (k,) take ``state`` (``prompt_state``'s, k rows: continuous batching, where a request
        takes rows of its own); the other rows keep theirs."""
        actions = state["video_actions"]
        width = max(self.video_actions.size(1), actions.size(1))
        self.video_actions = F.pad(self.video_actions, (0, width - self.video_actions.size(1)), value=-1)
        state = state | {"video_actions": F.pad(actions, (0, width - actions.size(1)), value=-1)}
        for name in self.STATE:
            getattr(self, name)[rows] = state[name]

    def move_row(self, row: int, to: int) -> None:
        """Row ``to`` takes row ``row``'s state."""
        for name in self.STATE:
            getattr(self, name)[to] = getattr(self, name)[row]

    def advance(self, tokens: torch.Tensor) -> None:
        """Move every row's state past ``tokens`` (B,); <|pad|> leaves a state as it is."""
        real = tokens != self.pad
        in_span = (self.span == IMAGE) | (self.span == VIDEO)
        changes = self.in_changes()
        body = in_span & ~changes & (self.codes[tokens] | (tokens == self.eol))
        self.pos = torch.where(body, self.pos + 1, self.pos)
        cell = changes & (tokens >= self.cell_lo) & (tokens < self.cell_hi)
        self.pos = torch.where(cell, tokens - self.cell_lo + 1, self.pos)
        eof = in_span & (tokens == self.eof)
        self.frames = torch.where(eof, self.frames + 1, self.frames)
        self.pos = torch.where(eof, 0, self.pos)
        if len(self.image_close) > 1:  # the closing ids before the last: counted past the body
            closing = (self.span == IMAGE) & (self.pos >= self.body) & torch.isin(tokens, self.image_close)
            self.pos = torch.where(closing, self.pos + 1, self.pos)
        if len(self.image_open) > 1:  # the opening ids after the first: the image begins after the last
            opening = self.span == OPENING
            self.pos = torch.where(opening, self.pos + 1, self.pos)
            begun = opening & (self.pos == len(self.image_open))
            self.span = torch.where(begun, IMAGE, self.span)
            self.pos = torch.where(begun, 0, self.pos)
        opened = (tokens == self.open_image) | (tokens == self.open_video)
        closed = (tokens == self.close_image) | (tokens == self.close_video)
        opens_to = IMAGE if len(self.image_open) == 1 else OPENING
        self.span = torch.where(tokens == self.open_image, opens_to, self.span)
        self.span = torch.where(tokens == self.open_video, VIDEO, self.span)
        self.span = torch.where(closed, FREE, self.span)
        reset = opened | closed
        self.pos = torch.where(reset, 0, self.pos)
        if opens_to == OPENING:
            self.pos = torch.where(tokens == self.open_image, 1, self.pos)  # its first opening id is written
        self.frames = torch.where(reset, 0, self.frames)
        self.prev = torch.where(real, tokens, self.prev)

    def in_changes(self) -> torch.Tensor:
        """(B,) bool: rows inside a video frame written as its changes (any frame after the first)."""
        return (self.span == VIDEO) & (self.frames >= 1) & self.delta

    def stop(self, stopped: torch.Tensor) -> None:
        self.done |= stopped

    def allowed(self) -> torch.Tensor:
        """(B, V) bool: the ids each row may take next. Worked out per row on (B,) tensors, so that
        only a few ops touch the (B, V) mask, a few more with frames written as changes (a ``where`` over
        it costs ~10x an ``&``)."""
        in_span = (self.span == IMAGE) | (self.span == VIDEO)
        out = self.by_span[self.span]  # (B, V): visual codes inside a span, free text outside
        changes = self.in_changes()
        if self.delta:  # a later cell or <|eof|>; right after a cell, its code
            after_cell = changes & (self.prev >= self.cell_lo) & (self.prev < self.cell_hi)
            listing = (changes & ~after_cell)[:, None]
            later = (self.cells & (self.cell_of_id >= self.pos[:, None])) | self.only[self.eof]
            out = (out & ~listing) | (listing & later)
        between = (self.span == VIDEO) & (self.pos == 0) & (self.prev == self.eof)
        ids = torch.arange(self.vocab_size, device=self.device)
        has_action = torch.zeros_like(between)
        if self.video_actions.size(1):
            index = (self.frames - 1).clamp(0, self.video_actions.size(1) - 1)
            action = self.video_actions.gather(1, index[:, None]).squeeze(1)  # (B,)
            has_action = between & (self.frames <= self.video_actions.size(1)) & (action >= 0)
        # rows asked for notes: text before each frame after the first, once its <|eof|> and action are written
        prev_text = self.prev < self.text_hi
        prev_action = (self.prev >= self.action_lo) & (self.prev < self.action_hi)
        gap = self.video_notes & (self.span == VIDEO) & (self.frames >= 1) & (self.pos == 0) & ~has_action
        gap &= (self.prev == self.eof) | prev_action | prev_text
        say = (gap & ~prev_text)[:, None]  # the note begins: text only
        out = (out & ~say) | (gap[:, None] & self.text)
        if self.video_actions.size(1):
            forced = torch.where(has_action, action, -1)
            out = (ids == forced[:, None]) | (out & ~has_action[:, None])
        open_end = between & (self.video_frames == 0)  # the model may close the video here
        out = out | (open_end[:, None] & self.only[self.close_video])
        last = between & (self.video_frames > 0) & (self.frames >= self.video_frames)
        eol = in_span & ~changes & (self.pos < self.body) & (self.pos % self.row == self.row - 1)
        close = self.close_image
        if len(self.image_close) > 1:  # the closing id due, by how many are written
            close = self.image_close[(self.pos - self.body).clamp(0, len(self.image_close) - 1)]
        opening = []
        if len(self.image_open) > 1:  # the opening id due, by how many are written
            opening = [(self.span == OPENING, self.image_open[self.pos.clamp(0, len(self.image_open) - 1)])]
        rules = (  # the one id a row must take, the last rule that holds winning
            *([(eol, self.eol)] if self.eol != NONE else []),
            *opening,
            ((self.span == IMAGE) & (self.pos >= self.body), close),
            ((self.span == VIDEO) & ~changes & (self.pos == self.body), self.eof),
            (last, self.close_video),
            (self.done, self.pad),
        )
        must = torch.full_like(self.span, -1)
        for where, token in rules:
            must = torch.where(where, token, must)
        return (ids == must[:, None]) | (out & (must < 0)[:, None])
